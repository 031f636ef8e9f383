"""Ingest any supported file into an immutable, content-addressed dataset version.

The file is read by :mod:`tuneops.data.formats` (chat, Alpaca, prompt/completion, preference
pairs, hh-rlhf transcripts, GSM8K; JSONL, JSON, CSV, Parquet, gzip, HF ``datasets`` dirs) into
canonical SFT or preference rows; every row gets its provenance — source, SPDX licence, purpose,
collected-at, retention-until, quality tier, a hashed subject key — from its own columns or the
ingest's defaults. Default atomic: one bad row and nothing is stored; ``on_error="quarantine"``
stores the good rows and sets the bad ones aside with their reasons.
"""

import json
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tuneops.data.licenses import most_restrictive, normalise_license, obligations, parse_date, permitted_uses
from tuneops.errors import InvalidInput
from tuneops.store import Store
from tuneops.store.ids import canonical_json, content_id, sha256_bytes
from tuneops.store.schema import DatasetName, DatasetRecord, utcnow

if TYPE_CHECKING:  # heavy (numpy): imported where used
    from tuneops.data.dedup import NearDupIndex
    from tuneops.data.quality import QualityConfig

CONTENT_KEYS = {"sft": ("messages",), "preference": ("prompt", "chosen", "rejected")}
MANIFEST_FORMATS = {"sft": "tuneops.chat/v1", "preference": "tuneops.preference/v1"}


def row_content(row: dict) -> object:
    """What a row's content hash covers: the messages (SFT) or prompt/chosen/rejected (preference)."""
    return row["messages"] if "messages" in row else {k: row[k] for k in CONTENT_KEYS["preference"]}


def build_manifest(rows: list[dict], kind: str = "sft") -> dict:
    """The manifest is what the id hashes: row content hashes + per-row provenance, in order."""
    return {
        "format": MANIFEST_FORMATS[kind],
        "rows": [
            {"sha256": sha256_bytes(canonical_json(row_content(r))), "source": r["source"], "license": r["license"],
             **{k: r[k] for k in PROVENANCE_KEYS[2:] if r.get(k)}}
            for r in rows
        ],
    }


DATASET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_dataset_name(name: str) -> str:
    if not isinstance(name, str) or not DATASET_NAME_RE.match(name):
        shown = name if len(str(name)) <= 40 else f"{str(name)[:40]}… ({len(name)} characters)"
        raise InvalidInput(f"dataset name {shown!r} is not allowed",
                           hint="use 1-100 characters: letters, digits, '.', '_' or '-', starting with a letter "
                                "or digit (e.g. support-train)")
    return name


def _with_spdx(row: dict, n: int) -> dict:
    """The row with its licence as a canonical SPDX id (refused, naming the row, if unknown)."""
    spdx = normalise_license(row.get("license"), where=f"row {n}: license")
    return row if spdx == row.get("license") else {**row, "license": spdx}


