"""GRPO and RLOO raise a reward the tiny random Llama can actually learn, save, and reload to the same logits.

The reward: the fraction of completion tokens in a fixed half of the vocabulary — the tokens whose embedding
points along a seeded random direction. A random 32-wide model samples almost uniformly at temperature 1
(its logits span well under one nat, and LoRA cannot change the tied embeddings), so the runs sample at
temperature 0.1, where steering the last hidden state along that direction moves real probability mass.
"""

import pytest
import torch

from tuneops.errors import InvalidInput
from tuneops.train.recipe import LoraSpec, ObjectiveSpec, TrainSpec
from tuneops.train.sft import train

ROWS = [{"messages": [{"role": "user", "content": f"Tell me about item {i}."},
                      {"role": "assistant", "content": f"Item {i} costs ${i * 3}.\n#### {i * 3}"}]} for i in range(16)]
TEMPERATURE = 0.1
SPEC = dict(max_steps=8, batch_size=8, learning_rate=3e-2, warmup_ratio=0.0, threads=1, seed=0)
METHOD = LoraSpec(r=8, alpha=16, dropout=0.0)


@pytest.fixture(scope="module")
def in_set(tiny_model_dir) -> torch.Tensor:
    """A bool per token id: does its embedding point along a seeded random direction (about half do)."""
    from transformers import AutoModelForCausalLM

    emb = AutoModelForCausalLM.from_pretrained(tiny_model_dir).get_input_embeddings().weight.detach()
    direction = torch.randn(emb.shape[1], generator=torch.Generator().manual_seed(0))
    return emb @ direction > 0


def make_reward(in_set: torch.Tensor, seen: list):
    def in_half(prompts, completions, completion_ids, answer, **kwargs):
        seen.append(list(answer))
        return [float(in_set[torch.tensor(ids, dtype=torch.long)].float().mean()) if len(ids) else 0.0
                for ids in completion_ids]
    return in_half


def expected_reward(model, tok, in_set) -> float:
    """Probability mass on the rewarded half for each prompt's first completion token, at the sampling
    temperature: what the policy would score, without sampling noise."""
    out = []
    for row in ROWS:
        ids = tok.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        with torch.no_grad():
            p = (model(input_ids=ids).logits[0, -1] / TEMPERATURE).softmax(-1)
        out.append(float(p[in_set].sum()))
    return sum(out) / len(out)


def run(kind, tiny_model_dir, tmp_path, in_set, seen):
    # through sft.train: the objective dispatcher hands reward_fn on to train_rl, as the pipeline does
    return train(tiny_model_dir, ROWS, method=METHOD, spec=TrainSpec(**SPEC),
                 objective=ObjectiveSpec(kind=kind, reward="my_rewards:in_half", num_generations=4,
                                         max_completion_length=8, temperature=TEMPERATURE),
                 out_dir=tmp_path / "adapter", base_id="base-tiny", reward_fn=make_reward(in_set, seen))


@pytest.fixture(scope="module")
def grpo(tiny_model_dir, tmp_path_factory, in_set):
    seen: list = []
    return run("grpo", tiny_model_dir, tmp_path_factory.mktemp("grpo"), in_set, seen), seen


def reload(tiny_model_dir, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_dir).eval()


