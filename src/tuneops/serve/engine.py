"""The generation engine: continuous batching of requests for different LoRA adapters in one forward pass.

    engine = BatchEngine(model, tokenizer, adapter_dir)
    future = engine.submit(GenRequest(artifact, prompt_ids, max_new_tokens=32))
    result = future.result()          # GenResult: choices, path, timings
    engine.stats(); engine.close()

How it works:

- One scheduler thread owns the model and runs the decode loop itself (no ``model.generate``).
  Batching is **continuous**: rows join at step boundaries (a request's rows are prefilled on their
  own, then their KV cache is left-padded and concatenated to the running batch's) and leave as soon
  as they finish (their cache rows are dropped, all-padding columns trimmed). When the batch is empty,
  the engine waits ``batch_window_s`` after the first arrival to gather a batch.
- Every ``nn.Linear`` of the base is wrapped by ``multilora.MultiLoRALinear``; each row's adapter is a
  slot index (0 = the bare base), so rows for different adapters and for the base share each forward.
- Left padding with the attention mask and per-row position ids: a row's tokens do not depend on
  its batch mates. Greedy rows take the argmax; sampled rows (temperature > 0) sample with their own
  ``torch.Generator`` seeded from the request's seed (choice k of n gets its own stream), so a seed
  gives the same tokens whatever it is batched with. ``n`` > 1 greedy = one row, copied.
- Adapters live in an LRU pool keyed by the artifact's content hash (``artifact.tree``), never by a
  name: ``max_resident`` slots, optional ``memory_budget_bytes``, pinning. Cold loads read the files
  on ``max_cold_loads`` loader threads while hot requests keep decoding; the scheduler only copies
  the ready tensors into a slot.
- What the batched path cannot serve exactly (DoRA, modules_to_save, prefix/prompt tuning, IA3,
  rank > ``max_lora_rank``, rank/alpha patterns, …) runs on the PEFT path: a PEFT model on a copy of
  the base that shares its weights, one adapter at a time, one request at a time, on the same
  thread, between batches. ``GenResult.path`` says "batched", "peft", "merged" or "base".
- ``merge_hot``: when one adapter carries at least ``merge_hot_share`` of the last ``merge_hot_window``
  rows admitted, a merged copy of the layers it targets (``W + scale * B @ A``, built on a loader
  thread, memory permitting) serves it: its rows take no LoRA step, other rows subtract its delta
  (``multilora``). When its share falls below ``merge_hot_share - 0.3`` the copy is dropped. Every
  switch is logged, counted (``merges``/``unmerges``, ``merged_tree`` in ``stats()``) and its
  requests say ``path == "merged"``.

Semantics match ``eval.generate.generate_chat``: greedy when temperature == 0; stop strings cut the
text before the stop (finish "stop"); EOS -> "stop"; ``max_new_tokens`` -> "length"; cancel or
deadline -> "length" with ``interrupted`` "cancelled" / "time_limit"; text is stripped. Streaming
(``on_delta``) sends only text that is final: never a stop string, nor a tail that could still
become one, nor whitespace the final strip would remove; the deltas concatenate to the final text.
"""

import concurrent.futures as cf
import copy
import logging
import secrets
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tuneops.errors import IntegrityError, InvalidInput, TuneopsError
from tuneops.serve.multilora import LoRAContext, LoRAWeights, inject_multilora, read_lora_adapter
from tuneops.serve.protocol import AdapterDir, Choice, GenRequest, GenResult, final_prefix

log = logging.getLogger("tuneops.serve.engine")

MIN_SAMPLING_TEMPERATURE = 1e-4   # as eval.generate: below it sampling is greedy in effect (and overflows)
IDLE_POLL_S = 0.05                # how often an idle scheduler looks at cancels and deadlines of queued work


class EngineClosed(TuneopsError):
    http_status = 503


# -- one row of generation: sampling, stop strings, streaming -------------------------------------------

