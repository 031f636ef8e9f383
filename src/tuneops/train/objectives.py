"""Objectives other than SFT (``objective.kind``), each on its TRL trainer:

- preference (train/preference.py): dpo, ipo, orpo, kto, simpo, cpo — and ``reward`` (a
  Bradley-Terry reward model) — on preference rows (prompt / chosen / rejected);
- reinforcement learning (train/rl.py): grpo, rloo with a reward function or a reward model;
- distillation (train/distill.py): logit KL to a teacher, or SFT on the teacher's replies.

Every one shares the run set-up of train/sft.py (``prepare``, ``common_args``, ``finish``) and
returns the same TrainResult.
"""

from __future__ import annotations

from tuneops.errors import InvalidInput


def train_objective(base_path, rows, *, objective, **kw):
    kind = objective.kind
    if kind in ("dpo", "ipo", "orpo", "kto", "simpo", "cpo", "reward"):
        from tuneops.train.preference import train_preference

        return train_preference(base_path, rows, objective=objective, **kw)
    if kind in ("grpo", "rloo"):
        from tuneops.train.rl import train_rl

        return train_rl(base_path, rows, objective=objective, **kw)
    if kind == "distill":
        from tuneops.train.distill import train_distill

        return train_distill(base_path, rows, objective=objective, **kw)
    raise InvalidInput(f"objective.kind {kind!r} is not supported")
