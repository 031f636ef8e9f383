"""`tuneops serve --engine vllm` without a GPU: the command built from the registry (adapters named by
artifact id, unservable ones refused by name), the runtime LoRA protocol on alias moves, streaming
through, and an engine that is down answering 503 — against a fake vLLM server and a fake `vllm`
executable."""

import asyncio
import datetime as dt
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from tests.serve.conftest import free_port, running
from tests.serve.fake_vllm import create_fake_vllm
from tuneops.errors import InvalidInput
from tuneops.serve.vllm import (
    RUNTIME_LORA_ENV, LoRAModule, Unservable, UpstreamError, VLLMBackend, VLLMNotInstalled, VLLMProcess,
    VLLMStartFailed, adapter_rank, build_command, parse_sse_event, runtime_exporter, vllm_rank,
)

REPO = Path(__file__).resolve().parents[2]


def _lora_dir(base_path: Path, out: Path, base_id: str, *, r: int, seed: int) -> Path:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneops.train.methods import peft_config, save_artifact
    from tuneops.train.recipe import LoraSpec

    spec = LoraSpec(kind="lora", r=r, alpha=2 * r, dropout=0.0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32), peft_config(spec))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    save_artifact(model, out, method=spec, base_id=base_id)
    return out


def _config_only(out: Path, base_id: str, **cfg) -> Path:
    """An adapter folder with just a config (and placeholder weights): enough for every refusal, which
    happens before anything loads."""
    out.mkdir(parents=True)
    (out / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base_id, **cfg}))
    (out / "adapter_model.safetensors").write_bytes(b"\0" * 8)
    return out


@pytest.fixture(scope="module")
def env(tiny_model_dir, tmp_path_factory):
    """A store with the tiny base and aliases: alpha (LoRA r=4), beta (LoRA r=20, ships its own chat
    template), and dora / ia3 / prefix / gone (a LoRA past its sunset) that vLLM must not get."""
    from tuneops.models.base import base_dir, import_local
    from tuneops.release.registry import deprecate, promote, register_adapter
    from tuneops.store import Store

    root = tmp_path_factory.mktemp("vllm")
    store = Store(root / "store")
    base, _ = import_local(store, tiny_model_dir, name="tiny-llama")
    bp = base_dir(store, base)
    reg = dict(base_id=base.id, run_id=None, dataset_ids=[], recipe_hash=None)
    arts = {}
    arts["alpha"], _ = register_adapter(store, _lora_dir(bp, root / "a", base.id, r=4, seed=1), method="lora", **reg)
    beta_dir = _lora_dir(bp, root / "b", base.id, r=20, seed=2)
    (beta_dir / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    arts["beta"], _ = register_adapter(store, beta_dir, method="lora", **reg)
    lora_cfg = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "bias": "none"}
    arts["dora"], _ = register_adapter(store, _config_only(root / "d", base.id, **lora_cfg, use_dora=True),
                                       method="dora", **reg)
    arts["ia3"], _ = register_adapter(store, _config_only(root / "i", base.id, peft_type="IA3",
                                                          target_modules=["k_proj"]), method="ia3", **reg)
    arts["prefix"], _ = register_adapter(store, _config_only(root / "p", base.id, peft_type="PREFIX_TUNING",
                                                             num_virtual_tokens=4), method="prefix", **reg)
    arts["gone"], _ = register_adapter(store, _config_only(root / "g", base.id, **{**lora_cfg, "r": 2}),
                                       method="lora", **reg)
    for name, art in arts.items():
        promote(store, art.id, f"{name}@production", force=True, reason="vllm test")
    deprecate(store, arts["gone"].id, sunset=dt.date.today() - dt.timedelta(days=2), reason="superseded")
    return store, base, arts, root


# -- command construction ----------------------------------------------------------------------

