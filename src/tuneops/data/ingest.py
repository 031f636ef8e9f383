"""Ingest chat JSONL into an immutable, content-addressed dataset version.

Each line: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}``
with optional per-row ``source`` and ``license`` (else the ingest defaults apply). Every
line is validated before anything is written: one bad line and nothing is ingested.
"""

import json
from collections import Counter
from pathlib import Path

from tuneops.errors import InvalidInput
from tuneops.store import Store
from tuneops.store.ids import canonical_json, content_id, sha256_bytes
from tuneops.store.schema import DatasetRecord

ROLES = {"system", "user", "assistant"}
ROW_KEYS = {"messages", "source", "license"}
MAX_ERRORS_SHOWN = 10


def _validate_row(obj, where: str) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where}: expected a JSON object, got {type(obj).__name__}"]
    errors = []
    unknown = set(obj) - ROW_KEYS
    if unknown:
        errors.append(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(ROW_KEYS)}")
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return errors + [f"{where}: 'messages' must be a non-empty list of {{role, content}} objects"]
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            errors.append(f"{where}: messages[{j}] must be an object with exactly 'role' and 'content'")
            continue
        if m["role"] not in ROLES:
            errors.append(f"{where}: messages[{j}].role is {m['role']!r}; use one of {sorted(ROLES)}")
        if not isinstance(m["content"], str) or not m["content"].strip():
            errors.append(f"{where}: messages[{j}].content must be a non-empty string")
    if msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") != "assistant":
        errors.append(f"{where}: the last message must be the assistant's answer (the training target)")
    for key in ("source", "license"):
        if key in obj and (not isinstance(obj[key], str) or not obj[key].strip()):
            errors.append(f"{where}: '{key}' must be a non-empty string")
    return errors


def read_chat_jsonl(path: Path, *, source: str, license: str) -> list[dict]:
    """Parse and validate every line; raise InvalidInput naming each bad file:line."""
    path = Path(path)
    if not path.exists():
        raise InvalidInput(f"{path}: no such file", hint="check the path passed to `tuneops data ingest`")
    rows, errors = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                errors.append(f"{where}: not valid JSON ({e.msg} at column {e.colno})")
                continue
            row_errors = _validate_row(obj, where)
            if row_errors:
                errors.extend(row_errors)
                continue
            rows.append({
                "messages": obj["messages"],
                "source": obj.get("source", source),
                "license": obj.get("license", license),
            })
    if errors:
        shown = "\n  ".join(errors[:MAX_ERRORS_SHOWN])
        more = f"\n  … and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise InvalidInput(f"{len(errors)} problem(s) in {path}; nothing was ingested:\n  {shown}{more}",
                           hint="fix the lines above and ingest again")
    if not rows:
        raise InvalidInput(f"{path}: no rows", hint="the file must hold at least one JSON line")
    return rows


def build_manifest(rows: list[dict]) -> dict:
    """The manifest is what the id hashes: row content hashes + per-row provenance, in order."""
    return {
        "format": "tuneops.chat/v1",
        "rows": [
            {"sha256": sha256_bytes(canonical_json(r["messages"])), "source": r["source"], "license": r["license"]}
            for r in rows
        ],
    }


def ingest_rows(store: Store, rows: list[dict], *, name: str, origin: str = "memory") -> tuple[DatasetRecord, bool]:
    """Store validated rows as a dataset version; returns (record, created). Same rows -> same id."""
    manifest = build_manifest(rows)
    manifest_bytes = canonical_json(manifest)
    ds_id = content_id("ds", sha256_bytes(manifest_bytes))
    with store.session() as s:
        existing = s.get(DatasetRecord, ds_id)
        if existing is not None:
            s.expunge(existing)
            return existing, False
    rows_bytes = b"\n".join(canonical_json(r) for r in rows) + b"\n"
    manifest_blob = store.blobs.put_bytes(manifest_bytes)
    rows_blob = store.blobs.put_bytes(rows_bytes)
    summary = {
        "origin": origin,
        "sources": dict(Counter(r["source"] for r in rows)),
        "licenses": dict(Counter(r["license"] for r in rows)),
        "turns": dict(Counter(str(len(r["messages"])) for r in rows)),
        "has_system_prompt": sum(1 for r in rows if r["messages"][0]["role"] == "system"),
        "duplicate_rows": len(rows) - len({m["sha256"] for m in manifest["rows"]}),
    }
    rec = DatasetRecord(id=ds_id, name=name, manifest_blob=manifest_blob, rows_blob=rows_blob,
                        num_rows=len(rows), summary=summary)
    with store.session() as s:
        s.add(rec)
        store.audit(s, "dataset.ingest", "dataset", ds_id, name=name, origin=origin, rows=len(rows))
    return rec, True


def ingest_jsonl(store: Store, path: Path, *, name: str, source: str | None = None,
                 license: str = "unknown") -> tuple[DatasetRecord, bool]:
    rows = read_chat_jsonl(path, source=source or f"file:{Path(path).name}", license=license)
    return ingest_rows(store, rows, name=name, origin=str(path))


def load_rows(store: Store, dataset: DatasetRecord) -> list[dict]:
    return [json.loads(line) for line in store.blobs.get_bytes(dataset.rows_blob).decode().splitlines() if line]


def load_manifest(store: Store, dataset: DatasetRecord) -> dict:
    return json.loads(store.blobs.get_bytes(dataset.manifest_blob))
