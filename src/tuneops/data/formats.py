"""Read every dataset format a user brings and normalise it to one canonical row per kind.

Pure: no store access (ingest and storage wire it in). Canonical rows are plain dicts:

- kind ``sft``: ``{"messages": [message, ...]}``; the last message is the assistant's answer.
- kind ``preference``: ``{"prompt": [message, ...], "chosen": [assistant message, ...],
  "rejected": [assistant message, ...]}``; the prompt ends with a user (or tool) turn.
- a message: ``{"role": "system"|"user"|"assistant"|"tool", "content": str}``, plus on assistant
  turns optionally ``"tool_calls": [{"id"?: str, "type": "function", "function": {"name": str,
  "arguments": str (JSON object)}}]``, and on tool turns optionally ``"tool_call_id"`` and ``"name"``.
- provenance columns present in the input (``META_KEYS``) ride along untouched under ``"meta"``
  (the key is absent when the row has none); another module validates them.

Formats (``FORMATS``), detected from the first rows unless ``format=`` is given: ``chat``
(``messages``), ``alpaca`` (``instruction``/``input``/``output``/``system``),
``prompt_completion`` (strings or message lists), ``gsm8k`` (``question``/``answer``),
``preference`` (``prompt``/``chosen``/``rejected``), ``hh_rlhf`` (``chosen``/``rejected`` as
``"\\n\\nHuman: … \\n\\nAssistant: …"`` transcripts, or as full message lists). Containers: JSON
Lines, a JSON array, CSV (header row), Parquet, gzip of any of these (recognised by its magic
bytes), and a directory written by ``datasets``' ``save_to_disk`` (``split=`` picks a split).

Everything streams: JSON Lines and CSV line by line (a line over ``max_line_bytes`` is refused
without being held in memory), JSON arrays item by item, Parquet by record batches, ``datasets``
directories batch by batch from their memory-mapped Arrow files.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tuneops.errors import InvalidInput

MAX_LINE_BYTES = 16 * 1024 * 1024  # one JSONL line / CSV line / JSON-array item; far above any context window
MAX_PROBLEMS_SHOWN = 10
DETECT_ROWS = 100  # how many rows the format detector looks at for the first row that fits a format
EXCERPT_CHARS = 200
_CHUNK = 1 << 20
_SNIFF_BYTES = 4096

ROLES = ("system", "user", "assistant", "tool")
META_KEYS = ("source", "license", "purpose", "collected_at", "retention_until", "tier", "subject", "tags")
_META = frozenset(META_KEYS)
# Roles other tools write, and the role they mean here: named in the error, never rewritten silently.
_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant", "function": "tool"}


@dataclass(frozen=True)
class _Format:
    name: str
    kind: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return self.required + self.optional

    def describe(self) -> str:
        extra = f" (optional: {', '.join(self.optional)})" if self.optional else ""
        return ", ".join(self.required) + extra


FORMATS: dict[str, _Format] = {f.name: f for f in (
    _Format("chat", "sft", ("messages",)),
    _Format("alpaca", "sft", ("instruction", "output"), ("input", "system")),
    _Format("prompt_completion", "sft", ("prompt", "completion")),
    _Format("gsm8k", "sft", ("question", "answer")),
    _Format("preference", "preference", ("prompt", "chosen", "rejected")),
    _Format("hh_rlhf", "preference", ("chosen", "rejected")),
)}
_FORMAT_COLUMNS = frozenset(c for f in FORMATS.values() for c in f.columns)
_CONTAINER_NAMES = {"jsonl": "JSON Lines", "json": "a JSON array", "csv": "CSV", "parquet": "Parquet",
                    "hf_dataset": "a saved `datasets` directory"}


@dataclass(frozen=True)
class FormatGuess:
    """What a file is: its row format and kind, container, compression, and why we think so."""

    format: str
    kind: str  # "sft" | "preference"
    container: str  # "jsonl" | "json" | "csv" | "parquet" | "hf_dataset"
    compression: str | None  # "gzip" or None
    reason: str


@dataclass(frozen=True)
class RowResult:
    """One input row: ``row`` (canonical dict) when it read cleanly, else ``problems`` (each names the
    field and the fix) and ``raw`` (an excerpt of the input, for a quarantine file)."""

    where: str  # "file.jsonl:12", "file.csv:line 7", "file.parquet:row 12", "file.json:3 (item 2)"; from 1
    row: dict | None = None
    problems: list[str] = field(default_factory=list)
    raw: str = ""

    @property
    def ok(self) -> bool:
        return self.row is not None


@dataclass
class ReadResult:
    kind: str
    format: str
    rows: list[dict]
    bad: list[tuple[str, str, list[str]]]  # (where, raw excerpt, problems)


# --------------------------------------------------------------------------------------------------
# Public API


def detect_format(path: str | Path, *, split: str | None = None) -> FormatGuess:
    """Say what ``path`` holds, from its first bytes and first rows; raises InvalidInput if nothing fits."""
    reader = _Reader(Path(path), None, split, MAX_LINE_BYTES)
    try:
        return reader.guess
    finally:
        reader.close()


def iter_rows(path: str | Path, *, format: str | None = None, split: str | None = None,
              max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[RowResult]:
    """Stream ``path`` as RowResults in bounded memory. File-level problems (empty, truncated gzip,
    no usable columns, …) raise InvalidInput when iteration starts or reaches them."""
    reader = _Reader(Path(path), format, split, max_line_bytes)
    try:
        yield from reader
    finally:
        reader.close()


def read_rows(path: str | Path, *, format: str | None = None, split: str | None = None,
              on_error: str = "raise", max_line_bytes: int = MAX_LINE_BYTES,
              check: Callable[[dict, str], list[str]] | None = None) -> ReadResult:
    """Read every row. ``on_error="raise"``: any bad row raises InvalidInput (up to 10 problems shown) and
    nothing is returned; ``"quarantine"``: good rows in ``rows``, bad ones in ``bad`` with their reasons.
    ``check(row, where) -> problems`` is the caller's own validation of each well-formed row (it may
    complete the row in place, e.g. with provenance); a row with problems counts as bad."""
    if on_error not in ("raise", "quarantine"):
        raise InvalidInput(f"on_error={on_error!r} is not allowed", hint="use 'raise' or 'quarantine'")
    path = Path(path)
    reader = _Reader(path, format, split, max_line_bytes)
    rows: list[dict] = []
    bad: list[tuple[str, str, list[str]]] = []
    try:
        for result in reader:
            if result.row is not None and check is not None:
                extra = check(result.row, result.where)
                if extra:
                    text = json.dumps(result.row, ensure_ascii=False)
                    result = RowResult(where=result.where, row=None, problems=extra,
                                       raw=text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…")
            if result.row is not None:
                if not bad or on_error == "quarantine":  # atomic mode: stop keeping rows once one is bad
                    rows.append(result.row)
            else:
                bad.append((result.where, result.raw, result.problems))
    finally:
        reader.close()
    if bad and (on_error == "raise" or not rows):
        problems = [f"{where}: {p}" for where, _, ps in bad for p in ps]
        shown = "\n  ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = f"\n  … and {len(problems) - MAX_PROBLEMS_SHOWN} more" if len(problems) > MAX_PROBLEMS_SHOWN else ""
        if on_error == "raise":
            head = f"{len(bad)} bad row(s) in {path}; nothing was read:"
            hint = ("fix the rows above and try again, or quarantine them (`--on-error quarantine`): the good rows "
                    "are kept and the bad ones set aside with their reasons")
        else:
            head = f"none of the {len(bad)} row(s) in {path} could be read:"
            hint = "fix the rows above; quarantine keeps the good rows, and there are none"
        if any("not valid UTF-8" in p for p in problems):
            resave = _iconv(path, "WINDOWS-1252", reader.sniff.compression)
            hint = f"re-save the file as UTF-8 (e.g. {resave}), then {hint}"
        raise InvalidInput(f"{head}\n  {shown}{more}", hint=hint)
    return ReadResult(kind=reader.format.kind, format=reader.format.name, rows=rows, bad=bad)


# --------------------------------------------------------------------------------------------------
# The reader: sniff the container, detect the format, turn records into RowResults


class _Rec:
    """A record as a container yields it: a dict of the row's non-absent values, or parse problems."""

    __slots__ = ("where", "obj", "problems", "text")

    def __init__(self, where: str, obj: Any = None, problems: list[str] | None = None, text: str | None = None):
        self.where, self.obj, self.problems, self.text = where, obj, problems, text

    def excerpt(self) -> str:
        if self.text is not None:
            text = self.text.rstrip("\r\n")
        else:
            try:
                text = json.dumps(self.obj, ensure_ascii=False, default=str)
            except (TypeError, ValueError):
                text = repr(self.obj)
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