def test_command_names_modules_by_artifact_id_and_exports_what_vllm_loads(env, tmp_path):
    store, base, arts, _ = env
    a, b = arts["alpha"], arts["beta"]
    kw = dict(export_root=tmp_path / "exp", checked_exports=False)
    plan = build_command(store, base.id, aliases=["alpha", "beta@production"], port=8123, **kw)
    argv = plan.argv
    assert argv[:3] == ["vllm", "serve", str(plan.base_path)]

    def opt(flag):
        return argv[argv.index(flag) + 1]

    assert opt("--served-model-name") == base.id and opt("--port") == "8123" and opt("--host") == "127.0.0.1"
    assert "--enable-lora" in argv and opt("--dtype") == "auto"
    assert opt("--max-loras") == "8" and opt("--max-cpu-loras") == "8"
    assert opt("--max-lora-rank") == "32"  # beta's r=20, rounded up to a rank vLLM accepts
    i = argv.index("--lora-modules")
    items = dict(item.split("=", 1) for item in argv[i + 1:i + 3])
    assert set(items) == {a.id, b.id}  # hash-keyed names, never alias names
    assert not any("alpha" in x or "beta" in x for x in argv)
    assert "--trust-request-chat-template" in argv  # beta ships its own template: sent per request
    assert plan.env == {RUNTIME_LORA_ENV: "True"}
    assert plan.aliases == {"alpha@production": a.id, "beta@production": b.id}
    assert plan.modules[b.id].chat_template and plan.modules[a.id].chat_template is None
    assert plan.command_line().startswith(f"{RUNTIME_LORA_ENV}=True vllm serve ")

    # the folders vLLM is given: a standard HF base, PEFT adapters whose config names it
    assert (plan.base_path / "config.json").is_file() and list(plan.base_path.glob("*.safetensors"))
    for aid, path in items.items():
        cfg = json.loads((Path(path) / "adapter_config.json").read_text())
        assert cfg["peft_type"] == "LORA" and cfg["base_model_name_or_path"] == str(plan.base_path)
        assert (Path(path) / "adapter_model.safetensors").is_file()
        assert Path(path) == plan.modules[aid].path

    # a second start reuses the exports while their files match; a changed file is exported again
    cfg_file = plan.modules[a.id].path / "adapter_config.json"
    before = cfg_file.stat().st_mtime_ns, (plan.base_path / "config.json").stat().st_mtime_ns
    again = build_command(store, base.id, aliases=["alpha", "beta"], port=8123, **kw)
    assert again.argv == argv
    assert (cfg_file.stat().st_mtime_ns, (plan.base_path / "config.json").stat().st_mtime_ns) == before
    cfg_file.write_text("{}")
    build_command(store, base.id, aliases=["alpha"], **kw)
    assert json.loads(cfg_file.read_text())["peft_type"] == "LORA"


def test_checked_export_is_recorded_and_reused(env, tmp_path):
    from tuneops.release.export import list_exports

    store, base, arts, _ = env
    a = arts["alpha"]
    plan = build_command(store, base.id, aliases=["alpha"], export_root=tmp_path / "exp")
    recs = list_exports(store, a.id)
    assert len(recs) == 1 and recs[0].details["checks"]["peft_reload"]["passed"]  # same logits as tuneops' load
    assert recs[0].details["base_reference"] == str(plan.base_path)
    assert plan.modules[a.id].path == Path(recs[0].path) / "adapter"
    build_command(store, base.id, aliases=["alpha"], export_root=tmp_path / "exp")
    assert len(list_exports(store, a.id)) == 1  # files unchanged: no second export


