"""A stand-in for vLLM's OpenAI server, for tests without a GPU.

It mimics what tuneops relies on (vLLM's entrypoints/openai: models/serving.py and the chat and
completion routes): ``GET /health``, ``GET /v1/models`` (the base and every registered LoRA),
``POST /v1/chat/completions`` and ``/v1/completions`` (JSON, or SSE ending in ``data: [DONE]``, with a
usage chunk when ``stream_options.include_usage``), and the runtime LoRA endpoints with vLLM's
behaviour: ``load_lora_adapter`` needs ``lora_name`` and ``lora_path`` (400 ``InvalidUserInput``),
refuses a name already loaded unless ``load_inplace`` (400), answers 404 ``NotFoundError`` "No adapter
found" for a path without ``adapter_config.json``, and 200 with a plain-text success line;
``unload_lora_adapter`` answers 404 "cannot be found" for an unknown name. A model that is neither the
base nor a registered LoRA gets 404 ``NotFoundError`` (param ``model``). Errors use vLLM's current
shape, ``{"error": {"message", "type", "param", "code"}}``.

Answers are canned text naming the model asked for (``"[MODEL] hello from fake vLLM"``), so tests can
see where a request was routed. ``state.calls`` records every request (path, JSON body); ``state.gate``
(a threading.Event, set by default) holds streams open after their first chunk until it is set, to keep
requests in flight; ``state.fail`` = (status, body) answers the next generation request with it;
``state.drop_after`` = N breaks the next stream off after N content chunks (the engine dying);
``state.delay`` spaces the streamed pieces; ``state.aborted`` counts streams whose client left early.

Like vLLM: ``/v1/completions`` takes ``prompt`` as text or a list of token ids (usage counts those),
answers ``n`` choices (streamed interleaved, by ``index``), stops after ``max_tokens`` pieces (one
"token" each; finish "length") or before the first ``stop`` string (left out of the text; finish
"stop"), and with ``stream_options.continuous_usage_stats`` puts each choice's running
``completion_tokens`` on its chunks.
Run it with ``python -m tests.serve.fake_vllm serve MODEL --port P --served-model-name NAME
--lora-modules name=path …`` (what a fake ``vllm`` executable on PATH does).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

WORDS = ["hello", " from", " fake", " vLLM"]


def _pieces(model: str, max_tokens, stop) -> tuple[list[str], str, int]:
    """The streamed pieces (one "token" each) of the canned answer, its finish_reason and its token
    count: at most ``max_tokens`` pieces ("length"), cut before the first stop string ("stop", the stop
    left out of the text but its token counted, as vLLM does)."""
    pieces = [f"[{model}] ", *WORDS]
    pieces[1] = pieces[1].lstrip()
    finish = "stop"
    if isinstance(max_tokens, int) and max_tokens < len(pieces):
        pieces, finish = pieces[:max_tokens], "length"
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    text = "".join(pieces)
    cuts = [text.find(s) for s in stops if s and s in text]
    if not cuts:
        return pieces, finish, len(pieces)
    cut, out, at = min(cuts), [], 0
    for k, p in enumerate(pieces):
        if at + len(p) > cut:
            if cut > at:
                out.append(p[:cut - at])
            return out, "stop", k + 1
        out.append(p)
        at += len(p)
    return out, "stop", len(pieces)


def _error(status: int, message: str, type_: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": status}},
                        status_code=status)


class FakeState:
    def __init__(self, base_name: str, loras: dict[str, str]):
        self.base_name = base_name
        self.loras: dict[str, str] = dict(loras)  # name -> path
        self.calls: list[tuple[str, dict]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail: tuple[int, dict | str] | None = None
        self.drop_after: int | None = None  # the next stream breaks off (connection dropped) after N chunks
        self.delay = 0.0                    # seconds between streamed pieces
        self.aborted = 0                    # streams whose client left before the end
        self.lock = threading.Lock()

    def paths(self) -> list[str]:
        return [p for p, _ in self.calls]


def create_fake_vllm(base_name: str = "base", loras: dict[str, str] | None = None, *,
                     check_paths: bool = True) -> FastAPI:
    app = FastAPI()
    state = FakeState(base_name, loras or {})
    app.state.fake = state

    async def body_of(request: Request) -> dict | None:
        try:
            data = json.loads(await request.body() or b"{}")
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    @app.get("/health")
    def health():
        return Response(status_code=200)

    @app.get("/v1/models")
    def models():
        cards = [{"id": state.base_name, "object": "model", "owned_by": "vllm", "root": state.base_name}]
        cards += [{"id": n, "object": "model", "owned_by": "vllm", "root": p, "parent": state.base_name}
                  for n, p in state.loras.items()]
        return {"object": "list", "data": cards}

    @app.post("/v1/load_lora_adapter")
    async def load(request: Request):
        body = await body_of(request) or {}
        state.calls.append(("/v1/load_lora_adapter", body))
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return _error(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        if name in state.loras and not body.get("load_inplace"):
            return _error(400, f"The lora adapter '{name}' has already been loaded. If you want to load the "
                               "adapter in place, set 'load_inplace' to True.", "InvalidUserInput")
        if check_paths and not (Path(path) / "adapter_config.json").is_file():
            return _error(404, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError")
        state.loras[name] = path
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload(request: Request):
        body = await body_of(request) or {}
        state.calls.append(("/v1/unload_lora_adapter", body))
        name = body.get("lora_name")
        if not name:
            return _error(400, "'lora_name' needs to be provided to unload a LoRA adapter.", "InvalidUserInput")
        if name not in state.loras:
            return _error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        del state.loras[name]
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    def generation(path: str, chat: bool):
        async def handler(request: Request):
            body = await body_of(request)
            if body is None:
                return _error(400, "invalid JSON body", "BadRequestError")
            state.calls.append((path, body))
            if state.fail is not None:
                status, payload = state.fail
                state.fail = None
                if isinstance(payload, str):
                    return PlainTextResponse(payload, status_code=status)
                return JSONResponse(payload, status_code=status)
            model = body.get("model")
            if model != state.base_name and model not in state.loras:
                return _error(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
            prompt = body.get("prompt")
            if not chat and not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(
                    isinstance(t, int) and not isinstance(t, bool) for t in prompt))):
                return _error(400, "prompt must be a string or a list of token ids", "BadRequestError", "prompt")
            prompt_tokens = len(prompt) if isinstance(prompt, list) else 3
            n = int(body.get("n") or 1)
            pieces, finish, tokens = _pieces(model, body.get("max_tokens"), body.get("stop"))
            text = "".join(pieces)
            rid = f"{'chatcmpl' if chat else 'cmpl'}-{time.time_ns()}"
            obj = "chat.completion" if chat else "text_completion"
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n * tokens,
                     "total_tokens": prompt_tokens + n * tokens}
            if not body.get("stream"):
                choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                           if chat else {"index": i, "text": text, "finish_reason": finish} for i in range(n)]
                return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": choices,
                        "usage": usage}

            drop, state.drop_after = state.drop_after, None  # taken by this request, not a later one
            options = body.get("stream_options") or {}
            continuous = bool(options.get("include_usage") and options.get("continuous_usage_stats"))

            async def events():
                def chunk(i: int, delta: str | None, finish: str | None = None, role: bool = False,
                          done_tokens: int | None = None) -> bytes:
                    if chat:
                        d = {"role": "assistant", "content": ""} if role else ({"content": delta} if delta else {})
                        choice = {"index": i, "delta": d, "finish_reason": finish}
                    else:
                        choice = {"index": i, "text": delta or "", "finish_reason": finish}
                    data = {"id": rid, "object": f"{obj}.chunk" if chat else obj, "created": int(time.time()),
                            "model": model, "choices": [choice]}
                    if continuous and done_tokens is not None:
                        data["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": done_tokens,
                                         "total_tokens": prompt_tokens + done_tokens}
                    return b"data: " + json.dumps(data).encode() + b"\n\n"

                finished = False
                try:
                    if chat:
                        for i in range(n):
                            yield chunk(i, None, role=True)
                    for k, piece in enumerate(pieces):
                        if drop is not None and k >= drop:
                            raise RuntimeError("fake vLLM: engine died mid-stream")
                        for i in range(n):
                            yield chunk(i, piece, done_tokens=k + 1)
                        if k == 0 and not state.gate.is_set():
                            await asyncio.to_thread(state.gate.wait, 30)
                        if state.delay:
                            await asyncio.sleep(state.delay)
                    for i in range(n):
                        yield chunk(i, None, finish, done_tokens=tokens)
                    if options.get("include_usage"):
                        yield b"data: " + json.dumps({"id": rid, "object": obj, "model": model, "choices": [],
                                                      "usage": usage}).encode() + b"\n\n"
                    yield b"data: [DONE]\n\n"
                    finished = True
                finally:
                    if not finished and drop is None:
                        with state.lock:
                            state.aborted += 1  # the client went away: vLLM aborts such a request

            return StreamingResponse(events(), media_type="text/event-stream")

        return handler

    app.post("/v1/chat/completions")(generation("/v1/chat/completions", True))
    app.post("/v1/completions")(generation("/v1/completions", False))
    return app


def main(argv: list[str] | None = None) -> None:
    """``serve MODEL [--host H] [--port P] [--served-model-name N] [--lora-modules name=path …] [...]``:
    the fake as a process (unknown flags are accepted, as a fake vllm would). Writes its argv and the
    runtime-LoRA variable to $FAKE_VLLM_RECORD when set."""
    import argparse
    import os
    import sys

    import uvicorn

    argv = list(sys.argv[1:] if argv is None else argv)
    record = os.environ.get("FAKE_VLLM_RECORD")
    if record:
        Path(record).write_text(json.dumps({"argv": argv, "pid": os.getpid(), "env": {
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING")}}))
    p = argparse.ArgumentParser()
    p.add_argument("cmd")
    p.add_argument("model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--lora-modules", nargs="+", default=[])
    args, _ = p.parse_known_args(argv)
    loras = {}
    for item in args.lora_modules:
        if "=" in item and "," not in item:
            name, path = item.split("=")
        else:
            d = json.loads(item)
            name, path = d["name"], d["path"]
        loras[name] = path
    app = create_fake_vllm(args.served_model_name or args.model, loras)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