class _Reader:
    def __init__(self, path: Path, format: str | None, split: str | None, max_line_bytes: int):
        if format is not None and format not in FORMATS:
            raise InvalidInput(f"format={format!r} is not a known format",
                               hint=f"use one of {', '.join(FORMATS)}, or leave it out to detect the format")
        if not isinstance(max_line_bytes, int) or max_line_bytes < 1:
            raise InvalidInput(f"max_line_bytes must be a positive number of bytes (got {max_line_bytes!r})")
        self.path = path
        self.sniff = _sniff(path)
        if split is not None and self.sniff.container != "hf_dataset":
            raise InvalidInput(f"{path}: split={split!r} was given, but the file is "
                               f"{_CONTAINER_NAMES[self.sniff.container]}",
                               hint="split= picks a split of a saved `datasets` directory; leave it out for files")
        self._records = _open_records(path, self.sniff, split, max_line_bytes)
        self._pending: list[_Rec] = []
        try:
            self.columns: list[str] | None = next(self._records)
            if self.columns is not None:
                _check_columns(path, self.columns, FORMATS[format] if format else None)
            if format is not None:
                self.format, self.basis = FORMATS[format], f"format={format!r} was given"
                why = self.basis
            else:
                self.format, self.basis, why = self._detect()
        except BaseException:
            self.close()
            raise
        self._allowed = _META | set(self.format.columns)
        container = _CONTAINER_NAMES[self.sniff.container]
        if self.sniff.compression:
            container = f"{self.sniff.compression}-compressed {container}"
        if self.sniff.bom:
            container += " (UTF-8 byte-order mark skipped)"
        self.guess = FormatGuess(self.format.name, self.format.kind, self.sniff.container, self.sniff.compression,
                                 f"{container}; {why}")

    def _detect(self) -> tuple[_Format, str, str]:
        """(format, what decided it, why): the columns when only one format fits them, else the first row
        (of the first DETECT_ROWS) that fits exactly one format."""
        if self.columns is not None:
            fits = [f for f in FORMATS.values() if all(c in self.columns for c in f.required)]
            if len(fits) == 1:
                fmt = fits[0]
                return (fmt, f"the columns of {self.path} ({', '.join(fmt.required)}) are {fmt.name}",
                        f"columns {', '.join(fmt.required)} -> {fmt.name}")
        for rec in self._records:
            self._pending.append(rec)
            if rec.problems is None and isinstance(rec.obj, dict):
                fits = _fitting(rec.obj.keys() - _META)
                if len(fits) == 1:
                    fmt = fits[0]
                    return (fmt, f"{rec.where} was {fmt.name} ({', '.join(fmt.required)})",
                            f"{rec.where} has {', '.join(fmt.required)} -> {fmt.name}")
            if len(self._pending) >= DETECT_ROWS:
                break
        if not self._pending:
            raise InvalidInput(f"{self.path}: holds no rows", hint="the file must hold at least one row")
        problems = []
        for rec in self._pending:
            if rec.problems is not None:
                problems += [f"{rec.where}: {p}" for p in rec.problems]
            elif not isinstance(rec.obj, dict):
                problems.append(f"{rec.where}: {_not_an_object(rec.obj)}")
            elif len(fits := _fitting(rec.obj.keys() - _META)) > 1:
                problems.append(f"{rec.where}: the columns fit more than one format "
                                f"({' and '.join(f'{f.name}: {f.describe()}' for f in fits)}); pass format= to choose")
            else:
                problems.append(f"{rec.where}: {_no_format_fits(rec.obj.keys() - _META)}")
        shown = "\n  ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = f"\n  … and {len(problems) - MAX_PROBLEMS_SHOWN} more" if len(problems) > MAX_PROBLEMS_SHOWN else ""
        first = "first" if len(self._pending) >= DETECT_ROWS else "only"
        if all(rec.problems is not None for rec in self._pending):
            raise InvalidInput(f"{self.path}: none of its {first} {len(self._pending)} row(s) can be read:\n  "
                               f"{shown}{more}", hint="fix the rows above")
        raise InvalidInput(f"{self.path}: no known format fits its {first} {len(self._pending)} row(s):\n  "
                           f"{shown}{more}",
                           hint="rename the columns to one of the formats above, or pass format=NAME "
                                f"({', '.join(FORMATS)}) to read the rows as that format and see what is missing")

    def close(self) -> None:
        self._records.close()

    def __iter__(self) -> Iterator[RowResult]:
        seen = 0
        try:
            while self._pending:
                seen += 1
                yield self._row(self._pending.pop(0))
            for rec in self._records:
                seen += 1
                yield self._row(rec)
        finally:
            self.close()
        if not seen:
            raise InvalidInput(f"{self.path}: holds no rows", hint="the file must hold at least one row")

    def _row(self, rec: _Rec) -> RowResult:
        if rec.problems is not None:
            return RowResult(rec.where, problems=rec.problems, raw=rec.excerpt())
        obj = rec.obj
        if not isinstance(obj, dict):
            return RowResult(rec.where, problems=[_not_an_object(obj)], raw=rec.excerpt())
        fmt = self.format
        missing = [k for k in fmt.required if k not in obj]
        if missing:
            return RowResult(rec.where, problems=[self._missing(obj, missing)], raw=rec.excerpt())
        unknown = obj.keys() - self._allowed
        if unknown:
            return RowResult(rec.where, problems=[_unknown_columns(unknown, fmt)], raw=rec.excerpt())
        problems: list[str] = []
        row = _NORMALISE[fmt.name](obj, problems)
        if problems or row is None:
            return RowResult(rec.where, problems=problems or ["the row could not be read"], raw=rec.excerpt())
        meta = {k: obj[k] for k in META_KEYS if k in obj}
        if meta:
            row["meta"] = meta
        return RowResult(rec.where, row=row)

    def _missing(self, obj: dict, missing: list[str]) -> str:
        fmt = self.format
        fits = _fitting(obj.keys() - _META)
        if fits and fmt not in fits:
            other = " or ".join(f"{f.name} ({', '.join(f.required)})" for f in fits)
            return (f"looks like {other} while {self.basis}; one file holds one format: split it by format, or pass "
                    "format= to read every row as one format")
        return (f"{', '.join(missing)}: missing (or null); the {fmt.name} format needs {fmt.describe()} "
                f"and this row has {', '.join(sorted(obj)) or 'no columns'}")


