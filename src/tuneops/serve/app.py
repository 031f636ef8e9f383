"""The embedded OpenAI-compatible server: one base in memory, adapters attached by PEFT.

``model`` in a request may be an alias (``quickstart`` = quickstart@production, or
``name@stage``), an artifact id (``ad-…``) or the base id. Every response names the base and
artifact that produced it (JSON field ``tuneops`` and ``X-Tuneops-*`` headers).

Bounded and hostile-input proof:

- Bodies over ``max_body_bytes`` get 413 before they are parsed; prompts that do not fit the
  base's context with the requested completion get 400 ``context_length_exceeded``.
- One generation runs at a time (PEFT's active adapter is global state) on one worker thread.
  A request stops generating, or stops waiting for its turn, when its client disconnects or
  its time runs out. Out of time while generating: the text so far comes back with
  finish_reason "length" and ``tuneops.interrupted = "time_limit"``; out of time (or past
  ``queue_timeout``) while still waiting: 503 ``server_busy`` with Retry-After.
- Every error is OpenAI-shaped JSON (``{"error": {"message", "type", "param", "code"}}``) and
  never echoes the raw input; nothing answers a bare 500. Unexpected exceptions are logged
  with their traceback and answered 503 ``internal_error`` with an id to find that log line.
- Message content is encoded as text (``encode_chat``): it can never become control tokens.
- Stored files are verified on every request that uses them; a mismatch unloads the adapter,
  answers 503 ``integrity_check_failed`` and turns /healthz to 503 "degraded" until the files
  verify again.
- An artifact is served only with a valid signature by a key the store trusts (else 403
  ``signature_missing`` / ``signature_untrusted`` / ``signature_revoked`` / ``signature_invalid``)
  and not after its deprecation sunset (410 ``model_sunset``), checked on every request; before the
  sunset a deprecated artifact is served with ``Deprecation``, ``Sunset`` and ``Warning`` headers and
  ``tuneops.deprecation`` in the body.
"""

import asyncio
import hmac
import json
import logging
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneops.errors import IntegrityError, InvalidInput, NotFound, TuneopsError
from tuneops.eval.generate import encode_chat
from tuneops.models.base import base_dir, load_base
from tuneops.release.registry import (
    ALIAS_RE, AliasDisabled, aliases, artifact_dir, check_release, deprecation_status, resolve_alias,
)
from tuneops.release.lineage import check_base_compatible
from tuneops.release.routing import CanaryMonitor, RouteCache, choose_target, should_shadow
from tuneops.serve.protocol import GenRequest, GenResult

# (pool) -> an engine with submit(GenRequest) -> Future[GenResult], prefetch(artifact), stats(), close()
EngineFactory = Callable[["AdapterPool"], Any]
from tuneops.serve.metrics import ServeMetrics
from tuneops.serve.tracing import TRACE_HEADER, Tracer
from tuneops.serve.tenants import OPEN, ModelNotAllowed, Principal, QuotaLimiter, TenantDirectory
from tuneops.store import Store
from tuneops.store.ids import sha256_bytes
from tuneops.store.schema import ArtifactRecord

log = logging.getLogger("tuneops.serve")

DEFAULT_MAX_TOKENS = 256  # chat completion budget when a request names none (OpenAI leaves it open-ended)
DEFAULT_COMPLETION_TOKENS = 16  # /v1/completions' documented default for max_tokens
POLL_S = 0.1  # how often a request checks for its client leaving
ALIAS_POLL_S = 0.5  # how often the server looks for alias moves to prefetch their new targets


# -- request and error models --------------------------------------------------------------

def _valid_unicode(value: Any) -> Any:
    # JSON can carry lone UTF-16 surrogates ("\ud800"); they are not text, and the tokenizer and
    # the JSON encoder of the answer both fail on them. Checked before the string's own
    # constraints so that every field reports it the same way (non-strings: str's own error).
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("contains a lone surrogate (U+D800-U+DFFF), which is not valid Unicode text") from None
    return value


Text = Annotated[str, BeforeValidator(_valid_unicode)]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. `name` is accepted and ignored
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]

    def as_template_message(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        # "developer" is OpenAI's newer name for the system role.
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


_UNSUPPORTED = "Not supported by this server: any value that changes the answer is refused (400 unsupported_parameter)."


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = Field(False, description="send a last chunk with the usage counts (and `tuneops`)")


_Stop = Annotated[Text, Field(min_length=1, max_length=128)] | \
    Annotated[list[Annotated[Text, Field(min_length=1, max_length=128)]], Field(max_length=4)] | None


class _GenParams(BaseModel):
    """What chat and text completions share. Unknown OpenAI params (metadata, store, service_tier, …) are
    accepted and ignored; the ones that would change the answer are declared and refused unless neutral."""
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    model: Text = Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy decoding")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling; used when temperature > 0")
    n: int = Field(1, ge=1, le=8, description="number of completions")
    stop: _Stop = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1,
                             description="makes sampling repeatable, whatever the request is batched with")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="only 0 is supported")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="only 0 is supported")
    stream: bool | None = Field(False, description="server-sent events, OpenAI's chunk format")
    stream_options: StreamOptions | None = None
    user: Text | None = Field(None, max_length=256, description="end-user id: canary splits stick to it")
    logprobs: Any = Field(None, description=_UNSUPPORTED)
    logit_bias: Any = Field(None, description=_UNSUPPORTED)


class ChatRequest(_GenParams):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: Any = Field(None, description=_UNSUPPORTED)
    tool_choice: Any = Field(None, description=_UNSUPPORTED)
    functions: Any = Field(None, description=_UNSUPPORTED)
    function_call: Any = Field(None, description=_UNSUPPORTED)
    top_logprobs: Any = Field(None, description=_UNSUPPORTED)
    response_format: Any = Field(None, description=_UNSUPPORTED + ' {"type": "text"} is accepted.')


class CompletionRequest(_GenParams):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=16)] = Field(
        description="the text to continue (no chat template), or a list of texts")
    echo: bool = Field(False, description="only false is supported")
    suffix: Text | None = Field(None, description=_UNSUPPORTED)
    best_of: int | None = Field(None, ge=1, le=8, description="only equal to n (or unset) is supported")


