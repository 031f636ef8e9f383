"""Every method.kind trains on the tiny model, lowers its loss, saves, and reloads to the same logits."""

import contextlib

import pytest
import torch

from tuneops.train.recipe import LoraSpec, ObjectiveSpec, TrainSpec
from tuneops.train.sft import train

ROWS = [{"messages": [{"role": "user", "content": f"Extract: {n} is {a}."},
                      {"role": "assistant", "content": f'{{"name": "{n}", "age": {a}}}'}]}
        for n, a in [("Ana", 31), ("Bo", 42), ("Cy", 27), ("Di", 55), ("Ed", 19), ("Flo", 64), ("Gus", 38), ("Hal", 23)]]


def batch(tok, rows=ROWS):
    from tuneops.train.template import tokenize_rows

    toks = tokenize_rows(tok, rows, max_length=128)
    n = max(len(t.input_ids) for t in toks)
    ids = torch.tensor([t.input_ids + [tok.pad_token_id] * (n - len(t.input_ids)) for t in toks])
    labels = torch.tensor([t.labels + [-100] * (n - len(t.labels)) for t in toks])
    mask = torch.tensor([[1] * len(t.input_ids) + [0] * (n - len(t.input_ids)) for t in toks])
    return ids, mask, labels


def loss_of(model, ids, mask, labels) -> float:
    model.eval()
    with torch.no_grad():
        return float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)


def reload(base_dir, out_dir, kind):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if kind == "full":
        return AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    if kind == "qlora":
        from tuneops.train.methods import load_model

        base = load_model(base_dir, LoraSpec(kind="qlora"))
    else:
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, out_dir).eval()