def _fitting(keys) -> list[_Format]:
    """The formats whose required columns are all in ``keys``, most specific first (only the best)."""
    fits = [f for f in FORMATS.values() if all(k in keys for k in f.required)]
    if not fits:
        return []
    best = max(len(f.required) for f in fits)
    return [f for f in fits if len(f.required) == best]


def _formats_for(column: str) -> list[str]:
    return [f.name for f in FORMATS.values() if column in f.columns]


def _unknown_columns(unknown, fmt: _Format) -> str:
    parts = []
    for col in sorted(unknown):
        fits = _formats_for(col)
        parts.append(f"{col!r} ({'used by ' + ', '.join(fits) if fits else 'used by no known format'})")
    return (f"unknown column(s) {', '.join(parts)}; the {fmt.name} format takes {fmt.describe()} plus provenance "
            f"columns ({', '.join(META_KEYS)}): drop or rename the others")


def _format_menu() -> str:
    return "; ".join(f"{f.name}: {f.describe()}" for f in FORMATS.values())


def _no_format_fits(keys) -> str:
    keys = set(keys)
    near = []
    for f in FORMATS.values():
        have = [k for k in f.required if k in keys]
        if have:
            lacks = [k for k in f.required if k not in keys]
            near.append(f"{f.name} (has {', '.join(have)}, missing {', '.join(lacks)})")
    closest = f"; closest: {', '.join(near)}" if near else ""
    return (f"no known format fits the column(s) {', '.join(sorted(keys)) or '(none)'}{closest}; "
            f"the formats take {_format_menu()}")


def _not_an_object(obj) -> str:
    return f"expected an object (one row with named fields), got {_typename(obj)}"


def _check_columns(path: Path, columns: list[str], fmt: _Format | None) -> None:
    """CSV, Parquet and `datasets` columns are known up front: refuse a file no format can use, or with
    columns no format takes (every row would carry them)."""
    cols = set(columns)
    usable = cols - _META
    if fmt is not None:
        missing = [c for c in fmt.required if c not in cols]
        if missing:
            raise InvalidInput(f"{path}: format={fmt.name!r} needs column(s) {', '.join(missing)}; the file has "
                               f"{', '.join(columns) or 'no columns'}",
                               hint=f"rename the columns ({fmt.name} takes {fmt.describe()}), or leave format= out "
                                    "to detect the format")
    elif not _fitting(usable):
        raise InvalidInput(f"{path}: no usable columns: {_no_format_fits(usable)}",
                           hint="rename the columns to one of the formats above (plus any provenance columns: "
                                f"{', '.join(META_KEYS)})")
    strangers = sorted(usable - _FORMAT_COLUMNS)
    if strangers:
        fits = _fitting(usable) if fmt is None else [fmt]
        takes = f"the {fits[0].name} format takes {fits[0].describe()}" if len(fits) == 1 else _format_menu()
        raise InvalidInput(f"{path}: unknown column(s) {', '.join(repr(c) for c in strangers)}, used by no known "
                           f"format; {takes}, plus provenance columns ({', '.join(META_KEYS)})",
                           hint="drop those columns (e.g. `ds.remove_columns([...])` or select the others) or "
                                "rename them, and read the file again")


# --------------------------------------------------------------------------------------------------
# Sniffing: what the first bytes say the file is


_OTHER_COMPRESSION = (
    (b"\x28\xb5\x2f\xfd", "zstd", "zstd -d {path}"),
    (b"BZh", "bzip2", "bunzip2 -k {path}"),
    (b"\xfd7zXZ\x00", "xz", "unxz -k {path}"),
    (b"PK\x03\x04", "zip", "unzip {path}"),
)
_GZIP = b"\x1f\x8b"
_PARQUET = b"PAR1"
_UTF8_BOM = b"\xef\xbb\xbf"
_WIDE_BOMS = ((b"\x00\x00\xfe\xff", "UTF-32-BE"), (b"\xff\xfe\x00\x00", "UTF-32-LE"),
              (b"\xfe\xff", "UTF-16-BE"), (b"\xff\xfe", "UTF-16-LE"))


@dataclass(frozen=True)
class _Sniffed:
    container: str
    compression: str | None = None
    bom: bool = False
    delimiter: str = ","


def _hex(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data)


def _wide_encoding(head: bytes) -> tuple[str, str] | None:
    """(encoding, evidence) when the first bytes say UTF-16/UTF-32 (as ingest.py decides it)."""
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