def test_ranks_and_limits(env, tmp_path):
    store, base, arts, _ = env
    assert [vllm_rank(r) for r in (1, 2, 8, 9, 16, 20, 300, 512)] == [1, 8, 8, 16, 16, 32, 320, 512]
    with pytest.raises(InvalidInput, match="largest"):
        vllm_rank(513)
    assert adapter_rank({"r": 8, "rank_pattern": {"q_proj": 48}}) == 48
    kw = dict(export_root=tmp_path / "exp", checked_exports=False)
    plan = build_command(store, base.id, aliases=["alpha"], max_loras=2, dtype="bfloat16", **kw)
    assert plan.max_lora_rank == 16  # vLLM's default floor: adapters promoted later up to r=16 still load
    assert plan.max_loras == 2 and plan.max_cpu_loras == 2 and plan.argv[plan.argv.index("--dtype") + 1] == "bfloat16"
    with pytest.raises(Unservable, match="ships its own chat template"):
        build_command(store, base.id, aliases=["alpha", "beta"], request_chat_templates=False, **kw)
    plan = build_command(store, base.id, aliases=["alpha"], request_chat_templates=False, **kw)
    assert "--trust-request-chat-template" not in plan.argv
    plan = build_command(store, base.id, aliases=["alpha"], max_loras=1, max_cpu_loras=4, max_lora_rank=64,
                         extra_args=["--gpu-memory-utilization", "0.5"], **kw)
    assert plan.argv[-2:] == ["--gpu-memory-utilization", "0.5"] and plan.max_cpu_loras == 4
    with pytest.raises(InvalidInput, match=rf"below the rank of {arts['beta'].id} \(rank 20\)"):
        build_command(store, base.id, aliases=["beta"], max_lora_rank=16, **kw)
    with pytest.raises(InvalidInput, match="not one vLLM accepts"):
        build_command(store, base.id, aliases=["alpha"], max_lora_rank=24, **kw)
    with pytest.raises(InvalidInput, match="must be >= --max-loras"):
        build_command(store, base.id, aliases=["alpha"], max_loras=8, max_cpu_loras=4, **kw)


def test_unservable_adapters_are_refused_by_name(env, tmp_path):
    store, base, arts, _ = env
    kw = dict(export_root=tmp_path / "exp", checked_exports=False)
    with pytest.raises(Unservable) as exc:
        build_command(store, base.id, aliases=["alpha", "dora", "ia3", "prefix", "gone", "nosuch"], **kw)
    msg = exc.value.message
    assert "5 alias target(s)" in msg
    for name, why in (("dora", "DoRA"), ("ia3", "IA3 adapter"), ("prefix", "prefix tuning adapter"),
                      ("gone", "sunset")):
        line = next(x for x in msg.splitlines() if x.strip().startswith(f"{name}@production"))
        assert arts[name].id in line and why in line, line
    assert "nosuch@production -> -: alias nosuch@production does not exist" in msg
    assert {p[0] for p in exc.value.problems} == {"dora@production", "ia3@production", "prefix@production",
                                                 "gone@production", "nosuch@production"}
    assert not (tmp_path / "exp").exists()  # refused before anything was exported

    # every alias (the default), leaving the unservable ones out
    plan = build_command(store, base.id, on_unservable="skip", **kw)
    assert set(plan.modules) == {arts["alpha"].id, arts["beta"].id}
    assert {s[0] for s in plan.skipped} == {"dora@production", "ia3@production", "prefix@production",
                                           "gone@production"}
    assert all(arts[n].id not in " ".join(plan.argv) for n in ("dora", "ia3", "prefix", "gone"))


def test_runtime_exporter_checks_what_is_promoted_later(env, tmp_path):
    store, base, arts, _ = env
    plan = build_command(store, base.id, aliases=["alpha"], export_root=tmp_path / "exp", checked_exports=False)
    path_for = runtime_exporter(store, plan, checked=False)
    assert path_for(arts["alpha"]) == plan.modules[arts["alpha"].id].path
    with pytest.raises(InvalidInput, match="rank 20 is above this server's --max-lora-rank 16"):
        path_for(arts["beta"])
    with pytest.raises(InvalidInput, match="DoRA"):
        path_for(arts["dora"])
    with pytest.raises(InvalidInput, match="sunset"):
        path_for(arts["gone"])


# -- the client against a fake vLLM --------------------------------------------------------------

def _adapter(tmp: Path, name: str) -> Path:
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    return d


def _modules(tmp: Path, *names: str) -> dict[str, LoRAModule]:
    return {n: LoRAModule(artifact_id=n, path=_adapter(tmp, n), rank=8, method="lora") for n in names}


def _fake(*loaded: str, tmp: Path):
    app = create_fake_vllm("base-x", {n: str(tmp / n) for n in loaded})
    return app, app.state.fake


