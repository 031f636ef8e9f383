"""Adaptation methods (``method.kind``): each maps onto PEFT (or plain transformers for ``full``).

Nothing here re-implements PEFT; it builds the PEFT config, loads the base the way the method
needs (4-bit NF4 for qlora), saves what an artifact holds, and measures what a run records:
trainable parameters, artifact size and peak memory.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

from tuneops.errors import InvalidInput
from tuneops.train.recipe import LORA_FAMILY, LoraSpec

# Files an artifact keeps: a PEFT adapter, or (method.kind full) a whole model's weights and config.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
FULL_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors")
# PEFT's own IA3 defaults for Llama-like models: scale keys, values and the MLP input of down_proj.
IA3_DEFAULT_TARGETS = ["k_proj", "v_proj", "down_proj"]
IA3_DEFAULT_FEEDFORWARD = ["down_proj"]


def check_method_supported(method: LoraSpec) -> None:
    """Refuse, before a model loads, what this machine cannot run."""
    if method.kind == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise InvalidInput("method.kind qlora needs bitsandbytes, which is not installed",
                               hint="pip install 'tuneops[qlora]' (bitsandbytes runs 4-bit NF4 on CPU too)") from None


def check_optimizer_supported(optimizer: str) -> None:
    """Refuse, before a model loads, an optimizer this machine cannot run: paged optimizers page their
    state between GPU and host memory through CUDA unified memory, and bitsandbytes' 8-bit ones need it."""
    import torch

    needs_bnb = optimizer.startswith("paged_") or "bnb" in optimizer or optimizer in {
        "adamw_8bit", "ademamix", "ademamix_8bit", "lion_8bit", "lion_32bit"}
    if optimizer.startswith("paged_") and not torch.cuda.is_available():
        raise InvalidInput(f"{optimizer} is a paged optimizer, which needs CUDA (none on this machine)",
                           hint="use adamw_torch here; keep the paged optimizer for a GPU machine")
    if needs_bnb:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise InvalidInput(f"{optimizer} runs on bitsandbytes, which is not installed",
                               hint="pip install 'tuneops[qlora]', or use adamw_torch") from None


def load_model(base_path: Path, method: LoraSpec, *, num_labels: int | None = None):
    """The base as the method needs it: float32, or 4-bit NF4 (double-quantised) for qlora. With
    ``num_labels`` it loads with a (new, seeded) sequence-classification head instead of the LM head:
    ``num_labels=1`` is a reward model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto, head = AutoModelForCausalLM, {}
    if num_labels is not None:
        auto, head = AutoModelForSequenceClassification, {"num_labels": num_labels}
    if method.kind != "qlora":
        return auto.from_pretrained(base_path, dtype=torch.float32, **head)
    check_method_supported(method)
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=method.quant_type,
                               bnb_4bit_use_double_quant=method.double_quant, bnb_4bit_compute_dtype=torch.float32)
    model = auto.from_pretrained(base_path, quantization_config=quant, dtype=torch.float32, **head)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def peft_config(method: LoraSpec, *, base_path: Path | None = None, task_type: str = "CAUSAL_LM"):
    """The PEFT config for ``method`` (None for full fine-tuning)."""
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig

    save = list(method.modules_to_save) or None
    if method.kind in LORA_FAMILY:
        return LoraConfig(r=method.r, lora_alpha=method.alpha, lora_dropout=method.dropout,
                          target_modules=method.target_modules, use_rslora=method.rslora,
                          use_dora=method.kind == "dora", modules_to_save=save, task_type=task_type, bias="none")
    if method.kind == "ia3":
        targets = IA3_DEFAULT_TARGETS if method.target_modules == "all-linear" else list(method.target_modules)
        ff = method.feedforward_modules if method.feedforward_modules is not None else \
            [t for t in IA3_DEFAULT_FEEDFORWARD if t in targets]
        return IA3Config(target_modules=targets, feedforward_modules=ff, modules_to_save=save, task_type=task_type)
    if method.kind == "prefix":
        return PrefixTuningConfig(num_virtual_tokens=method.num_virtual_tokens, modules_to_save=save,
                                  task_type=task_type)
    if method.kind == "prompt":
        kw = {}
        if method.prompt_init_text:
            kw = {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": method.prompt_init_text,
                  "tokenizer_name_or_path": str(base_path)}
        return PromptTuningConfig(num_virtual_tokens=method.num_virtual_tokens, modules_to_save=save,
                                  task_type=task_type, **kw)
    if method.kind == "full":
        return None
    raise InvalidInput(f"method.kind {method.kind!r} is not supported")


def loraplus_optimizer(model, method: LoraSpec, learning_rate: float, weight_decay: float):
    """LoRA+ (PEFT's create_loraplus_optimizer): B matrices learn ``loraplus_lr_ratio`` times faster."""
    import torch
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(model=model, optimizer_cls=torch.optim.AdamW, lr=learning_rate,
                                     loraplus_lr_ratio=method.loraplus_lr_ratio, weight_decay=weight_decay)


def parameter_counts(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


class _RssSampler:
    """Samples this process's resident memory every ``interval`` seconds on a daemon thread and keeps the
    largest: the per-run peak where the kernel's own count cannot be reset (/proc/self/clear_refs missing,
    the write refused, or accepted and ignored, as a sandbox's emulated /proc may do)."""

    def __init__(self, interval: float = 0.02):
        import threading

        self.interval = interval
        self.peak = _vm_rss_mb() or 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tuneops-rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = _vm_rss_mb()
            if rss is not None and rss > self.peak:
                self.peak = rss

    def value(self) -> float:
        rss = _vm_rss_mb() or 0.0
        return max(self.peak, rss)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)


_SAMPLER: _RssSampler | None = None
# VmHWM right after a reset may sit a little above VmRSS (pages touched between the write and the read).
_RESET_SLACK_MB = 16.0


def _clear_hwm() -> bool:
    """Ask Linux to reset the peak RSS (VmHWM) to the current RSS (``5`` to /proc/self/clear_refs) and
    check that it did: True when VmHWM now sits at VmRSS, False where the write is refused or ignored."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux, or not allowed
        return False
    status = _proc_status_mb("VmHWM", "VmRSS")
    hwm, rss = status.get("VmHWM"), status.get("VmRSS")
    return hwm is not None and rss is not None and hwm - rss <= _RESET_SLACK_MB


def reset_peak_memory() -> None:
    """Start this run's peak-memory count now, so a process that trains several times (a worker, a
    sweep, the test suite) reports each run's own peak. On Linux the kernel's peak RSS (VmHWM) is reset
    and the reset checked; where it does not take (no clear_refs, the write refused or ignored), a
    sampling thread keeps the run's peak instead; without /proc, the process's peak is all there is.
    CUDA resets its allocator peak."""
    global _SAMPLER
    if _SAMPLER is not None:
        _SAMPLER.stop()
        _SAMPLER = None
    if not _clear_hwm() and _vm_rss_mb() is not None:
        _SAMPLER = _RssSampler()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    except Exception:
        pass


def _proc_status_mb(*keys: str) -> dict[str, float]:
    """The named ``kB`` fields of /proc/self/status, in MB, read in one pass ({} off Linux)."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in keys:
                    out[key] = int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def _vm_hwm_mb() -> float | None:
    return _proc_status_mb("VmHWM").get("VmHWM")


