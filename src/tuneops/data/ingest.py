"""Ingest chat JSONL into an immutable, content-addressed dataset version.

Each line: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}``
with optional per-row ``source`` and ``license`` (else the ingest defaults apply). Every
line is validated before anything is written: one bad line and nothing is ingested.
"""

import json
import re
from collections import Counter
from pathlib import Path

from tuneops.data.licenses import most_restrictive, normalise_license, obligations, permitted_uses
from tuneops.errors import InvalidInput
from tuneops.store import Store
from tuneops.store.ids import canonical_json, content_id, sha256_bytes
from tuneops.store.schema import DatasetName, DatasetRecord, utcnow

ROLES = {"system", "user", "assistant"}
ROW_KEYS = {"messages", "source", "license", "tags"}
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
    elif not any(isinstance(m, dict) and m.get("role") == "user" for m in msgs[:-1]):
        errors.append(f"{where}: no user message before the assistant's answer, so the row has no prompt "
                      "(add the user turn the answer replies to)")
    for key in ("source", "license"):
        if key in obj and (not isinstance(obj[key], str) or not obj[key].strip()):
            errors.append(f"{where}: '{key}' must be a non-empty string")
    if "tags" in obj and (not isinstance(obj["tags"], list)
                          or not all(isinstance(t, str) and t.strip() for t in obj["tags"])):
        errors.append(f"{where}: 'tags' must be a list of non-empty strings (slices in eval reports), "
                      f"e.g. [\"form\", \"accented\"]")
    return errors


# Input sniffing for read_chat_jsonl: what the first bytes of a file say it is.
_COMPRESSED = (
    (b"\x1f\x8b", "gzip", "gunzip -k {path}"),
    (b"\x28\xb5\x2f\xfd", "zstd", "zstd -d {path}"),
    (b"BZh", "bzip2", "bunzip2 -k {path}"),
    (b"\xfd7zXZ\x00", "xz", "unxz -k {path}"),
    (b"PK\x03\x04", "zip", "unzip {path}"),
)
_UTF8_BOM = b"\xef\xbb\xbf"
_WIDE_BOMS = ((b"\x00\x00\xfe\xff", "UTF-32-BE"), (b"\xff\xfe\x00\x00", "UTF-32-LE"),
              (b"\xfe\xff", "UTF-16-BE"), (b"\xff\xfe", "UTF-16-LE"))
_SNIFF_BYTES = 4096
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _hex(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data)


def _wide_encoding(head: bytes) -> tuple[str, str] | None:
    """(encoding, evidence) when the first bytes say UTF-16/UTF-32: a byte-order mark, or the NUL
    bytes that ASCII text has in those encodings; None otherwise."""
    for bom, enc in _WIDE_BOMS:
        if head.startswith(bom):
            return enc, f"byte-order mark {_hex(bom)}"
    if b"\x00" not in head or len(head) < 4:
        return None
    nul = [b == 0 for b in head[:4]]
    if nul == [False, True, True, True]:
        enc = "UTF-32-LE"
    elif nul == [True, True, True, False]:
        enc = "UTF-32-BE"
    elif not nul[0] and nul[1]:
        enc = "UTF-16-LE"
    elif nul[0] and not nul[1]:
        enc = "UTF-16-BE"
    else:
        return None
    return enc, f"NUL bytes between its characters: first bytes {_hex(head[:4])}"


def _check_file(path: Path) -> bool:
    """Refuse what is not a plain UTF-8 text file, naming what it is; returns whether a UTF-8 BOM
    (accepted) starts the file."""
    if not path.exists():
        raise InvalidInput(f"{path}: no such file", hint="check the path passed to `tuneops data ingest`")
    if path.is_dir():
        raise InvalidInput(f"{path}: is a directory, not a JSONL file",
                           hint="pass one .jsonl file; ingest the files of a directory one at a time")
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as e:
        raise InvalidInput(f"{path}: cannot be read ({e.strerror or e})",
                           hint="check the file's permissions") from None
    if not head:
        raise InvalidInput(f"{path}: the file is empty", hint="the file must hold one JSON object per line")
    for magic, kind, command in _COMPRESSED:
        if head.startswith(magic):
            raise InvalidInput(
                f"{path}: is {kind}-compressed (starts with bytes {_hex(magic)}), not a plain JSONL file",
                hint=f"decompress it first (`{command.format(path=path)}`) and ingest the .jsonl file; "
                     "compressed input is not supported yet")
    wide = _wide_encoding(head)
    if wide:
        enc, evidence = wide
        raise InvalidInput(
            f"{path}: is encoded as {enc}, not UTF-8 ({evidence})",
            hint=f"re-save it as UTF-8, e.g. `iconv -f {enc} -t UTF-8 {path} > {path.stem}.utf8{path.suffix}`")
    if b"\x00" in head:
        raise InvalidInput(f"{path}: contains NUL bytes (first at byte offset {head.index(0)}); it is not a "
                           "UTF-8 text file", hint="pass a JSONL file: UTF-8 text, one JSON object per line")
    return head.startswith(_UTF8_BOM)


