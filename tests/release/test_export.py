"""`tuneops registry export`: PEFT folders that plain PEFT loads as tuneops serves them, merged models
within their bound, GGUF read back, every export recorded; bad input exits 2 with the fix."""

import json
from pathlib import Path

import pytest

from tuneops.errors import IntegrityError, InvalidInput, NotFound
from tuneops.release import export as export_mod
from tuneops.release.export import ExportCheckFailed, export_artifact, list_exports


def _adapter_dir(base_path: Path, out: Path, base_id: str, *, seed: int = 1) -> Path:
    """A LoRA r=4 on every linear layer of the tiny base with clearly non-zero weights (a trained
    adapter starts from B = 0 and moves little in a few steps; this one changes every logit), saved
    the way a tuneops run saves it."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneops.train.methods import peft_config, save_artifact
    from tuneops.train.recipe import LoraSpec

    spec = LoraSpec(kind="lora", r=4, alpha=8, dropout=0.0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32), peft_config(spec))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    save_artifact(model, out, method=spec, base_id=base_id)
    (out / "chat_template.jinja").write_text(  # an artifact that overrides the base's template ships it
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return out


def _full_model_dir(base_path: Path, out: Path, base_id: str) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    from tuneops.train.methods import save_artifact
    from tuneops.train.recipe import LoraSpec

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    save_artifact(model, out, method=LoraSpec(kind="full"), base_id=base_id)
    return out


@pytest.fixture(scope="module")
def export_env(tiny_model_dir, tmp_path_factory):
    """(store, base, lora artifact, full-model artifact, prompt-tuning artifact) on the tiny base."""
    from tuneops.models.base import base_dir, import_local
    from tuneops.release.registry import register_adapter
    from tuneops.store import Store

    root = tmp_path_factory.mktemp("export")
    store = Store(root / "store")
    base, _ = import_local(store, tiny_model_dir, name="tiny-llama")
    bp = base_dir(store, base)
    lora, _ = register_adapter(store, _adapter_dir(bp, root / "lora", base.id), base_id=base.id, method="lora",
                               run_id=None, dataset_ids=[], recipe_hash=None,
                               extra_lineage={"chat_template_sha256": "x"})
    full, _ = register_adapter(store, _full_model_dir(bp, root / "full", base.id), base_id=base.id, method="full",
                               run_id=None, dataset_ids=[], recipe_hash=None)
    prompt_dir = root / "prompt"
    prompt_dir.mkdir()
    (prompt_dir / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING",
                                                                "base_model_name_or_path": base.id}))
    (prompt_dir / "adapter_model.safetensors").write_bytes(b"\0" * 8)
    prompt, _ = register_adapter(store, prompt_dir, base_id=base.id, method="prompt", run_id=None, dataset_ids=[],
                                 recipe_hash=None)
    return store, base, lora, full, prompt


def _greedy(model, tok, texts, n=12):
    import torch

    from tuneops.eval.generate import encode_chat

    out = []
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([encode_chat(tok, [{"role": "user", "content": t}])])
            g = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                               pad_token_id=tok.eos_token_id)
            out.append(g[0, ids.shape[1]:].tolist())
    return out


TEXTS = ["Extract name, age and city as JSON: Ana, 31, Porto.", "What is 2 + 2?"]


def test_peft_export_loads_with_plain_peft_like_tuneops(export_env, tmp_path):
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    from tuneops.pipeline import load_paired

    store, base, lora, *_ = export_env
    dest = tmp_path / "out"
    rec = export_artifact(store, lora.id, "peft", dest)
    assert sorted(p.name for p in dest.iterdir()) == ["EXPORT.md", "adapter", "base", "export.json"]
    cfg = json.loads((dest / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str((dest / "base").resolve())  # not the tuneops id any more
    base_cfg = json.loads((dest / "base" / "config.json").read_text())
    assert base_cfg["rope_theta"] == base_cfg["rope_parameters"]["rope_theta"]  # for transformers 4.x readers
    check = rec.details["checks"]["peft_reload"]
    assert check["passed"] and check["max_abs_logit_diff"] <= 1e-5 and check["greedy_identical"] == "4/4"

    # What a user does with the folder: AutoPeft resolves the base by itself; the tokenizer and the
    # artifact's chat template come from the folder.
    plain = AutoPeftModelForCausalLM.from_pretrained(dest / "adapter", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(dest / "base")
    tok.chat_template = (dest / "adapter" / "chat_template.jinja").read_text()
    model, ttok, sides = load_paired(store, lora, None)
    with sides["candidate"]():
        served = _greedy(model, ttok, TEXTS)
    with sides["base"]():
        base_only = _greedy(model, ttok, TEXTS)
    assert _greedy(plain, tok, TEXTS) == served
    assert served != base_only  # the adapter matters, so equality above is not vacuous

    rows = list_exports(store, lora.id)
    assert [r.id for r in rows] == [rec.id] and rows[0].format == "peft"
    assert rows[0].digest == store.blobs.tree_digest(store.blobs.tree_manifest(dest))
    assert store.audit_log()[-1].action == "artifact.export" and store.audit_log()[-1].details["export"] == rec.id
    md = (dest / "EXPORT.md").read_text()
    assert "rope_theta" in md and "10,000" in md and "transformers" in md and "vllm serve" in md
    info = json.loads((dest / "export.json").read_text())
    assert info["compatibility"]["peft"] and info["vllm"]["supported"] and info["artifact"]["id"] == lora.id
    sig = info["artifact"]["signature"]  # signed at registration when a default key exists on this machine
    assert sig["status"] in ("verified", "unsigned", "untrusted") and f"signature: {sig['status']}" in md
    assert all(len(f["sha256"]) == 64 for f in info["files"].values())


def test_peft_export_with_base_ref_writes_no_base(export_env, tmp_path):
    store, base, lora, *_ = export_env
    rec = export_artifact(store, lora.id, "peft", tmp_path / "o", base_ref="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert not (tmp_path / "o" / "base").exists()
    cfg = json.loads((tmp_path / "o" / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert rec.details["checks"]["peft_reload"]["passed"]
    assert base.weights_sha256 in (tmp_path / "o" / "EXPORT.md").read_text()


def test_merged_export_within_bound_and_refused_above_it(export_env, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneops.pipeline import load_paired

    store, base, lora, *_ = export_env
    rec = export_artifact(store, lora.id, "merged", tmp_path / "m")
    merge = rec.details["checks"]["merge"]
    assert merge["passed"] and 0 < merge["max_abs_logit_diff"] <= export_mod.MERGED_MAX_LOGIT_DIFF
    assert merge["top1_agreement"] == 1.0
    assert not any(p.name.startswith("adapter") for p in (tmp_path / "m").iterdir())
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")  # ships the artifact's chat template
    model, ttok, sides = load_paired(store, lora, None)
    with sides["candidate"]():
        assert _greedy(merged, tok, TEXTS) == _greedy(model, ttok, TEXTS)

    # A bound the merge cannot meet: refused, nothing written, nothing recorded.
    before = len(list_exports(store))
    with pytest.raises(ExportCheckFailed, match="max \\|logit difference\\|.*nothing was written"):
        export_artifact(store, lora.id, "merged", tmp_path / "tight", max_logit_diff=1e-12)
    assert not (tmp_path / "tight").exists() and len(list_exports(store)) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tight")]  # no staging left behind


def test_full_model_exports_as_a_model_folder(export_env, tmp_path):
    store, base, _, full, _ = export_env
    rec = export_artifact(store, full.id, "peft", tmp_path / "f")
    names = {p.name for p in (tmp_path / "f").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "EXPORT.md", "export.json"} <= names
    check = rec.details["checks"]["reload"]
    assert "adapter" not in names and check["passed"] and check["max_abs_logit_diff"] <= 1e-5


def test_bad_input_is_refused_before_any_model_loads(export_env, tmp_path):
    store, base, lora, full, prompt = export_env
    with pytest.raises(InvalidInput, match="unknown export format 'onnx'"):
        export_artifact(store, lora.id, "onnx", tmp_path / "x")
    with pytest.raises(InvalidInput, match="unknown GGUF type 'q4_k'"):
        export_artifact(store, lora.id, "gguf", tmp_path / "x", gguf_type="q4_k")
    with pytest.raises(InvalidInput, match="cannot be merged"):
        export_artifact(store, prompt.id, "merged", tmp_path / "x")
    with pytest.raises(InvalidInput, match="--base-ref"):
        export_artifact(store, lora.id, "merged", tmp_path / "x", base_ref="hub/name")
    with pytest.raises(NotFound, match="artifact 'ad-nope' not found"):
        export_artifact(store, "ad-nope", "peft", tmp_path / "x")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInput, match="not empty"):
        export_artifact(store, lora.id, "peft", busy)
    assert (busy / "keep.txt").read_text() == "mine"


def test_tampered_artifact_is_never_exported(tiny_model_dir, tmp_path):
    from tuneops.models.base import base_dir, import_local
    from tuneops.release.registry import register_adapter
    from tuneops.store import Store

    store = Store(tmp_path / "store")
    base, _ = import_local(store, tiny_model_dir, name="tiny-llama")
    d = _adapter_dir(base_dir(store, base), tmp_path / "a", base.id)
    art, _ = register_adapter(store, d, base_id=base.id, method="lora", run_id=None, dataset_ids=[], recipe_hash=None)
    stored = store.blobs.tree_path(art.tree) / "adapter_model.safetensors"
    stored.chmod(0o644)
    stored.write_bytes(stored.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(IntegrityError, match="adapter_model.safetensors"):
        export_artifact(store, art.id, "peft", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list_exports(store)


def test_cli_exit_codes_and_fixes(export_env, tmp_path, monkeypatch, capsys):
    from tuneops.cli.main import run_cli

    store, base, lora, *_ = export_env
    monkeypatch.setenv("TUNEOPS_HOME", str(store.home))

    def cli(*args):
        code = run_cli([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, _, err = cli("registry", "export", lora.id, tmp_path / "x", "--format", "onnx")
    assert code == 2 and "unknown export format" in err and "fix: use --format peft, merged or gguf" in err
    code, _, err = cli("registry", "export", "ad-nope", tmp_path / "x", "--format", "peft")
    assert code == 2 and "not found" in err and "fix:" in err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "f").write_text("x")
    code, _, err = cli("registry", "export", lora.id, busy, "--format", "merged")
    assert code == 2 and "not empty" in err and "--force" in err
    code, out, err = cli("registry", "export", lora.id, busy, "--format", "merged", "--force", "--json")
    assert code == 0, err
    rec = json.loads(out)
    assert rec["format"] == "merged" and rec["checks"]["merge"]["passed"] and not (busy / "f").exists()
    code, out, _ = cli("registry", "exports", lora.id, "--json")
    assert code == 0 and rec["id"] in [e["id"] for e in json.loads(out)]
    code, out, _ = cli("registry", "exports")
    assert code == 0 and rec["id"] in out


def test_converter_fetch_failure_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNEOPS_LLAMA_CPP", raising=False)
    monkeypatch.setenv("TUNEOPS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(export_mod, "LLAMA_CPP_PYTHON", "0.0.0-does-not-exist")
    monkeypatch.setattr(export_mod.subprocess, "run", lambda *a, **k: type(
        "P", (), {"returncode": 1, "stdout": "", "stderr": "ERROR: No matching distribution found"})())
    with pytest.raises(NotFound) as e:
        export_mod.llama_cpp_converter()
    assert "No matching distribution" in e.value.message
    assert "pip download --no-deps --no-binary :all: llama-cpp-python==0.0.0-does-not-exist" in e.value.hint
    assert "TUNEOPS_LLAMA_CPP" in e.value.hint
    monkeypatch.setenv("TUNEOPS_LLAMA_CPP", str(tmp_path / "nowhere"))
    with pytest.raises(NotFound, match="neither a llama.cpp folder"):
        export_mod.llama_cpp_converter()


@pytest.mark.slow
def test_gguf_f16_round_trip(export_env, tmp_path):
    """llama.cpp's converter on the merged tiny model, read back and run by transformers' GGUF loader.
    Slow: the converter's sdist is fetched on first use, and GGUF tokenizer parsing takes seconds."""
    store, base, lora, *_ = export_env
    rec = export_artifact(store, lora.id, "gguf", tmp_path / "g", gguf_type="f16")
    name = f"{lora.id}.F16.gguf"
    assert {p.name for p in (tmp_path / "g").iterdir()} == {"EXPORT.md", "export.json", name}
    rb = rec.details["checks"]["gguf_readback"]
    h = rb["header"]
    assert h["passed"] and h["architecture"] == "llama" and h["file_type"] == 1 and "F16" in h["tensor_types"]
    assert h["tokens_identical"] and h["chat_template_identical"]  # the artifact's own template is inside
    assert rb["passed"] and rb["max_abs_logit_diff"] < 0.05 and rb["top1_agreement"] >= 0.98 and rb["mean_kl"] < 1e-4
    info = json.loads((tmp_path / "g" / "export.json").read_text())
    assert info["files"][name]["bytes"] == (tmp_path / "g" / name).stat().st_size
    assert "llama.cpp" in info["compatibility"] and "rope_theta_note" not in info["compatibility"]
    assert rec.details["checks"]["merge"]["passed"] and rec.format == "gguf"