class _Row:
    """One completion being generated: its tokens, sampler and text state."""

    def __init__(self, engine: "BatchEngine", job: "_Job", index: int, seed: int | None):
        req = job.req
        self.engine, self.job, self.index = engine, job, index
        self.tokens: list[int] = []
        self.prompt_len = len(req.prompt_ids)
        self.sampling = req.temperature >= MIN_SAMPLING_TEMPERATURE
        self.generator = None
        if self.sampling:
            base = seed if seed is not None else secrets.randbits(63)
            # Choice k gets its own stream; the golden-ratio step keeps streams of nearby seeds apart.
            self.generator = torch.Generator(device="cpu").manual_seed((base + index * 0x9E3779B97F4A7C15) % 2**64)
        self.done = False
        self.finish: str | None = None
        self.interrupted: str | None = None
        self.text: str | None = None
        self.sent = ""                 # text already streamed
        self.watch_text = bool(req.stop) or req.on_delta is not None

    def pick(self, logits: torch.Tensor) -> int:
        """The next token from this row's logits (1-D): argmax, or a sample from its own generator."""
        if not self.sampling:
            return int(logits.argmax())
        req = self.job.req
        scores = logits.float() / req.temperature
        if req.top_p < 1.0:  # as transformers' TopPLogitsWarper (keeps at least one token)
            sorted_scores, order = torch.sort(scores, descending=False)
            remove = sorted_scores.softmax(-1).cumsum(-1) <= (1 - req.top_p)
            remove[-1] = False
            scores = scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))
        return int(torch.multinomial(scores.softmax(-1), 1, generator=self.generator))

    def push(self, token: int) -> bool:
        """Append a generated token; finish the row on a stop string, EOS or the length limit."""
        self.tokens.append(token)
        req = self.job.req
        eng = self.engine
        full = None
        if self.watch_text:
            full = eng.decode(self.tokens)
            cuts = [full.find(s) for s in req.stop if s in full]
            if cuts:
                return self._end(full[:min(cuts)], "stop")
        if token == eng.eos_id:
            return self._end(full if full is not None else eng.decode(self.tokens), "stop")
        if len(self.tokens) >= req.max_new_tokens:
            return self._end(full if full is not None else eng.decode(self.tokens), "length")
        if req.on_delta is not None:
            self._stream(full, final=False)
        return False

    def interrupt(self, reason: str) -> None:
        if not self.done:
            self._end(self.engine.decode(self.tokens), "length",
                      interrupted=reason if len(self.tokens) < self.job.req.max_new_tokens else None)

    def _end(self, text: str, finish: str, interrupted: str | None = None) -> bool:
        self.done, self.finish, self.interrupted = True, finish, interrupted
        self.text = text.strip()
        if self.job.req.on_delta is not None:
            self._stream(self.text, final=True)
        return True

    def _stream(self, text: str, *, final: bool) -> None:
        if not final:
            text = final_prefix(text, self.job.req.stop)
        if len(text) > len(self.sent) and text.startswith(self.sent):
            delta, self.sent = text[len(self.sent):], text
            self.job.deliver(self.index, delta)
        elif final and not text.startswith(self.sent):
            log.warning("%s: streamed text is not a prefix of the final text", self.job.req.tag)


@dataclass(eq=False)
class _Job:
    req: GenRequest
    future: cf.Future
    key: str | None                  # adapter content hash (artifact.tree); None = base
    path: str                        # "batched" | "peft" | "merged" | "base"
    adapter_path: Path | None = None
    submitted: float = field(default_factory=time.monotonic)
    rows: list[_Row] = field(default_factory=list)
    started: float | None = None     # first forward pass
    first_token: float | None = None
    batch_size: int = 0
    cold_load_s: float | None = None
    slot: int = 0
    copies: int = 1                  # greedy n > 1: one row, n identical choices

    def deliver(self, index: int, delta: str) -> None:
        try:
            for k in range(self.copies):
                self.req.on_delta(index + k, delta)
        except Exception:  # noqa: BLE001  (a broken callback must not stop the engine)
            log.exception("%s: on_delta raised", self.req.tag)

    def interrupt_reason(self, now: float) -> str | None:
        if self.req.cancel.is_set():
            return "cancelled"
        if self.req.deadline is not None and now >= self.req.deadline:
            return "time_limit"
        return None


@dataclass
class _Slot:
    key: str
    index: int
    rank: int
    nbytes: int
    refs: int = 0       # jobs running with it
    pinned: bool = False


# -- the engine ------------------------------------------------------------------------------------------