def _unsupported(req: _GenParams) -> str | None:
    """The first parameter whose value this server cannot honour, if any."""
    neutral = {
        "echo": lambda v: not v,
        "suffix": lambda v: v in (None, ""),
        "best_of": lambda v: v in (None, req.n),
        "tools": lambda v: v in (None, []),
        "functions": lambda v: v in (None, []),
        "tool_choice": lambda v: v in (None, "none"),
        "function_call": lambda v: v in (None, "none"),
        "logprobs": lambda v: v in (None, False),
        "top_logprobs": lambda v: v in (None, 0),
        "response_format": lambda v: v is None or v == {"type": "text"},
        "logit_bias": lambda v: v in (None, {}),
        "presence_penalty": lambda v: v == 0,
        "frequency_penalty": lambda v: v == 0,
    }
    return next((name for name, ok in neutral.items()
                 if hasattr(req, name) and not ok(getattr(req, name))), None)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape; every non-2xx answer of this server has it."""
    error: ErrorDetail


class APIError(Exception):
    """An OpenAI-shaped error answer raised from inside a request."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", *,
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}


def _error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
           code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": {"message": message, "type": type_, "param": param, "code": code}})


def _error_docs(*statuses: int) -> dict:
    what = {400: "Invalid request (validation, context length, unsupported parameter)",
            401: "Missing or wrong API key", 403: "The model (or this tenant) is not allowed",
            404: "Unknown model, or one this API key may not call", 413: "Request body too large",
            429: "Requests or tokens per minute used up (Retry-After says when to retry)",
            503: "Integrity check failed, server busy, or internal error"}
    return {s: {"model": ErrorResponse, "description": what[s]} for s in statuses}


# Pydantic puts the member of a union it tried into the error location (stop -> "str",
# "list[str]", content -> "list[TextPart]", "function-after[...]"); those are not field names.
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|[A-Z]\w*|\w+\[.*\]|function-\w+\[.*\])$")


def _param(loc: tuple) -> str | None:
    """("body", "messages", 0, "content") -> "messages[0].content"."""
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _UNION_TAG.match(str(part)):
            out += f".{part}" if out else str(part)
    return out or None


# -- the model pool ------------------------------------------------------------------------

class ClientGone(Exception):
    """The client disconnected; nobody is waiting for an answer."""


