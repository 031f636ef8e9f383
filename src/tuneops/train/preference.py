"""Preference objectives (``objective.kind``) on TRL, and the Bradley-Terry reward model.

Rows are canonical preference pairs (data/formats.py): ``prompt`` (messages ending with the user
turn), ``chosen`` and ``rejected`` (the assistant's replies). Each kind maps onto one TRL trainer:

- dpo, ipo: ``DPOTrainer`` (ipo is DPO with ``loss_type ipo``);
- kto: ``KTOTrainer`` on the pairs unpaired — each chosen reply a desirable row, each rejected one
  an undesirable row;
- orpo, cpo, simpo: ``trl.experimental`` ORPO and CPO (simpo is CPO with ``loss_type simpo`` and
  no behaviour-cloning term);
- reward: ``RewardTrainer`` on a sequence-classification copy of the base (one output: the reward).

DPO, IPO and KTO need a frozen reference model. With a PEFT method the reference is the same model
with its adapter disabled; with ``method.kind full`` it is an explicit frozen copy made before
training — TRL is never left to reload it by name (it would fetch the on-disk or hub weights).
Set-up, logging and saving are sft.py's (``prepare``, ``common_args``, ``finish``), so every
objective produces the same artifact files and TrainResult.
"""

from __future__ import annotations

import copy
import os
import random
import time
from pathlib import Path
from typing import Callable

from tuneops.errors import InvalidInput
from tuneops.train.methods import load_model, loraplus_optimizer, peft_config
from tuneops.train.recipe import LoraSpec, ObjectiveSpec, TrainSpec
from tuneops.train.sft import run_training, StopCheck, TrainResult, common_args, epoch_rows, finish, prepare, run_hooks

# What TRL logs per step, and the name a TrainResult records it under (extra["metrics_first" / "metrics_final"]).
# DPO, IPO, KTO, ORPO, CPO and SimPO log an implicit reward per reply; the reward model logs its own scores.
_METRICS = {
    "rewards/accuracies": "reward_accuracy",  # share of pairs whose chosen reply out-scores the rejected one
    "rewards/margins": "reward_margin",  # mean reward(chosen) - reward(rejected)
    "rewards/chosen": "reward_chosen",
    "rewards/rejected": "reward_rejected",
    "accuracy": "reward_accuracy",  # RewardTrainer's names for the same two figures
    "margin": "reward_margin",
    "kl": "kl",  # KTO's estimate of KL(policy || reference)
    "nll_loss": "nll_loss",  # ORPO / CPO: the SFT term on the chosen replies
    "log_odds_ratio": "log_odds_ratio",  # ORPO
}
FINAL_WINDOW = 5  # "final" figures average up to this many last steps (a quarter of a short run): one batch is noisy


