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
from collections import Counter
from pathlib import Path

from tuneops.data.licenses import most_restrictive, normalise_license, obligations, parse_date, permitted_uses
from tuneops.errors import InvalidInput
from tuneops.store import Store
from tuneops.store.ids import canonical_json, content_id, sha256_bytes
from tuneops.store.schema import DatasetName, DatasetRecord, utcnow

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
        rows_bytes = b"\n".join(canonical_json(r) for r in rows) + b"\n"
        manifest_blob = store.blobs.put_bytes(manifest_bytes)
        rows_blob = store.blobs.put_bytes(rows_bytes)
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


def ingest_file(store: Store, path: Path, *, name: str, format: str | None = None, split: str | None = None,
                on_error: str = "raise", source: str | None = None, license: str | None = None,
                purpose: str | None = None, tier: str | None = None, collected_at: str | None = None,
                retention_until: str | None = None, pii: str = "redact",
                dedupe: str = "exact") -> tuple[DatasetRecord, bool]:
    """Read any supported file (see tuneops.data.formats), attach provenance to every row, scrub PII
    and secrets, drop duplicates, and store it as a dataset version. Default atomic: one bad row,
    nothing stored. ``on_error="quarantine"`` stores the good rows and writes the bad ones with their
    reasons to a quarantine file recorded in the version's summary.

    ``pii``: ``redact`` (default: every finding replaced by a ``<TYPE>`` placeholder), ``block`` (a row
    holding any finding is bad) or ``allow`` (counted only). ``dedupe``: ``exact`` (default:
    normalised-text duplicates), ``near`` (also MinHash near-duplicates, Jaccard ≥ 0.6 on word
    5-grams) or ``off``. Counts by type and kind go in the summary; no original value is stored."""
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
    defaults = {"source": source or f"file:{path.name}", "license": license, "purpose": purpose, "tier": tier,
                "collected_at": collected_at, "retention_until": retention_until}

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
        return errors

    result = read_rows(path, format=format, split=split, on_error=on_error, check=with_provenance)
    rows, removed = result.rows, {}
    if dedupe != "off" and rows:
        from tuneops.data.dedup import dedup

        found = dedup([{k: r[k] for k in CONTENT_KEYS[result.kind]} for r in rows], near=dedupe == "near",
                      roles=("user", "assistant", "tool"))
        rows = [rows[i] for i in found.kept]
        removed = {k: v for k, v in found.counts.items() if v}
    quarantine = None
    if result.bad:
        lines = b"".join(canonical_json({"where": w, "problems": ps, "excerpt": raw}) + b"\n"
                         for w, raw, ps in result.bad)
        qblob = store.blobs.put_bytes(lines)
        qfile = store.home / "quarantine" / f"{name}-{qblob[:12]}.jsonl"
        qfile.parent.mkdir(parents=True, exist_ok=True)
        qfile.write_bytes(lines)
        quarantine = {"rows": len(result.bad), "file": str(qfile), "blob": qblob}
    return ingest_rows(store, rows, name=name, origin=str(path), kind=result.kind, quarantine=quarantine,
                       extra={"pii": {"policy": pii, "found": dict(sorted(pii_counts.items()))},
                              "deduplicated": {"mode": dedupe, "removed": removed}})


def ingest_jsonl(store: Store, path: Path, *, name: str, source: str | None = None,
                 license: str | None = None) -> tuple[DatasetRecord, bool]:
    return ingest_file(store, path, name=name, source=source, license=license)


def load_rows(store: Store, dataset: DatasetRecord) -> list[dict]:
    # split on b"\n" only: str.splitlines() also breaks at U+2028, U+0085, \x1c…, which JSON keeps raw
    return [json.loads(line) for line in store.blobs.get_bytes(dataset.rows_blob).split(b"\n") if line.strip()]


def load_manifest(store: Store, dataset: DatasetRecord) -> dict:
    return json.loads(store.blobs.get_bytes(dataset.manifest_blob))