class AdapterPool:
    """The base model loaded once, the generation engine that applies adapters to it, and the checks
    every request passes before it reaches the engine (signature, sunset, base and template, files).

    The engine (serve/engine.py) owns the model on its own thread: requests for different adapters
    share one forward pass (per-row LoRA), adapters load on demand into an LRU pool keyed by their
    content hash, and what cannot be batched (DoRA, prefix/prompt tuning, IA3) runs through PEFT.
    """

    def __init__(self, store: Store, base_id: str, *, max_batch: int = 8, batch_window_s: float = 0.005,
                 max_resident: int = 64, memory_budget_bytes: int | None = None, max_cold_loads: int = 2,
                 pinned: tuple[str, ...] = (), engine_factory: "EngineFactory | None" = None,
                 merge_hot: bool = False):
        import copy

        self.store = store
        self.base = store.get_base(base_id)
        if engine_factory is None:
            model, self.tokenizer = load_base(store, self.base)
            config = model.config
        else:  # another engine (vLLM) holds the weights: only the tokenizer and config are needed here
            from transformers import AutoConfig, AutoTokenizer

            path = base_dir(store, self.base)
            model, self.tokenizer, config = None, AutoTokenizer.from_pretrained(path), AutoConfig.from_pretrained(path)
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
        template = getattr(self.tokenizer, "chat_template", None)
        self.template_sha256 = sha256_bytes(template.encode()) if isinstance(template, str) else None
        # Request threads encode prompts with their own copy: a HF fast tokenizer must not be used from
        # two threads at once, and the engine thread decodes with the original.
        self.count_tokenizer = copy.deepcopy(self.tokenizer)
        self.count_lock = threading.Lock()
        self.context_length: int | None = getattr(config, "max_position_embeddings", None)
        self.vocab_size: int = len(self.tokenizer)
        self.state_lock = threading.Lock()  # guards the bookkeeping below
        # id -> (artifact or None for the base, message, whether only a successful load clears it)
        self.failures: dict[str, tuple[ArtifactRecord | None, str, bool]] = {}
        self.known: dict[str, ArtifactRecord] = {}  # artifacts handed to the engine (for /healthz re-checks)
        # Trees whose files verified and loaded once: the same bytes (verify checks their hashes on every call)
        # load again, so the engine's per-request call of adapter_dir does not re-read the weights each time.
        self.loadable: set[str] = set()
        pinned_ids = [self._pin_target(p) for p in pinned]
        if engine_factory is not None:
            self.engine = engine_factory(self)
        else:
            from tuneops.serve.engine import BatchEngine

            self.engine = BatchEngine(model, self.tokenizer, self.adapter_dir, max_batch=max_batch,
                                      batch_window_s=batch_window_s, max_resident=max_resident,
                                      memory_budget_bytes=memory_budget_bytes, max_cold_loads=max_cold_loads,
                                      pinned=tuple(a.tree for a in pinned_ids), merge_hot=merge_hot)
        for art in pinned_ids:
            self.prefetch(art)

    def _pin_target(self, ref: str) -> ArtifactRecord:
        art, _ = self.resolve(ref)
        if art is None:
            raise InvalidInput(f"--pin {ref}: the base is always resident; pin an alias or artifact")
        return art

    # -- what a request may use ------------------------------------------------------------
    def resolve(self, ref: str) -> tuple[ArtifactRecord | None, str | None]:
        """(artifact or None for the base, alias label or None). An artifact must be validly signed by a
        trusted key and not past its sunset (SignatureError, SunsetPassed otherwise)."""
        if ref in (self.base.id, self.base.name):
            return None, None
        if ref.startswith("ad-"):
            art, label = self.store.get_artifact(ref), None
        elif ALIAS_RE.match(ref):
            art, label = resolve_alias(self.store, ref, serving=True), ref if "@" in ref else f"{ref}@production"
        else:
            raise NotFound(f"model {ref!r} is not an alias, artifact id or base id",
                           hint="see GET /v1/models")
        self.check(art)
        return art, label

    def check(self, art: ArtifactRecord) -> None:
        """Another base, or a chat template other than the one this server prompts with: refused, naming
        both; then signature and sunset (registry.check_release). A refused adapter that is resident (it
        was valid once: its key was revoked since, or its sunset passed) is evicted."""
        if art.kind != "adapter":
            raise InvalidInput(
                f"{art.id} is a full fine-tune (kind {art.kind}): this server serves adapters on {self.base.id}",
                hint=f"export it (`tuneops registry export {art.id} DIR --format merged`), import that folder as a "
                     "base (`tuneops models import DIR`) and serve it with `tuneops serve --base …`")
        check_base_compatible(self.store, art, self.base, template_sha256=self.template_sha256)
        try:
            check_release(self.store, art)
        except TuneopsError as e:
            log.warning("refused %s: %s", art.id, e.message)
            self.evict(art.tree)
            raise

    def evict(self, tree: str) -> None:
        """Drop a resident adapter (its files failed verification, its key was revoked, it passed its sunset)."""
        evict = getattr(self.engine, "evict", None)
        if evict is not None:
            evict(tree)
        else:
            self.engine._post(("invalidate", tree))

    def encode(self, chat: list[dict] | None = None, text: str | None = None) -> list[int]:
        with self.count_lock:
            if chat is not None:
                return encode_chat(self.count_tokenizer, chat)
            return [int(i) for i in self.count_tokenizer(text, add_special_tokens=False)["input_ids"]]

    # -- integrity ---------------------------------------------------------------------------
    def _record(self, key: str, artifact: ArtifactRecord | None, error: Exception | None, *,
                load_failed: bool = False):
        with self.state_lock:
            if error is None:
                self.failures.pop(key, None)
            else:
                self.failures[key] = (artifact, str(error), load_failed)

    def resident_ids(self, stats: dict) -> list[str]:
        """Artifact ids of the resident adapters (engines key them by content hash: ``resident_trees``)."""
        if "resident_ids" in stats:
            return sorted(stats["resident_ids"])
        with self.state_lock:
            by_tree = {a.tree: a.id for a in self.known.values()}
        return sorted(by_tree.get(t, t) for t in stats.get("resident_trees", []))

    def record_engine_failure(self, key: str, message: str | None) -> None:
        """An engine reports a failure of its own (vLLM not answering) for /healthz, or its end (None)."""
        self._record(key, None, RuntimeError(message) if message else None)

    def verify(self, artifact: ArtifactRecord | None) -> Path | None:
        """Check the base's and the artifact's stored files against their recorded hashes, on every request.

        registry.artifact_dir / models.base_dir verify (cached on size, mtime and ctime, so this is a few
        stat calls per request); a mismatch evicts the adapter, is remembered for /healthz and re-raised.
        """
        try:
            base_dir(self.store, self.base)
            self._record(self.base.id, None, None)
        except IntegrityError as e:
            self._record(self.base.id, None, e)
            raise
        if artifact is None:
            return None
        with self.state_lock:
            self.known[artifact.id] = artifact
        try:
            path = artifact_dir(self.store, artifact)
        except IntegrityError as e:
            self.evict(artifact.tree)
            self._record(artifact.id, artifact, e)
            raise
        with self.state_lock:
            load_failed = self.failures.get(artifact.id, (None, "", False))[2]
        if not load_failed:
            self._record(artifact.id, artifact, None)
        return path

    def adapter_dir(self, artifact: ArtifactRecord) -> Path:
        """The engine's loader (off the request path): verified files, still releasable; a file that
        verifies but cannot be read is an integrity failure too, cleared only by a successful load."""
        path = self.verify(artifact)
        check_release(self.store, artifact)  # a key may have been revoked, or the sunset passed, since resolve
        from peft.utils import load_peft_weights

        if artifact.tree in self.loadable:
            return path
        try:
            load_peft_weights(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001  (any failure to read stored files means: do not serve)
            err = IntegrityError(f"artifact {artifact.id}: its stored adapter files cannot be loaded:\n"
                                 f"  {path}: {type(e).__name__}: {e}", hint="re-register the artifact from its run")
            self._record(artifact.id, artifact, err, load_failed=True)
            raise err from e
        self._record(artifact.id, artifact, None)
        self.loadable.add(artifact.tree)
        return path

    def prefetch(self, artifact: ArtifactRecord) -> None:
        """Load an adapter before anyone asks for it (an alias's new target, a pinned adapter)."""
        try:
            self.engine.prefetch(artifact)
        except Exception:  # noqa: BLE001  (a prefetch that fails is retried by the first request)
            log.warning("prefetch of %s failed", artifact.id, exc_info=True)

    def health(self) -> dict[str, str]:
        """Re-verify the base, the known adapters and every earlier failure; {id: message} of failures."""
        with self.state_lock:
            failed = dict(self.failures)
            known = dict(self.known)
        checks = [(self.base.id, None)] + [(k, a) for k, a in known.items()]
        for key, art in checks:
            try:
                base_dir(self.store, self.base) if art is None else artifact_dir(self.store, art)
            except IntegrityError as e:
                self._record(key, art, e)
                continue
            # Files that verify but could not be loaded stay failed until a request loads them.
            if not (key in failed and failed[key][2]):
                self._record(key, art, None)
        with self.state_lock:
            return {key: message for key, (_, message, _) in self.failures.items()}

    def close(self):
        self.engine.close()


# -- the app -------------------------------------------------------------------------------

class _BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than this server accepts ({limit} bytes)")


class _Guard:
    """Outermost ASGI layer: caps the request body, and answers for any unexpected exception.

    The body cap is checked on Content-Length before anything is read, and on the bytes as they
    arrive for chunked bodies (raised as an HTTP 413 from ``receive``, which FastAPI passes on).
    Our own ASGI layer rather than FastAPI's ``max_body_size``, whose 413 is plain text.
    """

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _error(400, "Content-Length is not a number")(scope, receive, send)
            if int(declared) > limit:
                return await _error(413, str(_BodyTooLarge(limit).detail))(scope, receive, send)
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception as exc:  # noqa: BLE001  (the last resort: no request ever gets a bare 500)
            if started:
                raise
            if isinstance(exc, _BodyTooLarge):
                response = _error(413, exc.detail)
            else:
                error_id = f"err-{uuid.uuid4().hex[:12]}"
                log.exception("unexpected error %s on %s %s", error_id, scope.get("method"), scope.get("path"))
                response = _error(503, f"internal error {error_id} (the server log has its traceback); "
                                       "retry, and report it if it persists", "server_error",
                                  code="internal_error")
            await response(scope, receive, send)


def create_app(store: Store, base_id: str, *, api_key: str | None = None, max_body_bytes: int = 1 << 20,
               request_timeout: float = 120.0, queue_timeout: float | None = None,
               max_tokens_limit: int = 2048, max_batch: int = 8, batch_window_s: float = 0.005,
               max_resident: int = 64, memory_budget_mb: float | None = None, max_cold_loads: int = 2,
               pinned: tuple[str, ...] = (), fallback: Literal["error", "base"] = "error",
               trace_content: bool = False, engine_factory: "EngineFactory | None" = None,
               merge_hot: bool = False) -> FastAPI:
    """The OpenAI-compatible app serving ``base_id`` and the adapters trained on it.

    api_key: when set, /v1/* needs ``Authorization: Bearer <api_key>`` (else 401).
    max_body_bytes: larger request bodies get 413 before they are parsed.
    request_timeout: seconds a request may take, waiting for its turn included; generation stops
        then and returns what it has (finish_reason "length", ``tuneops.interrupted``).
    queue_timeout: seconds a request may wait for its turn (default: request_timeout); 503 after.
    max_tokens_limit: the largest max_tokens a request may ask for (400 above it).
    max_batch / batch_window_s: rows per forward pass, and how long the engine waits to fill one.
    max_resident / memory_budget_mb / max_cold_loads / pinned: the adapter pool (LRU by content hash).
    merge_hot: serve an adapter that carries most traffic from a merged copy of the base (memory permitting;
        embedded engine); requests it serves say ``path: merged``, /healthz and /metrics show the switch.
    fallback: when an adapter's files fail verification or loading, or its alias is switched off
        (`tuneops registry disable`), "error" answers 503 (integrity_check_failed, alias_disabled); "base"
        answers with the bare base and says so (``tuneops.fallback``,
        ``X-Tuneops-Fallback``).
    engine_factory: builds the generation engine from the pool (default: the embedded BatchEngine on the base
        loaded here); ``serve.vllm_engine`` puts vLLM behind the same front.
    trace_content: also keep each request's messages and answers in its trace, PII-redacted by the data
        layer's scanner (metadata — tenant, model, alias, artifact, base revision, timings — is always traced).
    """
    pool = AdapterPool(store, base_id, engine_factory=engine_factory, max_batch=max_batch, batch_window_s=batch_window_s,
                       max_resident=max_resident, max_cold_loads=max_cold_loads, pinned=tuple(pinned),
                       merge_hot=merge_hot, memory_budget_bytes=int(memory_budget_mb * 2**20) if memory_budget_mb else None)

    async def watch_aliases():
        """An alias move reaches new requests at once (every request resolves its alias); this prefetches
        the new target so the first request after a move does not pay the cold load."""
        seen: dict[tuple[str, str], str] = {}
        tenant_pins: set[str] = set()  # artifact ids pinned for tenants
        while True:
            try:
                current = {(a.name, a.stage): a.artifact_id for a in await run_in_threadpool(aliases, store)}
                moved = [aid for key, aid in current.items() if seen and seen.get(key) != aid]
                seen = current
                for aid in dict.fromkeys(moved):
                    art = await run_in_threadpool(store.get_artifact, aid)
                    if art.base_id == pool.base.id:
                        await run_in_threadpool(pool.prefetch, art)
                # Tenants' pinned aliases (`tuneops tenants pin`): their current targets stay resident.
                wanted = {current[(n, st)] for n, _, st in (a.partition("@") for a in directory.pinned_aliases())
                          if (n, st) in current}
                pin, unpin = getattr(pool.engine, "pin", None), getattr(pool.engine, "unpin", None)
                if pin is not None and wanted != tenant_pins:
                    for aid in wanted - tenant_pins:
                        art = await run_in_threadpool(store.get_artifact, aid)
                        if art.base_id == pool.base.id:
                            pin(art)
                            await run_in_threadpool(pool.prefetch, art)
                    for aid in tenant_pins - wanted:
                        if unpin is not None:
                            unpin(await run_in_threadpool(store.get_artifact, aid))
                    tenant_pins.clear()
                    tenant_pins.update(wanted)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001  (the watcher must outlive a store hiccup)
                log.warning("alias watch failed; retrying", exc_info=True)
            await asyncio.sleep(ALIAS_POLL_S)

    @asynccontextmanager
    async def lifespan(_app):
        watcher = asyncio.create_task(watch_aliases())
        yield
        watcher.cancel()
        bg.shutdown(wait=False, cancel_futures=True)
        pool.close()
        tracer.close()

    app = FastAPI(title="tuneops serve", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible chat completions for tuneops artifacts. Every error "
                              'answer is {"error": {"message", "type", "param", "code"}}.')
    app.state.pool = pool
    app.add_middleware(_Guard, max_body_bytes=max_body_bytes)

    class ChatCompletionRequest(ChatRequest):
        # The per-server cap is part of the published schema, so clients (and fuzzers) see it.
        max_tokens: int | None = Field(None, ge=1, le=max_tokens_limit)
        max_completion_tokens: int | None = Field(None, ge=1, le=max_tokens_limit)

    class TextCompletionRequest(CompletionRequest):
        max_tokens: int | None = Field(None, ge=1, le=max_tokens_limit)

    # -- auth: tenants (serve/tenants.py), or one shared key, or open for local development ------------
    bearer = HTTPBearer(auto_error=False, description="a tenant's API key (`tuneops tenants add`)")
    directory = TenantDirectory(store)
    limiter = QuotaLimiter()
    app.state.tenants = directory
    metrics = ServeMetrics()
    tracer = Tracer(store, metrics=metrics, content=trace_content)
    app.state.metrics, app.state.tracer = metrics, tracer
    routes = RouteCache(store)
    monitor = CanaryMonitor(store, routes=routes)
    app.state.monitor = monitor
    # Canary outcomes (which may write a rollback), shadow requests, trace writes: off the request path.
    bg = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tuneops-serve-bg")
    if directory.open_mode and not api_key:
        log.warning("no tenants and no API key: any client can call every model (local development only); "
                    "`tuneops tenants add NAME` makes keys required within 1 s")

    def principal_of(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        # A plain def: FastAPI runs it on the thread pool (the directory reads the store at most once a second).
        token = credentials.credentials if credentials else None
        principal = directory.authenticate(token)  # 401 / 403 tenant_disabled; OPEN when there are no tenants
        if principal is OPEN and api_key:
            if token is None:
                raise APIError(401, "You didn't provide an API key: send 'Authorization: Bearer <key>'.",
                               code="invalid_api_key", headers={"www-authenticate": "Bearer"})
            if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), api_key.encode("utf-8")):
                raise APIError(401, "Incorrect API key provided.", code="invalid_api_key",
                               headers={"www-authenticate": "Bearer"})
        return principal

    doc_statuses = (400, 401, 403, 404, 413, 429, 503)

    # -- errors --------------------------------------------------------------------------
    def _trace_error(request: Request, status: int, code: str | None) -> dict:
        """Finish the request's trace (or a new one: errors before it began, e.g. a bad key) for an error answer;
        the trace id header to send with it."""
        if not request.url.path.startswith("/v1/"):
            return {}
        trace = getattr(request.state, "trace", None) or tracer.begin(model=None, endpoint=request.url.path[4:])
        tracer.finish(trace, status=status, error_code=code)
        return {TRACE_HEADER: trace.id}

    @app.exception_handler(APIError)
    async def _api_error(req: Request, exc: APIError):
        headers = {**(exc.headers or {}), **_trace_error(req, exc.status, exc.code)}
        return _error(exc.status, exc.message, exc.type, exc.param, exc.code, headers)

    @app.exception_handler(TuneopsError)
    async def _tuneops_error(_req: Request, exc: TuneopsError):
        headers, message = None, str(exc)
        if isinstance(exc, IntegrityError):
            # The same files will fail again: tell the openai client not to retry. The client gets
            # the first line; the store paths of the changed files go to the log and /healthz.
            headers = {"x-should-retry": "false"}
            log.warning("refused a request: %s", exc)
            message = exc.message.splitlines()[0].rstrip(":") + " (see the server's /healthz)"
        headers = {**(headers or {}), **(getattr(exc, "headers", None) or {}),
                   **_trace_error(_req, exc.http_status, exc.error_code)} or None
        param = "model" if isinstance(exc, (NotFound, ModelNotAllowed)) else None
        return _error(exc.http_status, message, exc.error_type, param, exc.error_code, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req: Request, exc: RequestValidationError):
        # Only our own wording and pydantic's message: the offending input is never echoed.
        errors = [(_param(tuple(e.get("loc", ()))), e) for e in exc.errors()]
        if any(e.get("type") == "json_invalid" for _, e in errors):
            reason = next(e.get("ctx", {}).get("error", "") for _, e in errors if e.get("type") == "json_invalid")
            return _error(400, f"the request body is not valid JSON ({reason})",
                          headers=_trace_error(_req, 400, "invalid_json") or None)
        # A union field reports one error per member it tried ("Input should be a valid list" for
        # a string that failed its own check): drop a type mismatch when a more telling error
        # exists at or below the same field.
        telling = [p or "" for p, e in errors if not str(e.get("type", "")).endswith("_type")]
        def covered(p: str | None) -> bool:
            return any(not p or t == p or t.startswith((p + "[", p + ".")) for t in telling)

        kept = [(p, e) for p, e in errors if not (str(e.get("type", "")).endswith("_type") and covered(p))]
        lines = list(dict.fromkeys(f"{p or 'body'}: {e.get('msg', 'invalid value')}" for p, e in kept))
        message = "; ".join(lines[:3]) + (f" (and {len(lines) - 3} more)" if len(lines) > 3 else "")
        return _error(400, message or "invalid request", param=kept[0][0] if kept else None,
                      headers=_trace_error(_req, 400, "invalid_request") or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req: Request, exc: StarletteHTTPException):
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _error(exc.status_code, str(exc.detail), type_, headers=getattr(exc, "headers", None))

    def openapi():
        # Errors are 400s in OpenAI's shape, not FastAPI's 422 `{"detail": …}`: drop those from the schema.
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            for path in schema.get("paths", {}).values():
                for op in path.values():
                    op.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    # -- routes --------------------------------------------------------------------------
    @app.get("/healthz")
    def healthz():
        """200 "ok", or 503 "degraded" naming every stored file that failed verification."""
        failures = pool.health()
        st = pool.engine.stats()
        body = {"status": "degraded" if failures else "ok", "base": pool.base.id,
                "adapters_loaded": pool.resident_ids(st), "failures": failures,
                # BatchEngine reports running_rows (no "busy"); an engine may say busy itself
                "busy": bool(st.get("busy", st.get("running_rows", 0))), "waiting": int(st.get("waiting", 0)),
                "pool": {k: v for k, v in st.items() if k not in ("resident_ids", "resident_trees")}}
        return JSONResponse(body, status_code=503 if failures else 200)

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics(request: Request):
        """Prometheus exposition: per tenant and adapter requests, errors, latency, TTFT, tokens/s, batch
        sizes, queue waits; the adapter pool's hits, misses, loads and residents."""
        st = pool.engine.stats()
        metrics.set_pool(resident=pool.resident_ids(st), hits=st.get("hits", 0),
                         misses=st.get("misses", 0), evictions=st.get("evictions"),
                         capacity=st.get("max_resident"), memory_bytes=st.get("adapter_bytes"),
                         memory_budget_bytes=st.get("memory_budget_bytes"), pinned=st.get("pinned"),
                         loading=st.get("loading"), merged_bytes=st.get("merged_bytes"))
        body, ctype = metrics.render(request.headers.get("accept"))
        return Response(body, media_type=ctype)

    def model_entries() -> list[dict]:
        created = int(time.time())
        data = [{"id": pool.base.id, "object": "model", "created": created, "owned_by": "tuneops",
                 "tuneops": {"kind": "base", "name": pool.base.name}}]
        for a in aliases(store):
            art = store.get_artifact(a.artifact_id)
            if art.base_id == pool.base.id:
                data.append({"id": f"{a.name}@{a.stage}", "object": "model", "created": created,
                             "owned_by": "tuneops", "tuneops": {"kind": "alias", "artifact": art.id,
                                                                **({"disabled": a.disabled_reason}
                                                                   if a.disabled_reason is not None else {})}})
        return data

    def visible(principal: Principal) -> list[dict]:
        return directory.visible_models(principal, model_entries(), base_id=pool.base.id)

    @app.get("/v1/models", responses=_error_docs(*doc_statuses))
    def list_models(principal: Principal = Depends(principal_of)):
        return {"object": "list", "data": visible(principal)}

    @app.get("/v1/models/{model_id}", responses=_error_docs(*doc_statuses))
    def retrieve_model(model_id: str, principal: Principal = Depends(principal_of)):
        entry = next((m for m in visible(principal) if m["id"] == model_id), None)
        if entry is None:
            if principal is OPEN:
                raise APIError(404, f"The model {model_id!r} does not exist on this server", param="model",
                               code="model_not_found")
            raise APIError(404, "The model does not exist or you do not have access to it.", param="model",
                           code="model_not_found")
        return entry

    # -- generation ------------------------------------------------------------------------
    def _limits(prompt_tokens: int, requested: int | None, default: int, param: str) -> int:
        ctx = pool.context_length
        if ctx is not None and (prompt_tokens + (requested or 1) > ctx):
            asked = (f"you requested {prompt_tokens + requested} tokens ({prompt_tokens} in the {param}, "
                     f"{requested} in the completion). Please reduce the length of the {param} or completion."
                     if requested else f"your {param} resulted in {prompt_tokens} tokens. "
                                       f"Please reduce the length of the {param}.")
            raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, {asked}",
                           param=param, code="context_length_exceeded")
        return requested or min(default, max_tokens_limit, ctx - prompt_tokens if ctx is not None else default)

    def _gen_requests(req, artifact, prompts: list[list[int]], max_new: int, deadline: float,
                      tag: str) -> list[GenRequest]:
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        return [GenRequest(artifact=artifact, prompt_ids=ids, max_new_tokens=max_new, temperature=req.temperature,
                           top_p=req.top_p, seed=req.seed, stop=stop, n=req.n, deadline=deadline, tag=tag)
                for ids in prompts]

    async def _run(request: Request, gens: list[GenRequest], queue_deadline: float) -> list[GenResult]:
        """Submit and wait, giving up when the client leaves (the engine stops those rows) or when the
        requests are still queued at ``queue_deadline`` (503 server_busy)."""
        futures = []
        try:
            for g in gens:  # submit() verifies the adapter's files and release (store reads): off the event loop
                futures.append(asyncio.wrap_future(await run_in_threadpool(pool.engine.submit, g)))
                futures[-1].add_done_callback(lambda f: f.cancelled() or f.exception())  # never "not retrieved"
            while True:
                done, pending = await asyncio.wait(set(futures), timeout=POLL_S)
                if not pending:
                    return [f.result() for f in futures]
                if await request.is_disconnected():
                    raise ClientGone()
                if time.monotonic() >= queue_deadline and not any(g.started.is_set() for g in gens):
                    raise APIError(503, "the server is busy with other requests and this one ran out of time "
                                        "waiting for its turn; retry later", "server_error", code="server_busy",
                                   headers={"retry-after": "1"})
        except BaseException:
            for g in gens:
                g.cancel.set()
            raise

    def _meta(ctx: dict, results: list[GenResult]) -> tuple[dict, dict]:
        artifact = ctx["artifact"]
        paths = sorted({r.path for r in results})
        interrupted = next((c.interrupted for r in results for c in r.choices if c.interrupted), None)
        meta = {"base": pool.base.id, "artifact": artifact.id if artifact else None, "alias": ctx["alias"],
                "requested": ctx["requested"], "interrupted": interrupted,
                "path": paths[0] if len(paths) == 1 else paths, "request_id": ctx["id"],
                "role": ctx.get("role"), "fallback": ctx.get("fallback")}
        headers = {"X-Tuneops-Base": pool.base.id, "X-Tuneops-Artifact": artifact.id if artifact else "none",
                   "X-Tuneops-Alias": ctx["alias"] or "none", "X-Tuneops-Path": ",".join(paths) or "none",
                   TRACE_HEADER: ctx["id"]}
        if ctx.get("fallback"):
            headers["X-Tuneops-Fallback"] = "base"
        notice = deprecation_status(artifact) if artifact is not None else None
        if notice:
            meta["deprecation"] = {"sunset": notice["sunset"], "reason": notice.get("reason"),
                                   "message": notice["message"]}
            headers.update(_deprecation_headers(notice))
        return meta, headers

    async def _prepare(req, request: Request, principal: Principal, kind: str) -> dict:
        arrived = time.monotonic()
        deadline = arrived + request_timeout
        trace = request.state.trace = tracer.begin(tenant=principal.tenant_id, model=req.model, stream=bool(req.stream),
                                                   endpoint="chat.completions" if kind == "chat" else "completions")
        bad = _unsupported(req)
        if bad:
            raise APIError(400, f"{bad} is not supported by this server (leave it out or use its default)",
                           param=bad, code="unsupported_parameter")
        limiter.check_request(principal)  # 429 before any work
        target = await run_in_threadpool(directory.authorize, principal, req.model, base_id=pool.base.id,
                                         base_name=pool.base.name)
        fell_back = None
        try:
            artifact, alias = await run_in_threadpool(pool.resolve, target.ref)
        except AliasDisabled as e:  # switched off by an operator: the base answers, or 503 alias_disabled
            if fallback != "base":
                raise
            artifact, alias = None, e.alias
            log.warning("serving the base for %s: %s", alias, e.message)
            fell_back = {"to": "base", "artifact": None, "reason": e.message}
        alias = target.alias or alias
        rid = trace.id
        role, route = None, None
        if alias and artifact is not None:
            # Canary routes (release/routing.py): a sticky share of users goes to the canary target.
            route = await run_in_threadpool(routes.get, alias)
            chosen, role = choose_target(route, artifact.id, tenant_id=principal.tenant_id, user=req.user)
            if role == "canary":
                try:
                    canary = await run_in_threadpool(store.get_artifact, chosen)
                    await run_in_threadpool(pool.check, canary)
                    artifact = canary
                except TuneopsError as e:  # the canary cannot be served: its users get the primary
                    log.warning("canary %s of %s refused, serving the primary: %s", chosen, alias, e.message)
                    bg.submit(monitor.record, alias, "canary", chosen, False, 0.0)
                    role = "primary"
        try:
            await run_in_threadpool(pool.verify, artifact)
        except IntegrityError as e:
            if fallback != "base" or artifact is None:
                if role is not None and artifact is not None:  # a server-side failure of the chosen target:
                    bg.submit(monitor.record, alias, role, artifact.id, False, time.monotonic() - arrived)
                raise
            fell_back = _fallback_note(artifact, e)
            artifact = None
        tracer.resolved(trace, base=pool.base, artifact=artifact, alias=alias)
        return {"fallback": fell_back, "trace": trace, "id": rid, "artifact": artifact, "alias": alias, "role": role, "route": route,
                "requested": req.model, "principal": principal, "arrived": arrived, "user": req.user,
                "deadline": deadline, "created": int(time.time()),
                "queue_deadline": min(deadline, arrived + (queue_timeout if queue_timeout is not None
                                                           else request_timeout))}

    def _fallback_note(artifact: ArtifactRecord, error: TuneopsError) -> dict:
        log.warning("serving the base instead of %s: %s", artifact.id, error.message.splitlines()[0])
        return {"to": "base", "artifact": artifact.id,
                "reason": error.message.splitlines()[0].rstrip(":") + " (see the server's /healthz)"}

    def _finish(ctx: dict, results: list[GenResult] | None, status: int, code: str | None = None) -> None:
        """Once per request, however it ended: settle the tenant's token reservation (and, below, metrics,
        the trace, the canary's outcome)."""
        if ctx.get("finished"):
            return
        ctx["finished"] = True
        used = ctx.get("prompt_tokens", 0) + sum(c.completion_tokens for r in results or [] for c in r.choices)
        reservation = ctx.get("reservation")
        if reservation is not None:
            reservation.settle(used if results else 0)
        latency = time.monotonic() - ctx["arrived"]
        served = ctx["artifact"]
        results = results or []
        tracer.finish(ctx["trace"], status=status, error_code=code, result=results[0] if results else None,
                      prompt_tokens=ctx.get("prompt_tokens"),
                      completion_tokens=sum(c.completion_tokens for r in results for c in r.choices),
                      answers=[c.text for r in results for c in r.choices], latency_s=latency,
                      ttft_s=ctx.get("ttft_s"), role=ctx.get("role"), fallback=ctx.get("fallback"),
                      batch_paths=sorted({r.path for r in results}) if len(results) > 1 else None)
        if ctx.get("role") and served is not None and not ctx.get("fallback") and (status == 200 or status >= 500):
            bg.submit(monitor.record, ctx["alias"], ctx["role"], served.id, status == 200, latency)
        elif ctx.get("role") and ctx.get("fallback"):  # the chosen target failed; the base answered instead
            bg.submit(monitor.record, ctx["alias"], ctx["role"], ctx["fallback"]["artifact"], False, latency)
        if status == 200 and ctx.get("route") is not None and served is not None:
            shadow_id = should_shadow(ctx["route"], ctx["route"].primary_artifact or served.id, served.id,
                                      request_id=ctx["id"])
            if shadow_id:
                bg.submit(_shadow, ctx, shadow_id)

    def _shadow(ctx: dict, shadow_id: str) -> None:
        """The same request on the shadow target, in the background: its answer is only measured, never
        returned. Runs on the background pool (so it never holds up the client)."""
        started = time.monotonic()
        ok = False
        try:
            shadow = store.get_artifact(shadow_id)
            pool.check(shadow)
            pool.verify(shadow)
            futures = [pool.engine.submit(GenRequest(
                artifact=shadow, prompt_ids=g.prompt_ids, max_new_tokens=g.max_new_tokens,
                temperature=g.temperature, top_p=g.top_p, seed=g.seed, stop=g.stop, n=g.n,
                deadline=time.monotonic() + request_timeout, tag=ctx["id"] + "-shadow")) for g in ctx["gens"]]
            for f in futures:
                f.result(timeout=request_timeout + 5)
            ok = True
        except Exception as e:  # noqa: BLE001  (a failing shadow is a measurement, not an error of the request)
            log.info("shadow %s of %s failed: %s", shadow_id, ctx["id"], e)
        monitor.record(ctx["alias"], "shadow", shadow_id, ok, time.monotonic() - started)

    async def _respond(req, request: Request, ctx: dict, prompts: list[list[int]], max_new: int, kind: str):
        gens = ctx["gens"] = _gen_requests(req, ctx["artifact"], prompts, max_new, ctx["deadline"], ctx["id"])
        prompt_tokens = ctx["prompt_tokens"] = sum(len(p) for p in prompts)
        ctx["reservation"] = limiter.reserve(ctx["principal"], prompt_tokens + max_new * req.n * len(prompts))
        model_id = ctx["artifact"].id if ctx["artifact"] else pool.base.id

        def to_base(e: IntegrityError) -> list[GenRequest]:
            """The adapter's files failed to load: with fallback="base" the base answers, and the response (and
            its trace) say so; else the error stands."""
            if fallback != "base" or ctx["artifact"] is None:
                raise e
            ctx["fallback"] = _fallback_note(ctx["artifact"], e)
            ctx["artifact"] = None
            tracer.resolved(ctx["trace"], base=pool.base, artifact=None, alias=ctx["alias"])
            ctx["gens"] = _gen_requests(req, None, prompts, max_new, ctx["deadline"], ctx["id"])
            return ctx["gens"]

        try:
            if req.stream:
                include_usage = bool(req.stream_options and req.stream_options.include_usage)
                try:
                    return await _stream(request, ctx, gens, prompt_tokens, model_id, kind, include_usage)
                except IntegrityError as e:  # before the first token: still an ordinary answer
                    gens = to_base(e)
                    model_id = pool.base.id
                    return await _stream(request, ctx, gens, prompt_tokens, model_id, kind, include_usage)
            try:
                try:
                    results = await _run(request, gens, ctx["queue_deadline"])
                except IntegrityError as e:
                    gens = to_base(e)
                    model_id = pool.base.id
                    results = await _run(request, gens, ctx["queue_deadline"])
            except ClientGone:
                _finish(ctx, None, 499, "client_gone")
                return Response(status_code=499)  # nginx's "client closed request": nobody reads it
        except APIError as e:
            _finish(ctx, None, e.status, e.code)
            raise
        except TuneopsError as e:
            _finish(ctx, None, e.http_status, e.error_code)
            raise
        except BaseException:
            _finish(ctx, None, 503, "internal_error")
            raise
        _finish(ctx, results, 200)
        meta, headers = _meta(ctx, results)
        choices, completion_tokens = [], 0
        for r in results:
            for c in r.choices:
                completion_tokens += c.completion_tokens
                i = len(choices)
                choices.append({"index": i, "message": {"role": "assistant", "content": c.text},
                                "finish_reason": c.finish_reason, "logprobs": None} if kind == "chat" else
                               {"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None})
        body = {"id": ("chatcmpl-" if kind == "chat" else "cmpl-") + ctx["id"][4:],
                "object": "chat.completion" if kind == "chat" else "text_completion",
                "created": ctx["created"], "model": model_id, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens},
                "tuneops": meta}
        return JSONResponse(body, headers=headers)

    async def _stream(request: Request, ctx: dict, gens: list[GenRequest], prompt_tokens: int, model_id: str,
                      kind: str, include_usage: bool):
        """Server-sent events in OpenAI's chunk format. Errors that happen before the first token (an
        adapter that fails to load, a full queue) are still ordinary JSON error answers."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        offsets, total = [], 0
        for g in gens:
            offsets.append(total)
            total += g.n
            g.on_delta = (lambda base: lambda i, text: loop.call_soon_threadsafe(
                events.put_nowait, ("delta", base + i, text)))(total - g.n)
        chunk_id = ("chatcmpl-" if kind == "chat" else "cmpl-") + ctx["id"][4:]
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(choices: list[dict], **extra) -> str:
            body = {"id": chunk_id, "object": obj, "created": ctx["created"], "model": model_id,
                    "choices": choices} | extra
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        def delta(i: int, text: str | None, finish: str | None = None, role: bool = False) -> dict:
            if kind == "chat":
                d = ({"role": "assistant", "content": ""} if role else {} if text is None else {"content": text})
                return {"index": i, "delta": d, "finish_reason": finish, "logprobs": None}
            return {"index": i, "text": text or "", "finish_reason": finish, "logprobs": None}

        def cancel_all():
            for g in gens:
                g.cancel.set()

        # Wait for the first event before answering: a failure before any token keeps its status code.
        first = []
        try:
            for k, g in enumerate(gens):
                fut = await run_in_threadpool(pool.engine.submit, g)  # off the event loop, as in _run
                fut.add_done_callback(lambda f, k=k: loop.call_soon_threadsafe(events.put_nowait, ("done", k, f)))
            while not first:
                try:
                    first.append(await asyncio.wait_for(events.get(), timeout=POLL_S))
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        cancel_all()
                        return Response(status_code=499)
                    if time.monotonic() >= ctx["queue_deadline"] and not any(g.started.is_set() for g in gens):
                        cancel_all()
                        raise APIError(503, "the server is busy with other requests and this one ran out of time "
                                            "waiting for its turn; retry later", "server_error",
                                       code="server_busy", headers={"retry-after": "1"}) from None
            if first[0][0] == "done" and first[0][2].exception() is not None:
                cancel_all()
                raise first[0][2].exception()
        except BaseException:
            cancel_all()
            raise
        done: dict[int, GenResult] = {}

        async def body():
            try:
                if kind == "chat":
                    yield chunk([delta(i, None, role=True) for i in range(total)])
                pending = list(first)
                while len(done) < len(gens):
                    event = pending.pop(0) if pending else await events.get()
                    if event[0] == "delta":
                        ctx.setdefault("ttft_s", time.monotonic() - ctx["arrived"])
                        yield chunk([delta(event[1], event[2])])
                        continue
                    _, k, fut = event
                    if fut.exception() is not None:
                        err = fut.exception()
                        message = err.message if isinstance(err, TuneopsError) else "generation failed"
                        log.warning("stream %s failed: %s", ctx["id"], err)
                        yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error', 'param': None, 'code': 'generation_failed'}})}\n\n"
                        _finish(ctx, list(done.values()), 503, "generation_failed")
                        yield "data: [DONE]\n\n"  # clients that wait for the terminator are not left hanging
                        return
                    done[k] = fut.result()
                    yield chunk([delta(offsets[k] + i, None, c.finish_reason) for i, c in enumerate(done[k].choices)])
                meta, _ = _meta(ctx, [done[k] for k in sorted(done)])
                _finish(ctx, list(done.values()), 200)
                completion_tokens = sum(c.completion_tokens for r in done.values() for c in r.choices)
                if include_usage:
                    yield chunk([], usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                           "total_tokens": prompt_tokens + completion_tokens}, tuneops=meta)
                yield "data: [DONE]\n\n"
            finally:
                cancel_all()  # the client left mid-stream, or the stream ended: nothing keeps generating
                _finish(ctx, list(done.values()), 499, "client_gone")  # a no-op when the stream ended

        _, headers = _meta(ctx, [])
        headers.pop("X-Tuneops-Path", None)
        headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)

    @app.post("/v1/chat/completions", responses=_error_docs(*doc_statuses))
    async def chat_completions(req: ChatCompletionRequest, request: Request,
                               principal: Principal = Depends(principal_of)):
        """OpenAI chat completions: the base's own chat template, streamed (SSE) or not."""
        ctx = await _prepare(req, request, principal, "chat")
        chat = [m.as_template_message() for m in req.messages]
        ctx["trace"].set_input(messages=chat)
        ids = await run_in_threadpool(pool.encode, chat)
        max_new = _limits(len(ids), req.max_completion_tokens or req.max_tokens, DEFAULT_MAX_TOKENS, "messages")
        return await _respond(req, request, ctx, [ids], max_new, "chat")

    @app.post("/v1/completions", responses=_error_docs(*doc_statuses))
    async def completions(req: TextCompletionRequest, request: Request,
                          principal: Principal = Depends(principal_of)):
        """OpenAI (legacy) text completions: the prompt as given, no chat template; a list of prompts gives
        n choices each, in order."""
        ctx = await _prepare(req, request, principal, "text")
        texts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        ctx["trace"].set_input(prompt=req.prompt)
        prompts = [await run_in_threadpool(pool.encode, None, t) for t in texts]
        if any(not p for p in prompts):
            raise APIError(400, "prompt: an empty prompt gives the model nothing to continue", param="prompt")
        longest = max(len(p) for p in prompts)
        max_new = _limits(longest, req.max_tokens, DEFAULT_COMPLETION_TOKENS, "prompt")
        return await _respond(req, request, ctx, prompts, max_new, "text")

    return app


def _deprecation_headers(notice: dict) -> dict:
    """RFC 9745 ``Deprecation`` (when it was deprecated), RFC 8594 ``Sunset`` (the end of the sunset day,
    UTC: refused from then on) and a ``Warning`` for clients that only log that one. No user text: the
    reason is in the body's ``tuneops.deprecation``."""
    import datetime as dt
    from email.utils import format_datetime

    end = dt.datetime.combine(dt.date.fromisoformat(notice["sunset"]) + dt.timedelta(days=1), dt.time(),
                              tzinfo=dt.timezone.utc)
    headers = {"Sunset": format_datetime(end, usegmt=True),
               "Warning": f'299 tuneops "deprecated: refused after {notice["sunset"]}"',
               "X-Tuneops-Deprecated": notice["sunset"]}
    try:
        at = dt.datetime.fromisoformat(str(notice.get("at")))
        headers["Deprecation"] = f"@{int(at.timestamp())}"
    except (TypeError, ValueError):
        headers["Deprecation"] = "?1"  # the older draft's boolean form
    return headers


def default_base_id(store: Store) -> str:
    """The base of the most recently moved alias, else the only imported base."""
    from tuneops.store.schema import AliasRecord, BaseModelRecord

    moved = store.all(AliasRecord, order_by=AliasRecord.updated_at.desc())
    if moved:
        return store.get_artifact(moved[0].artifact_id).base_id
    bases = store.all(BaseModelRecord)
    if len(bases) == 1:
        return bases[0].id
    raise InvalidInput("cannot choose a base model to serve" + (": none imported" if not bases else
                       f": {len(bases)} imported"), hint="pass --base base-… (see `tuneops models list`)")