def train_preference(base_path: Path, rows: list[dict], *, method: LoraSpec, spec: TrainSpec,
                     objective: ObjectiveSpec, out_dir: Path, base_id: str, eval_rows: list[dict] | None = None,
                     chat_template: str | None = None, template_dir: Path | None = None,
                     stop_check: StopCheck | None = None, on_log: Callable[[dict], None] | None = None,
                     on_step: Callable[[int, int], None] | None = None, control=None, **_) -> TrainResult:
    """Train ``rows`` (preference pairs) with ``objective.kind`` dpo, ipo, kto, orpo, cpo, simpo or
    reward, and save the artifact files to ``out_dir``."""
    kind = objective.kind
    check_preference_rows(rows, kind, "data.train")
    use_eval = bool(eval_rows and spec.eval_steps)
    if use_eval:
        check_preference_rows(eval_rows, kind, "data.eval", why="train.eval_steps computes the eval loss on them")
    if spec.replay:
        raise InvalidInput(f"train.replay blends general chat rows into SFT; objective.kind {kind} trains on "
                           "preference pairs and has no place for them",
                           hint="remove train.replay (forgetting controls for preference runs: a low method.r, "
                                "a higher objective.beta, or train.early_stopping)")
    if kind == "kto" and spec.batch_size < 2:
        raise InvalidInput("objective.kind kto needs train.batch_size >= 2 (got 1): its KL term is estimated from "
                           "mismatched prompt/reply pairs within a batch", hint="set train.batch_size: 2 or more")

    if kind == "reward":
        tokenizer, model = _prepare_reward_model(base_path, method, spec, chat_template=chat_template,
                                                 template_dir=template_dir)
    else:
        tokenizer, model = prepare(base_path, method, spec, chat_template=chat_template, template_dir=template_dir)
    rows_run, epochs = epoch_rows(rows, spec)
    data = _dataset(rows_run, kind, spec.seed)
    eval_data = _dataset(eval_rows, kind, spec.seed) if use_eval else None
    work = Path(out_dir).parent / "trainer"
    args = {**common_args(spec, work, has_eval=eval_data is not None, control=control), "num_train_epochs": epochs}
    peft_cfg = peft_config(method, base_path=base_path, task_type="SEQ_CLS" if kind == "reward" else "CAUSAL_LM")

    ref_model = None
    if kind in ("dpo", "ipo", "kto") and peft_cfg is None:
        # Full fine-tuning: the reference is the untrained weights, frozen here — never reloaded by name.
        ref_model = copy.deepcopy(model).eval()
        for p in ref_model.parameters():
            p.requires_grad_(False)

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ORPO / CPO live in trl.experimental
    trainer_cls, config = _trainer_and_config(kind, objective, spec, args)
    trainer_kw = dict(model=model, args=config, train_dataset=data, eval_dataset=eval_data,
                      processing_class=tokenizer, peft_config=peft_cfg)
    if ref_model is not None:
        trainer_kw["ref_model"] = ref_model

    logged: list[dict] = []
    hooks = run_hooks(on_log, on_step, stop_check, control=control)
    hooks.callbacks.insert(1, _metrics_callback(logged))
    trainer = trainer_cls(callbacks=hooks.callbacks, **trainer_kw)
    if getattr(model, "is_loaded_in_4bit", False):
        _undo_bf16_adapter_cast(trainer.model)
    if method.loraplus_lr_ratio:
        # Set before train(): Trainer.create_optimizer keeps an optimizer that is already there.
        trainer.optimizer = loraplus_optimizer(trainer.model, method, spec.learning_rate, spec.weight_decay)
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts when tqdm is disabled
    if len(trainer.train_dataset) == 0:  # the reward trainer drops pairs over max_length
        raise InvalidInput(f"data.train: every preference pair is longer than train.max_length "
                           f"({spec.max_length} tokens), so objective.kind {kind} has nothing to train on",
                           hint="raise train.max_length")
    over = pairs_over_length(tokenizer, rows, spec.max_length)
    t0 = time.perf_counter()
    run_training(trainer, hooks)
    extra = {"objective": kind, **_summarise(logged)}
    if over:
        # The reward trainer drops these pairs (a reward read from a cut sequence means little); the others
        # keep the start of each sequence, so a long prompt can leave too little of the replies to compare.
        extra["pairs_over_max_length"] = over
    if kind == "kto":
        extra["unpaired_rows"] = len(data)
    return finish(trainer, method=method, out_dir=out_dir, base_id=base_id, t0=t0, losses=hooks.losses,
                  eval_losses=hooks.eval_losses, tokens=_tokens_seen(trainer, logged),
                  template_text=tokenizer.chat_template if chat_template else None,
                  stopped_early=hooks.stopped[0] if hooks.stopped else None, extra=extra)


def check_preference_rows(rows: list[dict] | None, kind: str, field: str, *, why: str | None = None) -> None:
    """Refuse anything but canonical preference pairs (prompt / chosen / rejected message lists)."""
    need = (f"objective.kind {kind} trains on preference pairs: rows of `prompt` (messages ending with the user "
            "turn), `chosen` and `rejected` (the assistant's replies)")
    hint = ("ingest a preference dataset (format preference or hh_rlhf) and name it in " + field
            + ", or use objective.kind sft for chat rows")
    if not rows:
        raise InvalidInput(f"{field}: holds no rows; {need}", hint=hint)
    for i, row in enumerate(rows, 1):
        problem = _pair_problem(row)
        if problem:
            because = f" ({why})" if why else ""
            raise InvalidInput(f"{field}: row {i} is not a preference pair{because}: {problem}; {need}", hint=hint)


def pairs_over_length(tokenizer, rows: list[dict], max_length: int) -> int:
    """How many pairs have a chosen or rejected conversation (prompt + reply, chat template applied)
    longer than ``max_length`` tokens."""
    def length(messages) -> int:
        return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    return sum(1 for r in rows
               if max(length(r["prompt"] + r["chosen"]), length(r["prompt"] + r["rejected"])) > max_length)


def _pair_problem(row) -> str | None:
    if not isinstance(row, dict):
        return f"it is {type(row).__name__}, not a mapping"
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
    if missing:
        has = ", ".join(sorted(k for k in row if k != "meta")) or "nothing"
        return f"it has no {', '.join(missing)} (it has {has})"
    for key, last in (("prompt", ("user", "tool")), ("chosen", ("assistant",)), ("rejected", ("assistant",))):
        msgs = row[key]
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in msgs):
            return f"`{key}` must be a non-empty list of messages ({{role, content}})"
        if msgs[-1]["role"] not in last:
            return f"`{key}` ends with a {msgs[-1]['role']!r} turn, not {' or '.join(repr(r) for r in last)}"
    if row["chosen"] == row["rejected"]:
        return "`chosen` and `rejected` are the same reply"
    return None