def _sniff(path: Path) -> _Sniffed:
    if not path.exists():
        raise InvalidInput(f"{path}: no such file or directory", hint="check the path")
    if path.is_dir():
        return _Sniffed("hf_dataset")
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as e:
        raise InvalidInput(f"{path}: cannot be read ({e.strerror or e})", hint="check the file's permissions") from None
    if not head:
        raise InvalidInput(f"{path}: the file is empty", hint="give a file with at least one row")
    compression = None
    if head.startswith(_GZIP):
        compression = "gzip"
        try:
            with gzip.open(path, "rb") as g:
                head = g.read(_SNIFF_BYTES)
        except (EOFError, OSError, zlib.error) as e:
            raise _gzip_error(path, e, f"within its first {_SNIFF_BYTES} bytes of decompressed data") from None
        if not head:
            raise InvalidInput(f"{path}: is gzip-compressed and empty once decompressed",
                               hint="give a file with at least one row")
    inside = " once decompressed" if compression else ""
    for magic, kind, command in _OTHER_COMPRESSION:
        if head.startswith(magic):
            raise InvalidInput(f"{path}: is {kind}-compressed{inside} (starts with bytes {_hex(magic)}); only gzip "
                               "is read directly", hint=f"decompress it first (`{command.format(path=path)}`), or "
                                                    "re-compress it with gzip")
    if head.startswith(_PARQUET):
        return _Sniffed("parquet", compression)
    if head.startswith(b"ARROW1") or head.startswith(b"\xff\xff\xff\xff"):
        raise InvalidInput(f"{path}: is an Arrow file{inside}, not a dataset file this reader takes on its own",
                           hint="pass the directory `save_to_disk` wrote (it holds state.json or dataset_dict.json), "
                                "or write the data as Parquet or JSON Lines")
    wide = _wide_encoding(head)
    if wide:
        enc, evidence = wide
        raise InvalidInput(f"{path}: is encoded as {enc}{inside}, not UTF-8 ({evidence})",
                           hint=f"re-save it as UTF-8, e.g. {_iconv(path, enc, compression)}")
    if b"\x00" in head:
        raise InvalidInput(f"{path}: contains NUL bytes{inside} (first at byte offset {head.index(0)}); it is not "
                           "UTF-8 text, Parquet or gzip",
                           hint="give JSON Lines, a JSON array, CSV, Parquet (or gzip of one) or a saved `datasets` "
                                "directory")
    bom = head.startswith(_UTF8_BOM)
    text = head[len(_UTF8_BOM):] if bom else head
    first = text.lstrip(b" \t\r\n")[:1]
    if first == b"[":
        return _Sniffed("json", compression, bom)
    if first == b"{" or not first:
        return _Sniffed("jsonl", compression, bom)
    first_line = text.split(b"\n", 1)[0]
    delimiter = "\t" if b"\t" in first_line and b"," not in first_line else ","
    return _Sniffed("csv", compression, bom, delimiter)


def _iconv(path: Path, encoding: str, compression: str | None) -> str:
    if compression == "gzip":
        return f"`gunzip -c {path} | iconv -f {encoding} -t UTF-8 | gzip > {path.stem}.utf8{path.suffix}`"
    return f"`iconv -f {encoding} -t UTF-8 {path} > {path.stem}.utf8{path.suffix}`"


def _gzip_error(path: Path, e: BaseException, where: str) -> InvalidInput:
    if isinstance(e, EOFError):
        return InvalidInput(f"{path}: the gzip data is truncated: it ends {where}, before the end-of-stream marker",
                            hint=f"the file was cut short (an interrupted download or copy?): copy it again; "
                                 f"`gzip -t {path}` checks a gzip file")
    return InvalidInput(f"{path}: the gzip data is corrupt {where} ({e})",
                        hint=f"copy the file again; `gzip -t {path}` checks a gzip file")


# --------------------------------------------------------------------------------------------------
# Containers: each is a generator whose first item is its column names (None for JSON) and whose
# next items are _Recs.


def _open_records(path: Path, sniff: _Sniffed, split: str | None, limit: int) -> Iterator:
    if sniff.container == "hf_dataset":
        return _hf_records(path, split)
    if sniff.container == "parquet":
        return _parquet_records(path, sniff.compression)
    opener = {"jsonl": _jsonl_records, "json": _json_array_records, "csv": _csv_records}[sniff.container]
    return opener(path, sniff, limit)


def _open_binary(path: Path, sniff: _Sniffed):
    stream = gzip.open(path, "rb") if sniff.compression == "gzip" else open(path, "rb")
    if sniff.bom:
        stream.read(len(_UTF8_BOM))
    return stream


class _Line:
    __slots__ = ("no", "offset", "raw", "size", "head")

    def __init__(self, no: int, offset: int, raw: bytes | None, size: int, head: bytes = b""):
        self.no, self.offset, self.raw, self.size, self.head = no, offset, raw, size, head


def _lines(path: Path, stream, offset: int, limit: int) -> Iterator[_Line]:
    """Lines as bytes with their number and byte offset; a line over ``limit`` bytes comes back with
    ``raw=None`` after being skipped in chunks, so it is never held whole."""
    lineno = 0

    def read(size: int) -> bytes:
        try:
            return stream.readline(size)
        except (EOFError, OSError, zlib.error) as e:
            raise _gzip_error(path, e, f"inside line {lineno} (after {offset:,} bytes of decompressed data; "
                                       f"{lineno - 1:,} complete line(s) before it)") from None

    while True:
        lineno += 1
        raw = read(limit + 1)
        if not raw:
            return
        start = offset
        if len(raw) > limit and not raw.endswith(b"\n"):
            size, head = len(raw), raw[:EXCERPT_CHARS]
            raw = b""
            while True:
                chunk = read(_CHUNK)
                size += len(chunk)
                if not chunk or chunk.endswith(b"\n"):
                    break
            offset += size
            yield _Line(lineno, start, None, size, head)
            continue
        offset += len(raw)
        yield _Line(lineno, start, raw, len(raw))


def _over_limit(line: _Line, limit: int, what: str = "line") -> str:
    return (f"the {what} is {line.size:,} bytes, over the limit of {limit:,} bytes ({_human(limit)}) for one row; "
            "split the row, or raise max_line_bytes if rows this long are intended")