def _lone_surrogate(obj, field: str = "") -> tuple[str, str] | None:
    """(field, escape) of the first string holding a lone UTF-16 surrogate (a JSON "\\ud800" escape
    without its partner): Python accepts it, but it is not Unicode and cannot be stored as UTF-8."""
    if isinstance(obj, str):
        m = _LONE_SURROGATE.search(obj)
        return (field or "the value", f"\\u{ord(m.group()):04x}") if m else None
    if isinstance(obj, dict):
        for key, value in obj.items():
            safe_key = key.encode("utf-8", "backslashreplace").decode("utf-8")
            sub = f"{field}.{safe_key}" if field else safe_key
            m = _LONE_SURROGATE.search(key)
            if m:
                return f"{sub} (the key)", f"\\u{ord(m.group()):04x}"
            found = _lone_surrogate(value, sub)
            if found:
                return found
    if isinstance(obj, list):
        for i, value in enumerate(obj):
            found = _lone_surrogate(value, f"{field}[{i}]")
            if found:
                return found
    return None


def read_chat_jsonl(path: Path, *, source: str, license: str | None) -> list[dict]:
    """Parse and validate every line; raise InvalidInput naming each bad file:line.

    Accepted: UTF-8, with or without a byte-order mark, LF or CRLF line endings. Refused with a
    message that says what the file is: a directory, an empty file, a compressed file (gzip, zstd,
    bzip2, xz, zip), UTF-16/UTF-32 text, bytes that are not UTF-8 (e.g. Latin-1: file:line and byte
    offset), and lone surrogates in JSON strings (file:line and the field).
    """
    path = Path(path)
    has_bom = _check_file(path)
    rows, errors = [], []
    bad_utf8 = False
    offset = len(_UTF8_BOM) if has_bom else 0  # byte offset of the current line in the file
    with open(path, "rb") as f:
        f.seek(offset)
        for lineno, raw in enumerate(f, start=1):
            line_start, offset = offset, offset + len(raw)
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad_utf8 = True
                column = len(raw[: e.start].decode("utf-8", "replace")) + 1
                errors.append(f"{where}: not valid UTF-8: byte 0x{raw[e.start]:02x} at byte offset "
                              f"{line_start + e.start} (column {column}); the file looks like Latin-1 or "
                              "Windows-1252 text")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                errors.append(f"{where}: not valid JSON ({e.msg} at column {e.colno})")
                continue
            surrogate = _lone_surrogate(obj)
            if surrogate:
                field, escape = surrogate
                errors.append(f"{where}: {field} holds a lone surrogate {escape} (a JSON escape without its "
                              "pair), which is not valid Unicode; remove it or complete the pair")
                continue
            row_errors = _validate_row(obj, where)
            if row_errors:
                errors.extend(row_errors)
                continue
            row_license = obj.get("license", license)
            if row_license is None:
                errors.append(f"{where}: license: the row has none and no default was given; add --license SPDX-ID "
                              "(e.g. --license MIT), or --license unknown to say so explicitly")
                continue
            try:
                row_license = normalise_license(row_license, where=f"{where}: license")
            except InvalidInput as e:
                errors.append(f"{e.message} ({e.hint})")
                continue
            rows.append({
                "messages": obj["messages"],
                "source": obj.get("source", source),
                "license": row_license,
                **({"tags": obj["tags"]} if obj.get("tags") else {}),
            })
    if errors:
        shown = "\n  ".join(errors[:MAX_ERRORS_SHOWN])
        more = f"\n  … and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        hint = "fix the lines above and ingest again"
        if bad_utf8:
            hint = (f"re-save the file as UTF-8 (e.g. `iconv -f WINDOWS-1252 -t UTF-8 {path} > "
                    f"{path.stem}.utf8{path.suffix}`), then fix any other lines above and ingest again")
        raise InvalidInput(f"{len(errors)} problem(s) in {path}; nothing was ingested:\n  {shown}{more}", hint=hint)
    if not rows:
        raise InvalidInput(f"{path}: no rows", hint="the file must hold at least one JSON line")
    return rows


def build_manifest(rows: list[dict]) -> dict:
    """The manifest is what the id hashes: row content hashes + per-row provenance, in order."""
    return {
        "format": "tuneops.chat/v1",
        "rows": [
            {"sha256": sha256_bytes(canonical_json(r["messages"])), "source": r["source"], "license": r["license"],
             **({"tags": r["tags"]} if r.get("tags") else {})}
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


def ingest_rows(store: Store, rows: list[dict], *, name: str, origin: str = "memory") -> tuple[DatasetRecord, bool]:
    """Store validated rows as a dataset version; returns (record, created). Same rows -> same id,
    whatever the name; the name is linked to the version either way (``tuneops data list``)."""
    check_dataset_name(name)
    rows = [_with_spdx(r, i) for i, r in enumerate(rows, start=1)]
    manifest = build_manifest(rows)
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
            "turns": dict(Counter(str(len(r["messages"])) for r in rows)),
            "has_system_prompt": sum(1 for r in rows if r["messages"][0]["role"] == "system"),
            "duplicate_rows": len(rows) - len({m["sha256"] for m in manifest["rows"]}),
        }
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


def ingest_jsonl(store: Store, path: Path, *, name: str, source: str | None = None,
                 license: str | None = None) -> tuple[DatasetRecord, bool]:
    rows = read_chat_jsonl(path, source=source or f"file:{Path(path).name}", license=license)
    return ingest_rows(store, rows, name=name, origin=str(path))


def load_rows(store: Store, dataset: DatasetRecord) -> list[dict]:
    return [json.loads(line) for line in store.blobs.get_bytes(dataset.rows_blob).decode().splitlines() if line]


def load_manifest(store: Store, dataset: DatasetRecord) -> dict:
    return json.loads(store.blobs.get_bytes(dataset.manifest_blob))
