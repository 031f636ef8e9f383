"""Prometheus metrics for the server: per tenant and per adapter, on the app's own registry.

Each ``ServeMetrics`` owns a ``CollectorRegistry``, so two apps in one process (tests, a canary beside
production) never collide on metric names. The front calls :meth:`ServeMetrics.observe_request` once per
request (or lets ``serve.tracing.Tracer(metrics=…)`` do it when the trace is finished), feeds the
engine's pool statistics to :meth:`ServeMetrics.set_pool`, and answers ``GET /metrics`` with
:meth:`ServeMetrics.render`.

Labels stay bounded: ``tenant`` is a tenant id (``-`` before authentication, or serving without
tenants), ``adapter`` an artifact id, ``base`` for the bare base, or ``-`` when the request failed before
its model resolved — never the client's ``model`` string, which anyone can vary.

Tokens/s: ``rate(tuneops_completion_tokens_total[1m]) / rate(tuneops_generation_seconds_total[1m])``
is decode throughput; ``tuneops_generation_tokens_per_second`` is its per-request distribution.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

BASE = "base"        # the adapter label of requests the bare base answered
UNRESOLVED = "-"     # the adapter label of requests that failed before their model resolved
NO_TENANT = "-"      # the tenant label before authentication / without tenants

# Buckets for a CPU box: a request takes from tens of milliseconds (a refusal) to minutes (long
# generations under load); an adapter cold load targets ≤ 300 ms.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
LOAD_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKENS_PER_S_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def status_class(status: int) -> str:
    """"2xx", "4xx", "5xx" … (499, a client that went away, is a 4xx)."""
    return f"{int(status) // 100}xx"


class _PoolCollector:
    """The engine's adapter-pool statistics as they were last set: counters the engine keeps itself
    (hits, misses, evictions) are exposed as they are, not re-counted here."""

    def __init__(self):
        self.lock = threading.Lock()
        self.values: dict[str, float] = {"hits": 0, "misses": 0, "evictions": 0, "resident": 0}
        self.optional: dict[str, float] = {}
        self.resident_ids: list[str] | None = None

    def collect(self):
        with self.lock:
            v, opt, ids = dict(self.values), dict(self.optional), self.resident_ids
        yield CounterMetricFamily("tuneops_adapter_pool_hits", "Requests whose adapter was already resident.",
                                  value=v["hits"])
        yield CounterMetricFamily("tuneops_adapter_pool_misses", "Requests that had to load their adapter.",
                                  value=v["misses"])
        yield CounterMetricFamily("tuneops_adapter_pool_evictions", "Adapters evicted from the pool.",
                                  value=v["evictions"])
        yield GaugeMetricFamily("tuneops_adapters_resident", "Adapters resident in the pool now.",
                                value=v["resident"])
        helps = {"capacity": "The most adapters the pool keeps resident.",
                 "memory_bytes": "Bytes the resident adapters take.",
                 "memory_budget_bytes": "The pool's memory budget in bytes.",
                 "pinned": "Pinned adapters (never evicted).",
                 "loading": "Adapter loads in progress or queued (cold-load cap).",
                 "merged_bytes": "Bytes of the merged copy serving a hot adapter (merge_hot); 0 when none."}
        for key, value in opt.items():
            yield GaugeMetricFamily(f"tuneops_adapter_pool_{key}", helps[key], value=value)
        if ids is not None:
            fam = GaugeMetricFamily("tuneops_adapter_resident", "1 for each adapter resident in the pool.",
                                    labels=["adapter"])
            for a in ids:
                fam.add_metric([a], 1)
            yield fam


class ServeMetrics:
    """Every metric of one server, on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        ta = ["tenant", "adapter"]
        self.requests = Counter("tuneops_requests", "Requests answered, by status class.",
                                ta + ["status_class"], registry=r)
        self.errors = Counter("tuneops_request_errors", "Requests answered with an error, by status and error code.",
                              ta + ["status", "error_code"], registry=r)
        self.latency = Histogram("tuneops_request_latency_seconds", "Arrival to last byte, errors included.",
                                 ta, buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("tuneops_time_to_first_token_seconds",
                              "Submission to the engine to the first generated token.",
                              ta, buckets=TTFT_BUCKETS, registry=r)
        self.prompt_tokens = Counter("tuneops_prompt_tokens", "Prompt tokens of answered requests.", ta, registry=r)
        self.completion_tokens = Counter("tuneops_completion_tokens", "Completion tokens generated.", ta,
                                         registry=r)
        self.generation_seconds = Counter("tuneops_generation_seconds",
                                          "Seconds spent generating (first forward pass to done); completion "
                                          "tokens over this is tokens/s.", ta, registry=r)
        self.tokens_per_s = Histogram("tuneops_generation_tokens_per_second",
                                      "Per request: completion tokens / generation seconds.", ta,
                                      buckets=TOKENS_PER_S_BUCKETS, registry=r)
        self.queue_wait = Histogram("tuneops_queue_wait_seconds", "Submitted to the first forward pass.",
                                    ["adapter"], buckets=QUEUE_BUCKETS, registry=r)
        self.batch_size = Histogram("tuneops_batch_size", "Rows in the forward pass a request ran in.",
                                    ["adapter"], buckets=BATCH_BUCKETS, registry=r)
        self.engine_path = Counter("tuneops_engine_path", "Requests by how their adapter was applied "
                                   "(batched, peft, merged, base).", ["adapter", "path"], registry=r)
        self.cold_loads = Counter("tuneops_adapter_loads", "Adapter loads, by outcome.", ["adapter", "outcome"],
                                  registry=r)
        self.load_seconds = Histogram("tuneops_adapter_load_seconds", "Time to load an adapter into the pool.",
                                      ["adapter"], buckets=LOAD_BUCKETS, registry=r)
        self.in_flight = Gauge("tuneops_requests_in_flight", "Requests being handled now.", ta, registry=r)
        self.traces_written = Counter("tuneops_traces_written", "Request traces written to the store.", registry=r)
        self.traces_dropped = Counter("tuneops_traces_dropped", "Request traces not written (queue_full: the writer "
                                      "fell behind; write_error: the store refused; closed: after shutdown), or "
                                      "written without their content (content_backlog).",
                                      ["reason"], registry=r)
        self.trace_queue = Gauge("tuneops_trace_queue_depth", "Traces waiting for the background writer.",
                                 registry=r)
        self._pool = _PoolCollector()
        r.register(self._pool)

    # -- per request ---------------------------------------------------------------------------
    def observe_request(self, *, tenant: str | None, adapter: str | None, status: int, latency_s: float,
                        error_code: str | None = None, path: str | None = None, ttft_s: float | None = None,
                        prompt_tokens: int | None = None, completion_tokens: int | None = None,
                        gen_s: float | None = None, batch_size: int | None = None, queue_s: float | None = None,
                        cold_load_s: float | None = None) -> None:
        """Everything one finished request tells, in one call (on the request's end: answer sent, stream
        closed, error returned). ``adapter``: artifact id, :data:`BASE`, or None before resolution."""
        t, a = tenant or NO_TENANT, adapter or UNRESOLVED
        self.requests.labels(t, a, status_class(status)).inc()
        if status >= 400 or error_code:
            self.errors.labels(t, a, str(int(status)), error_code or "none").inc()
        if latency_s is not None and latency_s >= 0:
            self.latency.labels(t, a).observe(latency_s)
        if ttft_s is not None and ttft_s >= 0:
            self.ttft.labels(t, a).observe(ttft_s)
        if prompt_tokens:
            self.prompt_tokens.labels(t, a).inc(prompt_tokens)
        if completion_tokens:
            self.completion_tokens.labels(t, a).inc(completion_tokens)
        if gen_s is not None and gen_s > 0:
            self.generation_seconds.labels(t, a).inc(gen_s)
            if completion_tokens:
                self.tokens_per_s.labels(t, a).observe(completion_tokens / gen_s)
        if queue_s is not None and queue_s >= 0:
            self.queue_wait.labels(a).observe(queue_s)
        if batch_size:
            self.batch_size.labels(a).observe(batch_size)
        if path:
            self.engine_path.labels(a, path).inc()
        if cold_load_s is not None:
            self.observe_load(a, cold_load_s)

    def observe_load(self, adapter: str, seconds: float | None, *, ok: bool = True) -> None:
        """One adapter load (a request's cold load, or a prefetch after an alias move)."""
        self.cold_loads.labels(adapter, "ok" if ok else "failed").inc()
        if ok and seconds is not None and seconds >= 0:
            self.load_seconds.labels(adapter).observe(seconds)

    @contextmanager
    def track(self, tenant: str | None, adapter: str | None) -> Iterator[None]:
        """Count a request in flight for the duration of the block."""
        g = self.in_flight.labels(tenant or NO_TENANT, adapter or UNRESOLVED)
        g.inc()
        try:
            yield
        finally:
            g.dec()

    def request_started(self, tenant: str | None, adapter: str | None) -> None:
        self.in_flight.labels(tenant or NO_TENANT, adapter or UNRESOLVED).inc()

    def request_ended(self, tenant: str | None, adapter: str | None) -> None:
        self.in_flight.labels(tenant or NO_TENANT, adapter or UNRESOLVED).dec()

    # -- from the engine -----------------------------------------------------------------------
    def set_pool(self, *, resident: int | Iterable[str], hits: int, misses: int, evictions: int | None = None,
                 capacity: int | None = None, memory_bytes: int | None = None,
                 memory_budget_bytes: int | None = None, pinned: int | None = None,
                 loading: int | None = None, merged_bytes: int | None = None) -> None:
        """The pool's statistics as the engine counts them (hits, misses and evictions are its running totals).
        ``resident``: a count, or the resident artifact ids (then each is also exposed by name)."""
        ids = None if isinstance(resident, int) else sorted(resident)
        opt = {"capacity": capacity, "memory_bytes": memory_bytes, "memory_budget_bytes": memory_budget_bytes,
               "pinned": pinned, "loading": loading, "merged_bytes": merged_bytes}
        with self._pool.lock:
            self._pool.values.update(hits=hits, misses=misses, resident=len(ids) if ids is not None else resident)
            if evictions is not None:
                self._pool.values["evictions"] = evictions
            self._pool.optional.update({k: v for k, v in opt.items() if v is not None})
            self._pool.resident_ids = ids

    # -- traces --------------------------------------------------------------------------------
    def trace_written(self, n: int = 1) -> None:
        self.traces_written.inc(n)

    def trace_dropped(self, reason: str, n: int = 1) -> None:
        self.traces_dropped.labels(reason).inc(n)

    def bind_trace_queue(self, depth: Callable[[], float]) -> None:
        self.trace_queue.set_function(depth)

    # -- exposition ----------------------------------------------------------------------------
    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """(body, content type) for ``GET /metrics``: Prometheus text format, or OpenMetrics when the
        scraper's ``Accept`` header asks for it."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
