"""Erasure and its impact: remove a person's (or a source's) rows everywhere, and taint every
artifact that learned from them.

``erase`` finds every dataset version holding matching rows (a subject key is matched by its hash,
as the ledger stores it; a source by name), stores a clean version without them under the same
names (so names resolve to it), purges the rows from the old version's stored rows (its record
then points at the clean rows; the manifest keeps only hashes), refuses the old version from then
on, taints every artifact whose lineage names an affected version, and logs it all in the audit
log. ``impact`` lists tainted artifacts, the aliases that still point at them, and the command that
retrains on the clean version. Promotion refuses a tainted artifact.
"""

from __future__ import annotations

from sqlalchemy import select

from tuneops.data.ingest import ingest_rows, iter_row_batches, load_manifest, subject_key_hash
from tuneops.errors import InvalidInput
from tuneops.store import Store
from tuneops.store.ids import canonical_json, content_id, sha256_bytes
from tuneops.store.schema import (AliasRecord, ArtifactRecord, DatasetRecord, ErasureRecord, RunRecord, TaintRecord,
                                  utcnow)


def _selector(subject: str | None, source: str | None) -> dict:
    if (subject is None) == (source is None):
        raise InvalidInput("erase needs exactly one of --subject KEY and --source NAME")
    if subject is not None:
        if not subject.strip():
            raise InvalidInput("--subject: empty subject key")
        return {"subject": subject_key_hash(subject)}
    if not source.strip():
        raise InvalidInput("--source: empty source name")
    return {"source": source}


def _matches(row_meta: dict, selector: dict) -> bool:
    key, value = next(iter(selector.items()))
    return row_meta.get(key) == value


def erased_versions(store: Store) -> dict[str, tuple[str, str | None]]:
    """Old dataset id -> (erasure id, replacement id or None)."""
    out: dict[str, tuple[str, str | None]] = {}
    with store.session(write=False) as s:
        for er in s.scalars(select(ErasureRecord).order_by(ErasureRecord.created_at)):
            for ds_id, info in er.datasets.items():
                out[ds_id] = (er.id, info.get("replacement"))
    return out


def erase(store: Store, *, subject: str | None = None, source: str | None = None,
          reason: str | None = None) -> ErasureRecord:
    """Remove matching rows from every dataset version; returns the erasure record (see module doc)."""
    selector = _selector(subject, source)
    already = erased_versions(store)
    names = store.dataset_names()
    affected: dict[str, dict] = {}
    for ds in store.all(DatasetRecord):
        if ds.id in already:
            continue
        manifest = load_manifest(store, ds)
        hits = [i for i, meta in enumerate(manifest["rows"]) if _matches(meta, selector)]
        if not hits:
            continue
        drop = set(hits)
        # streamed (Parquet or legacy JSONL rows alike): only the kept rows are ever held whole
        kept = [r for i, r in enumerate(r for batch in iter_row_batches(store, ds) for r in batch) if i not in drop]
        kind = "preference" if manifest["format"].startswith("tuneops.preference") else "sft"
        replacement = None
        for name in names.get(ds.id, [ds.name]):
            if kept:
                rec, _ = ingest_rows(store, kept, name=name, origin=f"erasure of {ds.id}", kind=kind)
                replacement = rec.id
        affected[ds.id] = {"replacement": replacement, "rows_removed": len(hits), "names": names.get(ds.id, [])}
    if not affected:
        raise InvalidInput(f"no stored row matches {next(iter(selector))} "
                           f"{subject if subject is not None else source!r}; nothing was erased",
                           hint="`tuneops data show DATASET` lists a version's sources; subject keys match exactly")
    er_id = content_id("er", sha256_bytes(canonical_json({"selector": selector, "datasets": sorted(affected),
                                                          "at": utcnow().isoformat()})))
    tainted = []
    with store.session() as s:
        er = ErasureRecord(id=er_id, selector=selector, datasets=affected, reason=reason)
        s.add(er)
        for ds_id, info in affected.items():
            old = s.get(DatasetRecord, ds_id)
            purged_from = old.rows_blob
            # the old version keeps its manifest (hashes and provenance, never content) but its rows are
            # the clean ones; the erased rows' bytes are deleted below
            clean_blob = s.get(DatasetRecord, info["replacement"]).rows_blob if info["replacement"] else \
                store.blobs.put_bytes(b"")
            # versions erased earlier point at the clean rows of their day, i.e. at this blob: they
            # move on too, or they would point at deleted bytes
            for rec in s.scalars(select(DatasetRecord).where(DatasetRecord.rows_blob == purged_from)):
                rec.rows_blob = clean_blob
            info["purged_blob"] = purged_from
            # the version's saved near-duplicate index holds digests and shingle hashes of the erased rows
            index = (old.summary or {}).get("near_dup_index") or {}
            if index.get("blob"):
                info["purged_index"] = index["blob"]
                old.summary = {k: v for k, v in old.summary.items() if k != "near_dup_index"}
        s.flush()
        for art in s.scalars(select(ArtifactRecord)):
            hit = [d for d in (art.lineage or {}).get("datasets", []) if d in affected]
            if hit:
                s.add(TaintRecord(artifact_id=art.id, erasure_id=er_id, dataset_id=hit[0]))
                tainted.append(art.id)
        store.audit(s, "data.erase", "erasure", er_id, selector=selector, reason=reason,
                    datasets={k: {"replacement": v["replacement"], "rows_removed": v["rows_removed"]}
                              for k, v in affected.items()}, tainted=tainted)
        s.flush()
        s.expunge(er)
    for info in affected.values():
        for digest in (info["purged_blob"], info.get("purged_index")):
            if digest:  # locally and on the remote blob store, if there is one
                store.blobs.delete_blob(digest)
    return er


def taints_of(store: Store, artifact_id: str) -> list[TaintRecord]:
    with store.session(write=False) as s:
        rows = s.scalars(select(TaintRecord).where(TaintRecord.artifact_id == artifact_id)).all()
        for r in rows:
            s.expunge(r)
        return list(rows)


def impact(store: Store) -> list[dict]:
    """Every tainted artifact: why, the aliases pointing at it, and how to retrain on clean data."""
    out = []
    with store.session(write=False) as s:
        taints = s.scalars(select(TaintRecord).order_by(TaintRecord.created_at)).all()
        for t in taints:
            er = s.get(ErasureRecord, t.erasure_id)
            art = s.get(ArtifactRecord, t.artifact_id)
            aliases = [f"{a.name}@{a.stage}" for a in s.scalars(select(AliasRecord)
                                                                 .where(AliasRecord.artifact_id == t.artifact_id))]
            clean = er.datasets.get(t.dataset_id, {}).get("replacement")
            run = s.get(RunRecord, art.run_id) if art.run_id else None
            recipe_hint = f"the run's recipe ({store.home / 'runs' / run.id / 'recipe.yaml'})" if run else "your recipe"
            out.append({"artifact": t.artifact_id, "erasure": t.erasure_id, "dataset": t.dataset_id,
                        "clean_dataset": clean, "aliases": aliases, "run": art.run_id,
                        "retrain": (f"point data.train at {clean} (its names already resolve to it) in {recipe_hint}, "
                                    f"then `tuneops train RECIPE`") if clean else
                                   "every training row was erased: ingest new data and retrain"})
    return out
