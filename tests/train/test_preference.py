"""Every preference objective trains on the tiny model, moves it toward the chosen replies, saves, and
reloads to the same logits; the reward model learns to rank chosen above rejected."""

import pytest
import torch
from pydantic import ValidationError

from tuneops.errors import InvalidInput
from tuneops.train.preference import train_preference
from tuneops.train.recipe import LoraSpec, ObjectiveSpec, TrainSpec
from tuneops.train.sft import StopCheck

WORDS = ["red", "blue", "green", "pink", "grey", "gold", "teal", "navy",
         "lime", "rose", "plum", "sand", "jade", "ruby", "mint", "rust"]
# A consistent preference a 2-layer random model can pick up in a few steps: "Yes, … colour." over
# "No, … number." The replies share their middle word, so only the preference separates them.
PAIRS = [{"prompt": [{"role": "system", "content": "Answer."}, {"role": "user", "content": f"Is {w} a colour?"}],
          "chosen": [{"role": "assistant", "content": f"Yes, {w} is a colour."}],
          "rejected": [{"role": "assistant", "content": f"No, {w} is a number."}]}
         for w in WORDS]
METHOD = LoraSpec(r=4, alpha=8, dropout=0.0)


def spec(**kw) -> TrainSpec:
    return TrainSpec(**({"max_steps": 4, "batch_size": 4, "learning_rate": 1e-2, "warmup_ratio": 0.0, "threads": 1,
                         "max_length": 64} | kw))


