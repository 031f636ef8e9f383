"""Reinforcement learning with a reward (``objective.kind`` grpo / rloo), on TRL's GRPOTrainer and RLOOTrainer.

The training rows are ordinary chat rows: the prompt is every message but the last, and the last
(assistant) message is the reference, handed to the reward function as the column ``answer`` (see
train/rewards.py). Each optimizer step samples ``train.batch_size × gradient_accumulation_steps``
completions — ``objective.num_generations`` per prompt — scores them with the reward and pushes the
policy towards the completions that scored above their group's mean (GRPO) or above the mean of the
other completions of their prompt (RLOO). The run set-up (threads, tokenizer, model, PEFT method,
TrainingArguments, saving) is train/sft.py's, shared with every objective.

TRL defaults kept on purpose: GRPO has no KL penalty (beta 0, so no reference model) and its ``dapo``
loss; RLOO keeps its KL penalty to the reference (beta 0.05; with PEFT the reference is the base with
the adapter switched off). Generation runs in transformers (no vLLM); the learning rate is the recipe's
(TRL's own default would be 1e-6).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from tuneops.errors import InvalidInput
from tuneops.train.recipe import LoraSpec, ObjectiveSpec, TrainSpec
from tuneops.train.rewards import REFERENCE_COLUMN, load_reward
from tuneops.train.sft import run_training, StopCheck, TrainResult, adapter_setup, common_args, finish, prepare, run_hooks


def rl_dataset_rows(rows: list[dict]) -> list[dict]:
    """Chat rows -> {prompt: messages[:-1], answer: last assistant message} (the reference for the reward)."""
    out = []
    for i, r in enumerate(rows):
        msgs = r.get("messages") or []
        if len(msgs) < 2 or msgs[-1].get("role") != "assistant":
            raise InvalidInput(f"training row {i}: grpo/rloo need chat rows that end with an assistant reply (the "
                               "reference the reward compares against) after at least one prompt message",
                               hint="give chat rows like GSM8K's: user question, assistant answer ending '#### N'")
        out.append({"prompt": msgs[:-1], REFERENCE_COLUMN: msgs[-1].get("content") or ""})
    return out


def check_generation_batch(objective: ObjectiveSpec, spec: TrainSpec) -> int:
    """Completions sampled per optimizer step; refuse a batch that does not hold whole groups of
    ``num_generations`` completions (TRL needs every prompt's group complete)."""
    batch = spec.batch_size * spec.gradient_accumulation_steps
    if batch % objective.num_generations:
        raise InvalidInput(
            f"objective.num_generations: {objective.num_generations} does not divide the completions sampled per "
            f"step, train.batch_size {spec.batch_size} × train.gradient_accumulation_steps "
            f"{spec.gradient_accumulation_steps} = {batch}",
            hint=f"make train.batch_size a multiple of objective.num_generations (e.g. {objective.num_generations * 2})"
                 " — each step samples batch_size / num_generations prompts")
    return batch


def _reward_log_callback(losses: list[dict], eval_losses: list[dict], on_log, on_step):
    """Relays TRL's per-step logs: loss, learning rate, grad norm and the mean reward of the step's
    completions (TRL's ``reward`` and ``reward_std``), and eval loss / reward."""
    from transformers import TrainerCallback

    def _f(v):
        return None if v is None else float(v)

    class _Relay(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if on_step:
                on_step(state.global_step, state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs:
                return
            if "loss" in logs:
                entry = {"step": state.global_step, "loss": float(logs["loss"]),
                         "learning_rate": float(logs.get("learning_rate", 0.0)),
                         "grad_norm": _f(logs.get("grad_norm")),
                         "reward": _f(logs.get("reward")), "reward_std": _f(logs.get("reward_std")),
                         "completion_length": _f(logs.get("completions/mean_length"))}
                losses.append(entry)
                if on_log:
                    on_log(entry)
            if "eval_loss" in logs:
                eval_losses.append({"step": state.global_step, "eval_loss": float(logs["eval_loss"]),
                                    "eval_reward": _f(logs.get("eval_reward"))})

    return _Relay()


def train_rl(base_path: Path, rows: list[dict], *, method: LoraSpec, spec: TrainSpec, objective: ObjectiveSpec,
             out_dir: Path, base_id: str, eval_rows: list[dict] | None = None, chat_template: str | None = None,
             template_dir: Path | None = None, stop_check: StopCheck | None = None,
             on_log: Callable[[dict], None] | None = None, on_step: Callable[[int, int], None] | None = None,
             reward_fn: Callable | None = None, reward_tokenizer=None, control=None, **_) -> TrainResult:
    """GRPO or RLOO on ``rows`` (chat rows) with ``objective.reward`` — or ``reward_fn``, a resolved reward
    function or reward model (an ``nn.Module`` scored with ``reward_tokenizer``, default the student's)."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback

    if objective.kind not in ("grpo", "rloo"):
        raise InvalidInput(f"objective.kind {objective.kind!r} is not an RL objective (grpo, rloo)")
    check_generation_batch(objective, spec)
    data = Dataset.from_list(rl_dataset_rows(rows))
    eval_data = None
    if eval_rows and spec.eval_steps:
        if spec.batch_size % objective.num_generations:
            raise InvalidInput(f"objective.num_generations: {objective.num_generations} does not divide "
                               f"train.batch_size {spec.batch_size}, which evaluation (train.eval_steps) needs",
                               hint="make train.batch_size a multiple of objective.num_generations")
        eval_data = Dataset.from_list(rl_dataset_rows(eval_rows))
    reward = reward_fn if reward_fn is not None else load_reward(objective.reward, base_dir=template_dir)

    tokenizer, model = prepare(base_path, method, spec, chat_template=chat_template, template_dir=template_dir)
    if objective.kind == "grpo":
        from trl import GRPOConfig as Config, GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config, RLOOTrainer as Trainer
    work = Path(out_dir).parent / "trainer"
    config = Config(**common_args(spec, work, has_eval=eval_data is not None, control=control),
                    num_generations=objective.num_generations,
                    max_completion_length=objective.max_completion_length,
                    temperature=objective.temperature,
                    use_vllm=False)

    hooks = run_hooks(on_log, on_step, stop_check, relay=_reward_log_callback, control=control)
    model, peft_cfg, optimizers = adapter_setup(model, method, spec, base_path)
    reward_tok = None
    if isinstance(reward, torch.nn.Module):  # a reward model: TRL would otherwise fetch a tokenizer by its name
        reward_tok = reward_tokenizer or tokenizer
    trainer = Trainer(model=model, reward_funcs=reward, args=config, train_dataset=data, eval_dataset=eval_data,
                      processing_class=tokenizer, reward_processing_classes=reward_tok, callbacks=hooks.callbacks,
                      optimizers=optimizers, peft_config=peft_cfg)
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts when tqdm is disabled
    t0 = time.perf_counter()
    run_training(trainer, hooks)
    rewards = [e["reward"] for e in hooks.losses if e.get("reward") is not None]
    k = max(1, len(rewards) // 4)
    extra = {"objective": objective.kind, "reward": objective.reward or getattr(reward, "__name__", "reward"),
             "num_generations": objective.num_generations,
             "completions": trainer.state.global_step * spec.batch_size * spec.gradient_accumulation_steps}
    if rewards:
        extra.update(reward_first=round(sum(rewards[:k]) / k, 6), reward_last=round(sum(rewards[-k:]) / k, 6))
    return finish(trainer, method=method, out_dir=out_dir, base_id=base_id, t0=t0, losses=hooks.losses,
                  eval_losses=hooks.eval_losses, tokens=int(trainer.state.num_input_tokens_seen or 0),
                  template_text=tokenizer.chat_template if chat_template else None,
                  stopped_early=hooks.stopped[0] if hooks.stopped else None, extra=extra)
