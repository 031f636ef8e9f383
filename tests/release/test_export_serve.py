"""Round trip (issue 11): an artifact's `registry export --format peft` folder, loaded by plain PEFT in a
process that never imports tuneops, gives the same greedy completions as `tuneops serve` gives for the
artifact — asked with the official `openai` client — through the same chat template (the base's).

The server answers text and a completion-token count, not token ids: the plain side decodes its tokens
the way any client reads a completion (special tokens skipped, surrounding whitespace stripped), and
both the text and the number of tokens must match, as must the finish reason."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve.conftest import running

CHATS = [
    [{"role": "user", "content": "Extract the name: Alice is 30."}],
    [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "city of Bob, who lives in Oslo"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
     {"role": "user", "content": "  leading spaces, a tab\tand ünïcödé"}],
    [{"role": "user", "content": "Reply with a list: red, green, blue."}],
]
MAX_TOKENS = 12

# The load side: transformers + PEFT only, as a user would write it; it fails if tuneops got imported.
PLAIN = r"""
import json, sys
import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

adapter, base, chats, max_new = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
model = AutoPeftModelForCausalLM.from_pretrained(adapter, dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(base)
eos = tok.eos_token_id
pad = tok.pad_token_id if tok.pad_token_id is not None else eos
out = []
for chat in chats:
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
    x = torch.tensor([ids])
    with torch.no_grad():
        y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new, do_sample=False,
                           eos_token_id=eos, pad_token_id=pad)
    toks = y[0, len(ids):].tolist()
    finish = "length"
    if eos in toks:
        toks, finish = toks[:toks.index(eos) + 1], "stop"
    out.append({"tokens": toks, "text": tok.decode(toks, skip_special_tokens=True).strip(), "finish": finish,
                "prompt_tokens": len(ids)})
assert not any(m == "tuneops" or m.startswith("tuneops.") for m in sys.modules), "tuneops was imported"
print(json.dumps(out))
"""


def _random_lora(base_path: Path, out: Path, base_id: str) -> Path:
    """A LoRA r=4 on every linear layer of the tiny base with clearly non-zero weights (a 2-step trained
    adapter barely moves from B = 0), saved as a tuneops run saves it; no template of its own."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneops.train.methods import peft_config, save_artifact
    from tuneops.train.recipe import LoraSpec

    spec = LoraSpec(kind="lora", r=4, alpha=8, dropout=0.0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32), peft_config(spec))
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    save_artifact(model, out, method=spec, base_id=base_id)
    return out


@pytest.fixture(scope="module")
def served_artifact(tiny_model_dir, tmp_path_factory):
    """(store, base, artifact): the tiny base and a signed LoRA registered on it, with the base's template."""
    from tuneops.models.base import base_dir, import_local
    from tuneops.release.registry import register_adapter
    from tuneops.store import Store

    root = tmp_path_factory.mktemp("export-serve")
    store = Store(root / "store")
    base, _ = import_local(store, tiny_model_dir, name="tiny-llama")
    art, _ = register_adapter(store, _random_lora(base_dir(store, base), root / "lora", base.id), base_id=base.id,
                              method="lora", run_id=None, dataset_ids=[], recipe_hash=None,
                              extra_lineage={"template_sha256": base.chat_template_sha256})
    assert art.signature  # the session's signing key (tests/conftest.py): the server serves only signed artifacts
    return store, base, art


def _ask(url: str, model: str) -> list[dict]:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    out = []
    for chat in CHATS:
        r = client.chat.completions.create(model=model, messages=chat, temperature=0, max_tokens=MAX_TOKENS)
        assert r.model == model
        out.append({"text": r.choices[0].message.content, "completion_tokens": r.usage.completion_tokens,
                    "prompt_tokens": r.usage.prompt_tokens, "finish": r.choices[0].finish_reason})
    return out


def test_exported_peft_folder_generates_what_the_server_serves(served_artifact, tmp_path):
    from tuneops.release.export import export_artifact
    from tuneops.serve.app import create_app

    store, base, art = served_artifact
    with running(create_app(store, base.id)) as url:
        served = _ask(url, art.id)
        base_only = _ask(url, base.id)
    assert [s["text"] for s in served] != [b["text"] for b in base_only]  # the adapter matters: not vacuous

    dest = tmp_path / "export"
    rec = export_artifact(store, art.id, "peft", dest)
    assert rec.details["checks"]["peft_reload"]["passed"]
    assert json.loads((dest / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] \
        == str((dest / "base").resolve())

    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEOPS_")}
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH="")
    proc = subprocess.run([sys.executable, "-c", PLAIN, str(dest / "adapter"), str(dest / "base"), json.dumps(CHATS),
                           str(MAX_TOKENS)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    plain = json.loads(proc.stdout.strip().splitlines()[-1])

    for chat, s, p in zip(CHATS, served, plain):
        assert (p["text"], len(p["tokens"]), p["finish"]) == (s["text"], s["completion_tokens"], s["finish"]), chat
        assert p["prompt_tokens"] == s["prompt_tokens"], chat  # the same chat template, the same prompt ids
