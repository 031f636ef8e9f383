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
import logging
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, nullcontext
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneops.errors import IntegrityError, InvalidInput, NotFound, TuneopsError
from tuneops.eval.generate import encode_chat, generate_chat
from tuneops.models.base import base_dir, load_base
from tuneops.release.registry import (
    ALIAS_RE, aliases, artifact_dir, check_release, deprecation_status, resolve_alias,
)
from tuneops.release.lineage import check_base_compatible
from tuneops.store import Store
from tuneops.store.ids import sha256_bytes
from tuneops.store.schema import ArtifactRecord

log = logging.getLogger("tuneops.serve")

DEFAULT_MAX_TOKENS = 256  # completion budget when a request names none (OpenAI leaves it open-ended)
POLL_S = 0.1  # how often a request checks for its client leaving


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


class ChatRequest(BaseModel):
    # Unknown OpenAI params (user, metadata, store, service_tier, …) are accepted and ignored;
    # the ones that would change the answer are declared below and refused unless neutral.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    model: Text = Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy decoding")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling; used when temperature > 0")
    n: int = Field(1, ge=1, le=8, description="number of completions")
    stop: Annotated[Text, Field(min_length=1, max_length=128)] | \
        Annotated[list[Annotated[Text, Field(min_length=1, max_length=128)]], Field(max_length=4)] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1, description="makes sampling repeatable")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="only 0 is supported")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="only 0 is supported")
    stream: bool | None = Field(False, description="only false is supported")
    tools: Any = Field(None, description=_UNSUPPORTED)
    tool_choice: Any = Field(None, description=_UNSUPPORTED)
    functions: Any = Field(None, description=_UNSUPPORTED)
    function_call: Any = Field(None, description=_UNSUPPORTED)
    logprobs: Any = Field(None, description=_UNSUPPORTED)
    top_logprobs: Any = Field(None, description=_UNSUPPORTED)
    response_format: Any = Field(None, description=_UNSUPPORTED + ' {"type": "text"} is accepted.')
    logit_bias: Any = Field(None, description=_UNSUPPORTED)


