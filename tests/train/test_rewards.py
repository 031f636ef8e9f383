"""The GSM8K verifier on the real GSM8K training answers (OpenAI, MIT licence), and loading rewards."""

import json
import os
import re
from pathlib import Path

import pytest

from tuneops.errors import InvalidInput
from tuneops.train.rewards import REFERENCE_COLUMN, gsm8k_answer, gsm8k_reward, load_reward

GSM8K = Path(os.environ.get("TUNEOPS_GSM8K", Path(__file__).resolve().parents[3] / "shared/data/gsm8k/train.jsonl"))


@pytest.fixture(scope="module")
def gsm8k_rows() -> list[dict]:
    if not GSM8K.exists():
        pytest.skip(f"GSM8K not found at {GSM8K} (set TUNEOPS_GSM8K to its train.jsonl)")
    rows = [json.loads(line) for line in GSM8K.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) > 7000
    return rows


def _final(answer: str) -> int:
    """The reference's final number the way a person reads it: the text after '####', commas dropped."""
    return int(answer.rsplit("####", 1)[1].strip().replace(",", ""))


def test_every_reference_answer_parses(gsm8k_rows):
    assert sum("," in r["answer"].rsplit("####", 1)[1] for r in gsm8k_rows) > 50  # "#### 1,080" is exercised
    assert any(_final(r["answer"]) < 0 for r in gsm8k_rows)  # and negative answers
    for r in gsm8k_rows:
        assert gsm8k_answer(r["answer"]) == str(_final(r["answer"])), r["answer"]


def test_reference_scores_one_and_a_perturbed_number_zero(gsm8k_rows):
    refs = [r["answer"] for r in gsm8k_rows]
    # TRL hands conversational completions as lists of message dicts
    as_chat = [[{"role": "assistant", "content": a}] for a in refs]
    prompts = [[{"role": "user", "content": r["question"]}] for r in gsm8k_rows]
    assert gsm8k_reward(prompts, as_chat, answer=refs, trainer_state=None, completion_ids=None) == [1.0] * len(refs)
    wrong = [re.sub(r"####.*$", f"#### {_final(a) + 1}", a, flags=re.S) for a in refs]
    assert gsm8k_reward(prompts, wrong, answer=refs) == [0.0] * len(refs)


@pytest.mark.parametrize("completion, reference, reward", [
    ("so she earned $10.\n#### 10", "#### 10", 1.0),
    ("The answer is 1080.0", "#### 1,080", 1.0),        # no '####': the last number counts
    ("She has $72.", "#### 72", 1.0),                   # $ and a trailing period
    ("It falls 40 - 4 = 36 then\n#### -3", "#### -3", 1.0),
    ("#### 72\nBut 9 would also be nice", "#### 72", 1.0),  # the number after '####' wins over later ones
    ("#### 7.5", "#### 7.50", 1.0),
    ("#### 73", "#### 72", 0.0),
    ("#### -72", "#### 72", 0.0),
    ("I do not know", "#### 72", 0.0),
    ("#### 72", "no reference number", 0.0),
])
def test_verifier_cases(completion, reference, reward):
    assert gsm8k_reward(["q"], [completion], answer=[reference]) == [reward]


def test_load_reward_forms(tmp_path):
    assert load_reward("gsm8k") is gsm8k_reward
    fn = lambda prompts, completions, **kw: [0.0] * len(completions)  # noqa: E731 (a resolved reward model)
    assert load_reward(fn) is fn
    (tmp_path / "my_rewards.py").write_text(
        "LIMIT = 3\n"
        "def short(prompts, completions, **kw):\n"
        "    return [float(len(c) < LIMIT) for c in completions]\n")
    short = load_reward("my_rewards:short", base_dir=tmp_path)
    assert short(["p", "p"], ["ab", "abcd"]) == [1.0, 0.0]
    assert load_reward("my_rewards.py:short", base_dir=tmp_path)(["p"], ["a"]) == [1.0]
    assert REFERENCE_COLUMN == "answer"


@pytest.mark.parametrize("spec, says", [
    ("no_such_module_xyz:fn", "no module named 'no_such_module_xyz'"),
    ("my_rewards:missing", "has no attribute 'missing'"),
    ("my_rewards:LIMIT", "is not a function (it is int)"),
    ("missing.py:fn", "no such file"),
    ("just-a-name", "cannot read"),
    ("ad-0123456789ab", "the pipeline loads"),
])
def test_load_reward_errors_name_the_field(tmp_path, spec, says):
    (tmp_path / "my_rewards.py").write_text("LIMIT = 3\n")
    with pytest.raises(InvalidInput) as e:
        load_reward(spec, base_dir=tmp_path)
    assert e.value.message.startswith("objective.reward:")
    assert says in e.value.message
