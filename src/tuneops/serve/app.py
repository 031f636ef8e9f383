"""The embedded OpenAI-compatible server: one base in memory, adapters attached by PEFT.

``model`` in a request may be an alias (``quickstart`` = quickstart@production, or
``name@stage``), an artifact id (``ad-…``) or the base id. Every response names the base and
artifact that produced it (JSON field ``tuneops`` and ``X-Tuneops-*`` headers).
"""

import threading
import time
import uuid
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tuneops.errors import InvalidInput, NotFound, TuneopsError
from tuneops.eval.generate import generate_chat
from tuneops.models.base import load_base
from tuneops.release.registry import ALIAS_RE, aliases, artifact_dir, resolve_alias
from tuneops.store import Store
from tuneops.store.schema import ArtifactRecord


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # unknown OpenAI params (e.g. user) are accepted and ignored
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, gt=0, le=2048)
    max_completion_tokens: int | None = Field(None, gt=0, le=2048)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    stream: bool = False


def _error(status: int, message: str, type_: str, code: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": type_, "code": code}})


class AdapterPool:
    """The base model loaded once; adapters loaded into it on first use, switched per request."""

    def __init__(self, store: Store, base_id: str):
        from peft import PeftModel  # noqa: F401  (import early: fail at start, not on the first request)

        self.store = store
        self.base = store.get_base(base_id)
        self.model, self.tokenizer = load_base(store, self.base)
        self.loaded: set[str] = set()
        self.lock = threading.Lock()  # one generation at a time: PEFT's active adapter is global state

    def resolve(self, ref: str) -> tuple[ArtifactRecord | None, str | None]:
        """(artifact or None for the base, alias label or None)."""
        if ref in (self.base.id, self.base.name):
            return None, None
        if ref.startswith("ad-"):
            return self.store.get_artifact(ref), None
        if ALIAS_RE.match(ref):
            art = resolve_alias(self.store, ref)
            return art, ref if "@" in ref else f"{ref}@production"
        raise NotFound(f"model {ref!r} is not an alias, artifact id or base id")

    def _activate(self, artifact: ArtifactRecord | None):
        from peft import PeftModel

        if artifact is None:
            return
        if artifact.base_id != self.base.id:
            raise InvalidInput(f"{artifact.id} was trained on {artifact.base_id}, but this server runs {self.base.id}",
                               hint=f"start another server with --base {artifact.base_id}")
        if artifact.id not in self.loaded:
            path = artifact_dir(self.store, artifact)
            if not isinstance(self.model, PeftModel):
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=artifact.id)
            else:
                self.model.load_adapter(path, adapter_name=artifact.id)
            self.model.eval()
            self.loaded.add(artifact.id)
        self.model.set_adapter(artifact.id)

    def generate(self, artifact: ArtifactRecord | None, chat: list[dict], max_new_tokens: int, temperature: float):
        from contextlib import nullcontext

        with self.lock:
            self._activate(artifact)
            ctx = self.model.disable_adapter() if artifact is None and self.loaded else nullcontext()
            with ctx:
                return generate_chat(self.model, self.tokenizer, [chat], max_new_tokens=max_new_tokens,
                                     batch_size=1, temperature=temperature)[0]


def create_app(store: Store, base_id: str) -> FastAPI:
    pool = AdapterPool(store, base_id)
    app = FastAPI(title="tuneops serve", version="0.1.0")
    app.state.pool = pool

    @app.exception_handler(TuneopsError)
    async def _tuneops_error(_req: Request, exc: TuneopsError):
        status = 404 if isinstance(exc, NotFound) else 400
        return _error(status, str(exc), "invalid_request_error", "model_not_found" if status == 404 else None)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "base": pool.base.id, "adapters_loaded": sorted(pool.loaded)}

    @app.get("/v1/models")
    def list_models():
        created = int(time.time())
        data = [{"id": pool.base.id, "object": "model", "created": created, "owned_by": "tuneops",
                 "tuneops": {"kind": "base", "name": pool.base.name}}]
        for a in aliases(store):
            art = store.get_artifact(a.artifact_id)
            if art.base_id == pool.base.id:
                data.append({"id": f"{a.name}@{a.stage}", "object": "model", "created": created,
                             "owned_by": "tuneops", "tuneops": {"kind": "alias", "artifact": art.id}})
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatRequest):
        if req.stream:
            return _error(400, "stream=true is not supported by the embedded server yet; send stream=false",
                          "invalid_request_error", "unsupported_parameter")
        artifact, alias = pool.resolve(req.model)
        max_new = req.max_completion_tokens or req.max_tokens or 256
        out = pool.generate(artifact, [m.model_dump() for m in req.messages], max_new, req.temperature)
        model_id = artifact.id if artifact else pool.base.id
        body = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out["text"]},
                         "finish_reason": out["finish_reason"]}],
            "usage": {"prompt_tokens": out["prompt_tokens"], "completion_tokens": out["completion_tokens"],
                      "total_tokens": out["prompt_tokens"] + out["completion_tokens"]},
            "tuneops": {"base": pool.base.id, "artifact": artifact.id if artifact else None, "alias": alias,
                        "requested": req.model},
        }
        headers = {"X-Tuneops-Base": pool.base.id, "X-Tuneops-Artifact": artifact.id if artifact else "none"}
        return JSONResponse(body, headers=headers)

    return app


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