def _vm_rss_mb() -> float | None:
    return _proc_status_mb("VmRSS").get("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident memory (MB) since :func:`reset_peak_memory`: the kernel's VmHWM where the reset
    took, the sampled peak where it did not, and the process's peak so far off Linux; with CUDA, the
    peak allocated is added."""
    if _SAMPLER is not None:
        rss = _SAMPLER.value()
    else:
        rss = _vm_hwm_mb()
        if rss is None:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        import torch

        if torch.cuda.is_available():
            rss += torch.cuda.max_memory_allocated() / 2**20
    except Exception:
        pass
    return round(rss, 1)


def save_artifact(model, out_dir: Path, *, method: LoraSpec, base_id: str, state_dict: dict | None = None) -> int:
    """Save what the artifact holds (adapter files, or the whole model for ``full``) and return its
    size in bytes. Configs point at the base id, not a local path, so the content hash depends on
    what the artifact is, not where it was trained."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = {"state_dict": state_dict} if state_dict is not None else {}
    if method.kind == "full":
        model.save_pretrained(out_dir, safe_serialization=True, **extra)
        keep = FULL_MODEL_FILES
        cfg_path = out_dir / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["_name_or_path"] = base_id
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    else:
        model.save_pretrained(out_dir, **extra)
        keep = ADAPTER_FILES
        cfg_path = out_dir / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = base_id
        cfg["revision"] = None
        # PEFT writes module sets (target_modules, …) in set order, which varies with the process's hash
        # seed: the same weights got a different artifact id on every run. Sorted, the id is the content's.
        for key in ("target_modules", "modules_to_save", "feedforward_modules", "exclude_modules"):
            if isinstance(cfg.get(key), list) and all(isinstance(x, str) for x in cfg[key]):
                cfg[key] = sorted(cfg[key])
        if cfg.get("tokenizer_name_or_path"):
            cfg["tokenizer_name_or_path"] = base_id
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for p in out_dir.iterdir():
        if p.name not in keep and p.name != "chat_template.jinja" and p.is_file():
            p.unlink()
    return sum(os.path.getsize(p) for p in out_dir.iterdir() if p.is_file())


def is_full_model_dir(path: Path) -> bool:
    return (Path(path) / "model.safetensors").exists() and not (Path(path) / "adapter_config.json").exists()
