"""vLLM as the generation engine behind tuneops' own front (``tuneops serve --engine vllm``).

The front (serve/app.py) stays what it is with the embedded engine — tenants, API keys, alias and
canary routing, signature / sunset / integrity checks, prompt rendering with the base's chat template,
tracing, metrics, OpenAI-shaped errors — and hands each request to the engine as a ``GenRequest``
(token ids, sampling settings, a cancel Event, a deadline, an ``on_delta`` callback). ``VLLMEngine``
implements that engine protocol on top of :class:`~tuneops.serve.vllm.VLLMBackend`:

- every ``GenRequest`` becomes one streamed ``POST /v1/completions`` to vLLM with ``prompt`` = the
  token ids the front encoded (vLLM's ``CompletionRequest.prompt`` accepts ``list[int]``), so both
  engines see exactly the same prompt; ``model`` = the **artifact id** (never an alias: a name that
  moves could be served from vLLM's caches with the old weights) or the base's served name;
  ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``, ``n``, neutral ``top_k`` / ``min_p`` /
  ``repetition_penalty`` (else vLLM takes them from the model's generation_config.json, and would sample
  differently from the embedded engine) and ``stream_options = {include_usage, continuous_usage_stats}``
  (per-choice token counts);
- an adapter vLLM does not have yet is verified (``pool.adapter_dir``: hashes, signature, sunset,
  readable weights), exported (``runtime_exporter``) and registered under its artifact id
  (``POST /v1/load_lora_adapter``) first; that time is the result's ``cold_load_s``;
- deltas go to ``on_delta`` per choice index with the embedded engine's text semantics: stop strings
  are cut before the stop (finish "stop"), "length" at ``max_tokens``, text stripped, and a delta
  never holds a stop string, a tail that could still become one, or whitespace the final strip
  removes — the deltas concatenate to the final text;
- cancel (client gone) or the deadline closes the upstream stream — vLLM aborts a request whose client
  disconnects — and the result keeps the text so far (finish "length", ``interrupted`` "cancelled" /
  "time_limit");
- upstream failures are the future's exception, the backend's OpenAI-shaped ``UpstreamError``
  (503 + Retry-After when vLLM is down or broken; a 4xx keeps its status), so the front answers them
  like any ``TuneopsError`` and never with a 500.

The HTTP client runs on its own event loop thread: ``submit`` (called from the front's threads) only
schedules, never blocks; batching and concurrency are vLLM's job. Alias moves: a watcher reads the
registry's aliases and applies moves with ``VLLMBackend.sync_aliases`` (new target loaded first; the
old one unloaded once its in-flight requests finished), and a health poller marks /healthz degraded
while vLLM does not answer ``/health``.

:func:`vllm_engine_factory` returns the ``engine_factory`` for ``create_app``: it starts the vLLM process
of a :class:`~tuneops.serve.vllm.VLLMPlan` (or connects to one already running), waits until it is
ready, and stops it when the engine closes.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures as cf
import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

from tuneops.errors import InvalidInput, TuneopsError
from tuneops.serve.protocol import Choice, GenRequest, GenResult, final_prefix
from tuneops.serve.vllm import (
    RETRY_AFTER_S, UpstreamError, VLLMBackend, VLLMNotInstalled, VLLMPlan, VLLMProcess, map_upstream_error,
    parse_sse_event, runtime_exporter,
)
from tuneops.store.schema import ArtifactRecord

log = logging.getLogger("tuneops.serve.vllm_engine")

PATH = "vllm"                       # GenResult.path for every request this engine ran
POLL_S = 0.05                       # how often requests in flight are checked for cancel / deadline
MIN_SAMPLING_TEMPERATURE = 1e-4     # as the embedded engine: below it, greedy
HEALTH_KEY = "engine:vllm"          # the pool failure key /healthz shows while vLLM is down
_INT64_MAX = 2**63 - 1


class VLLMEngineClosed(TuneopsError):
    http_status = 503
    error_type = "server_error"
    error_code = "engine_closed"


def require_vllm(executable: str = "vllm") -> str:
    """The path of the ``vllm`` executable, or :class:`VLLMNotInstalled` saying how to get it."""
    found = shutil.which(executable)
    if found is None:
        raise VLLMNotInstalled(
            f"vLLM is not installed here: {executable!r} is not on PATH, so `tuneops serve --engine vllm` cannot "
            "start it",
            hint="install it where a supported GPU is (`pip install vllm`), or serve with the embedded engine "
                 "(`tuneops serve` without --engine vllm)")
    return found


# -- one choice's text -------------------------------------------------------------------------------

class _ChoiceText:
    """The text of one choice as it streams in, with the embedded engine's semantics (serve/engine.py
    ``_Row``): cut before a stop string, stripped, and streamed only where final."""

    def __init__(self, index: int, req: GenRequest, deliver: Callable[[int, str], None]):
        self.index, self.req, self.deliver = index, req, deliver
        self.raw = ""               # what vLLM sent (cut at a stop string)
        self.sent = ""              # what went to on_delta
        self.finish: str | None = None   # vLLM's finish_reason, or "stop" once a stop string was seen here
        self.tokens: int | None = None   # completion tokens, from vLLM's per-choice usage
        self.pieces = 0             # chunks with text (a token count when vLLM sends no usage)
        self.text: str | None = None

    def add(self, piece: str) -> None:
        if self.finish is not None or not piece:
            return
        self.pieces += 1
        self.raw += piece
        # vLLM leaves stop strings out of the text (include_stop_str_in_output is off); cut anyway, as a
        # server started with other defaults may not.
        cuts = [self.raw.find(s) for s in self.req.stop if s and s in self.raw]
        if cuts:
            self.raw = self.raw[:min(cuts)]
            self.finish = "stop"
            return
        self._stream(self.raw, final=False)

    def end(self) -> str:
        self.text = self.raw.strip()
        self._stream(self.text, final=True)
        return self.text

    def _stream(self, text: str, *, final: bool) -> None:
        if self.req.on_delta is None:
            return
        if not final:
            text = final_prefix(text, self.req.stop)
        if len(text) > len(self.sent) and text.startswith(self.sent):
            delta, self.sent = text[len(self.sent):], text
            self.deliver(self.index, delta)
        elif final and not text.startswith(self.sent):
            log.warning("%s: streamed text is not a prefix of the final text", self.req.tag)


class _Run:
    """One request in flight: its choices and timings."""

    def __init__(self, req: GenRequest, deliver: Callable[[int, str], None]):
        self.req = req
        self.submitted = time.monotonic()
        self.opened: float | None = None      # vLLM accepted the request (the stream is open)
        self.first_text: float | None = None
        self.cold_load_s: float | None = None
        self.total_tokens: int | None = None  # the final usage chunk's completion tokens (all choices)
        self.choices = [_ChoiceText(i, req, deliver) for i in range(req.n)]
        self.work: asyncio.Task | None = None
        self.reason: str | None = None        # why it was interrupted ("cancelled" / "time_limit")


def _signed_seed(seed: int | None) -> int | None:
    """The front accepts seeds up to 2**64 - 1; vLLM's seed is a signed 64-bit integer."""
    if seed is None:
        return None
    return seed - 2**64 if seed > _INT64_MAX else seed