def reply_logprob(model, tok, prompt, reply) -> float:
    """log p(reply | prompt), summed over the reply's tokens (chat template applied)."""
    head = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(prompt + reply, tokenize=False)
    n = len(tok(head, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([tok(full, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    return logp.gather(-1, ids[0, 1:, None])[n - 1:, 0].sum().item()


def mean_margin(model, tok, pairs=PAIRS) -> float:
    """Mean over the pairs of log p(chosen) - log p(rejected): the margin every objective here widens."""
    model.eval()
    gaps = [reply_logprob(model, tok, p["prompt"], p["chosen"]) - reply_logprob(model, tok, p["prompt"], p["rejected"])
            for p in pairs]
    return sum(gaps) / len(gaps)


def probe_batch(tok):
    texts = [tok.apply_chat_template(p["prompt"] + p["chosen"], tokenize=False) for p in PAIRS[:4]]
    enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def base_margin(tiny_model_dir, tok):
    from transformers import AutoModelForCausalLM

    return mean_margin(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), tok)


# Each objective must widen the margin log p(chosen) - log p(rejected) on the training pairs by more than
# half a nat in 4 steps (the base starts at 0.11). Measured (TRL 1.16, 2 CPU threads or 1): dpo +1.46,
# ipo +1.47, kto +1.22, orpo +0.83, cpo +0.87, simpo +1.47. TRL's own implicit-reward margin must rise too.
MIN_GAIN = 0.5
KINDS = {"dpo": {}, "ipo": {}, "kto": {}, "cpo": {}, "simpo": {},
         # ORPO's odds-ratio weight (lambda) at its default 0.1 is swamped by the NLL term of a random model
         # (+0.19 in 4 steps); at 1.0 both terms count and the preference shows.
         "orpo": {"beta": 1.0},
         # a DPO loss variant other than the paper's sigmoid: objective.loss_type reaches TRL's DPOConfig
         "dpo-hinge": {"loss_type": "hinge"}}


@pytest.mark.parametrize("case", list(KINDS))
def test_preference_objective_prefers_chosen_and_reloads_identically(case, tiny_model_dir, tok, base_margin, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    kind = case.split("-")[0]
    result = train_preference(tiny_model_dir, PAIRS, method=METHOD, spec=spec(),
                              objective=ObjectiveSpec(kind=kind, **KINDS[case]), out_dir=tmp_path / "adapter",
                              base_id="base-tiny")
    after = mean_margin(result.model, tok)
    assert after > base_margin + MIN_GAIN, (kind, base_margin, after)
    assert result.steps == 4 and len(result.losses) == 4 and result.tokens > 0
    assert result.extra["objective"] == kind
    first, final = result.extra["metrics_first"], result.extra["metrics_final"]
    assert final["reward_margin"] > first["reward_margin"], (kind, first, final)  # TRL's implicit reward agrees
    assert sorted(p.name for p in result.adapter_dir.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]

    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                                      result.adapter_dir).eval()
    ids, mask = probe_batch(tok)
    with torch.no_grad():
        a = result.model.eval()(input_ids=ids, attention_mask=mask).logits
        b = again(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(a, b, atol=1e-5), (kind, (a - b).abs().max())
    # golden losses: an upgrade that changes this objective's loss, data path or reference handling fails here
    got = [round(e["loss"], 6) for e in result.losses]
    assert got == pytest.approx(GOLDEN_LOSSES[case], rel=1e-3), (case, got)


# Golden losses of the 4-step runs above, per objective (seed 0, one thread; TRL 1.16.0, PEFT 0.21.2,
# transformers 5.23, torch 2.13 CPU). Re-pin only as GOLDEN_DPO_LOSSES below says.
GOLDEN_LOSSES = {"dpo": [0.693147, 0.667355, 0.642439, 0.627761],
                 "ipo": [25.0, 24.435036, 23.854187, 23.517397],  # (log-ratio margin - 1/(2 beta))^2 at beta 0.1
                 "kto": [0.5, 0.497243, 0.491507, 0.486285],
                 "cpo": [11.504774, 11.445146, 11.396427, 11.363625],
                 "simpo": [0.973317, 0.970263, 0.966873, 0.965067],
                 "orpo": [11.519223, 11.473786, 11.419936, 11.393562],
                 "dpo-hinge": [1.0, 0.947732, 0.895833, 0.864585]}  # max(0, 1 - beta * margin): 1 at margin 0
GOLDEN_REWARD_LOSSES = [0.690871, 0.658093, 0.591082, 0.496623]


def rewards(model, tok, pairs=PAIRS) -> torch.Tensor:
    """(pairs, 2): the reward of each pair's chosen and rejected conversation."""
    model.eval()
    out = []
    with torch.no_grad():
        for p in pairs:
            row = []
            for side in ("chosen", "rejected"):
                ids = tok.apply_chat_template(p["prompt"] + p[side], tokenize=True, return_dict=True,
                                              return_tensors="pt")["input_ids"]
                row.append(model(input_ids=ids).logits[0, 0].item())
            out.append(row)
    return torch.tensor(out)


def test_reward_model_learns_to_rank_chosen_first_and_reloads_identically(tiny_model_dir, tok, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    seen = {}

    def at_start(model, step):  # StopCheck runs at step 0, before the first update
        if step == 0:
            seen["before"] = rewards(model, tok)

    result = train_preference(tiny_model_dir, PAIRS, method=METHOD, spec=spec(eval_steps=2), eval_rows=PAIRS[:4],
                              objective=ObjectiveSpec(kind="reward"), out_dir=tmp_path / "adapter",
                              base_id="base-tiny", stop_check=StopCheck(100, at_start))
    before, after = seen["before"], rewards(result.model, tok)
    # The new head starts nearly flat (measured: mean reward(chosen) - reward(rejected) 0.005, which happens
    # to rank every pair right); 4 steps open the gap to 0.65 and the Bradley-Terry loss falls 0.69 -> 0.50.
    gap_before, gap_after = (before[:, 0] - before[:, 1]).mean().item(), (after[:, 0] - after[:, 1]).mean().item()
    assert gap_after > gap_before + 0.3, (gap_before, gap_after)
    assert (after[:, 0] > after[:, 1]).all()
    assert result.losses[-1]["loss"] < result.losses[0]["loss"] - 0.1
    got = [round(e["loss"], 6) for e in result.losses]
    assert got == pytest.approx(GOLDEN_REWARD_LOSSES, rel=1e-3), got  # pinned: the Bradley-Terry path
    assert result.extra["metrics_final"]["reward_margin"] > result.extra["metrics_first"]["reward_margin"] + 0.3
    assert [e["step"] for e in result.eval_losses] == [2, 4]  # measured: 0.59 -> 0.42
    assert result.eval_losses[1]["eval_loss"] < result.eval_losses[0]["eval_loss"]

    # The adapter carries the new `score` head (PEFT SEQ_CLS modules_to_save): a fresh base, whose head is
    # random, scores exactly as the trained model once the adapter is loaded.
    from safetensors import safe_open

    with safe_open(result.adapter_dir / "adapter_model.safetensors", "pt") as f:
        assert "base_model.model.score.weight" in f.keys()
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1, dtype=torch.float32)
    assert not torch.allclose(rewards(base, tok), after, atol=1e-2)
    again = PeftModel.from_pretrained(base, result.adapter_dir)
    assert torch.allclose(rewards(again, tok), after, atol=1e-5)


def test_dpo_with_full_finetuning_uses_a_frozen_copy_as_reference(tiny_model_dir, tok, base_margin, tmp_path,
                                                                  monkeypatch):
    import trl.trainer.dpo_trainer as dpo_trainer

    def no_reload(*a, **k):
        raise AssertionError("DPOTrainer reloaded the reference model by name")

    monkeypatch.setattr(dpo_trainer, "create_model_from_path", no_reload)
    result = train_preference(tiny_model_dir, PAIRS, method=LoraSpec(kind="full"), spec=spec(learning_rate=3e-3),
                              objective=ObjectiveSpec(kind="dpo"), out_dir=tmp_path / "model", base_id="base-tiny")
    assert mean_margin(result.model, tok) > base_margin + 1.0  # measured: 0.11 -> 3.66
    assert sorted(p.name for p in result.adapter_dir.iterdir()) == ["config.json", "generation_config.json",
                                                                    "model.safetensors"]


# Golden losses of a fixed tiny DPO run (TRL 1.16.0, PEFT 0.21.2, transformers 5.23, torch 2.13 CPU). The first
# is log 2 (policy = reference before any update); the next two pin the loss, the LoRA init and the data path.
# If an upgrade of TRL, PEFT, transformers or torch moves them: read that release's notes for a DPO change
# (loss, tokenization, reference handling, masking). If the change is understood and intended, re-run this
# recipe, paste the new values here and say why in the commit; if not, it is a regression — do not re-pin.
GOLDEN_DPO_LOSSES = [0.693147, 0.673952, 0.659250]


def test_dpo_golden_losses(tiny_model_dir, tmp_path):
    result = train_preference(tiny_model_dir, PAIRS[:6], method=METHOD,
                              spec=spec(max_steps=3, batch_size=2, learning_rate=5e-3, seed=7),
                              objective=ObjectiveSpec(kind="dpo", beta=0.1), out_dir=tmp_path / "a",
                              base_id="base-tiny")
    got = [round(e["loss"], 6) for e in result.losses[:3]]
    assert got == pytest.approx(GOLDEN_DPO_LOSSES, rel=1e-3), got


def test_rows_that_are_not_preference_pairs_are_refused(tiny_model_dir, tmp_path):
    chat = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
    with pytest.raises(InvalidInput) as e:
        train_preference(tiny_model_dir, chat, method=METHOD, spec=spec(), objective=ObjectiveSpec(kind="dpo"),
                         out_dir=tmp_path / "a", base_id="base-tiny")
    msg = str(e.value)
    assert "objective.kind dpo" in msg and "data.train" in msg and "row 1" in msg and "messages" in msg
    assert "objective.kind sft" in msg  # the fix is named

    same = [dict(PAIRS[0], rejected=PAIRS[0]["chosen"])]
    with pytest.raises(InvalidInput, match=r"data\.train: row 1 .*same reply"):
        train_preference(tiny_model_dir, same, method=METHOD, spec=spec(), objective=ObjectiveSpec(kind="kto"),
                         out_dir=tmp_path / "a", base_id="base-tiny")
    with pytest.raises(ValidationError, match=r"loss_type 'exo_pair' is not a DPO loss"):  # refused with the recipe
        ObjectiveSpec(kind="dpo", loss_type="exo_pair")
    from tuneops.train.sft import train  # every training call goes through it: the combination check is there

    with pytest.raises(InvalidInput, match=r"method\.kind prompt .* objective\.kind simpo"):
        train(tiny_model_dir, PAIRS, method=LoraSpec(kind="prompt"), spec=spec(),
              objective=ObjectiveSpec(kind="simpo"), out_dir=tmp_path / "a", base_id="base-tiny")
    with pytest.raises(InvalidInput, match=r"train\.batch_size"):
        train_preference(tiny_model_dir, PAIRS, method=METHOD, spec=spec(batch_size=1),
                         objective=ObjectiveSpec(kind="kto"), out_dir=tmp_path / "a", base_id="base-tiny")