def ingest_rows(store: Store, rows: list[dict], *, name: str, origin: str = "memory", kind: str = "sft",
                quarantine: dict | None = None, extra: dict | None = None) -> tuple[DatasetRecord, bool]:
    """Store validated rows as a dataset version; returns (record, created). Same rows -> same id,
    whatever the name; the name is linked to the version either way (``tuneops data list``)."""
    check_dataset_name(name)
    rows = [_with_spdx(r, i) for i, r in enumerate(rows, start=1)]
    manifest = build_manifest(rows, kind)
    manifest_bytes = canonical_json(manifest)
    ds_id = content_id("ds", sha256_bytes(manifest_bytes))
    with store.session(write=False) as s:
        existing = s.get(DatasetRecord, ds_id)
        if existing is not None:
            s.expunge(existing)
    if existing is None:
        manifest_blob = store.blobs.put_bytes(manifest_bytes)
        rows_blob = _put_rows_parquet(store, rows)
        summary = {
            "origin": origin,
            "sources": dict(Counter(r["source"] for r in rows)),
            "licenses": dict(Counter(r["license"] for r in rows)),
            # the most restrictive row decides what the version may be used for
            "license": most_restrictive(r["license"] for r in rows),
            "permitted_uses": sorted(permitted_uses({r["license"] for r in rows})),
            "obligations": obligations({r["license"] for r in rows}),
            "duplicate_rows": len(rows) - len({m["sha256"] for m in manifest["rows"]}),
        }
        if kind == "sft":
            summary["turns"] = dict(Counter(str(len(r["messages"])) for r in rows))
            summary["has_system_prompt"] = sum(1 for r in rows if r["messages"][0]["role"] == "system")
        else:
            summary["kind"] = kind
        for key in ("tier", "purpose"):
            counts = Counter(r[key] for r in rows if r.get(key))
            if counts:
                summary[f"{key}s"] = dict(counts)
        if any(r.get("subject") for r in rows):
            summary["rows_with_subject"] = sum(1 for r in rows if r.get("subject"))
        retention = sorted(r["retention_until"] for r in rows if r.get("retention_until"))
        if retention:
            summary["retention_until_min"] = retention[0]
        if quarantine:
            summary["quarantine"] = quarantine
        summary.update(extra or {})
        rec = DatasetRecord(id=ds_id, name=name, manifest_blob=manifest_blob, rows_blob=rows_blob,
                            num_rows=len(rows), summary=summary)
        existing, created = store.insert_once(rec, on_create=lambda s: store.audit(
            s, "dataset.ingest", "dataset", ds_id, name=name, origin=origin, rows=len(rows)))
    else:
        created = False
    link_dataset_name(store, name, ds_id)
    return existing, created


def link_dataset_name(store: Store, name: str, ds_id: str) -> bool:
    """Point ``name`` at a version (idempotent); True if the link is new."""
    check_dataset_name(name)
    _, created = store.insert_once(DatasetName(name=name, dataset_id=ds_id, created_at=utcnow()),
                                   on_create=lambda s: store.audit(s, "dataset.name", "dataset", ds_id, name=name))
    return created


TIERS = ("gold", "curated", "synthetic", "scraped")
PROVENANCE_KEYS = ("source", "license", "purpose", "collected_at", "retention_until", "tier", "subject", "tags")


def subject_key_hash(key: str) -> str:
    """What the ledger stores for a subject key: a hash, so the manifest never names the person;
    ``tuneops data erase --subject KEY`` hashes KEY the same way to find their rows."""
    return "subj-" + sha256_bytes(f"tuneops-subject:{key}".encode())[:24]


def _provenance(meta: dict, defaults: dict, where: str, errors: list[str]) -> dict | None:
    """A row's provenance: its own columns win over the file-level defaults; checked and normalised."""
    merged = {k: v for k, v in defaults.items() if v not in (None, "")}
    merged.update({k: v for k, v in meta.items() if v not in (None, "")})
    out: dict = {}
    lic = merged.get("license")
    if lic is None:
        errors.append("license: the row has none and no default was given; add --license SPDX-ID "
                      "(e.g. --license MIT), or --license unknown to say so explicitly")
        return None
    try:
        out["license"] = normalise_license(lic, where="license")
        for key in ("collected_at", "retention_until"):
            if key in merged:
                out[key] = parse_date(merged[key], key).isoformat()
    except InvalidInput as e:
        errors.append(f"{e.message} ({e.hint})" if e.hint else e.message)
        return None
    out["source"] = str(merged.get("source"))
    if "purpose" in merged:
        out["purpose"] = str(merged["purpose"])
    if "tier" in merged:
        if merged["tier"] not in TIERS:
            errors.append(f"tier: {merged['tier']!r} is not one of {', '.join(TIERS)}")
            return None
        out["tier"] = merged["tier"]
    if "subject" in merged:
        out["subject"] = subject_key_hash(str(merged["subject"]))
    tags = merged.get("tags")
    if isinstance(tags, str):
        try:
            tags = json.loads(tags) if tags.startswith("[") else [t.strip() for t in tags.split(",") if t.strip()]
        except ValueError:
            tags = None
    if tags is not None:
        if not isinstance(tags, list) or not all(isinstance(t, str) and t.strip() for t in tags):
            errors.append("'tags' must be a list of non-empty strings (slices in eval reports), "
                          "e.g. [\"form\", \"accented\"]")
            return None
        if tags:
            out["tags"] = tags
    return out


