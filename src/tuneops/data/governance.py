"""The governance pass over Arrow record batches: PII scrub, dedupe signatures, dedupe decision.

Two per-batch stages and one global one, so the same functions run in a process pool here and
under a distributed engine elsewhere (docs/data.md, "Scaling past one machine"):

- :func:`scrub_batch` (map): every message content scanned with :mod:`tuneops.data.pii` and
  acted on per the policy (``redact``: ``<TYPE>`` placeholders; ``block``: the row is dropped
  and listed; ``allow``: counted only). Other columns pass through untouched.
- :func:`signatures_batch` (map): exact digests, MinHash signatures, LSH band keys and shingles
  of each row's text (:func:`tuneops.data.dedup.minhash_batch`), system prompts left out.
- the dedupe decision (global, in row order): :class:`tuneops.data.dedup.DedupStream` keeps the
  first row of each exact / near-duplicate group against every row kept before it.

:func:`run_pass` drives them over an iterator of batches: the map stages in ``processes`` worker
processes with at most ``max_in_flight`` batches submitted and not yet decided, the decision in
this process, kept batches yielded in input order. Memory is those batches plus the dedupe index
(about 1.1 KB per kept row of 200 words), never the corpus. It gives the same rows and counts as
``tuneops data ingest``'s row-by-row path (tests check this).
"""

from __future__ import annotations

import bisect
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tuneops.data.dedup import DedupStream, MinHashBatch, MinHashParams, NearDupIndex, Removal, minhash_batch, row_text
from tuneops.errors import InvalidInput

DEDUPE_ROLES = ("user", "assistant", "tool")  # what ingest compares: a system prompt every row shares is left out
TEXT_COLUMNS = ("messages", "prompt", "completion", "chosen", "rejected")  # what pii.apply_policy scans


class ScrubbedBatch(NamedTuple):
    batch: pa.RecordBatch  # the rows not blocked, text redacted per the policy
    counts: dict[str, int]  # findings by type over those rows
    blocked: list[tuple[int, list[str]]]  # (row of the input batch, types found) of rows a `block` action dropped


def check_policy(policy: str | Mapping[str, str]) -> dict[str, str]:
    """A policy as :func:`tuneops.data.pii.apply_policy` takes it: ``"redact"`` (one action for every
    type) or ``{TYPE: action, "*": default}``; unknown types or actions are refused here, once."""
    from tuneops.data.pii import apply_policy

    pol = {"*": policy} if isinstance(policy, str) else dict(policy)
    apply_policy({"prompt": ""}, pol)  # validates (InvalidInput naming the type or action)
    return pol