def _human(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if n >= 1024 ** power:
            return f"{n / 1024 ** power:.3g} {unit}"
    return f"{n} bytes"


def _bad_utf8(line: _Line, e: UnicodeDecodeError, gz: bool) -> str:
    column = len(line.raw[: e.start].decode("utf-8", "replace")) + 1
    of = " of the decompressed data" if gz else ""
    return (f"not valid UTF-8: byte 0x{line.raw[e.start]:02x} at byte offset {line.offset + e.start:,}{of} "
            f"(column {column}); the file looks like Latin-1 or Windows-1252 text")


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(obj, field: str = "") -> tuple[str, str] | None:
    """(field, escape) of the first string holding a lone UTF-16 surrogate (as ingest.py checks it)."""
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


def _surrogate_problem(obj) -> list[str] | None:
    found = _lone_surrogate(obj)
    if not found:
        return None
    where, escape = found
    return [f"{where}: holds a lone surrogate {escape} (a JSON escape without its pair), which is not valid "
            "Unicode; remove it or complete the pair"]


def _jsonl_records(path: Path, sniff: _Sniffed, limit: int) -> Iterator:
    gz = sniff.compression == "gzip"
    with _open_binary(path, sniff) as stream:
        yield None
        for line in _lines(path, stream, len(_UTF8_BOM) if sniff.bom else 0, limit):
            where = f"{path}:{line.no}"
            if line.raw is None:
                yield _Rec(where, problems=[_over_limit(line, limit)], text=line.head.decode("utf-8", "replace"))
                continue
            try:
                text = line.raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield _Rec(where, problems=[_bad_utf8(line, e, gz)], text=line.raw.decode("utf-8", "replace"))
                continue
            if text.startswith("\ufeff"):  # a byte-order mark mid-file: files were concatenated; harmless
                text = text[1:]
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                msg = f"not valid JSON ({e.msg} at column {e.colno})"
                if text.strip() == "{":
                    msg += ("; the file looks like pretty-printed JSON: write one object per line (JSON Lines), "
                            "or put the rows in one JSON array")
                yield _Rec(where, problems=[msg], text=text)
                continue
            if _SURROGATE_ESCAPE.search(text):
                problem = _surrogate_problem(obj)
                if problem:
                    yield _Rec(where, problems=problem, text=text)
                    continue
            yield _Rec(where, obj, text=text)


def _json_array_records(path: Path, sniff: _Sniffed, limit: int) -> Iterator:
    """A JSON array, item by item: decode in chunks, hand each complete item to json's raw_decode."""
    gz = sniff.compression == "gzip"
    decoder = json.JSONDecoder()
    with _open_binary(path, sniff) as stream:
        yield None
        buf, pos, base_line = "", 0, 1  # base_line: line number of buf[0]
        carry, data_offset, eof = b"", len(_UTF8_BOM) if sniff.bom else 0, False

        def line_at(i: int) -> int:
            return base_line + buf.count("\n", 0, i)

        def fill(want: int) -> None:
            nonlocal buf, pos, base_line, carry, data_offset, eof
            if pos:  # drop what has been parsed
                base_line += buf.count("\n", 0, pos)
                buf, pos = buf[pos:], 0
            got = 0
            while got < want and not eof:
                try:
                    raw = stream.read(_CHUNK)
                except (EOFError, OSError, zlib.error) as e:
                    raise _gzip_error(path, e, f"after line {line_at(len(buf)):,} (after {data_offset:,} bytes "
                                               "of decompressed data)") from None
                eof = not raw
                data = carry + raw
                try:
                    text = data.decode("utf-8")
                    carry = b""
                except UnicodeDecodeError as e:
                    if not eof and e.reason == "unexpected end of data" and e.start >= len(data) - 3:
                        text, carry = data[: e.start].decode("utf-8"), data[e.start:]
                    else:
                        line = line_at(len(buf)) + data[: e.start].count(b"\n")
                        of = " of the decompressed data" if gz else ""
                        raise InvalidInput(f"{path}:{line}: not valid UTF-8: byte 0x{data[e.start]:02x} at byte offset "
                                           f"{data_offset + e.start:,}{of}; the file looks like Latin-1 or "
                                           "Windows-1252 text",
                                           hint="re-save the file as UTF-8, e.g. "
                                                f"{_iconv(path, 'WINDOWS-1252', sniff.compression)}") from None
                data_offset += len(data) - len(carry)
                buf += text
                got += len(text)

        def skip_ws() -> bool:
            """Move pos past whitespace; False at the end of the data."""
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf):
                    return True
                if eof:
                    return False
                fill(_CHUNK)

        def refuse(msg: str) -> InvalidInput:
            return InvalidInput(f"{path}:{line_at(pos)}: {msg}",
                                hint="a JSON array file must be one array of row objects: [{...}, {...}]")

        skip_ws()
        if buf[pos:pos + 1] != "[":
            raise refuse("expected '[' to open the array of rows")
        pos += 1
        item = 0
        while True:
            if not skip_ws():
                raise refuse(f"the array ends after item {item} without its closing ']' (is the file truncated?)")
            if buf[pos] == "]":
                pos += 1
                if skip_ws():
                    raise refuse("unexpected data after the array's closing ']'")
                return
            if item:
                if buf[pos] != ",":
                    raise refuse(f"expected ',' or ']' after item {item}, found {buf[pos]!r}")
                pos += 1
                if not skip_ws():
                    raise refuse(f"the array ends after item {item} without its closing ']' (is the file truncated?)")
            item += 1
            start_line = line_at(pos)
            where = f"{path}:{start_line} (item {item})"
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as e:
                    incomplete = e.pos >= len(buf) - 8 or e.msg.startswith("Unterminated string")
                    if eof or not incomplete:
                        raise InvalidInput(
                            f"{path}:{line_at(e.pos)}: not valid JSON in item {item} ({e.msg})",
                            hint="fix the JSON (a JSON array file must be one valid array of row objects), or "
                                 "write one object per line (JSON Lines) so one bad row does not stop the rest"
                        ) from None
                    if len(buf) - pos > limit:
                        raise InvalidInput(f"{where}: the item is over the limit of {limit:,} bytes "
                                           f"({_human(limit)}) for one row",
                                           hint="split the row, or raise max_line_bytes if rows this long are "
                                                "intended") from None
                    fill(max(_CHUNK, len(buf) - pos))  # double what is buffered: linear time for long items
            size = end - pos
            if size > limit:
                yield _Rec(where, problems=[_over_limit(_Line(0, 0, None, size), limit, "item")], text="")
            elif _SURROGATE_ESCAPE.search(buf, pos, end) and (problem := _surrogate_problem(obj)):
                yield _Rec(where, problems=problem, text=buf[pos:pos + EXCERPT_CHARS])
            else:
                yield _Rec(where, obj)
            pos = end


# CSV cells that may hold a message list written as JSON.
_CHAT_CELLS = ("messages", "prompt", "completion", "chosen", "rejected")


