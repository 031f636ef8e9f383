"""Request traces: one per served request, written off the request path, with lineage back to the rows.

Every request gets a trace id (``tr-<ulid>``, sent to the client as ``X-Tuneops-Trace``) and a trace:
time, tenant, the ``model`` string asked for, the alias and artifact it resolved to, the base id and its
revision (the sha256 of its weights — seed 001's "pair base_model_revision + adapter_id in every trace"),
the engine path, status and error code, tokens, latency, time to first token, queue wait and batch size.
Content — the messages and the answers — is kept only where content tracing is enabled, and only after
the data layer's PII scanner (data/pii.py) has redacted it: raw content is never stored.

The request path only appends to a bounded in-memory queue (:meth:`Tracer.finish`); a background thread
redacts and inserts traces in batches. When the queue is full the trace is dropped and counted
(``tuneops_traces_dropped_total{reason="queue_full"}``), never waited for. :meth:`Tracer.close` flushes.

Reading: :func:`traces` lists them, :func:`trace_lineage` follows one to its artifact, run, recipe and
the dataset versions it learned from (sources, licences, row counts; release/lineage.py), and
:func:`training_rows` yields those rows.

How a front uses it::

    tracer = Tracer(store, metrics=metrics, content=False)
    trace = tracer.begin(tenant=tenant_id, model=req.model, endpoint="chat.completions", stream=req.stream)
    headers[TRACE_HEADER] = trace.id
    trace.served(base=pool.base, artifact=artifact, alias=alias)       # once the model resolved
    trace.set_input(messages=chat)                                       # kept only if content is on
    tracer.finish(trace, status=200, result=gen_result, prompt_tokens=n)  # answer sent / stream ended
    tracer.finish(trace, status=404, error_code="model_not_found")       # or: the error answered
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ulid import ULID

from tuneops.errors import InvalidInput, NotFound

if TYPE_CHECKING:  # the store and the ledger's records load with the store, not with this module
    from tuneops.serve.metrics import ServeMetrics
    from tuneops.serve.protocol import GenResult
    from tuneops.store import Store
    from tuneops.store.schema_traces import TraceRecord

log = logging.getLogger("tuneops.serve.tracing")

TRACE_HEADER = "X-Tuneops-Trace"
CONTENT_MODES = ("placeholder", "mask", "hash")
_LEARNED = ("train", "replay")


def new_trace_id() -> str:
    return f"tr-{str(ULID()).lower()}"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Trace:
    """One request's trace while it is being served; the front fills it, :meth:`Tracer.finish` queues it."""

    id: str
    at: datetime
    t0: float                                  # time.monotonic() at arrival: latency is measured from here
    tenant: str | None = None
    model: str | None = None
    endpoint: str = "chat.completions"
    stream: bool = False
    alias: str | None = None
    artifact_id: str | None = None
    base_id: str | None = None
    base_revision: str | None = None
    path: str | None = None
    status: int | None = None
    error_code: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    ttft_s: float | None = None
    queue_s: float | None = None
    gen_s: float | None = None
    cold_load_s: float | None = None
    batch_size: int | None = None
    finish_reason: str | None = None
    extra: dict = field(default_factory=dict)
    # Raw content, in memory only and only when content tracing is on for this tenant; the writer
    # thread redacts it before anything is stored.
    keep_content: bool = False
    _input: dict | None = field(default=None, repr=False)
    _answers: list[str] | None = field(default=None, repr=False)
    _in_flight: tuple[str | None, str | None] | None = field(default=None, repr=False)
    _queued_content: int = field(default=0, repr=False)
    done: bool = False

    @property
    def adapter(self) -> str | None:
        """The metrics label: the artifact id, "base" for the bare base, None before resolution."""
        if self.artifact_id:
            return self.artifact_id
        return "base" if self.base_id else None

    def served(self, *, base: Any = None, artifact: Any = None, alias: str | None = None,
               base_id: str | None = None, base_revision: str | None = None) -> "Trace":
        """What answers: ``base`` (a BaseModelRecord: its id and weights hash), ``artifact`` (an ArtifactRecord,
        None for the bare base) and the alias it resolved through."""
        self.base_id = base_id or (getattr(base, "id", None) if base is not None else None) \
            or (getattr(artifact, "base_id", None) if artifact is not None else None)
        self.base_revision = base_revision or (getattr(base, "weights_sha256", None) if base is not None else None)
        self.artifact_id = getattr(artifact, "id", artifact) if artifact is not None else None
        self.alias = alias
        return self

    def set_input(self, *, messages: list[dict] | None = None, prompt: Any = None) -> None:
        """The request's messages (chat) or prompt (completions); dropped at once unless content is traced."""
        if not self.keep_content:
            return
        if messages is not None:
            self._input = {"messages": [_message(m) for m in messages]}
        elif isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(p, str) for p in prompt)):
            self._input = {"prompt": prompt}
        elif prompt is not None:  # token ids: what they spell is content too, and they cannot be scanned
            self._input = {"prompt_token_ids": len(prompt) if isinstance(prompt, list) else None}

    def set_output(self, answers: list[str]) -> None:
        if self.keep_content:
            self._answers = [a if isinstance(a, str) else str(a) for a in answers]

    def content_size(self) -> int:
        """Characters of raw content held (roughly): what the writer's backlog budget counts."""
        n = sum(len(a) for a in self._answers or ())
        for m in (self._input or {}).get("messages") or ():
            n += len(str(m.get("content") or "")) + len(str(m.get("tool_calls") or ""))
        prompt = (self._input or {}).get("prompt")
        n += sum(map(len, prompt)) if isinstance(prompt, list) else len(prompt or "")
        return n

    def drop_content(self, why: str) -> None:
        self._input = self._answers = None
        self.keep_content = False
        self.extra["content"] = f"not traced: {why}"

    def row(self) -> dict:
        """The stored columns (content and pii are added by the writer, after redaction)."""
        # Cut to the columns' widths and made plain JSON: one odd value must not fail its batch on PostgreSQL.
        extra = json.loads(json.dumps(self.extra, default=str)) if self.extra else None
        return {"id": self.id, "at": self.at, "tenant": _cut(self.tenant, 200), "endpoint": _cut(self.endpoint, 64),
                "model": _cut(self.model, 300), "alias": _cut(self.alias, 200), "artifact_id": _cut(self.artifact_id, 64),
                "base_id": _cut(self.base_id, 64), "base_revision": _cut(self.base_revision, 64),
                "path": _cut(self.path, 16), "status": int(self.status if self.status is not None else 0),
                "error_code": _cut(self.error_code, 64), "stream": bool(self.stream),
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "latency_s": self.latency_s, "ttft_s": self.ttft_s, "queue_s": self.queue_s, "gen_s": self.gen_s,
                "cold_load_s": self.cold_load_s, "batch_size": self.batch_size,
                "finish_reason": _cut(self.finish_reason, 32), "extra": extra, "content": None, "pii": None}


