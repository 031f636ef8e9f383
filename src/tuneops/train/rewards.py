"""Reward functions for RL objectives (``objective.reward`` of grpo / rloo).

A reward function has the shape TRL's GRPOTrainer / RLOOTrainer call::

    fn(prompts, completions, **columns) -> list[float]

``prompts`` and ``completions`` are chat message lists (``[{"role": "assistant", "content": …}]``) for chat
rows, or plain strings; every other dataset column arrives as a keyword, one value per completion. tuneops
passes the reference reply — the training row's last assistant message — as the column ``answer`` (the name
GSM8K uses), so a GSM8K verifier reads ``answer`` directly. TRL also passes ``completion_ids``,
``trainer_state``, ``log_extra`` and ``log_metric``: a function must accept ``**kwargs``.

``objective.reward`` is one of: ``gsm8k`` (the built-in verifier below), ``module:function`` or
``file.py:function`` (imported; a relative file is looked up next to the recipe), or a reward-model artifact
id ``ad-…``, which the pipeline resolves into a callable and hands to :func:`tuneops.train.rl.train_rl`.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Callable

from tuneops.errors import InvalidInput

REFERENCE_COLUMN = "answer"  # the column holding each row's reference reply, passed to reward functions

# "1,234", "$5", "-3", "72.0", "1,234.50"; a sign must touch the number ("40 - 4" is a subtraction)
_NUMBER = re.compile(r"(?<![\w.])(?P<sign>-(?=\$?\d))?\$?(?P<v>(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d+)?)")


def _normalise(sign: str | None, digits: str) -> str | None:
    try:
        value = Decimal(digits.replace(",", ""))
    except InvalidOperation:
        return None
    if sign:
        value = -value
    if value == value.to_integral_value():
        return str(int(value))  # "72.0" and "72" are the same answer; also turns "-0" into "0"
    return format(value.normalize(), "f")  # "0.50" -> "0.5", never "5E-1"


def gsm8k_answer(text: str | None) -> str | None:
    """The final answer of a GSM8K-style reply as a canonical number string ("1,080.0" -> "1080"): the first
    number after the last ``####``, else the last number in the text; None when there is none."""
    if not text:
        return None
    marker = text.rfind("####")
    if marker >= 0:
        m = _NUMBER.search(text, marker + 4)
        if m:
            return _normalise(m["sign"], m["v"])
    found = list(_NUMBER.finditer(text))
    return _normalise(found[-1]["sign"], found[-1]["v"]) if found else None


def _text(completion) -> str:
    """A completion as text: a string, or the contents of a chat completion's messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    if isinstance(completion, (list, tuple)):
        return "\n".join(_text(m) for m in completion)
    return "" if completion is None else str(completion)


def gsm8k_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 where a completion's final number equals the reference's ``#### N`` (after normalising commas,
    ``$``, a trailing period and ``72.0`` == ``72``), else 0.0. ``answer``: one reference per completion."""
    out = []
    for completion, reference in zip(completions, answer, strict=True):
        want = gsm8k_answer(_text(reference))
        got = gsm8k_answer(_text(completion))
        out.append(1.0 if want is not None and got == want else 0.0)
    return out


BUILTIN_REWARDS: dict[str, Callable] = {"gsm8k": gsm8k_reward}
_FORMS = "'gsm8k', 'module:function', 'file.py:function' or a reward-model artifact id (ad-…)"


def load_reward(spec: str | Callable, *, base_dir: Path | None = None) -> Callable:
    """``objective.reward`` -> a reward function. A callable passes through (the pipeline resolves a
    reward-model artifact into one); errors name ``objective.reward`` and say what to write instead."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidInput(f"objective.reward: expected {_FORMS} (got {spec!r})")
    spec = spec.strip()
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    if spec.startswith("ad-"):
        raise InvalidInput(f"objective.reward: {spec} is a reward-model artifact, which the pipeline loads",
                           hint="run it through `tuneops run` (train.rl takes the loaded model as reward_fn)")
    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name:
        raise InvalidInput(f"objective.reward: cannot read {spec!r}: write {_FORMS}",
                           hint=f"built-in rewards: {', '.join(BUILTIN_REWARDS)}")
    module = _import(module_name, spec, base_dir)
    fn = getattr(module, func_name, None)
    if fn is None:
        raise InvalidInput(f"objective.reward: {module_name} has no attribute {func_name!r}",
                           hint="define `def " + func_name + "(prompts, completions, **kwargs) -> list[float]` there")
    if not callable(fn):
        raise InvalidInput(f"objective.reward: {spec} is not a function (it is {type(fn).__name__})",
                           hint="point at a function(prompts, completions, **kwargs) -> list[float]")
    return fn


def _import(module_name: str, spec: str, base_dir: Path | None):
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        if not path.is_file():
            raise InvalidInput(f"objective.reward: {spec}: no such file {path}",
                               hint="give the path relative to the recipe, or a module:function on the Python path")
        loader = importlib.util.spec_from_file_location(f"tuneops_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(loader)
        try:
            loader.loader.exec_module(module)
        except Exception as e:
            raise InvalidInput(f"objective.reward: importing {path} failed: {type(e).__name__}: {e}") from None
        return module
    added = str(base_dir) if base_dir is not None and str(base_dir) not in sys.path else None
    if added:
        sys.path.insert(0, added)  # a reward module next to the recipe imports without installing it
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise InvalidInput(f"objective.reward: {spec}: no module named {e.name!r}",
                           hint="put the module next to the recipe or on PYTHONPATH, or use 'gsm8k'") from None
    except Exception as e:
        raise InvalidInput(f"objective.reward: importing {module_name} failed: {type(e).__name__}: {e}") from None
    finally:
        if added and added in sys.path:
            sys.path.remove(added)
