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


def check_method_objective(method, objective) -> None:
    """Refuse a method and objective that cannot train together — before a model loads (the recipe is
    validated through this, and every training call goes through it)."""
    m, o = method.kind, objective.kind
    if objective.packing and m in ("prefix", "prompt"):
        raise InvalidInput(f"objective.packing: method.kind {m} prepends its virtual tokens to every sequence, so "
                           "rows packed into one sequence would share one set of them",
                           hint="remove objective.packing, or use method.kind lora / dora / ia3")
    if o in ("orpo", "cpo", "simpo") and m == "prompt":
        raise InvalidInput(f"method.kind prompt does not work with objective.kind {o}: TRL's {o.upper()} trainer "
                           "scores the replies without the virtual tokens prompt tuning prepends",
                           hint="use method.kind prefix, lora or ia3, or objective.kind dpo")


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