def _csv_records(path: Path, sniff: _Sniffed, limit: int) -> Iterator:
    gz = sniff.compression == "gzip"
    old_limit = csv.field_size_limit()
    with _open_binary(path, sniff) as stream:
        lines = _lines(path, stream, len(_UTF8_BOM) if sniff.bom else 0, limit)
        state = {"line": 0}
        line_problems: dict[int, str] = {}

        def text_lines() -> Iterator[str]:
            for line in lines:
                state["line"] = line.no
                if line.raw is None:
                    line_problems[line.no] = _over_limit(line, limit)
                    yield "\n"
                    continue
                try:
                    yield line.raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    line_problems[line.no] = _bad_utf8(line, e, gz)
                    yield line.raw.decode("utf-8", "replace")

        csv.field_size_limit(max(old_limit, limit))
        try:
            reader = csv.reader(text_lines(), delimiter=sniff.delimiter)
            try:
                header = next(reader, None)
            except csv.Error as e:
                raise InvalidInput(f"{path}:line 1: the CSV header cannot be read ({e})",
                                   hint="the first line must name the columns, e.g. instruction,input,output") from None
            if line_problems:
                raise InvalidInput(f"{path}:line 1: {line_problems[min(line_problems)]}",
                                   hint="the first line must name the columns, in UTF-8")
            if not header or not any(h.strip() for h in header):
                raise InvalidInput(f"{path}: holds no rows (no CSV header)",
                                   hint="the first line must name the columns")
            header = [h.strip() for h in header]
            nameless = [str(i + 1) for i, h in enumerate(header) if not h]
            dupes = sorted({h for h in header if h and header.count(h) > 1})
            if nameless or dupes:
                what = (f"column(s) {', '.join(nameless)} have no name" if nameless else "") + \
                       ("; " if nameless and dupes else "") + \
                       (f"column(s) {', '.join(dupes)} appear more than once" if dupes else "")
                raise InvalidInput(f"{path}:line 1: the CSV header is not usable: {what}",
                                   hint="give every column one unique name")
            yield header
            while True:
                start = state["line"] + 1
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    yield _Rec(f"{path}:line {start}", problems=[f"the CSV record cannot be read ({e})"], text="")
                    continue
                where = f"{path}:line {start}"
                probs = [line_problems.pop(n) for n in range(start, state["line"] + 1) if n in line_problems]
                if not cells and not probs:
                    continue
                text = sniff.delimiter.join(cells)
                if probs:
                    yield _Rec(where, problems=probs, text=text)
                    continue
                if len(cells) != len(header):
                    yield _Rec(where, problems=[f"has {len(cells)} field(s) but the header has {len(header)}; quote "
                                                "fields that contain the delimiter or a line break"], text=text)
                    continue
                obj = {h: v for h, v in zip(header, cells) if v != ""}  # an empty cell is an absent value
                if not obj:  # a row of empty cells (spreadsheet exports) is a blank line
                    continue
                problems = []
                for key in _CHAT_CELLS:
                    value = obj.get(key)
                    if value is None or not value.lstrip().startswith("["):
                        if key == "messages" and value is not None:
                            problems.append("messages: a CSV cell for messages must hold a JSON list of "
                                            '{"role", "content"} objects, e.g. [{"role": "user", "content": "…"}]')
                        continue
                    try:
                        parsed = json.loads(value)
                    except json.JSONDecodeError as e:
                        if key == "messages":
                            problems.append(f"messages: not valid JSON ({e.msg} at column {e.colno}); a CSV cell for "
                                            "messages must hold a JSON list of {role, content} objects")
                        continue  # other columns: plain text that happens to start with '['
                    if key == "messages" or (isinstance(parsed, list) and parsed
                                             and all(isinstance(m, dict) for m in parsed)):
                        found = _SURROGATE_ESCAPE.search(value) and _lone_surrogate(parsed, key)
                        if found:
                            problems.append(f"{found[0]}: holds a lone surrogate {found[1]} (a JSON escape without "
                                            "its pair), which is not valid Unicode; remove it or complete the pair")
                        obj[key] = parsed
                if problems:
                    yield _Rec(where, problems=problems, text=text)
                else:
                    yield _Rec(where, obj, text=text)
        finally:
            csv.field_size_limit(old_limit)


def _parquet_records(path: Path, compression: str | None) -> Iterator:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryFile() as spill:
        source = str(path)
        if compression == "gzip":  # Parquet needs random access (its footer): spill to a temporary file
            try:
                with gzip.open(path, "rb") as g:
                    while chunk := g.read(_CHUNK):
                        spill.write(chunk)
            except (EOFError, OSError, zlib.error) as e:
                raise _gzip_error(path, e, f"after {spill.tell():,} bytes of decompressed data") from None
            spill.seek(0)
            source = spill
        try:
            pf = pq.ParquetFile(source)
        except (pa.ArrowException, OSError) as e:
            raise InvalidInput(f"{path}: starts like Parquet but cannot be read as Parquet ({e})",
                               hint="the file may be truncated: copy it again, or re-export it") from None
        yield list(pf.schema_arrow.names)
        n = 0
        try:
            for batch in pf.iter_batches(batch_size=1000):
                for rec in batch.to_pylist():
                    n += 1
                    yield _Rec(f"{path}:row {n}", {k: v for k, v in rec.items() if v is not None})
        except (pa.ArrowException, OSError) as e:
            raise InvalidInput(f"{path}:row {n + 1}: the Parquet data cannot be read from here on ({e})",
                               hint="the file may be truncated or corrupt: copy it again, or re-export it") from None


def _hf_records(path: Path, split: str | None) -> Iterator:
    if not any((path / name).is_file() for name in ("dataset_dict.json", "state.json")):
        raise InvalidInput(f"{path}: is a directory, but not one written by `datasets`' save_to_disk (it holds "
                           "neither state.json nor dataset_dict.json)",
                           hint="pass one data file (JSON Lines, JSON, CSV, Parquet), or a directory written by "
                                "Dataset.save_to_disk / DatasetDict.save_to_disk")
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises many kinds; a user needs the reason, not the traceback
        raise InvalidInput(f"{path}: cannot be loaded as a saved `datasets` directory ({type(e).__name__}: {e})",
                           hint="save it again with save_to_disk, or export it to Parquet") from None
    label = str(path)
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if split is None:
            if len(splits) != 1:
                raise InvalidInput(f"{path}: holds the splits {', '.join(splits)}; say which to read",
                                   hint=f"pass split=NAME (one of {', '.join(splits)})")
            split = splits[0]
        elif split not in ds:
            raise InvalidInput(f"{path}: has no split {split!r}", hint=f"use one of {', '.join(splits)}")
        ds, label = ds[split], str(path / split)
    elif split is not None:
        raise InvalidInput(f"{path}: holds one dataset without splits, so split={split!r} does not apply",
                           hint="leave split= out")
    yield list(ds.column_names)
    n = 0
    for batch in ds.iter(batch_size=1000):
        names = list(batch)
        for values in zip(*(batch[k] for k in names)):
            n += 1
            yield _Rec(f"{label}:row {n}", {k: v for k, v in zip(names, values) if v is not None})


# --------------------------------------------------------------------------------------------------
# Normalisation: one function per format, appending problems that name the field and the fix


def _typename(value) -> str:
    if value is None:
        return "null"
    names = {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list",
             dict: "an object"}
    shown = "" if isinstance(value, (list, dict)) else f" ({_short(value)})"
    return names.get(type(value), type(value).__name__) + shown


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