METHODS = {
    "lora": {"r": 4, "alpha": 8},
    "rslora": {"kind": "lora", "r": 4, "alpha": 8, "rslora": True},
    "loraplus": {"kind": "lora", "r": 4, "alpha": 8, "loraplus_lr_ratio": 16},
    "lora_save_head": {"kind": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"], "modules_to_save": ["lm_head"]},
    "dora": {"kind": "dora", "r": 4, "alpha": 8},
    "ia3": {"kind": "ia3"},
    "prefix": {"kind": "prefix", "num_virtual_tokens": 4},
    "prompt": {"kind": "prompt", "num_virtual_tokens": 4, "prompt_init_text": "Extract the JSON."},
    "full": {"kind": "full"},
    "qlora": {"kind": "qlora", "r": 4, "alpha": 8},
}
LR = {"full": 3e-3, "ia3": 0.3, "prefix": 0.3, "prompt": 0.3}
MIN_DROP = {"ia3": 0.01, "prefix": 0.01, "prompt": 0.01}


@pytest.mark.parametrize("name", list(METHODS))
def test_method_trains_lowers_loss_and_reloads_identically(name, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = dict(METHODS[name])
    method = LoraSpec(**({"kind": "lora"} | spec))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids, mask, labels = batch(tok)
    before = loss_of(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), ids, mask, labels)
    result = train(tiny_model_dir, ROWS, method=method, out_dir=tmp_path / "adapter", base_id="base-tiny",
                   spec=TrainSpec(max_steps=6, batch_size=4, learning_rate=LR.get(name, 2e-2), warmup_ratio=0.0,
                                  threads=2))
    after = loss_of(result.model, ids, mask, labels)
    # the few-parameter methods move a random tiny model less in six steps; deterministic, so still a real drop
    assert after < before - MIN_DROP.get(name, 0.05), (name, before, after)
    assert 0 < result.trainable_parameters <= result.total_parameters
    assert result.tokens > 0 and result.tokens_per_s > 0 and result.peak_memory_mb > 0 and result.artifact_bytes > 0
    assert len(result.template_sha256) == 64 and result.preflight["rows"] == len(ROWS)
    files = sorted(p.name for p in result.adapter_dir.iterdir())
    assert files == (["config.json", "generation_config.json", "model.safetensors"] if name == "full"
                     else ["adapter_config.json", "adapter_model.safetensors"])
    again = reload(tiny_model_dir, result.adapter_dir, method.kind)
    with torch.no_grad():
        a = result.model.eval()(input_ids=ids, attention_mask=mask).logits
        b = again(input_ids=ids, attention_mask=mask).logits
    # qlora: TRL keeps a quantised model's trainable weights in bf16 during training, the reload computes in fp32
    atol = 1e-2 if name == "qlora" else 1e-5
    assert torch.allclose(a, b, atol=atol), (name, (a - b).abs().max())
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    if name in ("rslora", "lora"):  # rsLoRA scales by alpha / sqrt(r) (8 / 2 = 4), plain LoRA by alpha / r (2)
        import json

        cfg = json.loads((result.adapter_dir / "adapter_config.json").read_text())
        assert cfg["use_rslora"] is (name == "rslora")
        scalings = {m.scaling["default"] for m in again.modules() if isinstance(getattr(m, "scaling", None), dict)}
        assert scalings == ({4.0} if name == "rslora" else {2.0}), scalings
    if name == "lora_save_head":  # modules_to_save: the trained head travels in the adapter
        from safetensors import safe_open

        with safe_open(result.adapter_dir / "adapter_model.safetensors", "pt") as f:
            head = [k for k in f.keys() if "lm_head" in k]
        assert head, "modules_to_save lm_head is not in the saved adapter"
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        with safe_open(result.adapter_dir / "adapter_model.safetensors", "pt") as f:
            assert not torch.equal(f.get_tensor(head[0]), base.lm_head.weight)  # it trained


def test_loraplus_and_prompt_init_reach_peft(tiny_model_dir):
    """LoRA+: the optimizer the trainer gets puts B matrices at ratio x lr; prompt tuning from text starts from
    the text's own token embeddings (PEFT repeats them to num_virtual_tokens)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneops.train.methods import peft_config
    from tuneops.train.sft import adapter_setup

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    method = LoraSpec(r=4, alpha=8, loraplus_lr_ratio=16)
    wrapped, cfg, (opt, sched) = adapter_setup(model, method, TrainSpec(learning_rate=1e-3), tiny_model_dir)
    assert cfg is None and sched is None  # already wrapped: the trainer must not wrap it again
    names = {id(p): n for n, p in wrapped.named_parameters()}
    lrs = {}
    for g in opt.param_groups:
        for p in g["params"]:
            lrs[names[id(p)]] = g["lr"]
    assert lrs and all(lr == pytest.approx(16e-3 if "lora_B" in n else 1e-3) for n, lr in lrs.items()), lrs
    assert any("lora_B" in n for n in lrs) and any("lora_A" in n for n in lrs)

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Extract the JSON."
    method = LoraSpec(kind="prompt", num_virtual_tokens=6, prompt_init_text=text)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    pm = get_peft_model(base, peft_config(method, base_path=tiny_model_dir))
    ids = tok(text)["input_ids"]
    ids = (ids * 6)[:6]
    want = base.get_input_embeddings()(torch.tensor(ids))
    got = pm.prompt_encoder["default"].embedding.weight
    assert torch.allclose(got, want), (got - want).abs().max()


def test_packed_rows_never_attend_to_each_other(tiny_model_dir, tmp_path):
    """objective.packing: every row packed into one sequence (best-fit into max_length) gives the loss of the
    same rows in one padded batch — position ids restart per row, so no row sees another."""
    first = {}
    for packed in (True, False):
        r = train(tiny_model_dir, ROWS, method=LoraSpec(r=4), out_dir=tmp_path / f"p{packed}" / "adapter",
                  base_id="base-tiny", objective=ObjectiveSpec(kind="sft", packing=packed),
                  spec=TrainSpec(max_steps=1, batch_size=1 if packed else 8, max_length=512, padding_free=False,
                                 group_by_length=False, threads=2))
        first[packed] = (r.losses[0]["loss"], r.tokens)
    assert first[True][1] == first[False][1]  # the same tokens, in one packed row instead of eight
    assert first[True][0] == pytest.approx(first[False][0], rel=1e-4), first


def test_padding_free_batches_give_the_padded_loss(tiny_model_dir, tmp_path):
    """Rows concatenated with position ids (no padding) must not attend to each other: same first loss."""
    first = {}
    for pf in (True, False):
        r = train(tiny_model_dir, ROWS, method=LoraSpec(r=4), out_dir=tmp_path / f"a{pf}" / "adapter",
                  base_id="base-tiny", spec=TrainSpec(max_steps=1, batch_size=8, padding_free=pf,
                                                       group_by_length=False, threads=2))
        first[pf] = r.losses[0]["loss"]
    assert first[True] == pytest.approx(first[False], rel=1e-4)


def test_kl_to_reference_keeps_the_model_closer_to_its_base(tiny_model_dir, tmp_path):
    """The forgetting control: with a KL term the adapter's next-token distribution moves less from the base's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids, mask, _ = batch(tok)
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)(
            input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
    drift = {}
    for kl in (0.0, 20.0):
        r = train(tiny_model_dir, ROWS, method=LoraSpec(r=4, alpha=8), out_dir=tmp_path / f"kl{kl}" / "adapter",
                  base_id="base-tiny", objective=ObjectiveSpec(kl_to_reference=kl),
                  spec=TrainSpec(max_steps=8, batch_size=4, learning_rate=1e-2, warmup_ratio=0.0, threads=2))
        with torch.no_grad():
            logp = r.model.eval()(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
        drift[kl] = float((ref.exp() * (ref - logp)).sum(-1)[mask.bool()].mean())
    assert drift[20.0] < drift[0.0] * 0.8, drift


def test_sft_golden_losses(tiny_model_dir, tmp_path):
    """Pinned first losses of a fixed tiny SFT run. If a transformers / TRL / PEFT upgrade changes them, training
    changed: find out why (release notes, a diff of the collator or loss) before re-pinning."""
    r = train(tiny_model_dir, ROWS, method=LoraSpec(r=4, alpha=8, dropout=0.0), out_dir=tmp_path / "adapter",
              base_id="base-tiny", spec=TrainSpec(max_steps=3, batch_size=4, learning_rate=1e-2, warmup_ratio=0.0,
                                                   threads=2, seed=0))
    got = [round(x["loss"], 4) for x in r.losses]
    assert got == pytest.approx(GOLDEN_SFT, rel=1e-3), got


GOLDEN_SFT = [10.7852, 10.7565, 10.7282]


@contextlib.contextmanager
def _resident(mb: int):
    """``mb`` MB of memory made resident and returned to the kernel on exit, whatever the allocator holds: an
    anonymous mapping of its own, every page written. (A torch tensor of that size may come from memory the
    allocator kept from earlier tests and then leave the RSS unchanged both ways: so it did in CI, at 4.1 GB.)"""
    import mmap

    m = mmap.mmap(-1, mb * 2**20)
    view = torch.frombuffer(m, dtype=torch.uint8)
    view.fill_(1)
    del view
    try:
        yield
    finally:
        m.close()


def _linux_only():
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("the per-run peak reads Linux's /proc/self/status")


def test_peak_memory_is_the_runs_own():
    """A worker that trains many times reports each run's peak, not the largest run before it."""
    from tuneops.train.methods import peak_rss_mb, reset_peak_memory

    _linux_only()
    with _resident(400):
        high = peak_rss_mb()
    reset_peak_memory()
    assert peak_rss_mb() < high - 300, (high, peak_rss_mb())


@pytest.mark.parametrize("kernel_reset", [True, False], ids=["kernel", "sampled"])
def test_peak_memory_counts_the_runs_spike_whichever_way_it_is_kept(monkeypatch, kernel_reset):
    """Where the kernel does not reset VmHWM (no /proc/self/clear_refs, or a sandbox that ignores the write), a
    sampling thread keeps the run's peak: it sees a spike during the run and forgets the one before."""
    import time

    from tuneops.train import methods

    _linux_only()
    if not kernel_reset:
        monkeypatch.setattr(methods, "_clear_hwm", lambda: False)
    with _resident(400):
        pass
    methods.reset_peak_memory()
    try:
        if not kernel_reset:
            assert methods._SAMPLER is not None
        start = methods.peak_rss_mb()
        with _resident(400):
            time.sleep(0.2)  # the sampler reads every 20 ms
        peak = methods.peak_rss_mb()
        assert peak > start + 300, (start, peak)
        methods.reset_peak_memory()
        assert methods.peak_rss_mb() < peak - 300
    finally:
        monkeypatch.undo()
        methods.reset_peak_memory()


def test_a_reset_the_kernel_ignored_is_noticed(monkeypatch):
    """The reset is checked, not assumed: VmHWM far above VmRSS after the write means it did not take."""
    from tuneops.train import methods

    monkeypatch.setattr(methods, "_proc_status_mb", lambda *keys: {"VmHWM": 4139.1, "VmRSS": 1020.0})
    assert methods._clear_hwm() is False


def test_eval_loss_masks_like_training_with_train_on_prompt(tiny_model_dir, tmp_path):
    """objective.train_on_prompt: the eval loss covers the prompt tokens too, as training does (it used to be
    computed on the assistant tokens only). One step; the eval loss is then that of the saved model."""
    from tuneops.train.template import tokenize_rows
    from transformers import AutoTokenizer

    result = train(tiny_model_dir, ROWS, method=LoraSpec(r=4), out_dir=tmp_path / "adapter", base_id="base-tiny",
                   objective=ObjectiveSpec(kind="sft", train_on_prompt=True), eval_rows=ROWS,
                   spec=TrainSpec(max_steps=1, batch_size=8, eval_steps=1, padding_free=False, group_by_length=False,
                                  threads=2))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    losses = {}
    for on_prompt in (True, False):
        toks = tokenize_rows(tok, ROWS, max_length=128, train_on_prompt=on_prompt)
        n = max(len(t.input_ids) for t in toks)
        ids = torch.tensor([t.input_ids + [tok.pad_token_id] * (n - len(t.input_ids)) for t in toks])
        labels = torch.tensor([t.labels + [-100] * (n - len(t.labels)) for t in toks])
        mask = torch.tensor([[1] * len(t.input_ids) + [0] * (n - len(t.input_ids)) for t in toks])
        losses[on_prompt] = loss_of(result.model, ids, mask, labels)
    got = result.eval_losses[-1]["eval_loss"]
    # measured: 10.82598 with the prompt, 10.78535 without; the old code reported the latter
    assert abs(got - losses[True]) < 1e-4 and abs(got - losses[False]) > 1e-2, (got, losses)