def test_alias_move_loads_new_target_before_unloading_old_once_idle(tmp_path):
    mods = _modules(tmp_path, "ad-old")
    new_path = _adapter(tmp_path, "ad-new")
    app, fake = _fake("ad-old", tmp=tmp_path)

    async def scenario(url):
        backend = VLLMBackend(url, base_name="base-x", max_cpu_loras=4, modules=mods,
                              alias_targets={"tiny@production": "ad-old"}, adapter_path=lambda aid: new_path)
        fake.gate.clear()  # the next stream stays open after its first chunk: a request in flight
        stream = await backend.chat({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}, "ad-old",
                                    stream=True)
        first = await stream.__anext__()
        assert parse_sse_event(first)["model"] == "ad-old"
        moved = await backend.sync_aliases({"tiny@production": "ad-new"})
        assert moved == {"moved": {"tiny@production": ("ad-old", "ad-new")}, "retiring": ["ad-old"]}
        await asyncio.sleep(0.3)
        assert fake.paths().count("/v1/unload_lora_adapter") == 0  # old target kept while in flight
        assert "ad-new" in fake.loras and "ad-old" in fake.loras
        fake.gate.set()
        rest = [e async for e in stream]
        assert rest[-1] == b"data: [DONE]\n\n"
        await asyncio.wait_for(backend.wait_unloads(), 10)
        await backend.aclose()
        return backend

    with running(app) as url:
        backend = asyncio.run(scenario(url))
    lora_calls = [(p, b) for p, b in fake.calls if "lora_adapter" in p]
    assert lora_calls == [("/v1/load_lora_adapter", {"lora_name": "ad-new", "lora_path": str(new_path)}),
                          ("/v1/unload_lora_adapter", {"lora_name": "ad-old"})]
    assert set(fake.loras) == {"ad-new"} and backend.events == [("load", "ad-new"), ("unload", "ad-old")]


def test_ensure_loaded_is_idempotent_and_lru_bounded(tmp_path):
    paths = {n: _adapter(tmp_path, n) for n in ("ad-1", "ad-2", "ad-3", "ad-pin")}
    app, fake = _fake("ad-pin", "ad-2", tmp=tmp_path)  # ad-2 is already in vLLM (a front restart)

    async def scenario(url):
        b = VLLMBackend(url, base_name="base-x", max_cpu_loras=2,
                        modules={"ad-pin": LoRAModule("ad-pin", paths["ad-pin"], 8, "lora")},
                        alias_targets={"p@production": "ad-pin"}, adapter_path=lambda art: paths[art.id])

        class Art:
            def __init__(self, id_):
                self.id = id_

        assert await b.ensure_loaded(Art("ad-1")) is True
        assert await b.ensure_loaded(Art("ad-1")) is False          # idempotent: no second POST
        assert await b.ensure_loaded(Art("ad-2")) is True           # vLLM's "already been loaded" = loaded
        assert list(b.loaded) == ["ad-pin", "ad-2"]                 # ad-1 evicted (LRU), the alias target kept
        assert await b.ensure_loaded(Art("ad-3")) is True
        assert list(b.loaded) == ["ad-pin", "ad-3"]
        assert await b.unload("ad-unknown") is False                # vLLM's 404 "cannot be found" is no error
        await b.aclose()

    with running(app) as url:
        asyncio.run(scenario(url))
    loads = [b["lora_name"] for p, b in fake.calls if p == "/v1/load_lora_adapter"]
    unloads = [b["lora_name"] for p, b in fake.calls if p == "/v1/unload_lora_adapter"]
    assert loads == ["ad-1", "ad-2", "ad-3"] and unloads == ["ad-1", "ad-2", "ad-unknown"]
    assert set(fake.loras) == {"ad-pin", "ad-3"}