DEDUP_ROLES = ("user", "assistant", "tool")  # not "system": a prompt every row shares would make all rows alike
HELDOUT_SUFFIX = "-heldout"  # NAME-heldout: sorts next to NAME in `data list`, says what it is
STRATIFY_FIELDS = ("length", "source", "license", "purpose", "tier", "collected_at", "retention_until", "tags")


def ingest_file(store: Store, path: Path, *, name: str, format: str | None = None, split: str | None = None,
                on_error: str = "raise", source: str | None = None, license: str | None = None,
                purpose: str | None = None, tier: str | None = None, collected_at: str | None = None,
                retention_until: str | None = None, pii: str = "redact", dedupe: str = "exact",
                dedupe_against: list[str] | tuple[str, ...] = (), quality: "QualityConfig | None" = None,
                heldout: float | None = None, stratify: str | None = None,
                split_seed: int | None = None) -> tuple[DatasetRecord, bool]:
    """Read any supported file (see tuneops.data.formats), attach provenance to every row, scrub PII
    and secrets, drop duplicates, and store it as a dataset version. Default atomic: one bad row,
    nothing stored. ``on_error="quarantine"`` stores the good rows and writes the bad ones with their
    reasons to a quarantine file recorded in the version's summary.

    ``pii``: ``redact`` (default: every finding replaced by a ``<TYPE>`` placeholder), ``block`` (a row
    holding any finding is bad) or ``allow`` (counted only). ``dedupe``: ``exact`` (default:
    normalised-text duplicates), ``near`` (also MinHash near-duplicates, Jaccard ≥ 0.6 on word
    5-grams) or ``off``. Counts by type and kind go in the summary; no original value is stored.
    ``dedupe_against``, ``quality`` and the split (``heldout``, ``stratify``, ``split_seed``): see
    :func:`ingest_file_versions`; with a split, the version under ``name`` (the training rows) is returned."""
    return ingest_file_versions(store, path, name=name, format=format, split=split, on_error=on_error, source=source,
                                license=license, purpose=purpose, tier=tier, collected_at=collected_at,
                                retention_until=retention_until, pii=pii, dedupe=dedupe,
                                dedupe_against=dedupe_against, quality=quality, heldout=heldout, stratify=stratify,
                                split_seed=split_seed)[0]


