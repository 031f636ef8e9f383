"""`tuneops serve --engine vllm` end to end without a GPU: tuneops' own front (create_app) with the vLLM
engine (serve/vllm_engine.py) against the fake vLLM server, over real HTTP, driven by the official
openai client — the same API as the embedded engine (aliases, canaries, tenants, traces, metrics,
streaming), vLLM always asked for artifact ids with token-id prompts, alias moves reaching vLLM, an
engine that is down answering 503 — and the CLI's `--engine vllm --dry-run` / not-installed paths."""

import os
import shutil
import sqlite3
import stat
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest

from tests.cli.helpers import tuneops
from tests.serve.conftest import free_port, running
from tests.serve.fake_vllm import create_fake_vllm

REPO = Path(__file__).resolve().parents[2]
HI = [{"role": "user", "content": "Ada, 36, London"}]
ANSWER = "hello from fake vLLM"


# -- a private store: the session's trained adapter plus random LoRAs --------------------------------------

def _clone_store(src, dest: Path):
    from tuneops.store import Store

    shutil.copytree(src.home, dest, ignore=shutil.ignore_patterns("tuneops.db*"))
    with sqlite3.connect(src.home / "tuneops.db") as a, sqlite3.connect(dest / "tuneops.db") as b:
        a.backup(b)
    return Store(dest)


