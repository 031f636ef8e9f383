"""Distillation (``objective.kind: distill``): the student learns from a teacher model.

- ``mode: logits`` — on each row's assistant tokens (the SFT loss mask of train/template.py), the loss
  is KL(teacher_T || student_T), the forward KL from the teacher's temperature-softened next-token
  distribution (``objective.temperature`` = T) to the student's. The divergence is TRL's
  ``GKDTrainer.generalized_jsd_loss`` at beta 0 (forward KL); the trainer is train/sft.py's, so
  tokenization, padding-free batches and PEFT methods are exactly SFT's. TRL's own trainers do not fit:
  ``DistillationTrainer`` is on-policy only (the student samples the completions), and ``GKDTrainer``
  (experimental) tokenizes rows itself, needs padded batches and — in TRL 1.16 — does not pass its
  temperature to the loss. Teacher and student must share the tokenizer (same tokens, same ids).
- ``mode: responses`` — the teacher answers every row's prompt (greedy, ``max_completion_length``
  new tokens) and the student is fine-tuned (SFT) on those replies. Any tokenizer works.

The caller resolves ``objective.teacher``: a model directory (``teacher_path``), optionally with a PEFT
adapter on it (``teacher_adapter``), or an already loaded model (``teacher_model``, with its
``teacher_tokenizer`` when that differs from the student's).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Callable

from tuneops.errors import InvalidInput
from tuneops.train.recipe import LoraSpec, ObjectiveSpec, TrainSpec
from tuneops.train.sft import (run_training, StopCheck, TrainResult, _sft_trainer_class, adapter_setup, common_args, epoch_rows,
                               finish, prepare, run_hooks)


def load_teacher(*, teacher_path: Path | None = None, teacher_adapter: Path | None = None, teacher_model=None,
                 teacher_tokenizer=None):
    """(model, tokenizer or None) in eval mode with gradients off, from a loaded model or a directory."""
    import torch

    if teacher_model is None:
        if teacher_path is None:
            raise InvalidInput("objective.teacher: no teacher was given (a model directory or a loaded model)",
                               hint="set objective.teacher to a base or an artifact")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        teacher_path = Path(teacher_path)
        if not (teacher_path / "config.json").exists():
            raise InvalidInput(f"objective.teacher: {teacher_path} holds no model (config.json missing)")
        teacher_model = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32)
        if teacher_adapter is not None:
            from peft import PeftModel

            # merged: one plain forward per batch, and a teacher never trains
            teacher_model = PeftModel.from_pretrained(teacher_model, teacher_adapter).merge_and_unload()
        if isinstance(teacher_tokenizer, (str, Path)):  # the teacher's base, for a weights-only directory
            teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_tokenizer)
        if teacher_tokenizer is None:
            try:
                teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_path)
            except Exception:  # a weights-only directory: only the vocabulary size can be compared
                teacher_tokenizer = None
    teacher_model.eval()
    for p in teacher_model.parameters():
        p.requires_grad_(False)
    return teacher_model, teacher_tokenizer


def check_same_tokenizer(student_tok, student_model, teacher_tok, teacher_model) -> None:
    """Logit distillation compares distributions over the same token ids: refuse anything else."""
    s_vocab = student_model.get_output_embeddings().weight.shape[0]
    t_vocab = teacher_model.get_output_embeddings().weight.shape[0]
    hint = "pick a teacher on the student's tokenizer, or objective.mode: responses (SFT on the teacher's replies)"
    if s_vocab != t_vocab:
        raise InvalidInput(f"objective.teacher: the teacher predicts {t_vocab} token ids, the student {s_vocab}; "
                           "logit distillation needs the same tokenizer", hint=hint)
    if teacher_tok is not None and teacher_tok.get_vocab() != student_tok.get_vocab():
        s, t = student_tok.get_vocab(), teacher_tok.get_vocab()
        differ = sorted(set(s.items()) ^ set(t.items()), key=lambda kv: kv[1])[:3]
        raise InvalidInput(f"objective.teacher: the teacher's tokenizer differs from the student's ({len(t)} vs "
                           f"{len(s)} tokens; e.g. {differ}); logit distillation needs the same tokens and ids",
                           hint=hint)


def _kl_loss():
    """TRL's generalized JSD (beta 0 = forward KL(teacher || student)), imported quietly: it lives in
    trl.experimental, which warns on import."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.gkd import GKDTrainer
    return GKDTrainer.generalized_jsd_loss