def _text(obj: dict, key: str, problems: list[str], *, optional: bool = False) -> str | None:
    value = obj.get(key)
    if value is None:
        if not optional:
            problems.append(f"{key}: is null; give the text as a string")
        return None
    if not isinstance(value, str):
        problems.append(f"{key}: must be a string, got {_typename(value)}; write it as a JSON string")
        return None
    return value


_MESSAGE_KEYS = {"system": ("role", "content"), "user": ("role", "content"),
                 "assistant": ("role", "content", "tool_calls"), "tool": ("role", "content", "tool_call_id", "name")}


def _message(m, field: str, problems: list[str]) -> dict | None:
    if not isinstance(m, dict):
        problems.append(f"{field}: must be an object with 'role' and 'content', got {_typename(m)}")
        return None
    n = len(problems)
    role = m.get("role")
    if role is None:
        problems.append(f"{field}.role: is missing; use one of {', '.join(ROLES)}")
        return None
    if role not in ROLES:
        alias = _ROLE_ALIASES.get(role) if isinstance(role, str) else None
        fix = f"write {alias!r} for it" if alias else f"use one of {', '.join(ROLES)}"
        problems.append(f"{field}.role: is {_short(role)}; {fix}")
        return None
    # Columnar containers (Parquet, `datasets`) fill absent struct fields with null: null means absent.
    unknown = [k for k, v in m.items() if v is not None and k not in _MESSAGE_KEYS[role]]
    if unknown:
        problems.append(f"{field}: unknown key(s) {', '.join(repr(k) for k in unknown)}; {role} messages take "
                        f"{', '.join(_MESSAGE_KEYS[role])}")
    calls = m.get("tool_calls") if role == "assistant" else None
    content = m.get("content")
    if content is None and calls:
        content = ""  # OpenAI writes content null on a turn that only calls tools
    if isinstance(content, list):
        problems.append(f"{field}.content: is a list of content parts; only text is read: join the text into one "
                        "string")
    elif not isinstance(content, str):
        problems.append(f"{field}.content: must be a string, got {_typename(content)}; write the text as a JSON "
                        "string")
    out = {"role": role, "content": content}
    if calls:
        canonical_calls = _tool_calls(calls, f"{field}.tool_calls", problems)
        if canonical_calls:
            out["tool_calls"] = canonical_calls
    if role == "tool":
        for key in ("tool_call_id", "name"):
            value = m.get(key)
            if value is not None:
                if isinstance(value, str) and value:
                    out[key] = value
                else:
                    problems.append(f"{field}.{key}: must be a non-empty string, got {_typename(value)}")
    return out if len(problems) == n else None


def _tool_calls(value, field: str, problems: list[str]) -> list[dict] | None:
    if not isinstance(value, list):
        problems.append(f"{field}: must be a list of calls like {{\"type\": \"function\", \"function\": {{\"name\": "
                        f"…, \"arguments\": \"{{…}}\"}}}}, got {_typename(value)}")
        return None
    out = []
    for i, call in enumerate(value):
        f = f"{field}[{i}]"
        if not isinstance(call, dict):
            problems.append(f"{f}: must be an object with 'type' and 'function', got {_typename(call)}")
            continue
        unknown = [k for k, v in call.items() if v is not None and k not in ("id", "type", "function")]
        if unknown:
            problems.append(f"{f}: unknown key(s) {', '.join(repr(k) for k in unknown)}; a tool call takes id, "
                            "type, function")
        kind = call.get("type") or "function"
        if kind != "function":
            problems.append(f"{f}.type: is {_short(kind)}; only 'function' calls are read")
        fn = call.get("function")
        if not isinstance(fn, dict):
            problems.append(f"{f}.function: must be an object with 'name' and 'arguments', got {_typename(fn)}")
            continue
        name, args = fn.get("name"), fn.get("arguments")
        if not isinstance(name, str) or not name:
            problems.append(f"{f}.function.name: must be the function's name as a non-empty string, got "
                            f"{_typename(name)}")
        if isinstance(args, dict):
            args = json.dumps(args, ensure_ascii=False)
        elif isinstance(args, str):
            try:
                parsed = json.loads(args)
            except json.JSONDecodeError as e:
                problems.append(f"{f}.function.arguments: is not valid JSON ({e.msg} at column {e.colno}); write the "
                                'arguments as a JSON object in a string, e.g. "{\\"city\\": \\"Paris\\"}"')
                continue
            if not isinstance(parsed, dict):
                problems.append(f"{f}.function.arguments: holds {_typename(parsed)}; the arguments must be a JSON "
                                "object (use \"{}\" for none)")
        else:
            problems.append(f"{f}.function.arguments: must be a JSON object in a string, got {_typename(args)} "
                            '(use "{}" for a call without arguments)')
            continue
        canonical = {"type": "function", "function": {"name": name, "arguments": args}}
        if call.get("id") is not None:
            if isinstance(call["id"], str):
                canonical = {"id": call["id"], **canonical}
            else:
                problems.append(f"{f}.id: must be a string, got {_typename(call['id'])}")
        out.append(canonical)
    return out


def _messages(value, field: str, problems: list[str]) -> list[dict] | None:
    if not isinstance(value, list):
        problems.append(f"{field}: must be a list of {{role, content}} objects, got {_typename(value)}; e.g. "
                        '[{"role": "user", "content": "…"}, {"role": "assistant", "content": "…"}]')
        return None
    if not value:
        problems.append(f"{field}: is an empty list; give at least a user and an assistant message")
        return None
    n = len(problems)
    out = [_message(m, f"{field}[{j}]", problems) for j, m in enumerate(value)]
    if len(problems) != n:
        return None
    seen_call = False
    for j, m in enumerate(out):
        if m["role"] == "assistant" and m.get("tool_calls"):
            seen_call = True
        elif m["role"] == "tool" and not seen_call:
            problems.append(f"{field}[{j}]: a tool result with no assistant tool call before it; put the assistant "
                            "turn that calls the tool (with tool_calls) before it")
            return None
    return out


def _check_sft(msgs: list[dict], field: str, problems: list[str]) -> None:
    last = msgs[-1]
    if last["role"] != "assistant":
        problems.append(f"{field}[{len(msgs) - 1}].role: is {last['role']!r}; the last message must be the "
                        "assistant's answer (the training target)")
    elif not any(m["role"] == "user" for m in msgs[:-1]):
        problems.append(f"{field}: no user message before the assistant's answer, so the row has no prompt; add the "
                        "user turn the answer replies to")