def _stream_error(obj: dict) -> UpstreamError:
    """An error event inside vLLM's stream (or the backend's own, for a stream cut short) -> the error."""
    err = obj["error"] if isinstance(obj.get("error"), dict) else obj
    code = err.get("code")
    message = str(err.get("message") or "the vLLM engine failed this request")
    if isinstance(code, str) and code.startswith("engine_"):  # SSEStream: the engine went away mid-stream
        return UpstreamError(503, message, code=code, retry_after=RETRY_AFTER_S)
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    return map_upstream_error(status, json.dumps({"error": err}))


# -- the engine ----------------------------------------------------------------------------------------

class VLLMEngine:
    """The engine protocol of serve/app.py (``submit``, ``prefetch``, ``stats``, ``evict``, ``close``)
    over a vLLM OpenAI server; see the module docstring.

    pool: the front's AdapterPool (store, base, ``adapter_dir`` verification, failure records).
    plan: what vLLM was started with (its URL, served base name, static modules, alias targets).
    process: the VLLMProcess to stop on close (None: vLLM is managed elsewhere).
    runtime_checked: export adapters registered at runtime through ``registry export`` (which loads the
        base on CPU to compare logits) rather than as verified copies.
    alias_interval / health_interval: seconds between alias-move checks and ``/health`` polls (None: off).
    max_connections: concurrent HTTP connections to vLLM (each request in flight holds one).
    """

    def __init__(self, pool, plan: VLLMPlan, *, process: VLLMProcess | None = None, runtime_checked: bool = False,
                 alias_interval: float | None = 1.0, health_interval: float | None = 2.0,
                 max_connections: int = 1024, timeout: float = 600.0, connect_timeout: float = 5.0,
                 drain_timeout: float = 600.0):
        self.pool = pool
        self.plan = plan
        self.process = process
        self._lock = threading.Lock()
        self._stats = dict(submitted=0, completed=0, failed=0, interrupted=0, hits=0, misses=0, loads=0,
                           load_failures=0, evictions=0, running=0, waiting=0, path_vllm=0)
        self._load_times: list[float] = []
        self._closed = False
        self._healthy: bool | None = None
        self._trees: dict[str, str] = {}            # artifact id -> tree hash (for evict(tree))
        self._alias_failed: set[tuple[str, str]] = set()
        self._base_of: dict[str, str] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="tuneops-vllm-engine", daemon=True)
        self._thread.start()
        self._tasks: set[asyncio.Task] = set()
        self._runs: set[_Run] = set()
        self._loads: dict[str, asyncio.Task] = {}
        adapter_path = runtime_exporter(pool.store, plan, checked=runtime_checked)

        async def make_backend() -> VLLMBackend:
            import httpx

            client = httpx.AsyncClient(
                base_url=plan.url, timeout=httpx.Timeout(timeout, connect=connect_timeout),
                limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=min(64, max_connections)))
            return plan.backend(adapter_path=adapter_path, client=client, drain_timeout=drain_timeout)

        self.backend: VLLMBackend = self._call(make_backend(), timeout=30)
        for aid in plan.modules:  # the static --lora-modules: evict(tree) must find them too
            try:
                self._trees[aid] = pool.store.get_artifact(aid).tree
            except TuneopsError:
                pass
        self._background = [self._spawn(self._watch_interrupts())]
        if alias_interval:
            self._background.append(self._spawn(self._watch_aliases(alias_interval)))
        if health_interval:
            self._background.append(self._spawn(self._watch_health(health_interval)))

    # -- loop plumbing ----------------------------------------------------------------------------------
    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro, timeout: float | None = None):
        """Run a coroutine on the engine's loop and wait for it (from another thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _spawn(self, coro) -> cf.Future:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                self._stats[k] = self._stats.get(k, 0) + v

    # -- the engine protocol ----------------------------------------------------------------------------
    def submit(self, req: GenRequest) -> "cf.Future[GenResult]":
        """Schedule the request on vLLM; never blocks. The future gets the GenResult or the exception
        (a TuneopsError: UpstreamError, IntegrityError, …) that refused it."""
        future: cf.Future = cf.Future()
        future.set_running_or_notify_cancel()  # the front stops a request with req.cancel, not Future.cancel
        try:
            if not req.prompt_ids:
                raise InvalidInput("prompt_ids is empty")
            if req.max_new_tokens < 1 or req.n < 1:
                raise InvalidInput(f"max_new_tokens and n must be >= 1 (got {req.max_new_tokens}, {req.n})")
            if self._closed:
                raise VLLMEngineClosed("the generation engine is shut down")
        except TuneopsError as e:
            self._count(submitted=1, failed=1)
            future.set_exception(e)
            return future
        self._count(submitted=1, waiting=1)
        self._spawn(self._generate(req, future))
        return future

    def prefetch(self, artifact: ArtifactRecord) -> None:
        """Register an adapter in vLLM before anyone asks for it (an alias's new target, a pinned one);
        errors are only logged (the first request retries)."""
        if artifact is None or self._closed:
            return

        async def go():
            try:
                await self._ensure(artifact)
            except Exception as e:  # noqa: BLE001
                log.warning("prefetch of %s failed: %s", artifact.id, getattr(e, "message", e))

        self._spawn(go())

    def evict(self, tree: str) -> None:
        """Unload from vLLM every artifact with this tree hash (its files failed verification, its key
        was revoked, its sunset passed); the next request that may use it registers it again."""
        if self._closed:
            return
        ids = [aid for aid, t in list(self._trees.items()) if t == tree]

        async def go():
            for aid in ids:
                if aid in self.backend.loaded:
                    try:
                        await self.backend.unload(aid)
                    except UpstreamError as e:
                        log.warning("evicting %s from vLLM failed: %s", aid, e.message)

        if ids:
            self._spawn(go())

    def stats(self) -> dict:
        """What the front's /healthz and /metrics read, plus this engine's counters."""
        with self._lock:
            s = dict(self._stats)
            times = sorted(self._load_times)
        resident = self._snapshot(lambda: list(self.backend.loaded))
        pinned = self._snapshot(lambda: set(self.backend.alias_targets.values()))
        s.update(
            engine="vllm", url=self.plan.url, healthy=self._healthy,
            resident_ids=resident, resident=len(resident), pinned=len(pinned & set(resident)),
            loading=len(self._loads), max_resident=self.backend.max_cpu_loras,
            busy=s["running"] > 0, load_s_p50=_quantile(times, 0.5), load_s_p95=_quantile(times, 0.95),
            load_s_max=times[-1] if times else None,
            vllm_pid=self.process.pid if self.process is not None else None,
        )
        return s

    @staticmethod
    def _snapshot(read):
        # the loop thread may be changing the container: retry a copy that raced with it
        for _ in range(10):
            try:
                return read()
            except RuntimeError:
                continue
        return read()

    def close(self) -> None:
        """Stop: requests in flight end as cancelled (their text so far), the client closes, and the vLLM
        process (when this engine started it) is stopped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._call(self._shutdown(), timeout=30)
        except Exception:  # noqa: BLE001  (stop the process whatever happened here)
            log.warning("vLLM engine shutdown did not finish cleanly", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if self.process is not None:
            self.process.stop()

    async def _shutdown(self) -> None:
        for run in list(self._runs):
            run.req.cancel.set()
            if run.reason is None and run.work is not None and not run.work.done():
                run.reason = "cancelled"
                run.work.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)
        for t in [*self._tasks, *self._loads.values()]:
            t.cancel()
        for fut in self._background:
            fut.cancel()
        await self.backend.aclose()

    # -- adapters ---------------------------------------------------------------------------------------
    async def _ensure(self, art: ArtifactRecord) -> float | None:
        """Make sure vLLM has the artifact under its id; the seconds this took when it had to load it
        (shared by concurrent requests for the same artifact), None when it was there."""
        if art.id in self.backend.loaded:
            return None
        task = self._loads.get(art.id)
        if task is None:
            task = self._loop.create_task(self._load(art))
            self._loads[art.id] = task
            task.add_done_callback(lambda t, aid=art.id: (self._loads.pop(aid, None),
                                                          t.cancelled() or t.exception()))
        # shielded: a request that gives up waiting does not abort the load the next one will use
        return await asyncio.shield(task)

    async def _load(self, art: ArtifactRecord) -> float | None:
        started = time.monotonic()
        self._trees[art.id] = art.tree
        try:
            # the front's loader: stored files verified, signature and sunset re-checked, weights readable
            # (an IntegrityError here is what lets the front fall back to the base)
            await asyncio.to_thread(self.pool.adapter_dir, art)
            loaded = await self.backend.ensure_loaded(art)
        except BaseException:
            self._count(load_failures=1)
            raise
        if not loaded:
            return None
        took = time.monotonic() - started
        with self._lock:
            self._stats["loads"] += 1
            self._load_times.append(took)
            del self._load_times[:-1000]
        return took

    # -- one request ------------------------------------------------------------------------------------
    def _deliver(self, req: GenRequest) -> Callable[[int, str], None]:
        def deliver(index: int, delta: str) -> None:
            try:
                req.on_delta(index, delta)
            except Exception:  # noqa: BLE001  (a broken callback must not stop the request)
                log.exception("%s: on_delta raised", req.tag)
        return deliver

    @staticmethod
    def _interrupt_reason(req: GenRequest) -> str | None:
        if req.cancel.is_set():
            return "cancelled"
        if req.deadline is not None and time.monotonic() >= req.deadline:
            return "time_limit"
        return None

    async def _generate(self, req: GenRequest, future: cf.Future) -> None:
        run = _Run(req, self._deliver(req))
        me = asyncio.current_task()
        self._tasks.add(me)
        work = run.work = self._loop.create_task(self._work(run))
        self._runs.add(run)  # from here on, _watch_interrupts may cancel ``work``
        try:
            await asyncio.wait({work})
            if work.cancelled():
                result = self._result(run, run.reason or "cancelled")
            elif work.exception() is not None:
                raise work.exception()
            else:  # done (also when it finished just as it was being interrupted)
                result = self._result(run, None)
        except BaseException as e:  # noqa: BLE001  (every failure is this request's answer)
            work.cancel()  # the engine is shutting down (this task was cancelled) or the work failed
            if not isinstance(e, TuneopsError):
                if isinstance(e, asyncio.CancelledError):
                    e = VLLMEngineClosed("the generation engine is shut down")
                else:
                    log.error("%s: the vLLM engine failed", req.tag, exc_info=e)
                    e = UpstreamError(503, f"the vLLM engine failed this request ({type(e).__name__})",
                                      code="engine_error", retry_after=RETRY_AFTER_S)
            self._count(failed=1, **({"waiting": -1} if run.opened is None else {"running": -1}))
            future.set_exception(e)
        else:
            self._count(completed=1, path_vllm=1, interrupted=1 if any(c.interrupted for c in result.choices) else 0,
                        **({"waiting": -1} if run.opened is None else {"running": -1}))
            future.set_result(result)
        finally:
            self._runs.discard(run)
            self._tasks.discard(me)

    async def _work(self, run: _Run) -> None:
        req = run.req
        art = req.artifact
        if art is not None:
            if art.id in self.backend.loaded:
                self._count(hits=1)
            else:
                self._count(misses=1)
            run.cold_load_s = await self._ensure(art)
        body = {"prompt": [int(t) for t in req.prompt_ids], "max_tokens": int(req.max_new_tokens),
                "temperature": float(req.temperature) if req.temperature >= MIN_SAMPLING_TEMPERATURE else 0.0,
                "top_p": float(req.top_p), "n": int(req.n),
                # vLLM takes unset sampling knobs from the model's generation_config.json (a top_k of 20, a
                # repetition penalty…); the embedded engine samples with temperature and top_p only
                "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        if req.stop:
            body["stop"] = list(req.stop)
        if req.seed is not None:
            body["seed"] = _signed_seed(req.seed)
        stream = await self.backend.completion(body, art, stream=True)
        run.opened = time.monotonic()
        self._count(waiting=-1, running=1)
        req.started.set()
        try:
            async for event in stream:
                obj = parse_sse_event(event)
                if obj is None:
                    continue
                if obj == "[DONE]":
                    break
                if not isinstance(obj, dict):
                    continue
                if "error" in obj or obj.get("object") == "error":
                    raise _stream_error(obj)
                usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else None
                choices = obj.get("choices") or []
                if not choices and usage is not None:
                    run.total_tokens = usage.get("completion_tokens")
                for ch in choices:
                    i = ch.get("index", 0)
                    if not isinstance(i, int) or not 0 <= i < len(run.choices):
                        continue
                    c = run.choices[i]
                    text = ch.get("text") or ""
                    if text and run.first_text is None:
                        run.first_text = time.monotonic()
                    c.add(text)
                    if usage is not None and isinstance(usage.get("completion_tokens"), int):
                        c.tokens = usage["completion_tokens"]
                    if ch.get("finish_reason") and c.finish is None:
                        c.finish = "length" if ch["finish_reason"] == "length" else "stop"
        finally:
            await stream.aclose()

    def _result(self, run: _Run, interrupted: str | None) -> GenResult:
        req = run.req
        now = time.monotonic()
        choices = []
        for c in run.choices:
            tokens = c.tokens
            if tokens is None:
                tokens = run.total_tokens if (req.n == 1 and run.total_tokens is not None) else c.pieces
            text = c.end()
            if c.finish is not None:
                choices.append(Choice(text=text, finish_reason=c.finish, completion_tokens=tokens))
            elif interrupted is not None:
                choices.append(Choice(text=text, finish_reason="length", completion_tokens=tokens,
                                      interrupted=interrupted if tokens < req.max_new_tokens else None))
            else:  # the stream ended without a finish_reason for this choice
                choices.append(Choice(text=text, finish_reason="length" if tokens >= req.max_new_tokens else "stop",
                                      completion_tokens=tokens))
        opened = run.opened if run.opened is not None else now
        return GenResult(choices=choices, path=PATH, batch_size=1, queue_s=opened - run.submitted,
                         ttft_s=(run.first_text - run.submitted) if run.first_text is not None else None,
                         gen_s=now - opened if run.opened is not None else 0.0, cold_load_s=run.cold_load_s)

    # -- background: interrupts, alias moves, health ----------------------------------------------------
    async def _watch_interrupts(self) -> None:
        """One ticker for every request in flight: a request whose cancel Event is set (its client left)
        or whose deadline passed has its work cancelled, which closes its upstream stream (vLLM aborts a
        request whose client disconnects)."""
        while True:
            await asyncio.sleep(POLL_S)
            for run in list(self._runs):
                if run.reason is None and run.work is not None and not run.work.done():
                    reason = self._interrupt_reason(run.req)
                    if reason is not None:
                        run.reason = reason
                        run.work.cancel()

    async def sync(self, targets: dict[str, str]) -> dict:
        """Apply alias moves (``name@stage`` -> artifact id, every alias on this base): each new target is
        verified and registered in vLLM first; an alias whose new target cannot be loaded is left out
        (its requests load on demand, and fail there with the reason); then the backend's mapping
        switches and retired targets are unloaded once idle."""
        ok: dict[str, str] = {}
        for alias, aid in targets.items():
            if self.backend.alias_targets.get(alias) == aid:
                ok[alias] = aid
                continue
            if (alias, aid) in self._alias_failed:
                continue
            try:
                art = await asyncio.to_thread(self.pool.store.get_artifact, aid)
                await asyncio.to_thread(self.pool.check, art)
                await self._ensure(art)
            except TuneopsError as e:
                self._alias_failed.add((alias, aid))
                log.warning("vLLM: %s -> %s is not registered ahead of requests: %s", alias, aid,
                            e.message.splitlines()[0])
                continue
            ok[alias] = aid
        moved = await self.backend.sync_aliases(ok)
        if moved["moved"]:
            log.info("vLLM: alias moves %s; retiring %s", moved["moved"], moved["retiring"])
        return moved

    async def _watch_aliases(self, interval: float) -> None:
        from tuneops.release.registry import aliases

        seen: dict[str, str] | None = None
        while True:
            try:
                rows = await asyncio.to_thread(aliases, self.pool.store)
                current = {}
                for a in rows:
                    base = self._base_of.get(a.artifact_id)
                    if base is None:
                        base = (await asyncio.to_thread(self.pool.store.get_artifact, a.artifact_id)).base_id
                        self._base_of[a.artifact_id] = base
                    if base == self.plan.base_id:
                        current[f"{a.name}@{a.stage}"] = a.artifact_id
                if current != seen:
                    await self.sync(current)
                    seen = current
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001  (the watcher must outlive a store or engine hiccup)
                log.warning("vLLM alias watch failed (retrying): %s", getattr(e, "message", e))
            await asyncio.sleep(interval)

    async def _watch_health(self, interval: float) -> None:
        """Poll vLLM's /health; while it does not answer (or the process exited), /healthz is degraded."""
        record = getattr(self.pool, "record_engine_failure", None)
        while True:
            try:
                problem = None
                if self.process is not None and not self.process.running():
                    code = self.process.proc.poll() if self.process.proc is not None else None
                    problem = f"the vLLM process exited (status {code}); see {self.process.log_path}"
                elif not await self.backend.health():
                    problem = f"the vLLM engine at {self.plan.url} does not answer /health"
                healthy = problem is None
                if healthy != self._healthy:
                    if not healthy:
                        log.warning("%s", problem)
                    elif self._healthy is False:
                        log.info("the vLLM engine at %s answers again", self.plan.url)
                    self._healthy = healthy
                    if record is not None:
                        record(HEALTH_KEY, None if healthy else problem)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.warning("vLLM health poll failed", exc_info=True)
            await asyncio.sleep(interval)


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# -- the factory -----------------------------------------------------------------------------------------

def vllm_engine_factory(plan: VLLMPlan, *, start: bool = True, log_path: Path | None = None,
                        start_timeout: float = 900.0, on_step: Callable[[str], None] | None = None,
                        **engine_kw) -> Callable[..., VLLMEngine]:
    """``engine_factory`` for ``create_app``: given the front's pool, start vLLM as the plan says (``start``;
    False: connect to a server already running at ``plan.url``), wait until ``GET /health`` answers (at
    most ``start_timeout`` s; the process is stopped on failure), and return a :class:`VLLMEngine` that
    stops the process when it closes (and at interpreter exit, should the front never get that far).
    ``log_path``: vLLM's log (default ``STORE/logs/vllm.log``). ``engine_kw`` go to VLLMEngine."""
    step = on_step or (lambda _m: None)

    def factory(pool) -> VLLMEngine:
        if pool.base.id != plan.base_id:
            raise InvalidInput(f"the vLLM plan serves {plan.base_id}, but the front serves {pool.base.id}",
                               hint="build the plan (build_command) for the base given to create_app")
        process = None
        if start:
            process = VLLMProcess.from_plan(plan, Path(log_path) if log_path else pool.store.home / "logs" / "vllm.log")
            step(f"starting vLLM on {plan.url} (log: {process.log_path})…")
            process.start()
            atexit.register(process.stop)
            try:
                process.wait_ready(timeout=start_timeout)
            except BaseException:
                process.stop()
                raise
            step(f"vLLM is ready (pid {process.pid})")
        try:
            return VLLMEngine(pool, plan, process=process, **engine_kw)
        except BaseException:
            if process is not None:
                process.stop()
            raise

    return factory


__all__ = ["HEALTH_KEY", "PATH", "VLLMEngine", "VLLMEngineClosed", "require_vllm", "vllm_engine_factory"]