def _cut(value: Any, width: int) -> str | None:
    return None if value is None else str(value)[:width]


def _message(m: Any) -> dict:
    """Role and content of a message (a dict or a pydantic message); other fields (``name`` …) are not kept."""
    if not isinstance(m, dict):
        m = m.model_dump() if hasattr(m, "model_dump") else {"role": getattr(m, "role", None),
                                                             "content": getattr(m, "content", None)}
    out = {"role": m.get("role"), "content": m.get("content")}
    if m.get("tool_calls"):
        out["tool_calls"] = m["tool_calls"]
    return out


class Tracer:
    """Traces requests into ``store`` from a background thread.

    ``content``: keep (PII-redacted) messages and answers — a bool, or a function of the tenant id.
    ``redaction``: how the scanner's findings are replaced (``placeholder`` ``<EMAIL>``, ``mask``, or ``hash``,
    which needs ``salt``). ``max_queue``: traces waiting before new ones are dropped; ``max_queued_content``:
    characters of raw content waiting for redaction before new traces are queued without theirs (the
    metadata is kept; ``tuneops_traces_dropped_total{reason="content_backlog"}``). ``metrics``: a
    ServeMetrics that :meth:`finish` also observes the request in (then do not call observe_request too),
    and that counts written and dropped traces."""

    def __init__(self, store: "Store", *, content: bool | Callable[[str | None], bool] = False,
                 redaction: str = "placeholder", salt: bytes | str | None = None, scanner: Any = None,
                 metrics: "ServeMetrics | None" = None, max_queue: int = 10_000,
                 max_queued_content: int = 64_000_000, batch_size: int = 256,
                 flush_interval: float = 0.5, start: bool = True):
        if redaction not in CONTENT_MODES:
            raise InvalidInput(f"unknown trace redaction {redaction!r}", hint=f"use one of {list(CONTENT_MODES)}")
        if redaction == "hash" and not salt:
            raise InvalidInput("hash redaction of traced content needs a salt",
                               hint="pass salt=<a secret>, or use redaction='placeholder'")
        if max_queue < 1 or batch_size < 1:
            raise InvalidInput("max_queue and batch_size must be ≥ 1")
        self.store = store
        self.content = content
        self.redaction, self.salt, self.scanner = redaction, salt, scanner
        self.metrics = metrics
        self.batch_size, self.flush_interval = batch_size, flush_interval
        self.queue: queue.Queue[Trace | None] = queue.Queue(maxsize=max_queue)
        self.written = 0
        self.dropped: dict[str, int] = {}
        self._pending = 0                     # queued or being written
        self.max_queued_content = max_queued_content
        self._content_queued = 0              # characters of raw content queued or being written
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if metrics is not None:
            metrics.bind_trace_queue(self.queue.qsize)
        if start:
            self.start()

    # -- the request path ------------------------------------------------------------------------
    def content_on(self, tenant: str | None) -> bool:
        c = self.content
        try:
            return bool(c(tenant)) if callable(c) else bool(c)
        except Exception:  # a broken policy must not fail the request, nor store content
            log.exception("content-tracing policy failed for tenant %r; content not traced", tenant)
            return False

    def begin(self, *, tenant: str | None = None, model: str | None = None, endpoint: str = "chat.completions",
              stream: bool | None = False) -> Trace:
        """A new trace at a request's arrival (its id goes in the response headers at once); counts the
        request in flight until :meth:`finish`."""
        trace = Trace(id=new_trace_id(), at=_utcnow(), t0=time.monotonic(), tenant=tenant, model=model,
                      endpoint=endpoint, stream=bool(stream), keep_content=self.content_on(tenant))
        self._move_in_flight(trace)
        return trace

    def resolved(self, trace: Trace, **served) -> Trace:
        """``trace.served(**served)``, moving the in-flight count onto its adapter."""
        trace.served(**served)
        self._move_in_flight(trace)
        return trace

    def _move_in_flight(self, trace: Trace) -> None:
        if self.metrics is None or trace.done:
            return
        now = (trace.tenant, trace.adapter)
        if trace._in_flight == now:
            return
        if trace._in_flight is not None:
            self.metrics.request_ended(*trace._in_flight)
        self.metrics.request_started(*now)
        trace._in_flight = now

    def finish(self, trace: Trace, *, status: int, error_code: str | None = None,
               result: "GenResult | None" = None, prompt_tokens: int | None = None,
               completion_tokens: int | None = None, answers: list[str] | None = None,
               latency_s: float | None = None, ttft_s: float | None = None, **extra) -> bool:
        """The request ended (answer sent, stream closed, error answered, client gone): fill in how it went,
        observe it in the metrics, and queue the trace. Never blocks; a second call for the same trace does
        nothing. False when the trace was dropped. ``extra`` (fallback=…, interrupted=…) is stored as is."""
        if trace.done:
            return True
        trace.status, trace.error_code = int(status), error_code
        trace.latency_s = latency_s if latency_s is not None else round(time.monotonic() - trace.t0, 6)
        if result is not None:
            trace.path, trace.batch_size = result.path, result.batch_size
            trace.queue_s, trace.gen_s, trace.cold_load_s = result.queue_s, result.gen_s, result.cold_load_s
            trace.ttft_s = result.ttft_s
            if result.choices:
                trace.finish_reason = result.choices[0].finish_reason
                interrupted = next((c.interrupted for c in result.choices if c.interrupted), None)
                if interrupted:
                    trace.extra.setdefault("interrupted", interrupted)
                if completion_tokens is None:
                    completion_tokens = sum(c.completion_tokens for c in result.choices)
                if answers is None:
                    answers = [c.text for c in result.choices]
        if ttft_s is not None:
            trace.ttft_s = ttft_s
        if prompt_tokens is not None:
            trace.prompt_tokens = prompt_tokens
        if completion_tokens is not None:
            trace.completion_tokens = completion_tokens
        if answers is not None:
            trace.set_output(answers)
        trace.extra.update({k: v for k, v in extra.items() if v is not None})
        if self.metrics is not None:
            if trace._in_flight is not None:
                self.metrics.request_ended(*trace._in_flight)
                trace._in_flight = None
            try:
                self.metrics.observe_request(
                    tenant=trace.tenant, adapter=trace.adapter, status=trace.status, error_code=error_code,
                    latency_s=trace.latency_s, path=trace.path, ttft_s=trace.ttft_s,
                    prompt_tokens=trace.prompt_tokens, completion_tokens=trace.completion_tokens, gen_s=trace.gen_s,
                    batch_size=trace.batch_size, queue_s=trace.queue_s, cold_load_s=trace.cold_load_s)
            except Exception:  # metrics must never fail a request
                log.exception("observing trace %s in the metrics failed", trace.id)
        trace.done = True
        return self.submit(trace)

    def submit(self, trace: Trace) -> bool:
        """Queue a finished trace for the writer; False (and counted) when it had to be dropped."""
        if self._stop.is_set():
            self._drop("closed")
            return False
        size = trace.content_size() if trace.keep_content else 0
        with self._cond:
            over = size and self._content_queued + size > self.max_queued_content
            if over:
                size = 0
            self._pending += 1
            self._content_queued += size
        if over:  # keep the metadata, lose the content: memory stays bounded when the writer falls behind
            trace.drop_content("the trace writer's backlog was full")
            self._drop("content_backlog")
        trace._queued_content = size
        try:
            self.queue.put_nowait(trace)
        except queue.Full:
            with self._cond:
                self._pending -= 1
                self._content_queued -= size
                self._cond.notify_all()
            self._drop("queue_full")
            return False
        return True

    def _drop(self, reason: str, n: int = 1) -> None:
        with self._cond:
            self.dropped[reason] = self.dropped.get(reason, 0) + n
        if self.metrics is not None:
            self.metrics.trace_dropped(reason, n)

    # -- the writer ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tuneops-trace-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                first = self.queue.get(timeout=self.flush_interval)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            batch = [first] if first is not None else []  # None: close() waking the writer up
            while len(batch) < self.batch_size:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    batch.append(item)
            if batch:
                self._write(batch)
            elif self._stop.is_set() and self.queue.empty():
                return

    def _write(self, batch: list[Trace]) -> None:
        from sqlalchemy import insert

        from tuneops.store.schema_traces import TraceRecord

        def insert_rows(rows: list[dict]) -> None:
            self.store.transact(lambda s: s.execute(insert(TraceRecord), rows))

        written = 0
        try:
            rows = [self._row(t) for t in batch]
            try:
                insert_rows(rows)
                written = len(rows)
            except Exception:
                if len(rows) == 1:
                    raise
                for row in rows:  # one bad row must not take its batch with it
                    try:
                        insert_rows([row])
                        written += 1
                    except Exception:
                        log.exception("writing trace %s failed; it is dropped", row["id"])
        except Exception:
            log.exception("writing %d trace(s) failed; they are dropped", len(batch))
        finally:
            with self._cond:
                self.written += written
                self._pending -= len(batch)
                self._content_queued -= sum(t._queued_content for t in batch)
                self._cond.notify_all()
        if written < len(batch):
            self._drop("write_error", len(batch) - written)
        if written and self.metrics is not None:
            self.metrics.trace_written(written)

    def _row(self, trace: Trace) -> dict:
        row = trace.row()
        if trace.keep_content and (trace._input is not None or trace._answers is not None):
            row["content"], row["pii"] = self._redacted(trace)
        return row

    def _redacted(self, trace: Trace) -> tuple[dict | None, dict | None]:
        """The trace's content with every PII finding replaced; (None, {"error": …}) if redaction failed —
        content that could not be scanned is not stored."""
        from tuneops.data.pii import redact_row

        doc = dict(trace._input or {})
        doc["completion"] = list(trace._answers or [])
        try:
            clean, counts = redact_row(doc, mode=self.redaction, salt=self.salt, scanner=self.scanner)
        except Exception as e:
            log.exception("redacting trace %s failed; its content is not stored", trace.id)
            return None, {"error": type(e).__name__}
        return clean, dict(sorted(counts.items()))

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every queued trace is written (or dropped); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending > 0:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left if left is not None else 1.0)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer; traces finished afterwards are dropped ("closed")."""
        if self._thread is not None and self._thread.is_alive():
            self.flush(timeout)
        self._stop.set()
        try:
            self.queue.put_nowait(None)  # wake the writer now rather than at its next poll
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout=max(timeout, self.flush_interval * 2))

    def __enter__(self) -> "Tracer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- reading ---------------------------------------------------------------------------------------
def parse_since(value: str | datetime | timedelta | None, *, now: datetime | None = None) -> datetime | None:
    """``30m``, ``2h``, ``7d``, ``45s`` (ago), an ISO date or datetime (UTC unless it says), a datetime, or
    a timedelta (ago)."""
    if value is None or value == "":
        return None
    now = now or _utcnow()
    if isinstance(value, timedelta):
        return now - value
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    text = str(value).strip()
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    if len(text) > 1 and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - timedelta(**{units[text[-1]]: float(text[:-1])})
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"--since {text!r} is neither a duration nor a date",
                           hint="use 30m, 2h, 7d, or an ISO date such as 2025-01-31 or 2025-01-31T12:00") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def traces(store: "Store", *, tenant: str | None = None, artifact: str | None = None, alias: str | None = None,
           since: str | datetime | timedelta | None = None, until: datetime | None = None,
           errors: bool = False, limit: int = 100) -> list["TraceRecord"]:
    """Traces, newest first. ``artifact``: an artifact id, or ``base`` for requests the bare base answered;
    ``alias``: name@stage (a bare name means @production); ``errors``: only those answered with an error."""
    from sqlalchemy import select

    from tuneops.store.schema_traces import TraceRecord

    q = select(TraceRecord)
    if tenant is not None:
        q = q.where(TraceRecord.tenant == tenant)
    if artifact is not None:
        q = q.where(TraceRecord.artifact_id.is_(None) & TraceRecord.base_id.is_not(None) if artifact == "base"
                    else TraceRecord.artifact_id == artifact)
    if alias is not None:
        q = q.where(TraceRecord.alias == (alias if "@" in alias else f"{alias}@production"))
    start = parse_since(since)
    if start is not None:
        q = q.where(TraceRecord.at >= _db_time(store, start))
    if until is not None:
        q = q.where(TraceRecord.at < _db_time(store, parse_since(until)))
    if errors:
        q = q.where((TraceRecord.status >= 400) | TraceRecord.error_code.is_not(None))
    q = q.order_by(TraceRecord.at.desc(), TraceRecord.id.desc()).limit(max(0, int(limit)))
    with store.session(write=False) as s:
        rows = list(s.scalars(q))
        for r in rows:
            s.expunge(r)
    return rows


def prune_traces(store: "Store", *, older_than: str | datetime | timedelta | None = None, tenant: str | None = None,
                 content_only: bool = False, dry_run: bool = False) -> int:
    """Retention: delete the traces older than ``older_than`` (and/or of one ``tenant``: a tenant that leaves),
    or with ``content_only`` keep their metadata and drop their content and PII counts. Needs at least one of
    ``older_than`` and ``tenant``. One transaction, audited (``traces.prune``, the count and the filter);
    returns how many traces it changed (or would change, with ``dry_run``)."""
    from sqlalchemy import delete, func, null, select, update

    from tuneops.store.schema_traces import TraceRecord

    if older_than is None and tenant is None:
        raise InvalidInput("say which traces to prune: --older-than (e.g. 30d) and/or --tenant",
                           hint="`tuneops traces prune --older-than 30d` keeps the last 30 days")
    cond = []
    cutoff = parse_since(older_than)
    if cutoff is not None:
        cond.append(TraceRecord.at < _db_time(store, cutoff))
    if tenant is not None:
        cond.append(TraceRecord.tenant == tenant)
    if content_only:
        cond.append(TraceRecord.content.is_not(None) | TraceRecord.pii.is_not(None))
    with store.session() as s:
        n = int(s.scalar(select(func.count()).select_from(TraceRecord).where(*cond)) or 0)
        if dry_run or not n:
            return n
        if content_only:
            # JSON columns: SQLAlchemy's JSON type would store Python None as JSON 'null'; null() is SQL NULL
            s.execute(update(TraceRecord).where(*cond).values(content=null(), pii=null()))
        else:
            s.execute(delete(TraceRecord).where(*cond))
        store.audit(s, "traces.prune", "traces", tenant or "*", count=n, content_only=content_only,
                    older_than=cutoff.isoformat() if cutoff else None, tenant=tenant)
    return n


def _db_time(store: "Store", dt: datetime) -> datetime:
    """SQLite keeps timestamps as naive UTC text: compare in that form there."""
    dt = dt.astimezone(timezone.utc)
    return dt.replace(tzinfo=None) if store.engine.dialect.name == "sqlite" else dt


def get_trace(store: "Store", trace_id: str) -> "TraceRecord":
    from tuneops.store.schema_traces import TraceRecord

    return store.get(TraceRecord, trace_id, "trace",
                     "trace ids come back in the X-Tuneops-Trace header; list them with `tuneops traces list`")


TRACE_FIELDS = ("id", "at", "tenant", "endpoint", "model", "alias", "artifact_id", "base_id", "base_revision",
                "path", "status", "error_code", "stream", "prompt_tokens", "completion_tokens", "latency_s",
                "ttft_s", "queue_s", "gen_s", "cold_load_s", "batch_size", "finish_reason", "extra", "pii",
                "content")


def trace_dict(rec: "TraceRecord", *, content: bool = True) -> dict:
    from tuneops.release.lineage import when

    out = {f: getattr(rec, f) for f in TRACE_FIELDS if content or f != "content"}
    out["at"] = when(rec.at)
    return out


def trace_lineage(store: "Store", trace_id: str, *, max_depth: int = 3) -> dict:
    """From a trace to the rows that taught its answer: the served base (and whether its revision is still
    the stored one), the artifact, its run and recipe, the dataset versions it learned from (and a teacher's,
    for a distilled student), with sources, licences and row counts, and how to list those rows."""
    from tuneops.release.lineage import artifact_lineage, base_info

    rec = get_trace(store, trace_id)
    out: dict[str, Any] = {"trace": trace_dict(rec)}
    base = base_info(store, rec.base_id) if rec.base_id else None
    if base is not None and base.get("in_store"):
        base["revision_served"] = rec.base_revision
        base["revision_matches"] = rec.base_revision is None or rec.base_revision == base.get("weights_sha256")
    out["base"] = base
    out.update(artifact=None, run=None, recipe=None, upstream={}, datasets=[], aliases_now=[], signature=None)
    if rec.artifact_id:
        try:
            art = store.get_artifact(rec.artifact_id)
        except NotFound:
            out["artifact"] = {"id": rec.artifact_id, "in_store": False}
        else:
            lin = artifact_lineage(store, art)
            out.update(artifact=lin["artifact"], run=lin["run"], recipe=lin["recipe"], upstream=lin["upstream"],
                       datasets=lin["datasets"], aliases_now=lin["aliases"], signature=lin["signature"])
            out["datasets"] += _teacher_datasets(store, lin, seen={art.id}, depth=max_depth)
    learned = [d for d in out["datasets"] if d.get("role") in _LEARNED]
    out["rows"] = {
        "dataset_versions": [d["id"] for d in learned],
        "total": sum(d.get("rows") or 0 for d in learned if d.get("in_store")),
        "list": [f"tuneops data show {d['id']} --rows {d.get('rows') or 0}" for d in learned if d.get("in_store")],
        "missing": [d["id"] for d in learned if not d.get("in_store")],
        "erased": [d["id"] for d in learned if d.get("erased")],
    }
    return out


def _teacher_datasets(store: "Store", lin: dict, *, seen: set[str], depth: int) -> list[dict]:
    """A distilled student learned from its teacher's rows too: the teacher's learned datasets, marked ``via``."""
    from tuneops.release.lineage import artifact_lineage

    teacher = (lin.get("upstream") or {}).get("teacher") or {}
    tid = teacher.get("artifact")
    if depth <= 0 or not tid or tid in seen:
        return []
    seen.add(tid)
    try:
        t_lin = artifact_lineage(store, store.get_artifact(tid))
    except NotFound:
        return []
    out = [{**d, "via": f"teacher {tid}"} for d in t_lin["datasets"] if d.get("role") in _LEARNED]
    return out + _teacher_datasets(store, t_lin, seen=seen, depth=depth - 1)


def training_rows(store: "Store", trace_id: str) -> Iterator[tuple[str, dict]]:
    """(dataset id, row) for every row the artifact behind a trace learned from (train and replay sets), in
    order, streamed one row group at a time."""
    from tuneops.data.ingest import iter_row_batches
    from tuneops.store.schema import DatasetRecord

    for ds_id in trace_lineage(store, trace_id)["rows"]["dataset_versions"]:
        with store.session(write=False) as s:
            rec = s.get(DatasetRecord, ds_id)
            if rec is None:
                continue
            s.expunge(rec)
        for batch in iter_row_batches(store, rec):
            for row in batch:
                yield ds_id, row