def test_chat_and_completion_route_by_artifact_id_and_stream_through(tmp_path):
    mods = _modules(tmp_path, "ad-a")
    mods["ad-a"].chat_template = "{{ messages }}"
    app, fake = _fake("ad-a", tmp=tmp_path)

    async def scenario(url):
        b = VLLMBackend(url, base_name="base-x", modules=mods)
        chat = {"model": "alias-name", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
                "chat_template": "{{ 'injected' }}"}
        out = await b.chat(chat, "ad-a")
        assert out["model"] == "ad-a" and out["choices"][0]["message"]["content"] == "[ad-a] hello from fake vLLM"
        base = await b.chat(chat, None)
        assert base["choices"][0]["message"]["content"].startswith("[base-x]")
        events = [e async for e in await b.chat({**chat, "stream_options": {"include_usage": True}}, "ad-a",
                                               stream=True)]
        parsed = [parse_sse_event(e) for e in events]
        assert parsed[-1] == "[DONE]" and all(e.endswith(b"\n\n") for e in events)
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in parsed[:-1] if c["choices"])
        assert text == "[ad-a] hello from fake vLLM"
        assert parsed[-2]["usage"]["completion_tokens"] == 5 and parsed[-3]["choices"][0]["finish_reason"] == "stop"
        comp = [parse_sse_event(e) async for e in await b.completion({"model": "x", "prompt": "hi"}, "ad-a",
                                                                    stream=True)]
        assert "".join(c["choices"][0]["text"] for c in comp[:-1]) == "[ad-a] hello from fake vLLM"
        out = await b.completion({"model": "x", "prompt": "hi"}, None)
        assert out["choices"][0]["text"].startswith("[base-x]")
        assert b.inflight.counts == {}
        # a client that leaves before reading anything: aclose() releases the request
        unread = await b.chat(chat, "ad-a", stream=True)
        assert b.inflight.counts == {"ad-a": 1}
        await unread.aclose()
        assert b.inflight.counts == {}
        # the engine dies mid-stream: the client gets what came, an OpenAI error event, then [DONE]
        fake.drop_after = 2
        cut = [parse_sse_event(e) async for e in await b.chat(chat, "ad-a", stream=True)]
        assert cut[-1] == "[DONE]" and cut[-2]["error"]["code"] == "engine_unavailable"
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in cut[:-2]) == "[ad-a] hello"
        assert b.inflight.counts == {}
        await b.aclose()

    with running(app) as url:
        asyncio.run(scenario(url))
    sent = [b for p, b in fake.calls if p == "/v1/chat/completions"]
    assert [s["model"] for s in sent] == ["ad-a", "base-x", "ad-a", "ad-a", "ad-a"]
    assert sent[0]["chat_template"] == "{{ messages }}"       # the artifact's own template, never the client's
    assert "chat_template" not in sent[1] and sent[2]["stream"] is True and sent[0]["stream"] is False


def test_engine_down_is_503_with_retry_after(tmp_path):
    mods = _modules(tmp_path, "ad-a")
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    async def scenario():
        b = VLLMBackend(url, base_name="base-x", modules=mods, connect_timeout=1.0)
        for call in (lambda: b.chat({"messages": []}, None), lambda: b.chat({"messages": []}, "ad-a", stream=True),
                     lambda: b.completion({"prompt": "x"}, None, stream=True),
                     lambda: b.unload("ad-a")):
            with pytest.raises(UpstreamError) as exc:
                await call()
            e = exc.value
            assert e.http_status == 503 and e.retry_after == 5 and e.headers == {"Retry-After": "5"}
            assert e.body()["error"]["code"] == "engine_unavailable" and set(e.body()["error"]) == {
                "message", "type", "param", "code"}
        assert b.inflight.counts == {} and await b.health() is False
        await b.aclose()

    asyncio.run(scenario())


def test_upstream_errors_are_openai_shaped_and_never_500(tmp_path):
    mods = _modules(tmp_path, "ad-a")
    app, fake = _fake("ad-a", tmp=tmp_path)

    async def scenario(url):
        b = VLLMBackend(url, base_name="base-x", modules=mods)
        fake.fail = (500, "Traceback: CUDA out of memory")
        with pytest.raises(UpstreamError) as exc:
            await b.chat({"messages": []}, "ad-a")
        assert exc.value.http_status == 503 and exc.value.error_code == "engine_error" and exc.value.retry_after
        fake.fail = (400, {"error": {"message": "This model's maximum context length is 2048 tokens.",
                                     "type": "BadRequestError", "param": None, "code": 400}})
        with pytest.raises(UpstreamError) as exc:
            await b.chat({"messages": []}, "ad-a", stream=True)
        assert exc.value.http_status == 400 and exc.value.error_code == "context_length_exceeded"
        assert exc.value.body()["error"]["type"] == "invalid_request_error"
        fake.fail = (400, {"object": "error", "message": "old-style", "type": "BadRequestError", "code": 400})
        with pytest.raises(UpstreamError, match="old-style"):
            await b.completion({"prompt": "x"}, None)
        # vLLM was restarted and forgot the adapter: loaded again, once, and the request succeeds
        fake.loras.clear()
        out = await b.chat({"messages": [{"role": "user", "content": "x"}]}, "ad-a")
        assert out["model"] == "ad-a"
        # a folder vLLM cannot load: 503 adapter_load_failed naming it
        with pytest.raises(UpstreamError, match="could not load ad-missing") as exc:
            b.modules["ad-missing"] = LoRAModule("ad-missing", tmp_path / "nowhere", 8, "lora")
            await b.chat({"messages": []}, "ad-missing")
        assert exc.value.http_status == 503 and exc.value.error_code == "adapter_load_failed"
        assert b.inflight.counts == {}
        await b.aclose()

    with running(app) as url:
        asyncio.run(scenario(url))
    assert [b["lora_name"] for p, b in fake.calls if p == "/v1/load_lora_adapter"] == ["ad-a", "ad-missing"]


