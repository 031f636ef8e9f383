"""Training with TRL on top of PEFT: the shared run set-up, and supervised fine-tuning (SFT).

Rows are chat ``messages``. tuneops tokenizes them itself (see train/template.py) so the loss
mask is exactly the assistant turns — every turn of a multi-turn chat, each with its end-of-turn
token — proven by a preflight before step one, and hands TRL a pre-tokenized dataset. Batches are
padding-free by default (rows concatenated with position ids; transformers keeps them from
attending to each other), so no compute is spent on pad tokens. Other objectives (preference, reward,
RL, distillation) live in train/objectives.py and share :func:`common_args` and :func:`finish`.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tuneops.train.methods import (ADAPTER_FILES, load_model, loraplus_optimizer, parameter_counts, peak_rss_mb,
                                   peft_config, reset_peak_memory, save_artifact)
from tuneops.train.control import RunControl
from tuneops.train.recipe import LoraSpec, ObjectiveSpec, TrainSpec

__all__ = ["ADAPTER_FILES", "TrainResult", "train", "train_lora", "planned_steps", "common_args"]


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    train_seconds: float
    losses: list[dict] = field(default_factory=list)  # [{"step", "loss", "learning_rate", "grad_norm"}]
    eval_losses: list[dict] = field(default_factory=list)  # [{"step", "eval_loss"}]
    trainable_parameters: int = 0
    total_parameters: int = 0
    tokens: int = 0  # tokens processed (forward), padding excluded
    tokens_per_s: float = 0.0
    peak_memory_mb: float = 0.0
    artifact_bytes: int = 0
    template_sha256: str | None = None
    preflight: dict | None = None
    stopped_early: str | None = None
    extra: dict = field(default_factory=dict)
    model: object = field(default=None, repr=False)  # the trained model in memory (tests compare it with a reload)


def to_prompt_completion(rows: list[dict]) -> list[dict]:
    """messages -> {prompt: [...], completion: [last assistant message]} (TRL masks the prompt)."""
    return [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]


def planned_steps(n_rows: int, spec: TrainSpec, objective: ObjectiveSpec | None = None) -> int:
    """Optimizer steps a run will take. KTO trains each pair as two rows; GRPO/RLOO count completions
    (every prompt is sampled ``num_generations`` times)."""
    if spec.max_steps:
        return spec.max_steps
    if objective is not None and objective.kind == "kto":
        n_rows *= 2
    elif objective is not None and objective.kind in ("grpo", "rloo"):
        n_rows *= objective.num_generations
    per_step = spec.batch_size * spec.gradient_accumulation_steps
    return max(1, math.ceil(math.ceil(n_rows / per_step) * spec.epochs))


def _progress_callback(on_log: Callable[[dict], None] | None, on_step: Callable[[int, int], None] | None,
                       on_eval: Callable[[dict], None] | None = None):
    from transformers import TrainerCallback

    class _Relay(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if on_step:
                on_step(state.global_step, state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs:
                return
            if on_log and "loss" in logs:
                on_log({"step": state.global_step, "loss": float(logs["loss"]),
                        "learning_rate": float(logs.get("learning_rate", 0.0)),
                        "grad_norm": float(logs["grad_norm"]) if logs.get("grad_norm") is not None else None})
            if on_eval and "eval_loss" in logs:
                on_eval({"step": state.global_step, "eval_loss": float(logs["eval_loss"])})

    return _Relay()


class StopCheck:
    """A check the caller injects (the train layer never imports eval): called with the model in eval
    mode at step 0 (before training) and every ``every`` optimizer steps; returning a reason string
    stops training. ``restore_best``: the trainable weights are copied (to CPU) at every check that
    passes, and put back when one stops the run — the result is the last state the check accepted,
    not the one that failed it (HF's ``load_best_model_at_end``, for an off-domain check)."""

    def __init__(self, every: int, check: Callable[[object, int], str | None], *, restore_best: bool = False):
        self.every, self.check, self.restore_best = every, check, restore_best


def _stop_callback(stop: StopCheck, reasons: list[str]):
    from transformers import TrainerCallback

    class _Stop(TrainerCallback):
        best: tuple[int, dict] | None = None   # (step, trainable weights) of the last check that passed

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if model is not None:  # step 0: the check measures where training starts from
                self._run(model, 0, control)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % stop.every or model is None:
                return
            self._run(model, state.global_step, control)

        def _run(self, model, step, control):
            import torch

            was = model.training
            model.eval()
            try:
                why = stop.check(model, step)
            finally:
                model.train(was)
            if not why:
                if stop.restore_best:
                    self.best = (step, {n: p.detach().to("cpu", copy=True)
                                        for n, p in model.named_parameters() if p.requires_grad})
                return
            best = self.best
            if stop.restore_best and best is not None:
                params = dict(model.named_parameters())
                with torch.no_grad():
                    for n, t in best[1].items():
                        params[n].copy_(t)
                why += f"; weights restored to step {best[0]}, the last check within bounds"
            reasons.append(why)
            control.should_training_stop = True

    return _Stop()


@dataclass
class RunHooks:
    """What every objective's trainer reports through: logged losses, eval losses, why it stopped early,
    and the callbacks that fill them (progress relay, injected stop check)."""

    losses: list[dict] = field(default_factory=list)
    eval_losses: list[dict] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    callbacks: list = field(default_factory=list)
    control: RunControl | None = None
    guard: object = None


def run_hooks(on_log: Callable[[dict], None] | None, on_step: Callable[[int, int], None] | None,
              stop_check: StopCheck | None, *, relay=None, control: RunControl | None = None) -> RunHooks:
    """The shared callbacks; ``relay(losses, eval_losses, on_log, on_step)`` replaces the default
    progress relay (RL logs rewards as well as losses). With a ``control``: checkpoints, guards and
    graceful stops (train/control.py)."""
    hooks = RunHooks(control=control)

    def _collect(entry: dict):
        hooks.losses.append(entry)
        if on_log:
            on_log(entry)

    def _eval(entry: dict):
        hooks.eval_losses.append(entry)
        if control is not None and control.on_eval:
            control.on_eval(entry)

    hooks.callbacks.append(relay(hooks.losses, hooks.eval_losses, on_log, on_step) if relay is not None
                           else _progress_callback(_collect, on_step, _eval))
    if stop_check is not None:
        hooks.callbacks.append(_stop_callback(stop_check, hooks.stopped))
    if control is not None:
        from tuneops.train import control as ctl

        hooks.guard = ctl.Guard(control)
        hooks.callbacks += ctl.callbacks(control, hooks.guard)
    return hooks


def _seeded_length_grouping(trainer) -> None:
    """HF's length-grouped sampler shuffles with the global torch RNG, so a run resumed mid-training
    draws a different order than the run it continues (measured: 1.4e-2 max weight difference). Give it
    a generator seeded from (seed, epoch), the way accelerate seeds its random sampler."""
    import torch
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    if trainer.args.train_sampling_strategy != "group_by_length" or \
            type(trainer)._get_train_sampler is not Trainer._get_train_sampler:
        return
    seed = trainer.args.data_seed if trainer.args.data_seed is not None else trainer.args.seed

    class _Seeded(LengthGroupedSampler):
        def set_epoch(self, epoch: int) -> None:
            self.generator.manual_seed(seed + epoch)

    def sampler(train_dataset=None):
        base = Trainer._get_train_sampler(trainer, train_dataset)
        if not isinstance(base, LengthGroupedSampler):
            return base
        out = _Seeded.__new__(_Seeded)
        out.__dict__.update(base.__dict__)
        out.generator = torch.Generator().manual_seed(seed)
        return out

    trainer._get_train_sampler = sampler


def run_training(trainer, hooks: RunHooks) -> None:
    """``trainer.train()`` for every objective: under the run control (resume, guards, graceful stop)
    when there is one."""
    _seeded_length_grouping(trainer)
    score_only_trained_positions()
    if hooks.control is None:
        trainer.train()
        return
    from tuneops.train import control as ctl

    ctl.wrap_compute_loss(trainer, hooks.guard, hooks.control)
    ctl.run_trainer(trainer, hooks.control)


def adapter_setup(model, method: LoraSpec, spec: TrainSpec, base_path: Path, **peft_kw):
    """(model, peft_config, optimizers) for a TRL trainer: PEFT's config, or — with LoRA+ — the model
    already wrapped and PEFT's LoRA+ optimizer."""
    peft_cfg = peft_config(method, base_path=base_path, **peft_kw)
    if not method.loraplus_lr_ratio:
        return model, peft_cfg, (None, None)
    from peft import get_peft_model

    model = get_peft_model(model, peft_cfg)
    return model, None, (loraplus_optimizer(model, method, spec.learning_rate, spec.weight_decay), None)


def common_args(spec: TrainSpec, work: Path, *, has_eval: bool = False, control: RunControl | None = None) -> dict:
    """TrainingArguments every objective shares, mapped from the recipe's train section (with a run
    control, tuneops decides when to save and where: train/control.py)."""
    import torch

    from tuneops.train.control import training_args

    return dict(
        output_dir=str(work),
        num_train_epochs=spec.epochs,
        max_steps=spec.max_steps or -1,
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation_steps,
        learning_rate=spec.learning_rate,
        warmup_steps=spec.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio
        lr_scheduler_type=spec.lr_scheduler,
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm,
        optim=spec.optimizer,
        seed=spec.seed,
        data_seed=spec.seed,
        logging_steps=1,
        save_strategy="steps" if spec.save_steps else "no",
        save_steps=spec.save_steps or 500,
        eval_strategy="steps" if (has_eval and spec.eval_steps) else "no",
        eval_steps=spec.eval_steps,
        report_to="none",
        disable_tqdm=True,
        bf16=False,  # TRL configs default to bf16 + checkpointing; both wrong on CPU
        gradient_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        full_determinism=spec.deterministic,
    ) | training_args(control)


def prepare(base_path: Path, method: LoraSpec, spec: TrainSpec, *, chat_template: str | None = None,
            template_dir: Path | None = None):
    """Threads, tokenizer (with any template override) and the model as the method needs it."""
    import datasets
    import torch
    import transformers
    from transformers import AutoTokenizer

    from tuneops.train.template import apply_template_override

    datasets.disable_progress_bars()  # tuneops draws its own (rich) progress
    transformers.utils.logging.disable_progress_bar()
    reset_peak_memory()  # this run's peak, not the process's (a worker or sweep trains many times)
    if spec.deterministic:
        from tuneops.train.control import deterministic_setup

        deterministic_setup(spec.seed, spec.threads)
    elif spec.threads:
        torch.set_num_threads(spec.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.manual_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    apply_template_override(tokenizer, chat_template, base_dir=template_dir)
    model = load_model(base_path, method)
    return tokenizer, model


def epoch_rows(rows: list[dict], spec: TrainSpec, replay_rows: list[dict] | None = None) -> tuple[list[dict], float]:
    """The rows one run trains on, and the epochs to run over them. With tier weights or replay, each
    epoch is drawn afresh (seeded): rows in proportion to their tier's weight, plus ``ratio`` × rows
    of the replay set; the draws are concatenated and run as one epoch."""
    weights = spec.tier_weights
    if not weights and not spec.replay:
        return rows, spec.epochs
    out: list[dict] = []
    n_epochs = max(1, math.ceil(spec.epochs))
    for e in range(n_epochs):
        rng = random.Random(f"{spec.seed}:{e}")
        if weights:
            w = [float(weights.get(r.get("tier"), 1.0)) for r in rows]
            drawn = rng.choices(rows, weights=w, k=len(rows)) if sum(w) > 0 else []
        else:
            drawn = list(rows)
        if spec.replay and replay_rows:
            drawn += rng.choices(replay_rows, k=max(1, round(spec.replay.ratio * len(rows))))
        rng.shuffle(drawn)
        out += drawn
    keep = max(1, round(len(out) * spec.epochs / n_epochs))
    return out[:keep], 1.0


def finish(trainer, *, method: LoraSpec, out_dir: Path, base_id: str, t0: float, losses: list[dict],
           eval_losses: list[dict], tokens: int, template_text: str | None = None, **kw) -> TrainResult:
    """Unwrap, count, save the artifact files and measure: shared by every objective."""
    from tuneops.store.ids import sha256_bytes

    seconds = time.perf_counter() - t0
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    trainable, total = parameter_counts(model)
    bad = [n for n, p in model.named_parameters() if p.requires_grad and not bool(p.detach().isfinite().all())]
    if bad:
        from tuneops.train.control import GuardTripped

        raise GuardTripped(f"the trained weights hold non-finite values ({len(bad)} tensors, e.g. {bad[0]}); "
                           "nothing was saved", hint="enable train.guards (on by default) and lower the learning rate")
    out_dir = Path(out_dir)
    state_dict = None
    if getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False):
        # ZeRO-3 / FSDP shard the weights: gather them (a collective, on every rank) before saving
        state_dict = trainer.accelerator.get_state_dict(trainer.model)
    size = save_artifact(model, out_dir, method=method, base_id=base_id, state_dict=state_dict)
    if template_text is not None:  # an overridden template travels with the artifact (eval and serving use it)
        (out_dir / "chat_template.jinja").write_text(template_text, encoding="utf-8")
        size += len(template_text.encode())
    tpl = getattr(trainer.processing_class, "chat_template", None)
    return TrainResult(adapter_dir=out_dir, steps=trainer.state.global_step, train_seconds=seconds, losses=losses,
                       eval_losses=eval_losses, trainable_parameters=trainable, total_parameters=total,
                       tokens=tokens, tokens_per_s=round(tokens / seconds, 1) if seconds > 0 else 0.0,
                       peak_memory_mb=peak_rss_mb(), artifact_bytes=size,
                       template_sha256=sha256_bytes(tpl.encode()) if isinstance(tpl, str) else None, model=model,
                       **kw)


def score_only_trained_positions() -> bool:
    """Make TRL's fused LM head score only the positions that have a label, on CPU too.

    TRL 1.16's ``add_fused_lm_head`` projects just the labelled positions through the LM head when Triton
    runs the kernel (CUDA, XPU), and every position elsewhere: on other accelerators a varying count would
    change tile shapes and recompile. Eager CPU recompiles nothing, so there TRL ran the LM head (for
    SmolLM2, 576 x 49,152 multiply-adds a token, forward and backward) over prompt and padding tokens
    whose loss it then zeroes. The compact path gives the same per-token log-probabilities (each position
    is scored on its own); tested against the full one. Returns whether the patch is in place (False on
    a TRL without this code path: nothing is changed then)."""
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:  # pragma: no cover
        return False
    current = getattr(trl_utils, "_use_triton", None)
    if current is None:
        return False
    if getattr(current, "_tuneops_compact_cpu", False):
        return True

    def compact(device, _original=current) -> bool:
        return device.type == "cpu" or _original(device)

    compact._tuneops_compact_cpu = True
    compact._tuneops_original = current
    trl_utils._use_triton = compact
    return True


def _sft_trainer_class():
    import torch
    from trl import SFTTrainer

    class TuneopsSFTTrainer(SFTTrainer):
        """SFTTrainer plus an optional KL-to-reference term (a forgetting control) and a token count."""

        kl_weight: float = 0.0
        ref_model = None
        tokens_seen: int = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                ids = inputs["input_ids"]
                self.tokens_seen += int(ids.numel() if "attention_mask" not in inputs else inputs["attention_mask"].sum())
            if not (self.kl_weight and model.training):
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            # TRL's fused LM head never builds the logits (and return_outputs recomputes them without grad), so
            # with a KL term the loss is computed here: one forward with grad, one reference forward without.
            fwd = {k: v for k, v in inputs.items() if k != "labels"}
            fwd["use_cache"] = False
            outputs = model(**fwd)
            with torch.no_grad():
                if self.ref_model is not None:
                    ref_logits = self.ref_model(**fwd).logits
                else:
                    with self.accelerator.unwrap_model(model).disable_adapter():
                        ref_logits = model(**fwd).logits
            labels = inputs["labels"][:, 1:]
            mask = labels != -100
            logp = outputs.logits[:, :-1].float().log_softmax(-1)
            ref_logp = ref_logits[:, :-1].float().log_softmax(-1)
            n = torch.as_tensor(num_items_in_batch if num_items_in_batch is not None else mask.sum()).clamp(min=1)
            nll = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)[mask].sum() / n
            kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)[mask].sum() / n
            loss = nll + self.kl_weight * kl
            return (loss, outputs) if return_outputs else loss

    return TuneopsSFTTrainer


