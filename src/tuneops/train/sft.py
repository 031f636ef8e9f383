"""Supervised fine-tuning with TRL's SFTTrainer + a PEFT LoRA adapter. A few plain functions.

Rows are chat ``messages``; each becomes a conversational prompt/completion pair (everything
before the last assistant turn is the prompt), so TRL puts the loss on the assistant's answer
only and renders both with the base model's own chat template — the same template eval and
serving use.
"""

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tuneops.train.recipe import LoraSpec, TrainSpec

# Files PEFT writes that belong in an adapter artifact (README.md is a generated card with paths).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    train_seconds: float
    losses: list[dict] = field(default_factory=list)  # [{"step", "loss", "learning_rate"}]
    trainable_parameters: int = 0
    total_parameters: int = 0


def to_prompt_completion(rows: list[dict]) -> list[dict]:
    """messages -> {prompt: [...], completion: [last assistant message]} (TRL masks the prompt)."""
    return [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]


def lora_config(spec: LoraSpec):
    from peft import LoraConfig

    return LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                      target_modules=spec.target_modules, task_type="CAUSAL_LM", bias="none")


def _progress_callback(on_log: Callable[[dict], None] | None, on_step: Callable[[int, int], None] | None):
    from transformers import TrainerCallback

    class _Relay(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if on_step:
                on_step(state.global_step, state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if on_log and logs and "loss" in logs:
                on_log({"step": state.global_step, "loss": float(logs["loss"]),
                        "learning_rate": float(logs.get("learning_rate", 0.0)),
                        "grad_norm": float(logs["grad_norm"]) if logs.get("grad_norm") is not None else None})

    return _Relay()


def planned_steps(n_rows: int, spec: TrainSpec) -> int:
    if spec.max_steps:
        return spec.max_steps
    return max(1, math.ceil(math.ceil(n_rows / spec.batch_size) * spec.epochs))


def train_lora(base_path: Path, rows: list[dict], *, method: LoraSpec, spec: TrainSpec, out_dir: Path,
               base_id: str, on_log: Callable[[dict], None] | None = None,
               on_step: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train a LoRA adapter on ``rows`` and save only the adapter files to ``out_dir``."""
    import torch
    from datasets import Dataset
    import datasets
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()  # tuneops draws its own (rich) progress
    transformers.utils.logging.disable_progress_bar()

    if spec.threads:
        torch.set_num_threads(spec.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    work = Path(out_dir).parent / "trainer"
    config = SFTConfig(
        output_dir=str(work),
        num_train_epochs=spec.epochs,
        max_steps=spec.max_steps or -1,
        per_device_train_batch_size=spec.batch_size,
        learning_rate=spec.learning_rate,
        warmup_steps=spec.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio
        lr_scheduler_type="linear",
        max_length=spec.max_length,
        seed=spec.seed,
        data_seed=spec.seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        bf16=False,  # SFTConfig defaults to bf16 + checkpointing; both wrong on CPU
        gradient_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        dataset_num_proc=None,
        completion_only_loss=True,
    )
    losses: list[dict] = []

    def _collect(entry: dict):
        losses.append(entry)
        if on_log:
            on_log(entry)

    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(to_prompt_completion(rows)),
        processing_class=tokenizer,
        peft_config=lora_config(method),
        callbacks=[_progress_callback(_collect, on_step)],
    )
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts when tqdm is disabled
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    peft_model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out_dir)
    normalise_adapter_dir(out_dir, base_id)
    return TrainResult(adapter_dir=out_dir, steps=trainer.state.global_step, train_seconds=seconds, losses=losses,
                       trainable_parameters=trainable, total_parameters=total)


def normalise_adapter_dir(out_dir: Path, base_id: str) -> None:
    """Keep only the adapter files and point the config at the base id, not a local path,
    so the artifact's content hash depends on what it is, not where it was trained."""
    for p in Path(out_dir).iterdir():
        if p.name not in ADAPTER_FILES:
            p.unlink() if p.is_file() else None
    cfg_path = Path(out_dir) / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base_id
    cfg["revision"] = None
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