# -- the process ---------------------------------------------------------------------------------

def _script(bin_dir: Path, body: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "vllm"
    exe.write_text(f"#!{sys.executable}\n{body}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def test_process_starts_the_fake_vllm_serves_and_stops(env, tmp_path, monkeypatch):
    store, base, arts, _ = env
    _script(tmp_path / "bin", f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
                              "from tests.serve.fake_vllm import main; main()")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(tmp_path / "record.json"))
    plan = build_command(store, base.id, aliases=["alpha"], port=free_port(), export_root=tmp_path / "exp",
                         checked_exports=False)
    proc = VLLMProcess.from_plan(plan, tmp_path / "logs" / "vllm.log")
    with proc:
        assert proc.healthy()
        record = json.loads((tmp_path / "record.json").read_text())
        assert record["argv"] == plan.argv[1:] and record["env"] == {RUNTIME_LORA_ENV: "True"}

        async def ask():
            b = plan.backend()
            ids = [m["id"] for m in await b.models()]
            out = await b.chat({"messages": [{"role": "user", "content": "hi"}]}, arts["alpha"].id)
            await b.aclose()
            return ids, out

        ids, out = asyncio.run(ask())
        assert ids == [base.id, arts["alpha"].id]
        assert out["choices"][0]["message"]["content"].startswith(f"[{arts['alpha'].id}]")
        pid = proc.pid
    assert not proc.running() and proc.proc.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert "tuneops starting: vllm serve" in (tmp_path / "logs" / "vllm.log").read_text()


def test_process_errors_are_clear(tmp_path, monkeypatch):
    log = tmp_path / "vllm.log"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(VLLMNotInstalled, match="vLLM is not installed here") as exc:
        VLLMProcess(["vllm", "serve", "x"], url="http://127.0.0.1:1", log_path=log).start()
    assert "pip install vllm" in exc.value.hint

    _script(tmp_path / "bin", "import sys; print('RuntimeError: No CUDA GPUs are available'); sys.exit(1)")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    proc = VLLMProcess(["vllm", "serve", "x"], url=f"http://127.0.0.1:{free_port()}", log_path=log).start()
    with pytest.raises(VLLMStartFailed, match="No CUDA GPUs are available"):
        proc.wait_ready(timeout=30, poll=0.1)
    proc.stop()

    # one that ignores SIGTERM is killed
    _script(tmp_path / "bin", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                              "print('ready', flush=True)\ntime.sleep(60)")
    proc = VLLMProcess(["vllm", "serve", "x"], url=f"http://127.0.0.1:{free_port()}", log_path=log).start()
    import time
    deadline = time.time() + 10
    while "ready" not in log.read_text() and time.time() < deadline:
        time.sleep(0.05)
    assert proc.stop(timeout=0.5) == -9
    _script(tmp_path / "bin", "import time; time.sleep(60)")  # never answers /health
    with pytest.raises(VLLMStartFailed, match="did not answer"):
        slow = VLLMProcess(["vllm", "serve", "x"], url=f"http://127.0.0.1:{free_port()}", log_path=log).start()
        slow.wait_ready(timeout=0.5, poll=0.1)
    assert not slow.running()