def _dataset(rows: list[dict], kind: str, seed: int):
    """The rows as TRL's conversational columns; KTO gets one row per reply, labelled, in a seeded shuffle
    (it reads the KL term from neighbouring rows, so a pair's two halves should rarely sit together)."""
    from datasets import Dataset

    pairs = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
    if kind != "kto":
        return Dataset.from_list(pairs)
    unpaired = [{"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}
                for p in pairs for side in ("chosen", "rejected")]
    random.Random(f"kto:{seed}").shuffle(unpaired)
    return Dataset.from_list(unpaired)


def _trainer_and_config(kind: str, objective: ObjectiveSpec, spec: TrainSpec, args: dict):
    """(TRL trainer class, its config) for ``kind``; the recipe's learning rate always wins over TRL's
    1e-6 default, because ``args`` carries it."""
    if kind in ("dpo", "ipo"):
        from trl import DPOConfig, DPOTrainer

        loss_type = "ipo" if kind == "ipo" else objective.loss_type
        return DPOTrainer, DPOConfig(**args, beta=objective.beta, loss_type=[loss_type], max_length=spec.max_length)
    if kind == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOTrainer, KTOConfig(**args, beta=objective.beta, max_length=spec.max_length)
    if kind == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        # beta is ORPO's lambda; its collator needs the raw columns (TRL sets this itself, with a warning)
        return ORPOTrainer, ORPOConfig(**args, beta=objective.beta, max_length=spec.max_length,
                                       remove_unused_columns=False)
    if kind in ("cpo", "simpo"):
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        simpo = {"loss_type": "simpo", "cpo_alpha": 0.0, "simpo_gamma": objective.simpo_gamma} if kind == "simpo" \
            else {"loss_type": "sigmoid"}
        return CPOTrainer, CPOConfig(**args, beta=objective.beta, max_length=spec.max_length,
                                     remove_unused_columns=False, **simpo)
    if kind == "reward":
        from trl import RewardConfig, RewardTrainer

        return RewardTrainer, RewardConfig(**args, max_length=spec.max_length)
    raise InvalidInput(f"objective.kind {kind!r} is not a preference objective")


def _prepare_reward_model(base_path: Path, method: LoraSpec, spec: TrainSpec, *, chat_template: str | None,
                          template_dir: Path | None):
    """sft.prepare's set-up, with a one-output sequence-classification head (the reward) on the base.
    The head is new: seeded by train.seed, trained with the adapter and saved with it (PEFT SEQ_CLS
    puts `score` in modules_to_save)."""
    import datasets
    import torch
    import transformers
    from transformers import AutoTokenizer

    from tuneops.train.template import apply_template_override

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.manual_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    apply_template_override(tokenizer, chat_template, base_dir=template_dir)
    model = load_model(base_path, method, num_labels=1)
    # The reward is read at the last non-pad token, so the model must know which token pads.
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def _undo_bf16_adapter_cast(model) -> None:
    """TRL's DPO, KTO and reward trainers cast every trainable weight of a 4-bit (qlora) model to bf16.
    tuneops computes in float32 (train.bf16 is off), as SFT does; a bf16 reward head then meets float32
    hidden states and fails. Cast the trainable weights back before the optimizer is built."""
    import torch

    for p in model.parameters():
        if p.requires_grad and p.dtype == torch.bfloat16:
            p.data = p.data.float()


def _metrics_callback(logged: list[dict]):
    from transformers import TrainerCallback

    class _Metrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:  # training logs only (eval logs carry eval_loss)
                logged.append(dict(logs))

    return _Metrics()


def _summarise(logged: list[dict]) -> dict:
    """The preference figures TRL logged: the first step's (the model before any update), and the mean of
    the last few steps'."""
    def pick(entries: list[dict]) -> dict:
        out: dict[str, float] = {}
        for trl_name, name in _METRICS.items():
            values = [float(e[trl_name]) for e in entries if e.get(trl_name) is not None]
            if values:
                out[name] = round(sum(values) / len(values), 6)
        return out

    if not logged:
        return {}
    window = max(1, min(FINAL_WINDOW, len(logged) // 4))
    return {"metrics_first": pick(logged[:1]), "metrics_final": pick(logged[-window:])}


def _tokens_seen(trainer, logged: list[dict]) -> int:
    """Tokens forwarded (padding excluded): TRL's own running count where it keeps one (DPO, KTO, reward),
    else an estimate from the tokenized pairs (ORPO, CPO, SimPO: chosen + rejected per pair seen)."""
    counts = [e["num_tokens"] for e in logged if e.get("num_tokens") is not None]
    if counts:
        return int(counts[-1])
    ds = trainer.train_dataset
    cols = [c for c in ("chosen_input_ids", "rejected_input_ids") if c in ds.column_names]
    if not cols or not len(ds):
        return 0
    per_row = sum(len(ids) for c in cols for ids in ds[c]) / len(ds)
    args = trainer.args
    seen = trainer.state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps
    return int(per_row * seen)