def ingest_file_versions(store: Store, path: Path, *, name: str, format: str | None = None, split: str | None = None,
                         on_error: str = "raise", source: str | None = None, license: str | None = None,
                         purpose: str | None = None, tier: str | None = None, collected_at: str | None = None,
                         retention_until: str | None = None, pii: str = "redact", dedupe: str = "exact",
                         dedupe_against: list[str] | tuple[str, ...] = (), quality: "QualityConfig | None" = None,
                         heldout: float | None = None, stratify: str | None = None,
                         split_seed: int | None = None) -> list[tuple[DatasetRecord, bool]]:
    """:func:`ingest_file`, returning every version it stored as (record, created): the one under
    ``name``, then, with ``heldout``, the one under ``NAME-heldout``. The stages, in order: read and
    check each row (provenance, empty replies, PII), quality filters, duplicates of earlier versions,
    duplicates within the file, the split.

    ``quality``: a :class:`~tuneops.data.quality.QualityConfig`; rows failing it are dropped and
    counted by reason (``quality.removed``), or, with ``on_error="quarantine"``, also written to the
    quarantine file with the reason. ``dedupe_against``: names or ``ds-…`` ids of earlier versions; a
    row duplicating one of their rows, exactly or nearly (whatever ``dedupe`` says), is dropped and
    counted as ``deduplicated.removed.against``. Every version's ``NearDupIndex`` is saved as a blob
    (``near_dup_index`` in its summary), so deduplicating against it later loads it instead of
    hashing its rows again. ``heldout``: that fraction of the rows, by
    :func:`~tuneops.data.quality.split_rows` (seeded by ``split_seed``, stratified by ``stratify``:
    ``length`` or a provenance field), goes to ``NAME-heldout``; near-duplicates stay on one side."""
    from tuneops.data.dedup import NearDupIndex, dedup
    from tuneops.data.formats import read_rows
    from tuneops.data.pii import apply_policy

    if pii not in ("redact", "block", "allow"):
        raise InvalidInput(f"--pii {pii!r} is not one of redact, block, allow")
    if dedupe not in ("exact", "near", "off"):
        raise InvalidInput(f"--dedupe {dedupe!r} is not one of exact, near, off")
    pii_counts: dict[str, int] = {}

    check_dataset_name(name)
    path = Path(path)
    if tier is not None and tier not in TIERS:
        raise InvalidInput(f"--tier {tier!r} is not one of {', '.join(TIERS)}")
    heldout_name = _check_split_options(name, heldout, stratify, split_seed)
    prior, against = _dedupe_against_index(store, dedupe_against)  # before reading: a bad ref fails fast
    defaults = {"source": source or f"file:{path.name}", "license": license, "purpose": purpose, "tier": tier,
                "collected_at": collected_at, "retention_until": retention_until}
    wheres: list[str] = []  # file:line of each good row, in order (for quality rows sent to quarantine)

    def with_provenance(row: dict, where: str) -> list[str]:
        errors = [f"{key}[{j}].content: empty; an empty reply teaches the model to say nothing (drop the row, "
                  "or --on-error quarantine to set it aside)"
                  for key in ("messages", "chosen", "rejected") for j, m in enumerate(row.get(key) or [])
                  if m.get("role") == "assistant" and not m.get("tool_calls") and not str(m.get("content", "")).strip()]
        if errors:
            return errors
        prov = _provenance(row.pop("meta", None) or {}, defaults, where, errors)
        if prov is None:
            return errors
        scrubbed = apply_policy(row, {"*": pii})
        if scrubbed.row is None:
            return [f"PII: holds {', '.join(scrubbed.blocked_types)} and --pii block is set; redact it "
                    "(--pii redact) or remove the row"]
        for kind, n in scrubbed.counts.items():
            pii_counts[kind] = pii_counts.get(kind, 0) + n
        if pii == "redact" and scrubbed.counts:
            row.clear()
            row.update(scrubbed.row)
        row.update(prov)
        wheres.append(where)
        return errors

    result = read_rows(path, format=format, split=split, on_error=on_error, check=with_provenance)
    rows, bad, read = result.rows, list(result.bad), len(result.rows)
    extra: dict = {"pii": {"policy": pii, "found": dict(sorted(pii_counts.items()))}}
    if quality is not None:
        rows, extra["quality"], rejected = _quality_filter(rows, wheres, quality, on_error == "quarantine")
        bad.extend(rejected)
    n_against = 0
    if prior is not None:
        rows, n_against = _drop_duplicates_of(rows, prior, against)
    own = NearDupIndex()  # this version's rows, saved with it for later ingests to dedupe against
    found = dedup([{k: r[k] for k in CONTENT_KEYS[result.kind]} for r in rows], exact=dedupe != "off",
                  near=dedupe == "near", roles=DEDUP_ROLES, index=own, update_index=True)
    rows = [rows[i] for i in found.kept]
    own.keys = list(range(len(own)))  # dedup keyed the kept rows by input row; the version numbers them anew
    extra["deduplicated"] = {"mode": dedupe, "removed": {k: v for k, v in found.counts.items() if v}}
    if against:
        extra["deduplicated"]["removed"]["against"] = n_against
        extra["deduplicated"]["against_versions"] = against
    if not rows:
        dropped = (extra.get("quality") or {}).get("rows_removed", 0)
        why = []
        if dropped:
            why.append(f"{dropped} failed the quality filters")
        if n_against:
            why.append(f"{n_against} duplicate rows of the --dedupe-against versions")
        raise InvalidInput(f"{path}: none of its {read} row(s) is left to store ({'; '.join(why)}); "
                           "nothing was stored",
                           hint="loosen --quality / --expect-json, or check the versions given to --dedupe-against")
    split_result = _split_for_heldout(rows, heldout, stratify, split_seed, path) if heldout is not None else None
    quarantine = None
    if bad:
        lines = b"".join(canonical_json({"where": w, "problems": ps, "excerpt": raw}) + b"\n" for w, raw, ps in bad)
        qblob = store.blobs.put_bytes(lines)
        qfile = store.home / "quarantine" / f"{name}-{qblob[:12]}.jsonl"
        qfile.parent.mkdir(parents=True, exist_ok=True)
        qfile.write_bytes(lines)
        quarantine = {"rows": len(bad), "file": str(qfile), "blob": qblob}
    if split_result is None:
        return [ingest_rows(store, rows, name=name, origin=str(path), kind=result.kind, quarantine=quarantine,
                            extra={**extra, "near_dup_index": _save_near_dup_index(store, own)})]
    info = {"fraction": heldout, "seed": split_seed or 0, "stratify_by": stratify,
            "rows": {"train": len(split_result.train), "heldout": len(split_result.heldout)},
            "strata": split_result.strata, "clusters": split_result.clusters,
            "largest_cluster": split_result.details["largest_cluster"]}
    # the held-out version first, so the training version's summary can name it
    held_at, train_at = split_result.heldout, split_result.train
    held = ingest_rows(store, [rows[i] for i in held_at], name=heldout_name, origin=str(path), kind=result.kind,
                       quarantine=quarantine,
                       extra={**extra, "near_dup_index": _save_near_dup_index(store, _index_rows(own, held_at)),
                              "split": {"role": "heldout", "train_name": name, **info}})
    train = ingest_rows(store, [rows[i] for i in train_at], name=name, origin=str(path), kind=result.kind,
                        quarantine=quarantine,
                        extra={**extra, "near_dup_index": _save_near_dup_index(store, _index_rows(own, train_at)),
                               "split": {"role": "train", "heldout": held[0].id, "heldout_name": heldout_name, **info}})
    return [train, held]


