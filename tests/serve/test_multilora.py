"""MultiLoRALinear: per-row adapters in one forward equal each PEFT adapter alone; unsupported adapters are named."""

import json

import pytest
import torch

from tests.serve.test_engine import load_tiny, make_adapter
from tuneops.serve.multilora import LoRAContext, inject_multilora, read_lora_adapter


@pytest.fixture(scope="module")
def lora_dirs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("multilora")
    return [
        make_adapter(root / "a", tiny_model_dir, 11, r=2, alpha=4, targets=("q_proj", "v_proj")),
        make_adapter(root / "b", tiny_model_dir, 12, r=8, alpha=8, targets="all-linear", use_rslora=True),
        make_adapter(root / "c", tiny_model_dir, 13, r=4, alpha=16, targets=("down_proj", "k_proj")),
    ]


def peft_logits(model_dir, adapter, ids):
    from peft import PeftModel

    model, _ = load_tiny(model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("mode", ["grouped", "gather"])
def test_rows_with_different_adapters_match_peft(tiny_model_dir, lora_dirs, mode):
    model, _ = load_tiny(tiny_model_dir)
    ctx = LoRAContext(mode)
    wrapped = inject_multilora(model, ctx)
    assert "lm_head" not in wrapped and len(wrapped) == 2 * 7
    slots = {}
    for k, d in enumerate(lora_dirs, start=1):
        w = read_lora_adapter(d, wrapped, max_rank=64)
        assert w.unsupported is None
        for name, (A, B, scale) in w.modules.items():
            wrapped[name].ensure(4, A.shape[0])
            wrapped[name].set_slot(k, A, B, scale)
        slots[d] = k
    ids = torch.randint(0, 1000, (5, 7), generator=torch.Generator().manual_seed(0))
    row_adapters = [lora_dirs[0], None, lora_dirs[1], lora_dirs[2], lora_dirs[0]]
    ctx.route([slots.get(a, 0) for a in row_adapters])
    with torch.no_grad():
        got = model(input_ids=ids).logits
    for i, a in enumerate(row_adapters):
        want = peft_logits(tiny_model_dir, a, ids[i:i + 1])[0]
        assert torch.allclose(got[i], want, atol=1e-5), (i, (got[i] - want).abs().max())
    # rsLoRA scales by alpha / sqrt(r), plain LoRA by alpha / r.
    assert read_lora_adapter(lora_dirs[1], wrapped, max_rank=64).modules["model.layers.0.mlp.up_proj"][2] == \
        pytest.approx(8 / 8 ** 0.5)
    assert read_lora_adapter(lora_dirs[2], wrapped, max_rank=64).modules["model.layers.1.self_attn.k_proj"][2] == 4.0


def test_adapters_the_batched_path_cannot_serve_say_why(tiny_model_dir, tmp_path):
    model, _ = load_tiny(tiny_model_dir)
    wrapped = inject_multilora(model, LoRAContext())
    cases = {
        "dora": (dict(use_dora=True), "DoRA"),
        "mts": (dict(modules_to_save=["lm_head"]), "modules_to_save"),
        "rank": (dict(r=16), "rank 16 > max_lora_rank 8"),
        "pattern": (dict(rank_pattern={"q_proj": 2}), "rank_pattern"),
        "embed": (dict(targets=("embed_tokens", "q_proj")), "not a plain LoRA"),
    }
    for name, (kwargs, why) in cases.items():
        d = make_adapter(tmp_path / name, tiny_model_dir, 1, **kwargs)
        w = read_lora_adapter(d, wrapped, max_rank=8)
        assert w.unsupported and why in w.unsupported, (name, w.unsupported)
    for kind, why in (("prefix", "PREFIX_TUNING"), ("prompt", "PROMPT_TUNING"), ("ia3", "IA3")):
        d = make_adapter(tmp_path / kind, tiny_model_dir, 1, kind=kind)
        assert why in read_lora_adapter(d, wrapped, max_rank=8).unsupported


def test_malformed_adapters_raise_instead_of_serving(tiny_model_dir, tmp_path):
    model, _ = load_tiny(tiny_model_dir)
    wrapped = inject_multilora(model, LoRAContext())
    d = make_adapter(tmp_path / "ok", tiny_model_dir, 1)
    (d / "adapter_model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(Exception):
        read_lora_adapter(d, wrapped, max_rank=8)
    d2 = make_adapter(tmp_path / "cfg", tiny_model_dir, 1)
    (d2 / "adapter_config.json").write_text("{not json")
    with pytest.raises(json.JSONDecodeError):
        read_lora_adapter(d2, wrapped, max_rank=8)


@pytest.mark.parametrize("mode", ["grouped", "gather"])
def test_a_merged_hot_adapter_matches_peft_for_every_row_and_never_writes_the_base(tiny_model_dir, lora_dirs, mode):
    """merge_hot: hot rows run on W + BA with no LoRA step, other rows subtract the hot delta again."""
    model, _ = load_tiny(tiny_model_dir)
    ctx = LoRAContext(mode)
    wrapped = inject_multilora(model, ctx)
    originals = {name: layer.base.weight.detach().clone() for name, layer in wrapped.items()}
    for k, d in enumerate(lora_dirs, start=1):
        for name, (A, B, scale) in read_lora_adapter(d, wrapped, max_rank=64).modules.items():
            wrapped[name].ensure(4, A.shape[0])
            wrapped[name].set_slot(k, A, B, scale)
    hot = 2   # lora_dirs[1]: all-linear, rsLoRA
    for layer in wrapped.values():
        layer.merged = layer.merge_weight(hot)
    assert all(layer.merged is not None for layer in wrapped.values())   # all-linear touches every layer
    ctx.hot_slot = hot
    ids = torch.randint(0, 1000, (5, 7), generator=torch.Generator().manual_seed(1))
    for slots, rows in (([2, 0, 1, 3, 2], range(5)), ([2, 2], range(2)), ([0, 1], range(2))):
        ctx.route(slots)
        with torch.no_grad():
            got = model(input_ids=ids[:len(slots)]).logits
        ctx.clear()
        for i in rows:
            want = peft_logits(tiny_model_dir, lora_dirs[slots[i] - 1] if slots[i] else None, ids[i:i + 1])[0]
            assert torch.allclose(got[i], want, atol=1e-4), (slots, i, (got[i] - want).abs().max())
    # an all-hot pass takes no low-rank step at all: the hot slot is routed as "no adapter"
    ctx.route([2, 2])
    assert not ctx.groups and not ctx.use_gather and not ctx.unmerge_all and ctx.unmerge is None
    ctx.clear()
    # unmerging is dropping the copies: the base weights were never written
    ctx.hot_slot = 0
    for layer in wrapped.values():
        layer.merged = None
    for name, layer in wrapped.items():
        assert torch.equal(layer.base.weight, originals[name]), name


def test_gathered_rows_are_reused_only_while_slots_and_weights_stay(tiny_model_dir, lora_dirs):
    """A mixed batch keeps each layer's gathered A/B across steps with the same slots; a slot refilled with
    another adapter (evicted, reused) must never be served from the stale gather."""
    model, _ = load_tiny(tiny_model_dir)
    ctx = LoRAContext("gather")
    wrapped = inject_multilora(model, ctx)

    def fill(slot, d):
        for name, (A, B, scale) in read_lora_adapter(d, wrapped, max_rank=64).modules.items():
            wrapped[name].ensure(4, A.shape[0])
            wrapped[name].set_slot(slot, A, B, scale)

    fill(1, lora_dirs[0])
    fill(2, lora_dirs[1])
    ids = torch.randint(0, 1000, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ctx.route([1, 2])
        first = model(input_ids=ids).logits
        key = ctx.gather_key
        ctx.route([1, 2])                      # the next step, same rows: same key, gathers reused
        assert ctx.gather_key == key
        assert torch.equal(model(input_ids=ids).logits, first)
        for layer in wrapped.values():         # slot 1 evicted, refilled with adapter c (same slots after)
            layer.clear_slot(1)
        fill(1, lora_dirs[2])
        ctx.route([1, 2])
        got = model(input_ids=ids).logits
    assert torch.allclose(got[0], peft_logits(tiny_model_dir, lora_dirs[2], ids[:1])[0], atol=1e-5)
    assert torch.allclose(got[1], peft_logits(tiny_model_dir, lora_dirs[1], ids[1:])[0], atol=1e-5)