def check_learned_and_reloads(result, tiny_model_dir, in_set, min_gain, min_expected_gain):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rewards = [e["reward"] for e in result.losses]
    assert len(rewards) == SPEC["max_steps"] and all(r is not None for r in rewards)
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + min_gain, rewards
    assert result.extra["reward_first"] < result.extra["reward_last"]

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    again = reload(tiny_model_dir, result.adapter_dir)
    before, after = expected_reward(base, tok, in_set), expected_reward(again, tok, in_set)
    assert after > before + min_expected_gain, (before, after)

    ids = tok.apply_chat_template(ROWS[0]["messages"], return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        a = result.model.eval()(input_ids=ids).logits
        b = again(input_ids=ids).logits
    assert torch.equal(a, b), (a - b).abs().max()
    assert sorted(p.name for p in result.adapter_dir.iterdir()) == ["adapter_config.json",
                                                                    "adapter_model.safetensors"]


def test_grpo_raises_the_reward_and_reloads_identically(grpo, tiny_model_dir, in_set):
    result, seen = grpo
    check_learned_and_reloads(result, tiny_model_dir, in_set, min_gain=0.1, min_expected_gain=0.04)
    # each step scores batch_size completions: batch_size / num_generations prompts, four completions each
    assert result.steps == 8 and result.extra["completions"] == 64 and result.tokens > 0
    # the reference reply reaches the reward as the column `answer`, repeated per completion
    references = {r["messages"][-1]["content"] for r in ROWS}
    assert all(len(batch) == 8 and set(batch) <= references and len(set(batch)) == 2 for batch in seen)


def test_rloo_raises_the_reward_and_reloads_identically(tiny_model_dir, tmp_path, in_set):
    seen: list = []
    result = run("rloo", tiny_model_dir, tmp_path, in_set, seen)
    check_learned_and_reloads(result, tiny_model_dir, in_set, min_gain=0.05, min_expected_gain=0.02)
    assert result.extra["objective"] == "rloo"
    # golden: pinned like GRPO's below (RLOO's leave-one-out baseline moves the grad norms, not the rewards' form)
    got = [(e["reward"], e["grad_norm"]) for e in result.losses[:4]]
    for (reward, grad), (want_reward, want_grad) in zip(got, GOLDEN_RLOO, strict=True):
        assert reward == pytest.approx(want_reward, rel=1e-3), got
        assert grad == pytest.approx(want_grad, rel=1e-3), got


# (reward, grad_norm) of steps 1..4, same versions as GOLDEN_GRPO
GOLDEN_RLOO = [(0.5, 2.45472), (0.515625, 2.82238), (0.453125, 3.58503), (0.46875, 2.31447)]


def test_grpo_golden_rewards(grpo):
    """Pinned first steps of the fixed GRPO run above (seed 0, one thread). Rewards are exact fractions of the
    64 sampled tokens per step; the loss is 0.0 on every step because with one optimisation pass per generation
    batch GRPO's importance ratio is 1 and group-normalised advantages sum to zero; the grad norm carries the
    signal. If a transformers / TRL / PEFT / torch upgrade changes these, sampling or the loss changed: read the
    release notes (GRPOTrainer defaults: loss_type, scale_rewards, beta) and find the cause before re-pinning."""
    result, _ = grpo
    got = [(e["reward"], e["grad_norm"], e["loss"]) for e in result.losses[:4]]
    for (reward, grad, loss), (want_reward, want_grad) in zip(got, GOLDEN_GRPO, strict=True):
        assert reward == pytest.approx(want_reward, rel=1e-3), got
        assert grad == pytest.approx(want_grad, rel=1e-3), got
        assert loss == pytest.approx(0.0, abs=1e-6), got


# (reward, grad_norm) of steps 1..4 — transformers 5.23, TRL 1.16.0, PEFT 0.21.2, torch 2.13.0 CPU
GOLDEN_GRPO = [(0.5, 1.19642), (0.453125, 1.44754), (0.640625, 0.943095), (0.6875, 0.842407)]


def test_num_generations_must_divide_the_batch(tiny_model_dir, tmp_path):
    with pytest.raises(InvalidInput) as e:
        train(tiny_model_dir, ROWS, method=METHOD, spec=TrainSpec(max_steps=1, batch_size=6),
              objective=ObjectiveSpec(kind="grpo", reward="gsm8k", num_generations=4),
              out_dir=tmp_path / "adapter", base_id="base-tiny")
    assert "objective.num_generations" in e.value.message and "train.batch_size 6" in e.value.message
    assert not (tmp_path / "adapter").exists()


def test_rows_must_end_with_a_reference_reply(tiny_model_dir, tmp_path):
    with pytest.raises(InvalidInput, match="end with an assistant reply"):
        train(tiny_model_dir, [{"messages": [{"role": "user", "content": "hi"}]}], method=METHOD,
              spec=TrainSpec(max_steps=1, batch_size=4), out_dir=tmp_path / "adapter", base_id="base-tiny",
              objective=ObjectiveSpec(kind="grpo", reward="gsm8k", num_generations=4))