def _distill_trainer_class():
    import torch

    jsd = _kl_loss()

    class TuneopsDistillTrainer(_sft_trainer_class()):
        """SFT's trainer with the loss replaced by the KL to the teacher on the same (assistant) tokens."""

        teacher = None
        temperature: float = 1.0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # Not super().compute_loss: TRL 1.16's SFTTrainer computes its loss through a fused LM head and,
            # asked for outputs, recomputes the logits under no_grad — a KL on those would train nothing.
            if model.training:
                mask = inputs.get("attention_mask")
                self.tokens_seen += int(inputs["input_ids"].numel() if mask is None else mask.sum())
            fwd = {k: v for k, v in inputs.items() if k != "labels"} | {"use_cache": False}
            outputs = model(**fwd)
            with torch.no_grad():
                teacher_logits = self.teacher(**fwd).logits
            student_logits = outputs.logits[:, -teacher_logits.shape[1]:]  # prompt tuning prepends virtual tokens
            loss = jsd(student_logits[:, :-1].float(), teacher_logits[:, :-1].float(),
                       labels=inputs["labels"][:, 1:], beta=0.0, temperature=self.temperature,
                       num_items_in_batch=num_items_in_batch)
            return (loss, outputs) if return_outputs else loss

    return TuneopsDistillTrainer


def _prompt_of(row: dict) -> list[dict]:
    msgs = row.get("messages") or []
    return msgs[:-1] if msgs and msgs[-1].get("role") == "assistant" else list(msgs)


def teacher_replies(teacher, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int,
                    batch_size: int = 8) -> list[str]:
    """The teacher's greedy reply to each chat prompt (left-padded batches, stop at end of turn)."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos = [i for i in {tokenizer.eos_token_id, *_as_list(teacher.generation_config.eos_token_id)} if i is not None]
    out: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                     for p in prompts[i:i + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(teacher.device)
            with torch.no_grad():
                gen = teacher.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                       pad_token_id=tokenizer.pad_token_id, eos_token_id=eos or None,
                                       temperature=None, top_p=None, top_k=None)
            new = gen[:, enc["input_ids"].shape[1]:]
            out += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return out


def _as_list(x) -> list:
    return [] if x is None else list(x) if isinstance(x, (list, tuple)) else [x]


def train_distill(base_path: Path, rows: list[dict], *, method: LoraSpec, spec: TrainSpec, objective: ObjectiveSpec,
                  out_dir: Path, base_id: str, teacher_path: Path | None = None, teacher_model=None,
                  teacher_adapter: Path | None = None, teacher_tokenizer=None, eval_rows: list[dict] | None = None,
                  chat_template: str | None = None, template_dir: Path | None = None,
                  stop_check: StopCheck | None = None, on_log: Callable[[dict], None] | None = None,
                  on_step: Callable[[int, int], None] | None = None, control=None, **_) -> TrainResult:
    """Distil the teacher into ``method`` on ``rows`` (chat rows): logit KL, or SFT on the teacher's replies."""
    teacher, teacher_tok = load_teacher(teacher_path=teacher_path, teacher_adapter=teacher_adapter,
                                        teacher_model=teacher_model, teacher_tokenizer=teacher_tokenizer)
    if objective.mode == "responses":
        return _train_on_responses(base_path, rows, teacher, teacher_tok, method=method, spec=spec,
                                   objective=objective, out_dir=out_dir, base_id=base_id, eval_rows=eval_rows,
                                   chat_template=chat_template, template_dir=template_dir, stop_check=stop_check,
                                   on_log=on_log, on_step=on_step, control=control)
    return _train_on_logits(base_path, rows, teacher, teacher_tok, method=method, spec=spec, objective=objective,
                            out_dir=out_dir, base_id=base_id, eval_rows=eval_rows, chat_template=chat_template,
                            template_dir=template_dir, stop_check=stop_check, on_log=on_log, on_step=on_step,
                            control=control)