def _add_adapter(store, like, seed: int, work: Path):
    """A promotable LoRA (random weights) on ``like``'s base, with ``like``'s lineage and passing eval."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneops.models.base import base_dir
    from tuneops.release.registry import register_adapter
    from tuneops.store.schema import EvalReportRecord

    model = AutoModelForCausalLM.from_pretrained(base_dir(store, store.get_base(like.base_id)), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  lora_dropout=0.0))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.6)
    out = work / f"adapter-{seed}"
    peft_model.save_pretrained(out)
    skip = {"base", "datasets", "recipe_sha256", "run", "code_version", "files"}
    lineage = like.lineage
    art, created = register_adapter(store, out, base_id=like.base_id, method="lora", run_id=like.run_id,
                                    dataset_ids=list(lineage.get("datasets") or []),
                                    recipe_hash=lineage.get("recipe_sha256"),
                                    extra_lineage={k: v for k, v in lineage.items() if k not in skip})
    assert created and art.signature
    with store.session() as s:  # a passing gated eval report: promotable, canary-able
        s.add(EvalReportRecord(id=f"ev-vllm-front-{art.id}", artifact_id=art.id, baseline=like.base_id, suites=[],
                               metrics={}, gates=[{"gate": "g", "candidate": 1.0, "threshold": 0.0, "passed": True,
                                                   "task": True}], passed=True, report_blob="x"))
    return art


@pytest.fixture(scope="module")
def world(served_store, tmp_path_factory):
    """(store, base, [a0, a1, a2, a3], root): a0 = the trained adapter at tiny@production; a1-a3 random LoRAs,
    a1 at helper@production."""
    from tuneops.release.registry import promote

    src, base, trained = served_store
    root = tmp_path_factory.mktemp("vllm-front")
    store = _clone_store(src, root / "store")
    arts = [trained] + [_add_adapter(store, trained, seed, root) for seed in (21, 22, 23)]
    promote(store, arts[1].id, "helper@production", force=True, reason="vllm front test")
    return store, base, arts, root


@contextmanager
def stack(world, tmp_path, *, vllm_up: bool = True, front: dict | None = None, **engine_kw):
    """The fake vLLM (unless ``vllm_up`` is False: nothing listens on its port), the plan built from the
    registry for its port, and the front with the vLLM engine, served by uvicorn."""
    from tuneops.serve.app import create_app
    from tuneops.serve.vllm import build_command
    from tuneops.serve.vllm_engine import vllm_engine_factory

    store, base, arts, root = world
    fake_app = create_fake_vllm(base.id)
    fake = fake_app.state.fake

    @contextmanager
    def upstream():
        if vllm_up:
            with running(fake_app) as vurl:
                yield int(vurl.rsplit(":", 1)[1])
        else:
            yield free_port()

    with upstream() as port:
        plan = build_command(store, base.id, port=port, export_root=root / "exports", checked_exports=False)
        fake.loras.update({aid: str(m.path) for aid, m in plan.modules.items()})  # vLLM's --lora-modules
        kw = dict(alias_interval=0.2, health_interval=0.2, connect_timeout=1.0, **engine_kw)
        app = create_app(store, base.id, engine_factory=vllm_engine_factory(plan, start=False, **kw),
                         **(front or {}))
        try:
            with running(app) as url:
                yield SimpleNamespace(url=url, fake=fake, plan=plan, app=app, engine=app.state.pool.engine,
                                      client=openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                                                           timeout=60))
        finally:
            fake.gate.set()


def _generations(fake) -> list[dict]:
    return [b for p, b in fake.calls if p in ("/v1/completions", "/v1/chat/completions")]


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# -- the same API, routed by artifact id ---------------------------------------------------------------------

def test_chat_and_completions_reach_vllm_as_token_ids_for_the_artifact(world, tmp_path):
    store, base, (a0, a1, *_), _ = world
    with stack(world, tmp_path) as s:
        raw = s.client.chat.completions.with_raw_response.create(model="tiny", messages=HI, max_tokens=7, seed=7,
                                                                  temperature=0.5, top_p=0.9)
        out = raw.parse()
        assert out.choices[0].message.content == f"[{a0.id}] {ANSWER}"
        assert out.model == a0.id and out.choices[0].finish_reason == "stop"
        meta = out.tuneops
        assert meta["artifact"] == a0.id and meta["alias"] == "tiny@production" and meta["base"] == base.id
        assert meta["path"] == "vllm" and meta["requested"] == "tiny" and meta["interrupted"] is None
        assert raw.headers["x-tuneops-artifact"] == a0.id and raw.headers["x-tuneops-path"] == "vllm"
        assert raw.headers["x-tuneops-alias"] == "tiny@production" and raw.headers["x-tuneops-base"] == base.id
        assert raw.headers["x-tuneops-trace"].startswith("tr-")
        ids = s.app.state.pool.encode(HI)
        assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == 5

        sent = _generations(s.fake)[-1]
        assert s.fake.paths()[-1] == "/v1/completions"  # the front renders the chat; vLLM continues token ids
        assert sent["model"] == a0.id and sent["prompt"] == ids and sent["max_tokens"] == 7
        assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True,
                                                                     "continuous_usage_stats": True}
        assert (sent["temperature"], sent["top_p"], sent["seed"], sent["n"]) == (0.5, 0.9, 7, 1)
        assert (sent["top_k"], sent["min_p"], sent["repetition_penalty"]) == (-1, 0.0, 1.0)  # not generation_config's
        assert "stop" not in sent and "chat_template" not in sent

        text = s.client.completions.create(model="helper@production", prompt="The capital of France is",
                                           max_tokens=9)
        assert text.choices[0].text == f"[{a1.id}] {ANSWER}" and text.model == a1.id
        assert text.tuneops["alias"] == "helper@production"
        sent = _generations(s.fake)[-1]
        assert sent["model"] == a1.id and sent["prompt"] == s.app.state.pool.encode(None, "The capital of France is")

        bare = s.client.completions.create(model=base.id, prompt="Once upon a time", seed=2**64 - 1)
        assert bare.choices[0].text == f"[{base.id}] {ANSWER}" and bare.tuneops["artifact"] is None
        sent = _generations(s.fake)[-1]
        assert sent["model"] == base.id and sent["max_tokens"] == 16 and sent["seed"] == -1  # signed 64-bit

        by_id = s.client.chat.completions.create(model=a1.id, messages=HI, max_tokens=3)
        assert by_id.model == a1.id and by_id.choices[0].finish_reason == "length"
        assert by_id.choices[0].message.content == f"[{a1.id}] hello from" and by_id.usage.completion_tokens == 3

        # vLLM only ever hears artifact ids and the base's served name, never an alias
        models = {b["model"] for b in _generations(s.fake)}
        assert models <= {a0.id, a1.id, base.id}
        st = s.engine.stats()
        assert set(st["resident_ids"]) >= {a0.id, a1.id} and st["engine"] == "vllm" and st["path_vllm"] == 4


def test_stop_n_and_length_match_the_embedded_semantics(world, tmp_path):
    _, _, (a0, *_), _ = world
    with stack(world, tmp_path) as s:
        cut = s.client.chat.completions.create(model="tiny", messages=HI, max_tokens=8, stop=[" fake", "zzz"])
        assert cut.choices[0].message.content == f"[{a0.id}] hello from" and cut.choices[0].finish_reason == "stop"
        assert _generations(s.fake)[-1]["stop"] == [" fake", "zzz"]
        streamed = list(s.client.chat.completions.create(model="tiny", messages=HI, max_tokens=8, stop=" fake",
                                                         stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == cut.choices[0].message.content
        assert [c.choices[0].finish_reason for c in streamed if c.choices and c.choices[0].finish_reason] == ["stop"]

        two = s.client.completions.create(model="tiny", prompt="Hello", max_tokens=2, n=2)
        assert [(c.index, c.text, c.finish_reason) for c in two.choices] == [
            (0, f"[{a0.id}] hello", "length"), (1, f"[{a0.id}] hello", "length")]
        assert two.usage.completion_tokens == 4 and _generations(s.fake)[-1]["n"] == 2
        chunks = list(s.client.completions.create(model="tiny", prompt="Hello", max_tokens=2, n=2, stream=True,
                                                  stream_options={"include_usage": True}))
        texts = {0: "", 1: ""}
        for c in chunks:
            for ch in c.choices:
                texts[ch.index] += ch.text
        assert texts == {0: f"[{a0.id}] hello", 1: f"[{a0.id}] hello"}
        assert chunks[-1].usage.completion_tokens == 4 and chunks[-1].tuneops["path"] == "vllm"


def test_streaming_through_the_openai_client(world, tmp_path):
    store, base, (a0, *_), _ = world
    with stack(world, tmp_path) as s:
        whole = s.client.chat.completions.create(model="tiny", messages=HI, max_tokens=12)
        with s.client.chat.completions.with_streaming_response.create(
                model="tiny", messages=HI, max_tokens=12, stream=True,
                stream_options={"include_usage": True}) as resp:
            assert resp.headers["x-tuneops-artifact"] == a0.id and resp.headers["x-tuneops-alias"] == "tiny@production"
            chunks = list(resp.parse())
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.choices[0].message.content == f"[{a0.id}] {ANSWER}"
        assert all(c.model == a0.id for c in chunks)
        usage = chunks[-1]
        assert usage.choices == [] and usage.usage.completion_tokens == whole.usage.completion_tokens == 5
        assert usage.tuneops["artifact"] == a0.id and usage.tuneops["path"] == "vllm"
        # the text streamed by the engine arrives in more than one delta (not one blob at the end)
        assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 3

        # metrics and traces see the vLLM engine's requests like the embedded one's
        m = httpx.get(s.url + "/metrics").text
        assert f'adapter="{a0.id}"' in m and 'path="vllm"' in m
        health = httpx.get(s.url + "/healthz").json()
        assert health["status"] == "ok" and a0.id in health["adapters_loaded"] and health["pool"]["engine"] == "vllm"


def test_an_alias_move_sends_the_next_request_to_the_new_artifact(world, tmp_path):
    from tuneops.release.registry import promote

    store, base, (a0, a1, a2, a3), _ = world
    promote(store, a2.id, "mover@production", force=True, reason="vllm front test")
    with stack(world, tmp_path) as s:
        first = s.client.chat.completions.create(model="mover", messages=HI, max_tokens=4)
        assert first.model == a2.id and _generations(s.fake)[-1]["model"] == a2.id
        promote(store, a3.id, "mover@production", force=True, reason="vllm front test: move")
        after = s.client.chat.completions.create(model="mover", messages=HI, max_tokens=4)
        assert after.model == a3.id and after.tuneops["artifact"] == a3.id
        assert _generations(s.fake)[-1]["model"] == a3.id
        assert after.choices[0].message.content.startswith(f"[{a3.id}]")
        # the engine's alias watch loads the new target and unloads the old one (no alias points at it)
        _wait(lambda: ("/v1/unload_lora_adapter", {"lora_name": a2.id}) in s.fake.calls, 10, "a2 not unloaded")
        assert a3.id in s.fake.loras and a2.id not in s.fake.loras
        loads = [b["lora_name"] for p, b in s.fake.calls if p == "/v1/load_lora_adapter"]
        assert loads == [a3.id]  # a2 was a --lora-modules target; a3 registered once, by artifact id
        assert s.engine.backend.alias_targets["mover@production"] == a3.id
        assert all(b["model"] in (a0.id, a1.id, a2.id, a3.id, base.id) for b in _generations(s.fake))
        # a request naming the retired artifact by id loads it again, under its id
        again = s.client.chat.completions.create(model=a2.id, messages=HI, max_tokens=4)
        assert again.model == a2.id and a2.id in s.fake.loras
        assert s.engine.stats()["misses"] >= 1


def test_canary_users_get_the_canary_artifact_from_vllm(world, tmp_path):
    from tuneops.release.registry import promote
    from tuneops.release.routing import choose_target, set_canary

    store, base, (a0, a1, a2, a3), _ = world
    alias = "split@production"
    promote(store, a0.id, alias, force=True, reason="vllm front test")
    route, _ = set_canary(store, alias, a1.id, 50, reason="half the users on a1")
    users = [f"user-{i}" for i in range(12)]
    expected = {u: choose_target(route, a0.id, user=u) for u in users}
    assert {role for _, role in expected.values()} == {"primary", "canary"}
    with stack(world, tmp_path) as s:
        for u in users:
            out = s.client.chat.completions.create(model="split", messages=HI, max_tokens=2, user=u)
            assert (out.model, out.tuneops["role"]) == expected[u]
            assert _generations(s.fake)[-1]["model"] == expected[u][0]


def test_tenant_keys_are_enforced_in_front_of_vllm(world, tmp_path):
    from tuneops.serve import tenants as T

    store, base, arts, root = world
    private = _clone_store(store, tmp_path / "store")
    _, key = T.add_tenant(private, "acme", grants=["helper"])
    with stack((private, base, arts, root), tmp_path) as s:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key=key, max_retries=0, timeout=60)
        ok = client.chat.completions.create(model="helper", messages=HI, max_tokens=2)
        assert ok.model == arts[1].id
        before = len(_generations(s.fake))
        with pytest.raises(openai.NotFoundError) as exc:  # not granted: as if it did not exist
            client.chat.completions.create(model="tiny", messages=HI, max_tokens=2)
        assert exc.value.body["code"] == "model_not_found"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{s.url}/v1", api_key="wrong", max_retries=0).chat.completions.create(
                model="helper", messages=HI, max_tokens=2)
        assert len(_generations(s.fake)) == before  # refused in front: vLLM never saw them


# -- failures: OpenAI-shaped, never a 500 --------------------------------------------------------------------

def _is_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code, err
    assert r.headers.get("x-tuneops-trace", "").startswith("tr-")
    return err


def test_vllm_down_is_503_with_retry_after_and_healthz_degraded(world, tmp_path):
    with stack(world, tmp_path, vllm_up=False) as s:
        body = {"model": "tiny", "messages": HI, "max_tokens": 3}
        r = httpx.post(s.url + "/v1/chat/completions", json=body, timeout=30)
        err = _is_error(r, 503, "engine_unavailable")
        assert err["type"] == "server_error" and r.headers["retry-after"] == "5"
        r = httpx.post(s.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=30)
        _is_error(r, 503, "engine_unavailable")  # before the first token: a JSON answer, status kept
        r = httpx.post(s.url + "/v1/completions", json={"model": s.plan.base_id, "prompt": "hi"}, timeout=30)
        _is_error(r, 503, "engine_unavailable")
        with pytest.raises(openai.InternalServerError) as exc:
            s.client.chat.completions.create(model="helper", messages=HI, max_tokens=2)
        assert exc.value.status_code == 503
        _wait(lambda: httpx.get(s.url + "/healthz").status_code == 503, 5, "healthz not degraded")
        health = httpx.get(s.url + "/healthz").json()
        assert health["status"] == "degraded" and "engine:vllm" in health["failures"]
        assert s.engine.stats()["failed"] >= 4


def test_upstream_errors_keep_their_meaning(world, tmp_path):
    _, _, (a0, *_), _ = world
    with stack(world, tmp_path) as s:
        body = {"model": "tiny", "messages": HI, "max_tokens": 3}
        s.fake.fail = (500, "Traceback: CUDA out of memory")
        r = httpx.post(s.url + "/v1/chat/completions", json=body, timeout=30)
        assert "CUDA" in _is_error(r, 503, "engine_error")["message"] and r.headers["retry-after"] == "5"
        s.fake.fail = (400, {"error": {"message": "This model's maximum context length is 512 tokens.",
                                       "type": "BadRequestError", "param": None, "code": 400}})
        r = httpx.post(s.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=30)
        _is_error(r, 400, "context_length_exceeded")
        # the engine dies mid-stream: what came, then an OpenAI error event (the status was already sent)
        s.fake.drop_after = 2
        with httpx.stream("POST", s.url + "/v1/chat/completions", json={**body, "max_tokens": 8, "stream": True},
                          timeout=30) as r:
            assert r.status_code == 200
            lines = [line for line in r.iter_lines() if line]
        errors = [line for line in lines if '"error"' in line]
        assert len(errors) == 1 and "generation_failed" in errors[0] and "mid-stream" in errors[0]
        assert lines.index(errors[0]) >= len(lines) - 2 and f"[{a0.id}]" in "".join(lines[:lines.index(errors[0])])
        # vLLM restarted and forgot the adapter: registered again, once, and the request succeeds
        s.fake.loras.pop(a0.id)
        ok = s.client.chat.completions.create(model="tiny", messages=HI, max_tokens=3)
        assert ok.model == a0.id and a0.id in s.fake.loras
        assert httpx.get(s.url + "/healthz").json()["status"] == "ok"


def test_deadline_and_disconnect_close_the_upstream_stream(world, tmp_path):
    _, _, (a0, *_), _ = world
    with stack(world, tmp_path, front={"request_timeout": 1.5}) as s:
        s.fake.gate.clear()  # streams stall after their first piece
        started = time.monotonic()
        out = s.client.chat.completions.create(model="tiny", messages=HI, max_tokens=8)
        assert time.monotonic() - started < 10
        assert out.tuneops["interrupted"] == "time_limit" and out.choices[0].finish_reason == "length"
        assert out.choices[0].message.content == f"[{a0.id}]" and out.usage.completion_tokens == 1
        _wait(lambda: s.fake.aborted == 1, 5, "vLLM's stream was not closed at the deadline")

        # a client that leaves mid-stream: the front cancels, the engine closes vLLM's stream
        with httpx.stream("POST", s.url + "/v1/chat/completions", timeout=30,
                          json={"model": "tiny", "messages": HI, "max_tokens": 8, "stream": True}) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if a0.id in line:  # the first piece arrived
                    break
        _wait(lambda: s.fake.aborted == 2, 5, "vLLM's stream was not closed when the client left")
        s.fake.gate.set()
        _wait(lambda: s.engine.stats()["running"] == 0, 5, "requests still counted as running")


# -- the process: started, used, stopped ---------------------------------------------------------------------

def _fake_vllm_on_path(bin_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "vllm"
    exe.write_text(f"#!{sys.executable}\nimport sys; sys.path.insert(0, {str(REPO)!r})\n"
                   "from tests.serve.fake_vllm import main; main()\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


def test_the_factory_starts_vllm_and_the_front_stops_it(world, tmp_path, monkeypatch):
    from tuneops.serve.app import create_app
    from tuneops.serve.vllm import build_command
    from tuneops.serve.vllm_engine import vllm_engine_factory

    store, base, (a0, *_), root = world
    _fake_vllm_on_path(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    plan = build_command(store, base.id, port=free_port(), export_root=root / "exports", checked_exports=False)
    steps = []
    app = create_app(store, base.id, engine_factory=vllm_engine_factory(
        plan, log_path=tmp_path / "vllm.log", start_timeout=60, on_step=steps.append))
    engine = app.state.pool.engine
    proc = engine.process
    assert proc.running() and any("ready" in m for m in steps)
    with running(app) as url:
        out = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0).chat.completions.create(
            model="tiny", messages=HI, max_tokens=3)
        assert out.model == a0.id and out.choices[0].message.content == f"[{a0.id}] hello from"
    # the front's shutdown closed the engine, which stopped vLLM (its whole process group)
    assert not proc.running()
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)
    assert "tuneops starting: vllm serve" in (tmp_path / "vllm.log").read_text()
    assert not [t for t in threading.enumerate() if t.name == "tuneops-vllm-engine"]


# -- the CLI -------------------------------------------------------------------------------------------------

def test_cli_dry_run_prints_the_vllm_command(world, tmp_path):
    store, base, (a0, a1, *_), _ = world
    private = _clone_store(store, tmp_path / "store")
    p = tuneops(private.home, "serve", "--engine", "vllm", "--dry-run", "--base", base.id, "--vllm-port", "8123",
                "--max-loras", "4", "--max-lora-rank", "64", "--dtype", "bfloat16",
                "--vllm-arg", "--gpu-memory-utilization 0.5", "--vllm-arg=--enforce-eager", "--vllm-export", "copy",
                PATH=str(tmp_path / "no-vllm-here"))
    line = p.stdout.strip().splitlines()[-1]
    assert line.startswith("VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve "), p.stdout
    for part in (f"--served-model-name {base.id}", "--port 8123", "--max-loras 4", "--max-lora-rank 64",
                 "--dtype bfloat16", "--enable-lora", "--gpu-memory-utilization 0.5", "--enforce-eager",
                 f"{a0.id}=", f"{a1.id}="):
        assert part in line, part
    assert "tiny" not in line.replace("tiny-llama", "") and "helper" not in line  # artifact ids, not aliases
    assert "Traceback" not in p.stderr
    assert f"tiny@production -> {a0.id}" in p.stderr  # which alias is which artifact: on stderr
    exports = private.home / "exports" / "vllm" / base.id
    assert (exports / "base" / "config.json").is_file() and (exports / "adapters" / a0.id / "adapter").is_dir()


def test_cli_without_vllm_says_so(world, tmp_path):
    store, base, *_ = world
    private = _clone_store(store, tmp_path / "store")
    p = tuneops(private.home, "serve", "--engine", "vllm", "--base", base.id, check=False,
                PATH=str(tmp_path / "no-vllm-here"))
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "vLLM is not installed here" in p.stderr and "pip install vllm" in p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    p = tuneops(private.home, "serve", "--engine", "nope", check=False)
    assert p.returncode == 2 and "nope" in p.stderr
    p = tuneops(private.home, "serve", "--engine", "vllm", "--merge-hot", check=False)
    assert p.returncode == 2 and "--merge-hot is for the embedded engine" in p.stderr and "--format merged" in p.stderr


def test_cli_serves_through_vllm_and_stops_it(world, tmp_path):
    import json
    import signal

    from tests.cli.helpers import start

    store, base, (a0, *_), _ = world
    private = _clone_store(store, tmp_path / "store")
    _fake_vllm_on_path(tmp_path / "bin")
    record = tmp_path / "record.json"
    port, vport = free_port(), free_port()
    proc = start(private.home, "serve", "--engine", "vllm", "--base", base.id, "--port", port, "--vllm-port", vport,
                 "--vllm-export", "copy", "--vllm-log", tmp_path / "vllm.log", "--vllm-start-timeout", "120",
                 PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", FAKE_VLLM_RECORD=str(record))
    try:
        url = f"http://127.0.0.1:{port}"

        def up():
            assert proc.poll() is None, proc.communicate()
            try:
                return httpx.get(url + "/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(up, 240, "the front did not come up")
        out = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0).chat.completions.create(
            model="tiny", messages=HI, max_tokens=5)
        assert out.model == a0.id and out.choices[0].message.content == f"[{a0.id}] {ANSWER}"
        assert out.tuneops["path"] == "vllm"
        vllm_pid = json.loads(record.read_text())["pid"]
        argv = json.loads(record.read_text())["argv"]
        assert argv[argv.index("--port") + 1] == str(vport) and a0.id + "=" in " ".join(argv)
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr
    with pytest.raises(ProcessLookupError):  # the front stopped vLLM on its way out
        os.kill(vllm_pid, 0)


def test_choice_text_streams_only_final_text():
    """The engine's per-choice text rules, whatever vLLM's chunking: a stop string that straddles chunks is
    cut (and never streamed, not even its first characters), whitespace the final strip removes is held
    back, and the deltas concatenate to the final text."""
    from tuneops.serve.protocol import GenRequest
    from tuneops.serve.vllm_engine import _ChoiceText

    deltas = []
    req = GenRequest(artifact=None, prompt_ids=[1], max_new_tokens=9, stop=["END"], on_delta=lambda i, t: deltas.append(t))
    c = _ChoiceText(0, req, lambda i, t: deltas.append(t))
    for piece in ["  Hello", " wor", "ld E", "N", "D and more"]:
        c.add(piece)
        assert not any(d.endswith(("E", "EN")) or "END" in d for d in deltas)
    assert c.finish == "stop" and c.end() == "Hello world" and "".join(deltas) == "Hello world"

    deltas.clear()
    c = _ChoiceText(0, GenRequest(artifact=None, prompt_ids=[1], max_new_tokens=9), lambda i, t: deltas.append(t))
    c.req.on_delta = lambda i, t: None  # streaming on
    for piece in ["a ", " b", "  "]:
        c.add(piece)
    assert "".join(deltas) == "a  b" and c.end() == "a  b" and "".join(deltas) == "a  b" and c.finish is None