def as_record_batch(batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
    """One RecordBatch of the rows (a Table, as Ray Data's ``map_batches`` passes, is combined)."""
    if isinstance(batch, pa.RecordBatch):
        return batch
    if not isinstance(batch, pa.Table):
        raise InvalidInput(f"expected an Arrow RecordBatch or Table, got {type(batch).__name__}")
    batches = batch.combine_chunks().to_batches()
    return batches[0] if len(batches) == 1 else pa.RecordBatch.from_pylist(batch.to_pylist(), schema=batch.schema)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _message_list(t: pa.DataType) -> bool:
    """list<struct<..., content: string>> whose only text is `content` (no tool calls, no parts)."""
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_struct(t.value_type):
        return False
    st = t.value_type
    return st.get_field_index("content") >= 0 and _is_text(st.field("content").type) \
        and st.get_field_index("tool_calls") < 0


def _scrub_texts(texts: list, owners: list[int], pol: dict, row_counts: dict, blocked: dict) -> list | None:
    """Apply the policy to each text (owned by a row of the batch); the new list, or None if unchanged."""
    from tuneops.data.pii import apply_policy, scan

    new = None
    for k, text in enumerate(texts):
        if not text or not scan(text):  # most texts hold nothing: one scan, no copies
            continue
        res = apply_policy({"prompt": text}, pol)  # one slot: the same counts and edits as on the whole row
        r = owners[k]
        row_counts.setdefault(r, Counter()).update(res.counts)
        if res.row is None:
            blocked.setdefault(r, set()).update(res.blocked_types)
        elif res.row["prompt"] != text:
            new = new if new is not None else list(texts)
            new[k] = res.row["prompt"]
    return new


def _scrub_rows(batch: pa.RecordBatch, pol: dict) -> ScrubbedBatch:
    """Row by row through Python dicts: for layouts the column path does not handle (tool calls,
    content parts)."""
    from tuneops.data.pii import apply_policy

    counts: Counter[str] = Counter()
    kept, blocked = [], []
    for i, row in enumerate(batch.to_pylist()):
        res = apply_policy(row, pol)
        if res.row is None:
            blocked.append((i, res.blocked_types))
            continue
        counts.update(res.counts)
        kept.append(res.row)
    return ScrubbedBatch(pa.RecordBatch.from_pylist(kept, schema=batch.schema), dict(counts), blocked)


def scrub_batch(batch: pa.RecordBatch | pa.Table, policy: str | Mapping[str, str] = "redact") -> ScrubbedBatch:
    """Scan every text of a batch of canonical rows for PII and secrets and act per ``policy`` (see
    :func:`check_policy`): the rows not blocked (redacted), counts by type over them, and the rows
    blocked. Column-wise on Arrow: only the message contents are read into Python, and only the
    columns that change are rebuilt. Pure: no I/O, no state; run it anywhere."""
    batch = as_record_batch(batch)
    pol = check_policy(policy)
    n = batch.num_rows
    row_counts: dict[int, Counter] = {}
    blocked: dict[int, set[str]] = {}
    columns = dict(zip(batch.schema.names, batch.columns))
    for name in TEXT_COLUMNS:
        if name not in columns:
            continue
        col = columns[name]
        if _is_text(col.type):
            new = _scrub_texts(col.to_pylist(), list(range(n)), pol, row_counts, blocked)
            if new is not None:
                columns[name] = pa.array(new, type=col.type)
        elif _message_list(col.type):
            flat = col.flatten()  # the messages of these rows (slicing taken into account)
            if flat.null_count:
                return _scrub_rows(batch, pol)
            content_at = col.type.value_type.get_field_index("content")
            owners = pc.list_parent_indices(col).to_numpy().tolist()
            new = _scrub_texts(flat.field(content_at).to_pylist(), owners, pol, row_counts, blocked)
            if new is not None:
                children = [flat.field(i) for i in range(flat.type.num_fields)]
                children[content_at] = pa.array(new, type=children[content_at].type)
                values = pa.StructArray.from_arrays(children, fields=list(flat.type))
                lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
                offsets = np.zeros(n + 1, dtype=np.int64)
                np.cumsum(lengths, out=offsets[1:])
                cls, off_type = (pa.LargeListArray, pa.int64()) if pa.types.is_large_list(col.type) \
                    else (pa.ListArray, pa.int32())
                columns[name] = cls.from_arrays(pa.array(offsets, off_type), values, type=col.type,
                                                mask=col.is_null() if col.null_count else None)
        elif not pa.types.is_null(col.type):
            return _scrub_rows(batch, pol)
    out = pa.RecordBatch.from_arrays(list(columns.values()), schema=batch.schema)
    counts: Counter[str] = Counter()
    for r, c in row_counts.items():
        if r not in blocked:  # as ingest: a blocked row is a bad row, its findings are not the version's
            counts.update(c)
    if blocked:
        keep = np.ones(n, dtype=bool)
        keep[list(blocked)] = False
        out = out.filter(pa.array(keep))
    return ScrubbedBatch(out, dict(sorted(counts.items())), [(r, sorted(blocked[r])) for r in sorted(blocked)])


def row_texts(batch: pa.RecordBatch | pa.Table, roles: Iterable[str] | None = DEDUPE_ROLES) -> list[str]:
    """Each row's text as :func:`tuneops.data.dedup.row_text` gives it (contents of the messages of
    ``roles``, joined with newlines), read column-wise."""
    batch = as_record_batch(batch)
    names = batch.schema.names
    cols = ["messages"] if "messages" in names else [c for c in ("prompt", "chosen", "rejected") if c in names]
    if not cols or not all(_message_list(batch.schema.field(c).type) or _is_text(batch.schema.field(c).type)
                           for c in cols):
        return [row_text(r, roles=roles) for r in batch.to_pylist()]
    keep = set(roles) if roles is not None else None
    per_row: list[list[str]] = [[] for _ in range(batch.num_rows)]
    for c in cols:
        col = batch.column(c)
        if _is_text(col.type):
            for i, t in enumerate(col.to_pylist()):
                if t:
                    per_row[i].append(t)
            continue
        flat = col.flatten()
        if flat.null_count:
            return [row_text(r, roles=roles) for r in batch.to_pylist()]
        contents = flat.field("content").to_pylist()
        role_of = flat.field("role").to_pylist() if flat.type.get_field_index("role") >= 0 else [None] * len(contents)
        for p, role, t in zip(pc.list_parent_indices(col).to_numpy().tolist(), role_of, contents):
            if t and (keep is None or role in keep):
                per_row[p].append(t)
    return ["\n".join(p) for p in per_row]


def signatures_batch(batch: pa.RecordBatch | pa.Table, params: MinHashParams | None = None, *,
                     roles: Iterable[str] | None = DEDUPE_ROLES) -> MinHashBatch:
    """Exact digests, MinHash signatures, LSH band keys and shingle hashes of each row's text (numpy
    only, picklable): what the dedupe decision needs from a batch. Pure; run it anywhere."""
    return minhash_batch(row_texts(batch, roles), params or MinHashParams.create())


@dataclass
class PassReport:
    """What a pass found; complete once its batches are consumed. Row numbers count input rows
    from 0, across batches."""

    rows_in: int = 0
    rows_out: int = 0
    batches: int = 0  # batches decided so far
    max_in_flight: int = 0  # the most batches submitted to the map stages and not yet decided
    pii: dict[str, int] = field(default_factory=dict)  # findings by type, over rows not blocked
    blocked: list[tuple[int, list[str]]] = field(default_factory=list)  # (row, types) dropped by `block`
    removed: list[Removal] = field(default_factory=list)  # duplicates dropped; duplicate_of is a row too

    @property
    def removed_counts(self) -> dict[str, int]:
        return dict(Counter(r.kind for r in self.removed))

    def to_dict(self, examples: int = 5) -> dict:
        return {"rows_in": self.rows_in, "rows_out": self.rows_out, "batches": self.batches,
                "pii": dict(sorted(self.pii.items())), "blocked": len(self.blocked),
                "removed": self.removed_counts, "examples": [r.to_dict() for r in self.removed[:examples]]}


def _map_stages(batch: pa.RecordBatch, policy: dict, params: MinHashParams | None,
                roles: tuple[str, ...] | None) -> tuple[ScrubbedBatch, MinHashBatch | None]:
    """Everything that happens to one batch before the global decision (a worker's job)."""
    scrubbed = scrub_batch(batch, policy)
    return scrubbed, (signatures_batch(scrubbed.batch, params, roles=roles) if params is not None else None)


class _RowMap:
    """Dedupe-stream row -> input row, when blocked rows make them differ (kept only for batches
    that lost rows)."""

    def __init__(self):
        self.starts: list[int] = []  # stream row of each batch's first row
        self.batches: list[tuple[int, np.ndarray | None]] = []  # (input row of its first row, kept rows or None)

    def add(self, stream_start: int, input_start: int, kept: np.ndarray | None) -> None:
        self.starts.append(stream_start)
        self.batches.append((input_start, kept))

    def __call__(self, s: int) -> int:
        b = bisect.bisect_right(self.starts, s) - 1
        if b < 0:  # before the first batch that lost rows, the numbers agree
            return s
        input_start, kept = self.batches[b]
        local = s - self.starts[b]
        return input_start + (local if kept is None else int(kept[local]))


def run_pass(batches: Iterable[pa.RecordBatch], *, processes: int = 1, policy: str | Mapping[str, str] = "redact",
             exact: bool = True, near: bool = True, roles: Iterable[str] | None = DEDUPE_ROLES,
             params: MinHashParams | None = None, index: NearDupIndex | None = None,
             max_in_flight: int | None = None) -> tuple[Iterator[pa.RecordBatch], PassReport]:
    """The whole governance pass over a stream of batches: (kept batches, in input order; the report,
    complete once they are consumed). Scrub and signatures run in ``processes`` worker processes
    (1: in this one), with at most ``max_in_flight`` batches (default 2 x processes) submitted and
    not yet decided; the exact / near dedupe decision (keep the first of each group, against
    ``index`` too when given) runs here, batch by batch in order. ``exact=near=False``: no dedupe."""
    pol = check_policy(policy)
    if processes < 1:
        raise InvalidInput(f"processes must be >= 1 (got {processes})")
    limit = max_in_flight or 2 * processes
    if limit < 1:
        raise InvalidInput(f"max_in_flight must be >= 1 (got {max_in_flight})")
    roles = tuple(roles) if roles is not None else None
    dedupe = exact or near
    if dedupe:
        params = index.params if index is not None else params or MinHashParams.create()
        stream = DedupStream(params, index=index, exact=exact, near=near)
    else:
        params, stream = None, None
    report = PassReport()
    row_map = _RowMap()

    def decide(n_in: int, staged: tuple[ScrubbedBatch, MinHashBatch | None]) -> pa.RecordBatch:
        scrubbed, mb = staged
        base = report.rows_in
        report.rows_in += n_in
        report.batches += 1
        for k, v in scrubbed.counts.items():
            report.pii[k] = report.pii.get(k, 0) + v
        report.blocked.extend((base + i, types) for i, types in scrubbed.blocked)
        out = scrubbed.batch
        if stream is not None:
            s0 = stream.n_rows
            kept_rows = None
            if scrubbed.blocked:
                keep = np.ones(n_in, dtype=bool)
                keep[[i for i, _ in scrubbed.blocked]] = False
                kept_rows = np.flatnonzero(keep).astype(np.int32)
            if kept_rows is not None or row_map.starts:
                row_map.add(s0, base, kept_rows)
            removed = stream.add(mb)
            if removed:
                report.removed.extend(Removal(row_map(r.index), r.kind, r.duplicate_of if r.in_index
                                              else row_map(r.duplicate_of), r.similarity, r.in_index)
                                      for r in removed)
                keep = np.ones(len(mb), dtype=bool)
                keep[[r.index - s0 for r in removed]] = False
                out = out.filter(pa.array(keep))
        report.rows_out += out.num_rows
        return out

    def serial() -> Iterator[pa.RecordBatch]:
        for batch in batches:
            report.max_in_flight = max(report.max_in_flight, 1)
            out = decide(batch.num_rows, _map_stages(batch, pol, params, roles))
            if out.num_rows:
                yield out

    def parallel() -> Iterator[pa.RecordBatch]:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        if ctx is not None:  # build the scanner's patterns and the hashing tables once, for every worker to inherit
            _map_stages(pa.RecordBatch.from_pylist([{"prompt": "warm up a@b.example"}]), pol, params, roles)
        pool = ProcessPoolExecutor(max_workers=processes, mp_context=ctx)
        pending: deque = deque()
        try:
            for batch in batches:
                pending.append((batch.num_rows, pool.submit(_map_stages, batch, pol, params, roles)))
                del batch  # the worker has its own copy
                report.max_in_flight = max(report.max_in_flight, len(pending))
                while len(pending) >= limit:
                    n_in, fut = pending.popleft()
                    out = decide(n_in, fut.result())
                    if out.num_rows:
                        yield out
            while pending:
                n_in, fut = pending.popleft()
                out = decide(n_in, fut.result())
                if out.num_rows:
                    yield out
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    return (serial() if processes == 1 else parallel()), report
