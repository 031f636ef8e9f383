"""One slow test per objective family on the real SmolLM2-135M-Instruct: a few steps each, finite losses, an
artifact that reloads. The tiny-model tests prove the objectives learn; these prove they run on the real model."""

import json
import math

import pytest

from tuneops.train.recipe import LoraSpec, ObjectiveSpec, TrainSpec
from tuneops.train.sft import train

pytestmark = pytest.mark.slow

CHATS = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}? End with #### and the number."},
                       {"role": "assistant", "content": f"{a} + {b} = {a + b}.\n#### {a + b}"}]}
         for a, b in [(2, 3), (10, 7), (21, 4), (8, 8)]]
PAIRS = [{"prompt": c["messages"][:1], "chosen": c["messages"][1:],
          "rejected": [{"role": "assistant", "content": "I cannot help with arithmetic."}]} for c in CHATS]
SPEC = TrainSpec(max_steps=2, batch_size=4, learning_rate=1e-4, warmup_ratio=0.0, max_length=96)


@pytest.fixture(scope="module")
def smollm(tmp_path_factory):
    from tuneops.models.base import base_dir, import_embedded
    from tuneops.store import Store

    store = Store(tmp_path_factory.mktemp("real-objectives"))
    base, _ = import_embedded(store)
    return base_dir(store, base)


def _check(result, kind):
    assert result.steps >= 1, kind
    assert all(math.isfinite(x["loss"]) for x in result.losses), (kind, result.losses)
    assert result.trainable_parameters > 0 and result.artifact_bytes > 0
    cfg = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "base-real"


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_sft_family(smollm, tmp_path, method):
    r = train(smollm, CHATS, method=LoraSpec(kind=method, r=8), spec=SPEC, out_dir=tmp_path / "a", base_id="base-real")
    _check(r, f"sft/{method}")
    assert r.preflight["default_system_prompt"].startswith("You are a helpful AI assistant named SmolLM")


@pytest.mark.parametrize("kind", ["dpo", "reward"])
def test_preference_family(smollm, tmp_path, kind):
    r = train(smollm, PAIRS, method=LoraSpec(r=8), spec=SPEC, objective=ObjectiveSpec(kind=kind),
              out_dir=tmp_path / "a", base_id="base-real")
    _check(r, kind)


def test_rl_family_grpo_with_the_gsm8k_verifier(smollm, tmp_path):
    from tuneops.train.rewards import load_reward

    r = train(smollm, CHATS, method=LoraSpec(r=8), spec=SPEC, out_dir=tmp_path / "a", base_id="base-real",
              objective=ObjectiveSpec(kind="grpo", reward="gsm8k", num_generations=2, max_completion_length=16),
              reward_fn=load_reward("gsm8k"))
    _check(r, "grpo")
    assert all(0.0 <= x["reward"] <= 1.0 for x in r.losses if x.get("reward") is not None)


def test_distill_family_logits(smollm, tmp_path):
    r = train(smollm, CHATS, method=LoraSpec(r=8), spec=SPEC, out_dir=tmp_path / "a", base_id="base-real",
              objective=ObjectiveSpec(kind="distill", teacher="base", temperature=2.0), teacher_path=smollm)
    _check(r, "distill")