def train(base_path: Path, rows: list[dict], *, method: LoraSpec, spec: TrainSpec,
          objective: ObjectiveSpec | None = None, out_dir: Path, base_id: str,
          eval_rows: list[dict] | None = None, replay_rows: list[dict] | None = None,
          chat_template: str | None = None, template_dir: Path | None = None,
          stop_check: StopCheck | None = None, on_preflight: Callable[[dict, str], None] | None = None,
          on_log: Callable[[dict], None] | None = None, on_step: Callable[[int, int], None] | None = None,
          control: RunControl | None = None, **objective_inputs) -> TrainResult:
    """Train ``rows`` with ``method`` and ``objective`` (default SFT) and save the artifact files to
    ``out_dir``. Non-SFT objectives are dispatched to train/objectives.py."""
    from tuneops.train import objectives

    objective = objective or ObjectiveSpec()
    objectives.check_method_objective(method, objective)
    if objective.kind != "sft":
        return objectives.train_objective(base_path, rows, method=method, spec=spec, objective=objective,
                                          out_dir=out_dir, base_id=base_id, eval_rows=eval_rows,
                                          chat_template=chat_template, template_dir=template_dir,
                                          stop_check=stop_check, on_log=on_log, on_step=on_step, control=control,
                                          **objective_inputs)
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig

    from tuneops.train.template import preflight, tokenize_rows

    tokenizer, model = prepare(base_path, method, spec, chat_template=chat_template, template_dir=template_dir)
    report = preflight(tokenizer, rows, max_length=spec.max_length, all_turns=objective.all_turns,
                       train_on_prompt=objective.train_on_prompt)
    rows_run, epochs = epoch_rows(rows, spec, replay_rows)
    tokenized = tokenize_rows(tokenizer, rows_run, max_length=spec.max_length, all_turns=objective.all_turns,
                              train_on_prompt=objective.train_on_prompt, report=report)
    if on_preflight:
        on_preflight(report.to_dict(), report.example)
    data = Dataset.from_dict({"input_ids": [t.input_ids for t in tokenized], "labels": [t.labels for t in tokenized]})
    eval_data = None
    if eval_rows and spec.eval_steps:
        ev = tokenize_rows(tokenizer, eval_rows, max_length=spec.max_length, all_turns=objective.all_turns,
                           train_on_prompt=objective.train_on_prompt)  # the eval loss covers what training does
        eval_data = Dataset.from_dict({"input_ids": [t.input_ids for t in ev], "labels": [t.labels for t in ev]})
    work = Path(out_dir).parent / "trainer"
    # prefix / prompt tuning prepend virtual tokens to each sequence: a concatenated batch would get them once
    import torch

    wanted = spec.padding_free if spec.padding_free is not None else torch.cuda.is_available()
    padding_free = (wanted or objective.packing) and method.kind not in ("prefix", "prompt")  # packing: refused
    config = SFTConfig(
        **{**common_args(spec, work, has_eval=eval_data is not None, control=control), "num_train_epochs": epochs},
        # rows are truncated here, at tokenization (and counted); TRL's padding-free path wants None
        max_length=spec.max_length if objective.packing else None,
        packing=objective.packing and padding_free,
        packing_strategy="bfd",
        padding_free=padding_free,
        train_sampling_strategy="group_by_length" if (spec.group_by_length and not padding_free) else "random",
        dataset_num_proc=None,
        completion_only_loss=False,  # labels are given: -100 outside the assistant turns
    )
    hooks = run_hooks(on_log, on_step, stop_check, control=control)
    model, peft_cfg, optimizers = adapter_setup(model, method, spec, base_path)
    trainer_cls = _sft_trainer_class()
    ref_model = None
    if objective.kl_to_reference and method.kind == "full":
        ref_model = copy.deepcopy(model).eval()
        for p in ref_model.parameters():
            p.requires_grad_(False)
    trainer = trainer_cls(model=model, args=config, train_dataset=data, eval_dataset=eval_data,
                          processing_class=tokenizer, peft_config=peft_cfg, callbacks=hooks.callbacks,
                          optimizers=optimizers)
    trainer.kl_weight = objective.kl_to_reference
    trainer.ref_model = ref_model
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts when tqdm is disabled
    t0 = time.perf_counter()
    run_training(trainer, hooks)
    return finish(trainer, method=method, out_dir=out_dir, base_id=base_id, t0=t0, losses=hooks.losses,
                  eval_losses=hooks.eval_losses, tokens=trainer.tokens_seen,
                  template_text=tokenizer.chat_template if chat_template else None,
                  preflight=report.to_dict() | {"example": report.example},
                  stopped_early=hooks.stopped[0] if hooks.stopped else None)


def train_lora(base_path: Path, rows: list[dict], *, method: LoraSpec, spec: TrainSpec, out_dir: Path,
               base_id: str, on_log: Callable[[dict], None] | None = None,
               on_step: Callable[[int, int], None] | None = None) -> TrainResult:
    """SFT with ``method`` (kept for callers of the first release)."""
    return train(base_path, rows, method=method, spec=spec, out_dir=out_dir, base_id=base_id, on_log=on_log,
                 on_step=on_step)