class BatchEngine:
    """Batched generation over one base and many LoRA adapters; see the module docstring.

    max_batch: rows per forward pass. batch_window_s: how long an empty engine waits to gather a batch.
    max_resident / memory_budget_bytes: the adapter pool's size (slots, and bytes of LoRA weights).
    max_lora_rank: larger adapters take the PEFT path. max_cold_loads: adapters read from disk at once.
    pinned: artifacts (records, ids or tree hashes) never evicted; records given here are prefetched.
    merge_hot: serve a dominant adapter from merged weights (see the module docstring);
    merge_hot_max_bytes: the most bytes the merged copy may take (default: half the memory available).
    """

    def __init__(self, model, tokenizer, adapter_dir: AdapterDir, *, max_batch: int = 8,
                 batch_window_s: float = 0.005, max_resident: int = 64, memory_budget_bytes: int | None = None,
                 max_lora_rank: int = 64, max_cold_loads: int = 2, pinned=(), lora_mode: str = "auto",
                 merge_hot: bool = False, merge_hot_share: float = 0.8, merge_hot_window: int = 64,
                 merge_hot_max_bytes: int | None = None):
        self.tokenizer = tokenizer
        self.adapter_dir = adapter_dir
        self.max_batch = max_batch
        self.batch_window_s = batch_window_s
        self.max_resident = max_resident
        self.memory_budget_bytes = memory_budget_bytes
        self.max_lora_rank = max_lora_rank
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        model.eval()
        from transformers import DynamicCache

        # Rows join a running batch by left-padding and concatenating plain KV caches; sliding-window
        # or other special cache layers would need their own merge.
        kinds = {type(layer).__name__ for layer in DynamicCache(config=model.config).layers}
        if kinds - {"DynamicLayer"}:
            raise InvalidInput(f"BatchEngine supports models with plain KV caches only (this one uses {sorted(kinds)})")
        # The PEFT path wraps copies of the untouched base that share its weight tensors (no extra memory).
        self._pristine = _shared_copy(model)
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.ctx = LoRAContext(lora_mode)
        self.wrapped = inject_multilora(model, self.ctx)

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._inbox: deque = deque()
        self._closed = False
        # Scheduler-thread state.
        self._waiting: list[_Job] = []               # not started: ready, loading, or PEFT
        self._running: list[_Row] = []
        self._cache = None
        self._mask: torch.Tensor | None = None
        self._slots: OrderedDict[str, _Slot] = OrderedDict()   # LRU: oldest first
        self._free_slots: list[int] = []
        self._capacity = 1                            # slots allocated in the layers (slot 0 = no adapter)
        self._next_slot = 1
        self._loading: dict[str, float] = {}          # key -> load start
        self._loaded: dict[str, tuple[LoRAWeights, float]] = {}   # read, waiting for a free slot
        self._peft_only: OrderedDict[str, str] = OrderedDict()    # key -> why the batched path can't
        self._peft_model = None
        self._peft_key: str | None = None
        self._pinned_refs: set[str] = set()
        self._pinned_trees: dict[str, str] = {}      # artifact id pinned -> its tree, learned from requests
        self._stats = dict(submitted=0, completed=0, failed=0, hits=0, misses=0, evictions=0, loads=0,
                           load_failures=0, prefills=0, decode_steps=0, rows_decoded=0, max_rows=0,
                           path_batched=0, path_peft=0, path_merged=0, path_base=0, peft_hits=0, peft_loads=0,
                           merges=0, unmerges=0, merge_refusals=0)
        # merge_hot: which adapter is served from merged weights, and the recent rows that decide it.
        self.merge_hot = merge_hot
        self.merge_hot_share = merge_hot_share
        self.merge_hot_max_bytes = merge_hot_max_bytes
        self._recent: deque = deque(maxlen=max(1, merge_hot_window))   # keys of recently admitted rows
        self._hot: _Slot | None = None            # merged (holds a ref on its slot)
        self._merging: _Slot | None = None        # merge being built (holds a ref too)
        self._merge_note: dict = dict(merged_tree=None, merged_bytes=0, last_switch=None)
        self._load_times: list[float] = []
        self._pool = dict(resident=0, pinned=0, adapter_bytes=0, resident_trees=[])   # published by _publish_pool
        self._loader = cf.ThreadPoolExecutor(max_workers=max(1, max_cold_loads), thread_name_prefix="lora-load")
        self._thread = threading.Thread(target=self._run, name="batch-engine", daemon=True)
        self._thread.start()
        for ref in pinned:
            self.pin(ref)
            if not isinstance(ref, str):
                self.prefetch(ref)

    # -- public API --------------------------------------------------------------------------------------
    def submit(self, req: GenRequest) -> "cf.Future[GenResult]":
        """Queue a request; the future gets its GenResult, or the exception that refused it.

        The adapter's files are verified here, on the caller's thread (``adapter_dir``): a failing
        artifact fails only this future.
        """
        future: cf.Future = cf.Future()
        try:
            if not req.prompt_ids:
                raise InvalidInput("prompt_ids is empty")
            if req.max_new_tokens < 1 or req.n < 1:
                raise InvalidInput(f"max_new_tokens and n must be >= 1 (got {req.max_new_tokens}, {req.n})")
            path = None
            if req.artifact is not None:
                path = Path(self.adapter_dir(req.artifact))
        except Exception as e:  # noqa: BLE001  (refused: only this request)
            if req.artifact is not None and isinstance(e, IntegrityError):
                self._post(("invalidate", req.artifact.tree))
            future.set_exception(e)
            with self._lock:
                self._stats["submitted"] += 1
                self._stats["failed"] += 1
            return future
        job = _Job(req=req, future=future, key=req.artifact.tree if req.artifact is not None else None,
                   path="base" if req.artifact is None else "batched", adapter_path=path)
        with self._lock:
            if self._closed:
                future.set_exception(EngineClosed("the generation engine is shut down"))
                return future
            self._stats["submitted"] += 1
        self._post(("job", job))
        return future

    def evict(self, ref) -> None:
        """Drop a resident adapter (a content hash; its files failed verification, its signature or sunset no
        longer allows serving it). Rows running with it finish first; the next request loads it afresh."""
        self._post(("invalidate", ref))

    def prefetch(self, artifact) -> None:
        """Start loading an adapter (e.g. an alias's new target) without a request; errors are only logged."""
        try:
            path = Path(self.adapter_dir(artifact))
        except Exception as e:  # noqa: BLE001
            log.warning("prefetch of %s failed: %s", getattr(artifact, "id", artifact), e)
            return
        self._post(("prefetch", artifact.tree, path))

    def pin(self, ref) -> None:
        """Never evict this adapter (an ArtifactRecord, artifact id or tree hash) once it is resident."""
        with self._lock:
            self._pinned_refs.update(_refs(ref))
        self._post(("repin",))

    def unpin(self, ref) -> None:
        with self._lock:
            refs = _refs(ref)
            refs |= {self._pinned_trees.pop(r) for r in list(refs) if r in self._pinned_trees}
            self._pinned_refs.difference_update(refs)
        self._post(("repin",))

    def stats(self) -> dict:
        """Counters for /metrics: requests, paths, pool hits/misses/evictions/load times, batch sizes."""
        with self._lock:
            s = dict(self._stats)
            times = sorted(self._load_times)
            pool = dict(self._pool)
            queued = len(self._inbox)
            note = dict(self._merge_note)
        s.update(
            **pool, **note, loading=len(self._loading),
            storage_bytes=sum(m.storage_bytes() for m in self.wrapped.values()),
            max_resident=self.max_resident, memory_budget_bytes=self.memory_budget_bytes,
            running_rows=len(self._running), waiting=len(self._waiting) + queued,
            load_s_p50=_quantile(times, 0.5), load_s_p95=_quantile(times, 0.95),
            load_s_max=times[-1] if times else None,
            mean_rows_per_step=(s["rows_decoded"] / s["decode_steps"]) if s["decode_steps"] else None,
        )
        return s

    def close(self) -> None:
        """Stop: running requests end as cancelled, queued ones fail with EngineClosed."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        self._thread.join(timeout=30)
        self._loader.shutdown(wait=False, cancel_futures=True)

    # -- helpers shared with rows ------------------------------------------------------------------------
    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _post(self, item) -> None:
        with self._lock:
            self._inbox.append(item)
            self._wake.notify_all()

    # -- the scheduler thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._lock:
                    closed = self._closed
                    items = list(self._inbox)
                    self._inbox.clear()
                for item in items:
                    self._handle(item)
                if items:
                    self._publish_pool()
                if closed:
                    self._shutdown()
                    return
                try:
                    self._expire_waiting()
                    self._install_loaded()
                    if self._admit():
                        continue
                    if self._running:
                        self._decode_step()
                        continue
                    if self._run_one_peft():
                        continue
                except Exception as e:  # noqa: BLE001  (the engine keeps serving; this batch fails)
                    log.exception("generation failed")
                    self._fail_running(e)
                    continue
                with self._lock:
                    if not self._inbox and not self._closed:
                        self._wake.wait(timeout=self._idle_timeout())

    def _idle_timeout(self) -> float:
        if any(self._ready(j) for j in self._waiting):
            return max(0.0, min(j.submitted for j in self._waiting if self._ready(j)) + self.batch_window_s
                       - time.monotonic())
        return IDLE_POLL_S

    def _handle(self, item) -> None:
        kind = item[0]
        if kind == "job":
            job = item[1]
            self._waiting.append(job)
            if job.key is not None:
                self._route(job)
        elif kind == "loaded":
            _, key, weights, error, started = item
            self._loading.pop(key, None)
            if error is not None:
                self._count("load_failures")
                for job in [j for j in self._waiting if j.key == key and j.path == "batched"]:
                    self._fail(job, error)
            elif weights.unsupported:
                log.info("adapter %s takes the PEFT path: %s", key[:12], weights.unsupported)
                self._peft_only[key] = weights.unsupported
                while len(self._peft_only) > 4096:
                    self._peft_only.popitem(last=False)
                for job in self._waiting:
                    if job.key == key:
                        job.path = "peft"
            else:
                self._loaded[key] = (weights, started)
        elif kind == "prefetch":
            _, key, path = item
            if key not in self._slots and key not in self._loading and key not in self._peft_only \
                    and key not in self._loaded:
                self._start_load(key, path)
        elif kind == "merged":
            self._install_merge(*item[1:])
        elif kind == "invalidate":
            if self._hot is not None and self._hot.key == item[1]:
                self._unmerge(f"adapter {item[1][:12]} was invalidated")
            if self._merging is not None and self._merging.key == item[1]:
                self._merging.refs -= 1
                self._merging = None    # the merge being built is dropped when it arrives
            slot = self._slots.get(item[1])
            if slot is not None and slot.refs == 0:
                self._evict(slot)
            if self._peft_key == item[1]:
                self._peft_model, self._peft_key = None, None
        elif kind == "repin":
            for slot in self._slots.values():
                slot.pinned = slot.key in self._pinned_refs

    def _route(self, job: _Job) -> None:
        """Pool lookup for a new adapter request: hit, join a load in progress, or start one."""
        key = job.key
        self._pinned_refs_seen(job)
        if key in self._peft_only:
            job.path = "peft"
            return
        if key in self._slots:
            self._count("hits")
            self._slots.move_to_end(key)
            return
        self._count("misses")
        job.cold_load_s = -1.0  # filled when the load completes
        if key not in self._loading and key not in self._loaded:
            self._start_load(key, job.adapter_path)

    def _pinned_refs_seen(self, job: _Job) -> None:
        with self._lock:
            if job.req.artifact.id in self._pinned_refs and job.key not in self._pinned_refs:
                self._pinned_refs.add(job.key)         # pinned by id: pin its content hash too
                self._pinned_trees[job.req.artifact.id] = job.key

    def _start_load(self, key: str, path: Path) -> None:
        self._loading[key] = time.monotonic()
        started = self._loading[key]

        def load():
            try:
                weights = read_lora_adapter(path, self.wrapped, max_rank=self.max_lora_rank, dtype=self.dtype)
                self._post(("loaded", key, weights, None, started))
            except Exception as e:  # noqa: BLE001  (any unreadable file: this adapter is not served)
                err = IntegrityError(f"adapter {key[:12]}: its stored files cannot be loaded:\n  {path}: "
                                     f"{type(e).__name__}: {e}", hint="re-register the artifact from its run")
                err.__cause__ = e
                self._post(("loaded", key, None, err, started))

        self._loader.submit(load)

    def _ready(self, job: _Job) -> bool:
        return job.path == "base" or (job.path == "batched" and job.key in self._slots)

    def _count(self, name: str, k: int = 1) -> None:
        with self._lock:
            self._stats[name] += k

    # -- the adapter pool --------------------------------------------------------------------------------
    def _install_loaded(self) -> None:
        for key in list(self._loaded):
            weights, started = self._loaded[key]
            waiters = [j for j in self._waiting if j.key == key]
            if not waiters and key in self._slots:
                del self._loaded[key]
                continue
            if self.memory_budget_bytes is not None and weights.nbytes > self.memory_budget_bytes:
                del self._loaded[key]
                for job in waiters:
                    self._fail(job, InvalidInput(f"adapter {key[:12]} needs {weights.nbytes} bytes, more than the "
                                                 f"pool's memory budget ({self.memory_budget_bytes})"))
                continue
            if not self._make_room(weights.nbytes):
                if all(s.pinned for s in self._slots.values()) and len(self._slots) >= self.max_resident:
                    del self._loaded[key]
                    for job in waiters:
                        self._fail(job, InvalidInput("the adapter pool is full of pinned adapters",
                                                     hint="unpin some, or raise max_resident"))
                continue   # wait for running rows to release a slot
            del self._loaded[key]
            self._install(key, weights)
            dt = time.monotonic() - started
            with self._lock:
                self._load_times.append(dt)
                if len(self._load_times) > 1000:
                    del self._load_times[:500]
                self._stats["loads"] += 1
            for job in waiters:
                if job.cold_load_s is not None:
                    job.cold_load_s = dt

    def _publish_pool(self) -> None:
        slots = list(self._slots.values())
        with self._lock:
            self._pool = dict(resident=len(slots), pinned=sum(sl.pinned for sl in slots),
                              adapter_bytes=sum(sl.nbytes for sl in slots), resident_trees=[sl.key for sl in slots])

    def _make_room(self, nbytes: int) -> bool:
        def over() -> bool:
            used = sum(s.nbytes for s in self._slots.values())
            return len(self._slots) + 1 > self.max_resident or (
                self.memory_budget_bytes is not None and used + nbytes > self.memory_budget_bytes)

        wanted = {j.key for j in self._waiting}
        while over():
            free = [s for s in self._slots.values() if s.refs == 0 and not s.pinned]
            # Least recently used first, sparing adapters that queued requests are about to use.
            victim = next((s for s in free if s.key not in wanted), free[0] if free else None)
            if victim is None:
                return False
            self._evict(victim)
        return True

    def _evict(self, slot: _Slot) -> None:
        for layer in self.wrapped.values():
            layer.clear_slot(slot.index)
        del self._slots[slot.key]
        self._free_slots.append(slot.index)
        self._count("evictions")
        self._publish_pool()

    def _install(self, key: str, weights: LoRAWeights) -> None:
        if self._free_slots:
            index = self._free_slots.pop()
        else:
            index = self._next_slot
            self._next_slot += 1
        if index >= self._capacity:
            # Grow geometrically: every growth reallocates and copies the layers' slot tensors.
            self._capacity = min(max(2 * self._capacity, index + 1), self.max_resident + 1)
            for layer in self.wrapped.values():
                if layer.A is not None:
                    layer.ensure(self._capacity, 0)
        capacity = self._capacity
        for name, (A, B, scale) in weights.modules.items():
            layer = self.wrapped[name]
            layer.ensure(capacity, A.shape[0])
            layer.set_slot(index, A, B, scale)
        with self._lock:
            pinned = key in self._pinned_refs
        self._slots[key] = _Slot(key=key, index=index, rank=weights.rank, nbytes=weights.nbytes, pinned=pinned)
        self._publish_pool()

    # -- admission and generation ------------------------------------------------------------------------
    def _expire_waiting(self) -> None:
        now = time.monotonic()
        for job in self._waiting:
            if job.path == "batched" and job.key not in self._slots and job.key not in self._loading \
                    and job.key not in self._loaded and job.key not in self._peft_only:
                self._start_load(job.key, job.adapter_path)   # evicted before it could run: load again
        for job in list(self._waiting):
            if job.future.cancelled():
                self._waiting.remove(job)
                continue
            reason = job.interrupt_reason(now)
            if reason is not None:
                self._waiting.remove(job)
                n = job.req.n
                job.rows = []
                self._complete(job, [Choice(text="", finish_reason="length", completion_tokens=0,
                                            interrupted=reason) for _ in range(n)])

    def _admit(self) -> bool:
        """Prefill ready requests into the running batch; True if a forward pass ran."""
        ready = [j for j in self._waiting if self._ready(j)]
        if not ready:
            return False
        # Requests queued behind a PEFT request wait for it, so the PEFT path cannot starve.
        peft_since = min((j.submitted for j in self._waiting if j.path == "peft"), default=None)
        if peft_since is not None:
            ready = [j for j in ready if j.submitted < peft_since]
            if not ready:
                return False
        if not self._running:
            now = time.monotonic()
            rows_ready = sum(_rows_of(j.req) for j in ready)
            if rows_ready < self.max_batch and now < ready[0].submitted + self.batch_window_s:
                return False
        room = self.max_batch - len(self._running)
        chosen = []
        for job in ready:
            need = _rows_of(job.req)
            if need <= room or (not chosen and not self._running):
                chosen.append(job)
                room -= need
            if room <= 0:
                break
        if not chosen:
            return False
        for job in chosen:
            self._waiting.remove(job)
            if not job.future.set_running_or_notify_cancel():
                continue
            job.slot = 0
            if job.key is not None:
                slot = self._slots[job.key]
                slot.refs += 1
                job.slot = slot.index
                self._slots.move_to_end(job.key)
                if self._hot is slot:
                    job.path = "merged"
            self._make_rows(job)
            self._recent.extend([job.key] * len(job.rows))
        chosen = [j for j in chosen if j.rows]
        if chosen:
            self._prefill(chosen)
        if self.merge_hot:
            try:
                self._consider_merge()
            except Exception:  # noqa: BLE001  (merging is an optimisation: never fail the batch over it)
                log.exception("merge_hot: deciding whether to merge failed")
        return True

    def _make_rows(self, job: _Job) -> None:
        req = job.req
        sampling = req.temperature >= MIN_SAMPLING_TEMPERATURE
        count = req.n if sampling else 1
        job.copies = 1 if sampling else req.n
        job.rows = [_Row(self, job, i, req.seed) for i in range(count)]

    def _prefill(self, jobs: list[_Job]) -> None:
        rows = [r for j in jobs for r in j.rows]
        prompts = [r.job.req.prompt_ids for r in rows]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        now = time.monotonic()
        for j in jobs:
            j.started = now
            j.req.started.set()  # the front stops counting its queue timeout
            j.batch_size = max(j.batch_size, len(rows) + len(self._running))
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        self.ctx.route([r.job.slot for r in rows], device=self.device)
        try:
            out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                             position_ids=positions.to(self.device), past_key_values=cache, use_cache=True,
                             logits_to_keep=1)
        except Exception as e:  # noqa: BLE001  (only the joining requests fail)
            self.ctx.clear()
            for j in jobs:
                self._release(j)
                self._fail(j, e)
            return
        self.ctx.clear()
        self._count("prefills")
        logits = out.logits[:, -1, :]
        self._merge(cache, mask.to(self.device), rows)
        self._take_tokens(logits, rows)
        for j in jobs:
            j.first_token = time.monotonic()
        self._prune()

    def _merge(self, cache, mask: torch.Tensor, rows: list[_Row]) -> None:
        """Join freshly prefilled rows to the running batch (left-pad the shorter cache, concatenate)."""
        if not self._running:
            self._cache, self._mask, self._running = cache, mask, list(rows)
            return
        old, new = self._mask.shape[1], mask.shape[1]
        if old < new:
            _pad_cache_left(self._cache, new - old)
            self._mask = torch.nn.functional.pad(self._mask, (new - old, 0))
        elif new < old:
            _pad_cache_left(cache, old - new)
            mask = torch.nn.functional.pad(mask, (old - new, 0))
        for mine, theirs in zip(self._cache.layers, cache.layers):
            mine.keys = torch.cat([mine.keys, theirs.keys], 0)
            mine.values = torch.cat([mine.values, theirs.values], 0)
        self._mask = torch.cat([self._mask, mask], 0)
        self._running.extend(rows)

    def _decode_step(self) -> None:
        now = time.monotonic()
        for job in {id(r.job): r.job for r in self._running}.values():
            reason = job.interrupt_reason(now)
            if reason is not None:
                for r in job.rows:
                    r.interrupt(reason)
        self._prune()
        if not self._running:
            return
        rows = self._running
        ids = torch.tensor([[r.tokens[-1]] for r in rows], dtype=torch.long, device=self.device)
        positions = torch.tensor([[r.prompt_len + len(r.tokens) - 1] for r in rows], dtype=torch.long,
                                 device=self.device)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(rows), 1))], 1)
        self.ctx.route([r.job.slot for r in rows], device=self.device)
        try:
            out = self.model(input_ids=ids, attention_mask=self._mask, position_ids=positions,
                             past_key_values=self._cache, use_cache=True)
        finally:
            self.ctx.clear()
        with self._lock:
            self._stats["decode_steps"] += 1
            self._stats["rows_decoded"] += len(rows)
            self._stats["max_rows"] = max(self._stats["max_rows"], len(rows))
        for job in {id(r.job): r.job for r in rows}.values():
            job.batch_size = max(job.batch_size, len(rows))
        self._take_tokens(out.logits[:, -1, :], rows)
        self._prune()

    def _take_tokens(self, logits: torch.Tensor, rows: list[_Row]) -> None:
        greedy = logits.argmax(-1).tolist()
        for i, r in enumerate(rows):
            if not r.done:
                r.push(greedy[i] if not r.sampling else r.pick(logits[i]))

    def _prune(self) -> None:
        """Drop finished rows from the batch (and their cache), trim all-padding columns, finish jobs."""
        if not self._running:
            return
        keep = [i for i, r in enumerate(self._running) if not r.done]
        if len(keep) < len(self._running):
            finished = {id(r.job): r.job for r in self._running if r.done}
            if keep:
                idx = torch.tensor(keep, dtype=torch.long, device=self.device)
                for layer in self._cache.layers:
                    layer.keys = layer.keys.index_select(0, idx)
                    layer.values = layer.values.index_select(0, idx)
                self._mask = self._mask.index_select(0, idx)
                self._running = [self._running[i] for i in keep]
                first = int(self._mask.any(0).nonzero()[0])
                if first > 0:
                    for layer in self._cache.layers:
                        layer.keys = layer.keys[:, :, first:]
                        layer.values = layer.values[:, :, first:]
                    self._mask = self._mask[:, first:]
            else:
                self._running, self._cache, self._mask = [], None, None
            for job in finished.values():
                if all(r.done for r in job.rows):
                    self._release(job)
                    self._complete(job, self._choices(job))

    def _choices(self, job: _Job) -> list[Choice]:
        choices = []
        for r in job.rows:
            for _ in range(job.copies):
                choices.append(Choice(text=r.text, finish_reason=r.finish, completion_tokens=len(r.tokens),
                                      interrupted=r.interrupted))
        return choices

    def _release(self, job: _Job) -> None:
        if job.key is not None and job.path in ("batched", "merged"):
            slot = self._slots.get(job.key)
            if slot is not None and slot.index == job.slot:
                slot.refs -= 1

    def _complete(self, job: _Job, choices: list[Choice]) -> None:
        done = time.monotonic()
        result = GenResult(
            choices=choices, path=job.path, batch_size=max(job.batch_size, 1),
            queue_s=((job.started or done) - job.submitted),
            ttft_s=(job.first_token - job.submitted) if job.first_token is not None else None,
            gen_s=(done - job.started) if job.started is not None else 0.0,
            cold_load_s=job.cold_load_s if (job.cold_load_s or -1) >= 0 else None)
        with self._lock:
            self._stats["completed"] += 1
            self._stats[f"path_{job.path}"] += 1
        if not job.future.done():
            if job.future.running() or job.future.set_running_or_notify_cancel():
                job.future.set_result(result)

    def _fail(self, job: _Job, error: BaseException) -> None:
        if job in self._waiting:
            self._waiting.remove(job)
        with self._lock:
            self._stats["failed"] += 1
        if not job.future.done():
            if job.future.running() or job.future.set_running_or_notify_cancel():
                job.future.set_exception(error)

    def _fail_running(self, error: BaseException) -> None:
        jobs = {id(r.job): r.job for r in self._running}.values()
        self._running, self._cache, self._mask = [], None, None
        for job in jobs:
            self._release(job)
            self._fail(job, error)

    def _shutdown(self) -> None:
        for r in self._running:
            r.interrupt("cancelled")
        self._prune()
        for job in list(self._waiting):
            self._fail(job, EngineClosed("the generation engine was shut down before this request ran"))

    # -- merge_hot ---------------------------------------------------------------------------------------
    def _consider_merge(self) -> None:
        """Merge the adapter that carries most recent rows, or drop the merge when it no longer does."""
        window = self._recent
        if len(window) < window.maxlen:
            return
        counts = Counter(window)
        if self._hot is not None:
            share = counts.get(self._hot.key, 0) / len(window)
            if share < self.merge_hot_share - 0.3:
                self._unmerge(f"its share of the last {len(window)} rows fell to {share:.0%}")
            return
        if self._merging is not None:
            return
        key, top = max(((k, c) for k, c in counts.items() if k is not None), key=lambda kc: kc[1], default=(None, 0))
        slot = self._slots.get(key) if key is not None else None
        if slot is None or top / len(window) < self.merge_hot_share:
            return
        need = sum(layer.out_features * layer.in_features * layer.base.weight.element_size()
                   for layer in self.wrapped.values() if layer.A is not None and layer.ranks[slot.index])
        limit = self.merge_hot_max_bytes if self.merge_hot_max_bytes is not None else _available_bytes() // 2
        if need > limit:
            self._count("merge_refusals")
            log.warning("merge_hot: adapter %s carries %.0f%% of recent rows but a merged copy needs %.1f MB, more "
                        "than the %.1f MB allowed; it stays on the batched path", key[:12],
                        100 * top / len(window), need / 2**20, limit / 2**20)
            self._recent.clear()    # look again after another window, not on every step
            return
        slot.refs += 1
        self._merging = slot
        share = top / len(window)
        layers = dict(self.wrapped)

        def build():
            try:
                with torch.inference_mode():
                    merged = {name: layer.merge_weight(slot.index) for name, layer in layers.items()}
                self._post(("merged", slot, merged, None, share))
            except Exception as e:  # noqa: BLE001  (no merge: the adapter stays on the batched path)
                self._post(("merged", slot, None, e, share))

        self._loader.submit(build)

    def _install_merge(self, slot: _Slot, merged: dict | None, error, share: float) -> None:
        if self._merging is not slot:
            return              # invalidated while it was being built (its ref was released then)
        self._merging = None
        if error is not None or self._slots.get(slot.key) is not slot:
            slot.refs -= 1
            if error is not None:
                log.warning("merge_hot: merging adapter %s failed: %s", slot.key[:12], error)
            return
        nbytes = 0
        for name, layer in self.wrapped.items():
            layer.merged = merged.get(name)
            if layer.merged is not None:
                nbytes += layer.merged.numel() * layer.merged.element_size()
        self.ctx.hot_slot = slot.index
        self._hot = slot
        why = f"it carried {share:.0%} of the last {self._recent.maxlen} rows"
        self._note_switch("merge", slot.key, why, nbytes)
        log.info("merge_hot: serving adapter %s from a merged copy (%.0f MB): %s", slot.key[:12], nbytes / 2**20, why)

    def _unmerge(self, why: str) -> None:
        slot = self._hot
        if slot is None:
            return
        for layer in self.wrapped.values():
            layer.merged = None
        self.ctx.hot_slot = 0
        self._hot = None
        slot.refs -= 1
        self._note_switch("unmerge", slot.key, why, 0)
        log.info("merge_hot: adapter %s back on the batched path: %s", slot.key[:12], why)

    def _note_switch(self, action: str, key: str, why: str, nbytes: int) -> None:
        with self._lock:
            self._stats["merges" if action == "merge" else "unmerges"] += 1
            self._merge_note = dict(merged_tree=key if action == "merge" else None, merged_bytes=nbytes,
                                    last_switch={"action": action, "tree": key, "why": why, "at": time.time()})

    # -- the PEFT path -----------------------------------------------------------------------------------
    def _run_one_peft(self) -> bool:
        job = next((j for j in self._waiting if j.path == "peft"), None)
        if job is None:
            return False
        self._waiting.remove(job)
        if not job.future.set_running_or_notify_cancel():
            return True
        try:
            model = self._peft_model_for(job)
        except Exception as e:  # noqa: BLE001
            err = e if isinstance(e, TuneopsError) else IntegrityError(
                f"adapter {job.key[:12]}: PEFT cannot load its stored files:\n  {job.adapter_path}: "
                f"{type(e).__name__}: {e}", hint="re-register the artifact from its run")
            if err is not e:
                err.__cause__ = e
            self._fail(job, err)
            return True
        from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        self._make_rows(job)
        rows, req = job.rows, job.req
        engine = self

        class PickPerRow(LogitsProcessor):
            # Each row chooses with its own sampler; greedy decoding then takes that one token.
            def __call__(self, input_ids, scores):
                for i, r in enumerate(rows):
                    if not r.done:
                        tok = r.pick(scores[i])
                        scores[i] = float("-inf")
                        scores[i, tok] = 0.0
                return scores

        class RowsDone(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                if job.first_token is None:
                    job.first_token = time.monotonic()
                for i, r in enumerate(rows):
                    if not r.done:
                        r.push(int(input_ids[i, -1]))
                reason = "cancelled" if engine._closed else job.interrupt_reason(time.monotonic())
                if reason is not None:
                    for r in rows:
                        r.interrupt(reason)
                engine._count("rows_decoded", len(rows))
                return torch.tensor([r.done for r in rows], dtype=torch.bool, device=input_ids.device)

        ids = torch.tensor([req.prompt_ids] * len(rows), dtype=torch.long, device=self.device)
        job.started = time.monotonic()
        job.req.started.set()
        job.batch_size = len(rows)
        try:
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=req.max_new_tokens,
                           do_sample=False, temperature=None, top_p=None, top_k=None,
                           logits_processor=LogitsProcessorList([PickPerRow()]),
                           stopping_criteria=StoppingCriteriaList([RowsDone()]),
                           pad_token_id=self.pad_id, eos_token_id=self.eos_id)
        except Exception as e:  # noqa: BLE001
            log.exception("PEFT generation failed for %s", req.tag)
            self._fail(job, e)
            return True
        for r in rows:   # generate stopped on its own (e.g. a length limit it computed): close the rows
            if not r.done:
                r.interrupt("length")
                r.interrupted = None
        self._complete(job, self._choices(job))
        return True

    def _peft_model_for(self, job: _Job):
        if self._peft_key == job.key and self._peft_model is not None:
            self._count("peft_hits")
            return self._peft_model
        from peft import PeftModel

        self._peft_model, self._peft_key = None, None
        started = time.monotonic()
        model = PeftModel.from_pretrained(_shared_copy(self._pristine), str(job.adapter_path), adapter_name="served")
        model.eval()
        self._peft_model, self._peft_key = model, job.key
        job.cold_load_s = time.monotonic() - started
        self._count("peft_loads")
        return model


# -- small helpers ---------------------------------------------------------------------------------------

def _available_bytes() -> int:
    """Memory available to new allocations (Linux MemAvailable; elsewhere, assume 4 GiB)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def _rows_of(req: GenRequest) -> int:
    return req.n if req.temperature >= MIN_SAMPLING_TEMPERATURE else 1


def _shared_copy(model):
    """A structural copy of ``model`` whose parameters and buffers are the same tensors (no memory)."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


def _pad_cache_left(cache, n: int) -> None:
    for layer in cache.layers:
        k, v = layer.keys, layer.values
        layer.keys = torch.cat([k.new_zeros(k.shape[0], k.shape[1], n, k.shape[3]), k], 2)
        layer.values = torch.cat([v.new_zeros(v.shape[0], v.shape[1], n, v.shape[3]), v], 2)


def _refs(ref) -> set[str]:
    if isinstance(ref, str):
        return {ref}
    return {x for x in (getattr(ref, "id", None), getattr(ref, "tree", None)) if x}


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]