def _turns(value, field: str, role: str, problems: list[str]) -> list[dict] | None:
    """A string (one ``role`` turn) or a message list."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return _messages(value, field, problems)
    problems.append(f"{field}: must be a string or a list of {{role, content}} messages, got {_typename(value)}")
    return None


def _check_prompt(msgs: list[dict], field: str, problems: list[str]) -> bool:
    if msgs[-1]["role"] not in ("user", "tool"):
        problems.append(f"{field}[{len(msgs) - 1}].role: is {msgs[-1]['role']!r}; the prompt must end with the user "
                        "turn the answer replies to")
        return False
    if not any(m["role"] == "user" for m in msgs):
        problems.append(f"{field}: has no user message; the prompt needs the user turn the answer replies to")
        return False
    return True


def _reply(msgs: list[dict], field: str, problems: list[str]) -> bool:
    """A chosen/rejected/completion reply: assistant turns (tool results may sit between them)."""
    for j, m in enumerate(msgs):
        if m["role"] not in ("assistant", "tool"):
            problems.append(f"{field}[{j}].role: is {m['role']!r}; {field} must hold only the assistant's reply "
                            "(put the conversation before it in the prompt)")
            return False
    if msgs[0]["role"] != "assistant" or msgs[-1]["role"] != "assistant":
        problems.append(f"{field}: must start and end with an assistant turn")
        return False
    return True


def _norm_chat(obj: dict, problems: list[str]) -> dict | None:
    msgs = _messages(obj["messages"], "messages", problems)
    if msgs is None:
        return None
    _check_sft(msgs, "messages", problems)
    return {"messages": msgs}


def _norm_alpaca(obj: dict, problems: list[str]) -> dict | None:
    instruction = _text(obj, "instruction", problems)
    extra = _text(obj, "input", problems, optional=True)
    output = _text(obj, "output", problems)
    system = _text(obj, "system", problems, optional=True)
    if problems:
        return None
    user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    msgs = ([{"role": "system", "content": system}] if system and system.strip() else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return {"messages": msgs}


def _norm_prompt_completion(obj: dict, problems: list[str]) -> dict | None:
    prompt = _turns(obj["prompt"], "prompt", "user", problems)
    completion = _turns(obj["completion"], "completion", "assistant", problems)
    if problems or prompt is None or completion is None:
        return None
    if not (_check_prompt(prompt, "prompt", problems) and _reply(completion, "completion", problems)):
        return None
    return {"messages": prompt + completion}


def _norm_gsm8k(obj: dict, problems: list[str]) -> dict | None:
    question = _text(obj, "question", problems)
    answer = _text(obj, "answer", problems)  # kept whole: the worked solution and its final "#### N" line
    if problems:
        return None
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def _norm_preference(obj: dict, problems: list[str]) -> dict | None:
    prompt = _turns(obj["prompt"], "prompt", "user", problems)
    chosen = _turns(obj["chosen"], "chosen", "assistant", problems)
    rejected = _turns(obj["rejected"], "rejected", "assistant", problems)
    if problems or prompt is None or chosen is None or rejected is None:
        return None
    if not _check_prompt(prompt, "prompt", problems):
        return None
    replies = {}
    for key, msgs in (("chosen", chosen), ("rejected", rejected)):
        # Some exports (e.g. UltraFeedback) repeat the prompt inside chosen/rejected: keep only the reply.
        if len(msgs) > len(prompt) and msgs[:len(prompt)] == prompt:
            msgs = msgs[len(prompt):]
        if not _reply(msgs, key, problems):
            return None
        replies[key] = msgs
    if replies["chosen"] == replies["rejected"]:
        problems.append("chosen, rejected: are the same reply; a preference pair needs two different answers")
        return None
    return {"prompt": prompt, **replies}


_HH_MARK = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh_transcript(text: str, field: str, problems: list[str]) -> list[dict] | None:
    """Split "\\n\\nHuman: … \\n\\nAssistant: …" into messages (each turn's text stripped)."""
    body = "\n\n" + text.replace("\r\n", "\n").lstrip()
    if not body.startswith("\n\nHuman:"):
        problems.append(f"{field}: is not an hh-rlhf transcript: it must start with 'Human:' (it starts "
                        f"{_short(text[:30])}); for a separate prompt and answers use prompt/chosen/rejected columns")
        return None
    marks = list(_HH_MARK.finditer(body))
    return [{"role": _HH_ROLES[m.group(1)],
             "content": body[m.end(): marks[i + 1].start() if i + 1 < len(marks) else len(body)].strip()}
            for i, m in enumerate(marks)]


def _norm_hh_rlhf(obj: dict, problems: list[str]) -> dict | None:
    """chosen and rejected are the same conversation that differs in the final assistant reply: the turns
    they share, up to the last Human turn, are the prompt."""
    sides = {}
    for key in ("chosen", "rejected"):
        value = obj[key]
        if isinstance(value, str):
            sides[key] = _hh_transcript(value, key, problems)
        elif isinstance(value, list):  # the same shape as message lists (an "implicit prompt" preference pair)
            sides[key] = _messages(value, key, problems)
        else:
            problems.append(f"{key}: must be a '\\n\\nHuman: … \\n\\nAssistant: …' transcript or a message "
                            f"list, got {_typename(value)}")
    if problems:
        return None
    chosen, rejected = sides["chosen"], sides["rejected"]
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    cut = shared
    while cut and chosen[cut - 1]["role"] != "user":
        cut -= 1
    if cut == 0:
        differ = ("they differ from turn 1" if shared == 0 else
                  f"the turns they share ({shared}) hold no Human turn")
        problems.append(f"chosen, rejected: the transcripts do not share a prefix ending in a Human turn ({differ}); "
                        "an hh-rlhf pair repeats one conversation and differs only in the final Assistant reply")
        return None
    prompt, replies = chosen[:cut], {"chosen": chosen[cut:], "rejected": rejected[cut:]}
    for key, msgs in replies.items():
        if not msgs:
            problems.append(f"{key}: has no Assistant reply after the shared prompt (turns 1-{cut}); the transcript "
                            "must end with the Assistant reply being compared")
            return None
        for j, m in enumerate(msgs):
            if m["role"] != "assistant":
                problems.append(f"{key}: turn {cut + j + 1} is a {'Human' if m['role'] == 'user' else m['role']} turn "
                                f"after the shared prompt (turns 1-{cut}); chosen and rejected must differ only in "
                                "the final Assistant reply")
                return None
    if replies["chosen"] == replies["rejected"]:
        problems.append("chosen, rejected: are the same transcript; a preference pair needs two different answers")
        return None
    return {"prompt": prompt, **replies}


_NORMALISE = {"chat": _norm_chat, "alpaca": _norm_alpaca, "prompt_completion": _norm_prompt_completion,
              "gsm8k": _norm_gsm8k, "preference": _norm_preference, "hh_rlhf": _norm_hh_rlhf}