def _unsupported(req: ChatRequest) -> str | None:
    """The first parameter whose value this server cannot honour, if any."""
    neutral = {
        "stream": lambda v: not v,
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
    return next((name for name, ok in neutral.items() if not ok(getattr(req, name))), None)


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
            401: "Missing or wrong API key", 404: "Unknown model", 413: "Request body too large",
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
    """The base model loaded once; adapters loaded into it on first use, switched per request.

    Everything that touches the model runs on one worker thread (``executor``), so two
    generations can never interleave, whatever happens to the requests that asked for them.
    """

    def __init__(self, store: Store, base_id: str):
        import copy

        from peft import PeftModel  # noqa: F401  (import early: fail at start, not on the first request)

        self.store = store
        self.base = store.get_base(base_id)
        self.model, self.tokenizer = load_base(store, self.base)
        template = getattr(self.tokenizer, "chat_template", None)
        self.template_sha256 = sha256_bytes(template.encode()) if isinstance(template, str) else None
        # Request threads count prompt tokens with their own copy: a HF fast tokenizer must not be
        # used from two threads at once, and the generation thread uses the original.
        self.count_tokenizer = copy.deepcopy(self.tokenizer)
        self.count_lock = threading.Lock()
        config = self.model.config
        self.context_length: int | None = getattr(config, "max_position_embeddings", None)
        self.loaded: dict[str, ArtifactRecord] = {}
        self.lock = threading.Lock()  # guards the model itself (PEFT's active adapter is global state)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneops-generate")
        self.state_lock = threading.Lock()  # guards the bookkeeping below
        # id -> (artifact or None for the base, message, whether only a successful load clears it)
        self.failures: dict[str, tuple[ArtifactRecord | None, str, bool]] = {}
        self.waiting = 0
        self.busy = False
        self.cancels: set[threading.Event] = set()

    def resolve(self, ref: str) -> tuple[ArtifactRecord | None, str | None]:
        """(artifact or None for the base, alias label or None). An artifact must be validly signed by a
        trusted key and not past its sunset (SignatureError, SunsetPassed otherwise)."""
        if ref in (self.base.id, self.base.name):
            return None, None
        if ref.startswith("ad-"):
            art, label = self.store.get_artifact(ref), None
        elif ALIAS_RE.match(ref):
            art, label = resolve_alias(self.store, ref), ref if "@" in ref else f"{ref}@production"
        else:
            raise NotFound(f"model {ref!r} is not an alias, artifact id or base id",
                           hint="see GET /v1/models")
        # Another base, or a chat template other than the one this server prompts with: refused, naming both.
        check_base_compatible(self.store, art, self.base, template_sha256=self.template_sha256)
        self._check_release(art)
        return art, label

    def _check_release(self, artifact: ArtifactRecord) -> None:
        """Signature and sunset (registry.check_release). A refused adapter that is loaded (it was valid
        once: its key was revoked since, or its sunset passed) is unloaded on the generation thread."""
        try:
            check_release(self.store, artifact)
        except TuneopsError as e:
            log.warning("refused %s: %s", artifact.id, e.message)
            if artifact.id in self.loaded:
                self.executor.submit(self._unload_locked, artifact.id)
            raise

    def _unload_locked(self, artifact_id: str) -> None:
        with self.lock:
            self._unload(artifact_id)

    def count_prompt(self, chat: list[dict]) -> int:
        with self.count_lock:
            return len(encode_chat(self.count_tokenizer, chat))

    # -- integrity ---------------------------------------------------------------------------
    def _record(self, key: str, artifact: ArtifactRecord | None, error: Exception | None, *,
                load_failed: bool = False):
        with self.state_lock:
            if error is None:
                self.failures.pop(key, None)
            else:
                self.failures[key] = (artifact, str(error), load_failed)

    def _verified_dir(self, artifact: ArtifactRecord | None):
        """Check the base's and the artifact's stored files against their recorded hashes.

        registry.artifact_dir / models.base_dir verify (cached on size, mtime and ctime, so this
        is a few stat calls per request); a mismatch is remembered for /healthz and re-raised.
        """
        try:
            base_dir(self.store, self.base)
            self._record(self.base.id, None, None)
        except IntegrityError as e:
            self._record(self.base.id, None, e)
            raise
        if artifact is None:
            return None
        try:
            path = artifact_dir(self.store, artifact)
        except IntegrityError as e:
            self._unload(artifact.id)
            self._record(artifact.id, artifact, e)
            raise
        self._record(artifact.id, artifact, None)
        try:  # again at load time: a key may have been revoked, or the sunset passed, since resolve
            check_release(self.store, artifact)
        except TuneopsError:
            self._unload(artifact.id)
            raise
        return path

    def _unload(self, artifact_id: str):
        if artifact_id not in self.loaded:
            return
        if len(self.loaded) == 1:
            # PEFT would keep its active adapter pointing at the deleted one (KeyError on the next
            # generate): with no adapter left, take the LoRA layers out and serve the plain base.
            self.model = self.model.unload()
        else:
            self.model.delete_adapter(artifact_id)
        del self.loaded[artifact_id]

    def _activate(self, artifact: ArtifactRecord | None):
        from peft import PeftModel
        from peft.utils import load_peft_weights

        path = self._verified_dir(artifact)
        if artifact is None:
            return
        if artifact.id not in self.loaded:
            try:
                # Read the weights before PEFT injects layers into the model, so an unreadable
                # file can never leave a half-attached adapter behind.
                load_peft_weights(str(path), device="cpu")
                if not isinstance(self.model, PeftModel):
                    self.model = PeftModel.from_pretrained(self.model, path, adapter_name=artifact.id)
                else:
                    self.model.load_adapter(path, adapter_name=artifact.id)
            except Exception as e:  # noqa: BLE001  (any failure to read stored files means: do not serve)
                err = IntegrityError(f"artifact {artifact.id}: its stored adapter files cannot be loaded:\n"
                                     f"  {path}: {type(e).__name__}: {e}", hint="re-register the artifact from its run")
                self._record(artifact.id, artifact, err, load_failed=True)
                raise err from e
            self.model.eval()
            self.loaded[artifact.id] = artifact
        self.model.set_adapter(artifact.id)

    def health(self) -> dict[str, str]:
        """Re-verify the base, the loaded adapters and every earlier failure; {id: message} of failures."""
        with self.state_lock:
            failed = dict(self.failures)
        checks = [(self.base.id, None)] + [(a.id, a) for a in list(self.loaded.values())]
        checks += [(key, art) for key, (art, _, _) in failed.items() if art is not None and key not in self.loaded]
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

    # -- generation --------------------------------------------------------------------------
    def generate(self, artifact: ArtifactRecord | None, chat: list[dict], **kwargs) -> list[dict]:
        """Runs on the worker thread: verify, switch adapter, generate."""
        with self.lock:
            self._activate(artifact)
            ctx = self.model.disable_adapter() if artifact is None and self.loaded else nullcontext()
            with ctx:
                return generate_chat(self.model, self.tokenizer, [chat], batch_size=1, **kwargs)

    async def run(self, request: Request, artifact: ArtifactRecord | None, chat: list[dict], *,
                  deadline: float, queue_deadline: float, **kwargs) -> list[dict]:
        """Queue a generation and wait for it, giving up when the client leaves or time runs out."""
        cancel = threading.Event()
        started = threading.Event()

        def job():
            with self.state_lock:
                self.waiting -= 1
                self.busy = True
            started.set()
            try:
                remaining = deadline - time.monotonic()
                if cancel.is_set() or remaining <= 0:
                    raise ClientGone()
                return self.generate(artifact, chat, cancel=cancel, max_time=remaining, **kwargs)
            finally:
                with self.state_lock:
                    self.busy = False

        with self.state_lock:
            self.waiting += 1
            self.cancels.add(cancel)
        future = self.executor.submit(job)
        waiter = asyncio.wrap_future(future)
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "exception not retrieved"
        try:
            while True:
                done, _ = await asyncio.wait({waiter}, timeout=POLL_S)
                if done:
                    return waiter.result()
                if await request.is_disconnected():
                    cancel.set()
                    self._withdraw(future)
                    raise ClientGone()
                if not started.is_set() and time.monotonic() >= queue_deadline and self._withdraw(future):
                    raise APIError(503, "the server is busy with other requests and this one ran out of time "
                                        "waiting for its turn; retry later", "server_error", code="server_busy",
                                   headers={"retry-after": "1"})
        except asyncio.CancelledError:  # the server is shutting down under us
            cancel.set()
            self._withdraw(future)
            raise
        finally:
            with self.state_lock:
                self.cancels.discard(cancel)

    def _withdraw(self, future) -> bool:
        """Take a job out of the queue if it has not started; True if it will never run."""
        if future.cancel():
            with self.state_lock:
                self.waiting -= 1
            return True
        return False

    def close(self):
        """Stop the generation in progress and drop queued ones (server shutdown)."""
        with self.state_lock:
            for cancel in self.cancels:
                cancel.set()
        self.executor.shutdown(wait=False, cancel_futures=True)


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
               max_tokens_limit: int = 2048) -> FastAPI:
    """The OpenAI-compatible app serving ``base_id`` and the adapters trained on it.

    api_key: when set, /v1/* needs ``Authorization: Bearer <api_key>`` (else 401).
    max_body_bytes: larger request bodies get 413 before they are parsed.
    request_timeout: seconds a request may take, waiting for its turn included; generation stops
        then and returns what it has (finish_reason "length", ``tuneops.interrupted``).
    queue_timeout: seconds a request may wait for its turn (default: request_timeout); 503 after.
    max_tokens_limit: the largest max_tokens a request may ask for (400 above it).
    """
    pool = AdapterPool(store, base_id)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        pool.close()

    app = FastAPI(title="tuneops serve", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible chat completions for tuneops artifacts. Every error "
                              'answer is {"error": {"message", "type", "param", "code"}}.')
    app.state.pool = pool
    app.add_middleware(_Guard, max_body_bytes=max_body_bytes)

    class ChatCompletionRequest(ChatRequest):
        # The per-server cap is part of the published schema, so clients (and fuzzers) see it.
        max_tokens: int | None = Field(None, ge=1, le=max_tokens_limit)
        max_completion_tokens: int | None = Field(None, ge=1, le=max_tokens_limit)

    # -- auth ----------------------------------------------------------------------------
    bearer = HTTPBearer(auto_error=False, description="the server's API key")

    async def check_api_key(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)):
        if credentials is None:
            raise APIError(401, "You didn't provide an API key: send 'Authorization: Bearer <key>'.",
                           code="invalid_api_key", headers={"www-authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.credentials.encode("utf-8", "surrogateescape"),
                                   api_key.encode("utf-8")):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key",
                           headers={"www-authenticate": "Bearer"})

    v1 = dict(dependencies=[Depends(check_api_key)] if api_key else [])
    doc_statuses = (400, 401, 404, 413, 503) if api_key else (400, 404, 413, 503)

    # -- errors --------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(_req: Request, exc: APIError):
        return _error(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)

    @app.exception_handler(TuneopsError)
    async def _tuneops_error(_req: Request, exc: TuneopsError):
        headers, message = None, str(exc)
        if isinstance(exc, IntegrityError):
            # The same files will fail again: tell the openai client not to retry. The client gets
            # the first line; the store paths of the changed files go to the log and /healthz.
            headers = {"x-should-retry": "false"}
            log.warning("refused a request: %s", exc)
            message = exc.message.splitlines()[0].rstrip(":") + " (see the server's /healthz)"
        param = "model" if isinstance(exc, NotFound) else None
        return _error(exc.http_status, message, exc.error_type, param, exc.error_code, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req: Request, exc: RequestValidationError):
        # Only our own wording and pydantic's message: the offending input is never echoed.
        errors = [(_param(tuple(e.get("loc", ()))), e) for e in exc.errors()]
        if any(e.get("type") == "json_invalid" for _, e in errors):
            reason = next(e.get("ctx", {}).get("error", "") for _, e in errors if e.get("type") == "json_invalid")
            return _error(400, f"the request body is not valid JSON ({reason})")
        # A union field reports one error per member it tried ("Input should be a valid list" for
        # a string that failed its own check): drop a type mismatch when a more telling error
        # exists at or below the same field.
        telling = [p or "" for p, e in errors if not str(e.get("type", "")).endswith("_type")]
        def covered(p: str | None) -> bool:
            return any(not p or t == p or t.startswith((p + "[", p + ".")) for t in telling)

        kept = [(p, e) for p, e in errors if not (str(e.get("type", "")).endswith("_type") and covered(p))]
        lines = list(dict.fromkeys(f"{p or 'body'}: {e.get('msg', 'invalid value')}" for p, e in kept))
        message = "; ".join(lines[:3]) + (f" (and {len(lines) - 3} more)" if len(lines) > 3 else "")
        return _error(400, message or "invalid request", param=kept[0][0] if kept else None)

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
        body = {"status": "degraded" if failures else "ok", "base": pool.base.id,
                "adapters_loaded": sorted(pool.loaded), "failures": failures,
                "busy": pool.busy, "waiting": pool.waiting}
        return JSONResponse(body, status_code=503 if failures else 200)

    def model_entries() -> list[dict]:
        created = int(time.time())
        data = [{"id": pool.base.id, "object": "model", "created": created, "owned_by": "tuneops",
                 "tuneops": {"kind": "base", "name": pool.base.name}}]
        for a in aliases(store):
            art = store.get_artifact(a.artifact_id)
            if art.base_id == pool.base.id:
                data.append({"id": f"{a.name}@{a.stage}", "object": "model", "created": created,
                             "owned_by": "tuneops", "tuneops": {"kind": "alias", "artifact": art.id}})
        return data

    @app.get("/v1/models", responses=_error_docs(*doc_statuses), **v1)
    def list_models():
        return {"object": "list", "data": model_entries()}

    @app.get("/v1/models/{model_id}", responses=_error_docs(*doc_statuses), **v1)
    def retrieve_model(model_id: str):
        entry = next((m for m in model_entries() if m["id"] == model_id), None)
        if entry is None:
            raise APIError(404, f"The model {model_id!r} does not exist on this server", param="model",
                           code="model_not_found")
        return entry

    @app.post("/v1/chat/completions", responses=_error_docs(*doc_statuses), **v1)
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        arrived = time.monotonic()
        deadline = arrived + request_timeout
        queue_deadline = min(deadline, arrived + (queue_timeout if queue_timeout is not None else request_timeout))
        bad = _unsupported(req)
        if bad:
            raise APIError(400, f"{bad} is not supported by this server (leave it out or use its default)",
                           param=bad, code="unsupported_parameter")
        artifact, alias = await run_in_threadpool(pool.resolve, req.model)
        chat = [m.as_template_message() for m in req.messages]
        prompt_tokens = await run_in_threadpool(pool.count_prompt, chat)
        requested = req.max_completion_tokens or req.max_tokens
        ctx = pool.context_length
        if ctx is not None and (prompt_tokens + (requested or 1) > ctx):
            asked = (f"you requested {prompt_tokens + requested} tokens ({prompt_tokens} in the messages, "
                     f"{requested} in the completion). Please reduce the length of the messages or completion."
                     if requested else f"your messages resulted in {prompt_tokens} tokens. "
                                       "Please reduce the length of the messages.")
            raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, {asked}",
                           param="messages", code="context_length_exceeded")
        max_new = requested or min(DEFAULT_MAX_TOKENS, max_tokens_limit,
                                   ctx - prompt_tokens if ctx is not None else DEFAULT_MAX_TOKENS)
        stop = [req.stop] if isinstance(req.stop, str) else req.stop
        try:
            outs = await pool.run(request, artifact, chat, deadline=deadline, queue_deadline=queue_deadline,
                                  max_new_tokens=max_new, temperature=req.temperature, top_p=req.top_p,
                                  n=req.n, seed=req.seed, stop=stop)
        except ClientGone:
            return Response(status_code=499)  # nginx's "client closed request": nobody reads it
        model_id = artifact.id if artifact else pool.base.id
        interrupted = next((o["interrupted"] for o in outs if o["interrupted"]), None)
        completion_tokens = sum(o["completion_tokens"] for o in outs)
        body = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": [{"index": i, "message": {"role": "assistant", "content": o["text"]},
                         "finish_reason": o["finish_reason"], "logprobs": None} for i, o in enumerate(outs)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "tuneops": {"base": pool.base.id, "artifact": artifact.id if artifact else None, "alias": alias,
                        "requested": req.model, "interrupted": interrupted},
        }
        headers = {"X-Tuneops-Base": pool.base.id, "X-Tuneops-Artifact": artifact.id if artifact else "none"}
        notice = deprecation_status(artifact) if artifact is not None else None
        if notice:
            body["tuneops"]["deprecation"] = {"sunset": notice["sunset"], "reason": notice.get("reason"),
                                              "message": notice["message"]}
            headers.update(_deprecation_headers(notice))
        return JSONResponse(body, headers=headers)

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