def _check_split_options(name: str, heldout: float | None, stratify: str | None, seed: int | None) -> str | None:
    """The held-out version's name (None without a split); refuses split options that cannot work."""
    if heldout is None:
        for option, value in (("--stratify", stratify), ("--split-seed", seed)):
            if value is not None:
                raise InvalidInput(f"{option} only applies when a held-out split is stored",
                                   hint=f"add --heldout FRACTION (e.g. --heldout 0.1), or drop {option}")
        return None
    if isinstance(heldout, bool) or not isinstance(heldout, (int, float)) or not 0 < heldout < 1:
        raise InvalidInput(f"--heldout {heldout!r}: the held-out share must be a fraction strictly between 0 and 1",
                           hint="e.g. --heldout 0.1 holds out 10% of the rows")
    if stratify is not None and stratify not in STRATIFY_FIELDS:
        raise InvalidInput(f"--stratify {stratify!r}: rows have no such field to stratify by",
                           hint=f"use length (word-count quartiles) or a provenance field: "
                                f"{', '.join(STRATIFY_FIELDS[1:])}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not -2**63 <= seed < 2**63):
        raise InvalidInput(f"--split-seed {seed!r}: must be a whole number (64-bit)", hint="e.g. --split-seed 1")
    heldout_name = name + HELDOUT_SUFFIX
    if not DATASET_NAME_RE.match(heldout_name):
        raise InvalidInput(f"--heldout stores the held-out rows as {heldout_name[:40]!r}…, which is too long for a "
                           "dataset name", hint="use a --name of at most 92 characters")
    return heldout_name


def _quality_filter(rows: list[dict], wheres: list[str], config: "QualityConfig",
                    quarantine: bool) -> tuple[list[dict], dict, list[tuple[str, str, list[str]]]]:
    """(rows that pass, the summary's ``quality``, quarantine entries for the others when ``quarantine``)."""
    from tuneops.data.formats import EXCERPT_CHARS
    from tuneops.data.quality import filter_rows

    found = filter_rows(rows, config)
    bad = []
    if quarantine:
        for i, issues in found.rejected.items():
            text = json.dumps(rows[i], ensure_ascii=False)
            where = wheres[i] if len(wheres) == len(rows) else f"row {i + 1}"
            bad.append((where, text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…",
                        [f"quality {x.code}: {x.field}: {x.detail}" for x in issues]))
    summary = {"filters": config.settings(), "removed": found.counts, "rows_removed": len(found.rejected)}
    if bad:
        summary["quarantined"] = True
    return [rows[i] for i in found.kept], summary, bad


def _near_dup_index_of(store: Store, rec: DatasetRecord) -> tuple["NearDupIndex", str]:
    """A version's NearDupIndex: the one saved at its ingest, or, for versions without one (or
    with one from another signature scheme), hashed again from its rows."""
    from tuneops.data.dedup import MinHashParams, NearDupIndex, iter_minhash

    saved = (rec.summary or {}).get("near_dup_index") or {}
    if saved.get("blob") and saved.get("roles") == list(DEDUP_ROLES):
        try:
            index = NearDupIndex.from_bytes(store.blobs.get_bytes(saved["blob"]), where=f"{rec.id} near_dup_index")
        except InvalidInput:
            index = None  # blob missing or unreadable: the rows are the truth
        if index is not None and index.params == MinHashParams.create() and len(index) == rec.num_rows:
            return index, "saved"
    index = NearDupIndex()
    for mb in iter_minhash(load_rows(store, rec), index.params, roles=DEDUP_ROLES):
        index.add(mb)
    return index, "rebuilt from rows"


def _dedupe_against_index(store: Store, refs) -> tuple["NearDupIndex | None", list[dict]]:
    """One index over every version in ``refs`` (keys ``ds-…:row``), and what each contributed."""
    from tuneops.data.dedup import NearDupIndex
    from tuneops.errors import NotFound, TuneopsError

    refs = [refs] if isinstance(refs, str) else list(refs or ())
    combined, versions = None, []
    for ref in refs:
        try:
            rec = store.resolve_dataset(ref)
        except NotFound:
            raise InvalidInput(f"--dedupe-against {ref!r}: no dataset version has that name or id",
                               hint="give a name or ds-… id that `tuneops data list` shows") from None
        except TuneopsError as e:  # e.g. a version whose rows were erased
            raise InvalidInput(f"--dedupe-against {ref!r}: {e.message}", hint=e.hint) from None
        if any(v["dataset"] == rec.id for v in versions):
            continue
        index, how = _near_dup_index_of(store, rec)
        combined = combined or NearDupIndex(index.params)
        combined.extend(index, range(len(index)), [f"{rec.id}:{k}" for k in index.keys])
        versions.append({"dataset": rec.id, "ref": ref, "rows": len(index), "index": how})
    return combined, versions


def _drop_duplicates_of(rows: list[dict], prior: "NearDupIndex", versions: list[dict]) -> tuple[list[dict], int]:
    """Rows that duplicate no row of ``prior`` (exactly or nearly); counts what each version removed."""
    from tuneops.data.dedup import matches_in_index

    found = matches_in_index(rows, prior, roles=DEDUP_ROLES)
    per_version = Counter(str(r.duplicate_of).rsplit(":", 1)[0] for r in found)
    for v in versions:
        v["removed"] = per_version.get(v["dataset"], 0)
    gone = {r.index for r in found}
    return [r for i, r in enumerate(rows) if i not in gone], len(gone)


def _index_rows(index: "NearDupIndex", rows: list[int]) -> "NearDupIndex":
    """The index of some rows of a version (``rows``: its row numbers), renumbered from 0."""
    from tuneops.data.dedup import NearDupIndex

    out = NearDupIndex(index.params)
    out.extend(index, rows, list(range(len(rows))))
    return out


def _save_near_dup_index(store: Store, index: "NearDupIndex") -> dict:
    """Store a version's index as a blob; what its summary records (``near_dup_index``)."""
    return {"blob": store.blobs.put_bytes(index.to_bytes()), "rows": len(index), "roles": list(DEDUP_ROLES)}


def _split_for_heldout(rows: list[dict], fraction: float, stratify: str | None, seed: int | None, path: Path):
    """split_rows over the rows to store, with clusters of near-duplicates (as dedup compares rows:
    no system prompt) kept on one side, so no held-out row has a near-copy in training."""
    from tuneops.data.dedup import near_duplicate_clusters
    from tuneops.data.quality import split_rows

    if len(rows) < 2:
        raise InvalidInput(f"--heldout {fraction}: {path} leaves {len(rows)} row to store; a split needs at least 2",
                           hint="drop --heldout, or ingest more rows")
    if stratify not in (None, "length") and not any(r.get(stratify) for r in rows):
        option = f" or --{stratify.replace('_', '-')}" if stratify != "tags" else ""
        raise InvalidInput(f"--stratify {stratify}: no row of {path} has a {stratify}",
                           hint=f"give the rows one (a column{option}), or stratify by length or another field")
    labels = near_duplicate_clusters(rows, roles=DEDUP_ROLES)
    result = split_rows(rows, heldout_fraction=fraction, seed=seed or 0, stratify_by=stratify, clusters=labels)
    if not result.heldout or not result.train:
        side = "held-out" if not result.heldout else "training"
        raise InvalidInput(f"--heldout {fraction}: the split of {len(rows)} rows leaves no {side} rows "
                           f"(near-duplicates stay together: {result.clusters} cluster(s), the largest of "
                           f"{result.details['largest_cluster']} rows)",
                           hint="use a fraction that leaves rows on both sides, or dedupe near-duplicates "
                                "(--dedupe near)")
    return result


def ingest_jsonl(store: Store, path: Path, *, name: str, source: str | None = None,
                 license: str | None = None) -> tuple[DatasetRecord, bool]:
    return ingest_file(store, path, name=name, source=source, license=license)


# Rows storage. A version's rows are one Parquet file (zstd): a ``row`` column holding each row's
# canonical JSON — authoritative, so a row comes back byte for byte, None vs missing keys, tool
# calls and all — beside a copy of its provenance as plain columns, for DuckDB, pandas or
# ``datasets`` users who filter by source, licence or subject without parsing JSON. Row groups
# are bounded (rows and bytes) so a reader holds one at a time. Versions ingested before this
# stored canonical JSONL; readers tell the two apart by the Parquet magic bytes.
ROW_GROUP_ROWS = 10_000
ROW_GROUP_BYTES = 64 << 20  # of row JSON: long conversations make smaller groups
PARQUET_MAGIC = b"PAR1"
_PROVENANCE_COLUMNS = PROVENANCE_KEYS[:-1]  # strings; "tags" is a list of strings


def _rows_schema():
    import pyarrow as pa

    return pa.schema([*(pa.field(k, pa.string()) for k in _PROVENANCE_COLUMNS),
                      pa.field("tags", pa.list_(pa.string())), pa.field("row", pa.string())],
                     metadata={"tuneops.rows": "v1: `row` is the canonical JSON of the row; the rest are copies"})


def _provenance_text(value: object) -> str | None:
    return value if value is None or isinstance(value, str) else canonical_json(value).decode()


def _row_group(rows: list[dict], lines: list[str]):
    import pyarrow as pa

    columns = {k: [_provenance_text(r.get(k)) for r in rows] for k in _PROVENANCE_COLUMNS}
    tags = [r.get("tags") for r in rows]
    columns["tags"] = [t if isinstance(t, list) and all(isinstance(x, str) for x in t) else None for t in tags]
    columns["row"] = lines
    return pa.Table.from_pydict(columns, schema=_rows_schema())


def _put_rows_parquet(store: Store, rows: list[dict]) -> str:
    """Write rows as a Parquet blob (written under the store's tmp, then renamed in); its sha256."""
    import pyarrow.parquet as pq

    tmp = store.blobs.scratch_dir("rows-")
    try:
        path = tmp / "rows.parquet"
        # no statistics or dictionary on `row`: min/max of whole rows would bloat the footer
        with pq.ParquetWriter(path, _rows_schema(), compression="zstd", use_dictionary=list(_PROVENANCE_COLUMNS),
                              write_statistics=list(_PROVENANCE_COLUMNS), write_page_checksum=True) as writer:
            start, size, lines = 0, 0, []
            for i, row in enumerate(rows):
                lines.append(canonical_json(row).decode())
                size += len(lines[-1])
                if len(lines) >= ROW_GROUP_ROWS or size >= ROW_GROUP_BYTES or i == len(rows) - 1:
                    writer.write_table(_row_group(rows[start:i + 1], lines), row_group_size=len(lines))
                    start, size, lines = i + 1, 0, []
        return store.blobs.put_file(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def iter_row_batches(store: Store, dataset: DatasetRecord, batch_size: int = ROW_GROUP_ROWS) -> Iterator[list[dict]]:
    """A version's rows in order, as lists of at most ``batch_size`` row dicts (the dicts load_rows
    returns), read one Parquet row group at a time, so memory follows the batch, not the version."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of rows (got {batch_size!r})")
    path = store.blobs.blob_file(dataset.rows_blob)
    with open(path, "rb") as f:
        parquet = f.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC
    return _parquet_batches(path, batch_size) if parquet else _jsonl_batches(path, batch_size)


def _parquet_batches(path: Path, batch_size: int) -> Iterator[list[dict]]:
    import pyarrow.parquet as pq

    # pre_buffer off: it would fetch ahead of the row group being decoded
    with pq.ParquetFile(path, pre_buffer=False, page_checksum_verification=True) as pf:
        for batch in pf.iter_batches(batch_size=batch_size, columns=["row"], use_threads=False):
            yield [json.loads(line) for line in batch.column(0).to_pylist()]


def _jsonl_batches(path: Path, batch_size: int) -> Iterator[list[dict]]:
    """Rows stored before Parquet: canonical JSONL (an erased version's rows may be empty)."""
    batch = []
    with open(path, "rb") as f:
        # binary lines split on b"\n" only: str.splitlines() also breaks at U+2028, U+0085, \x1c…,
        # which JSON keeps raw
        for line in f:
            if line.strip():
                batch.append(json.loads(line))
                if len(batch) == batch_size:
                    yield batch
                    batch = []
    if batch:
        yield batch


def load_rows(store: Store, dataset: DatasetRecord) -> list[dict]:
    """Every row of a version, in order (Parquet or legacy JSONL); iter_row_batches streams instead."""
    return [row for batch in iter_row_batches(store, dataset) for row in batch]


def load_manifest(store: Store, dataset: DatasetRecord) -> dict:
    return json.loads(store.blobs.get_bytes(dataset.manifest_blob))