def _train_on_responses(base_path, rows, teacher, teacher_tok, *, method, spec, objective, out_dir, base_id,
                        eval_rows, chat_template, template_dir, stop_check, on_log, on_step,
                        control=None) -> TrainResult:
    from transformers import AutoTokenizer

    from tuneops.train import sft

    if teacher_tok is None:  # a loaded teacher without its tokenizer: it is on the student's
        teacher_tok = AutoTokenizer.from_pretrained(base_path)
    t0 = time.perf_counter()
    prompts = [_prompt_of(r) for r in rows]
    if not all(prompts):
        raise InvalidInput("distill (responses): every training row needs a prompt (a message before the reply)")
    replies = teacher_replies(teacher, teacher_tok, prompts, max_new_tokens=objective.max_completion_length,
                              batch_size=spec.batch_size)
    gen_seconds = time.perf_counter() - t0
    del teacher  # the student trains without it
    new_rows = [{**{k: v for k, v in r.items() if k != "messages"},
                 "messages": p + [{"role": "assistant", "content": reply}]}
                for r, p, reply in zip(rows, prompts, replies) if reply]
    if not new_rows:
        raise InvalidInput(f"objective.teacher: the teacher gave an empty reply to all {len(rows)} prompts",
                           hint="check the teacher (and its chat template), or raise objective.max_completion_length")
    result = sft.train(base_path, new_rows, method=method, spec=spec, objective=ObjectiveSpec(kind="sft"),
                       out_dir=out_dir, base_id=base_id, eval_rows=eval_rows, chat_template=chat_template,
                       template_dir=template_dir, stop_check=stop_check, on_log=on_log, on_step=on_step,
                       control=control)
    result.extra.update(distill_mode="responses", teacher_rows_generated=len(new_rows),
                        teacher_rows_empty=len(rows) - len(new_rows), teacher_seconds=round(gen_seconds, 2),
                        teacher_example=new_rows[0]["messages"][-1]["content"][:500])
    return result


def _train_on_logits(base_path, rows, teacher, teacher_tok, *, method, spec, objective, out_dir, base_id,
                     eval_rows, chat_template, template_dir, stop_check, on_log, on_step,
                     control=None) -> TrainResult:
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig

    from tuneops.train.template import preflight, tokenize_rows

    tokenizer, model = prepare(base_path, method, spec, chat_template=chat_template, template_dir=template_dir)
    check_same_tokenizer(tokenizer, model, teacher_tok, teacher)
    report = preflight(tokenizer, rows, max_length=spec.max_length)
    rows_run, epochs = epoch_rows(rows, spec)
    tokenized = tokenize_rows(tokenizer, rows_run, max_length=spec.max_length, report=report)
    data = Dataset.from_dict({"input_ids": [t.input_ids for t in tokenized], "labels": [t.labels for t in tokenized]})
    eval_data = None
    if eval_rows and spec.eval_steps:
        ev = tokenize_rows(tokenizer, eval_rows, max_length=spec.max_length)
        eval_data = Dataset.from_dict({"input_ids": [t.input_ids for t in ev], "labels": [t.labels for t in ev]})
    work = Path(out_dir).parent / "trainer"
    import torch

    wanted = spec.padding_free if spec.padding_free is not None else torch.cuda.is_available()  # as in sft.train
    padding_free = bool(wanted) and method.kind not in ("prefix", "prompt")
    config = SFTConfig(**{**common_args(spec, work, has_eval=eval_data is not None, control=control), "num_train_epochs": epochs},
                       max_length=None, padding_free=padding_free, packing=False, dataset_num_proc=None,
                       train_sampling_strategy="group_by_length" if (spec.group_by_length and not padding_free)
                       else "random", completion_only_loss=False)
    hooks = run_hooks(on_log, on_step, stop_check, control=control)
    model, peft_cfg, optimizers = adapter_setup(model, method, spec, base_path)
    trainer = _distill_trainer_class()(model=model, args=config, train_dataset=data, eval_dataset=eval_data,
                                       processing_class=tokenizer, peft_config=peft_cfg, callbacks=hooks.callbacks,
                                       optimizers=optimizers)
    trainer.teacher = teacher.to(trainer.args.device)
    trainer.temperature = objective.temperature
    trainer.remove_callback(PrinterCallback)
    t0 = time.perf_counter()
    run_training(trainer, hooks)
    kls = [e["loss"] for e in hooks.losses]
    k = max(1, len(kls) // 4)
    extra = {"distill_mode": "logits", "temperature": objective.temperature}
    if kls:
        extra.update(kl_first=round(sum(kls[:k]) / k, 6), kl_last=round(sum(kls[-k:]) / k, 6))
    return finish(trainer, method=method, out_dir=out_dir, base_id=base_id, t0=t0, losses=hooks.losses,
                  eval_losses=hooks.eval_losses, tokens=trainer.tokens_seen,
                  template_text=tokenizer.chat_template if chat_template else None,
                  preflight=report.to_dict() | {"example": report.example},
                  stopped_early=hooks.stopped[0] if hooks.stopped else None, extra=extra)
