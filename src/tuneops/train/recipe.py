"""The recipe: one YAML file that drives a whole run. Every field documents itself here.

Unknown keys and bad values are errors naming the field (``recipe.yaml: method.r: …``).
What a run saves is the validated recipe (normalised YAML) plus its sha256.
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_serializer,
                      model_validator)

from tuneops.errors import InvalidInput
from tuneops.store.ids import canonical_json, sha256_bytes


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    train: str = Field(description="Training dataset: a `ds-…` id or a dataset name (newest version).")
    eval: str = Field(description="Held-out eval dataset (id or name); must not share rows with train.")
    use: Literal["commercial", "internal", "research"] = Field(
        "commercial", description="Intended use of the model. Every training row's licence must permit it and no "
                                  "row may be past its retention date, or the run is refused before training "
                                  "(e.g. CC-BY-NC-4.0 rows permit research only).")

    waive_leakage: str | None = Field(
        None, min_length=1, description="Train although training rows share 13-word passages (or near-duplicates) "
                                        "with the eval set or an eval suite; the reason is recorded with the run.")

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler):
        # A recipe that states neither saves and hashes exactly as before the fields existed.
        data = handler(self)
        if isinstance(data, dict):
            if self.use == "commercial":
                data.pop("use", None)
            if self.waive_leakage is None:
                data.pop("waive_leakage", None)
        return data


class _OmitNewDefaults(_Strict):
    """Fields added after the first release are left out of the saved recipe (and its hash) while they
    hold their default, so a recipe that does not use them saves and hashes exactly as before."""

    _always: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_new_defaults(self, handler):
        data = handler(self)
        if isinstance(data, dict):
            for name, info in type(self).model_fields.items():
                if name in self._always or name not in data:
                    continue
                default = info.get_default(call_default_factory=True)
                if isinstance(default, BaseModel):
                    default = default.model_dump(mode="json")
                if data[name] == default:
                    data.pop(name)
        return data


METHOD_KINDS = ("lora", "dora", "qlora", "full", "prefix", "prompt", "ia3")
LORA_FAMILY = ("lora", "dora", "qlora")
_METHOD_FIELDS = {
    "r": LORA_FAMILY, "alpha": LORA_FAMILY, "dropout": LORA_FAMILY, "rslora": LORA_FAMILY,
    "loraplus_lr_ratio": LORA_FAMILY, "quant_type": ("qlora",), "double_quant": ("qlora",),
    "num_virtual_tokens": ("prefix", "prompt"), "prompt_init_text": ("prompt",),
    "feedforward_modules": ("ia3",), "target_modules": LORA_FAMILY + ("ia3",),
    "modules_to_save": LORA_FAMILY + ("ia3", "prefix", "prompt"),
}


class LoraSpec(_OmitNewDefaults):
    """The adaptation method (PEFT). One key, `kind`, picks it; the other fields tune it and are
    refused for kinds they do not apply to."""

    _always: ClassVar[frozenset[str]] = frozenset({"kind", "r", "alpha", "dropout", "target_modules"})

    kind: Literal["lora", "dora", "qlora", "full", "prefix", "prompt", "ia3"] = Field(
        "lora", description="lora (low-rank adapter), dora (weight-decomposed LoRA), qlora (LoRA on a 4-bit NF4 "
                            "base via bitsandbytes), full (every weight trains; the artifact is a whole model), "
                            "prefix (prefix tuning), prompt (prompt tuning), ia3 (learned rescaling vectors).")
    r: int = Field(16, gt=0, le=1024, description="LoRA rank (lora, dora, qlora). A low rank is also a forgetting "
                                                  "control: it caps how far the adapter can move the base.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) "
                                             "with rslora).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA branch.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules to adapt: 'all-linear' or a list of module names (e.g. [q_proj, v_proj]). "
                                  "For ia3 the default is the attention and MLP projections.")
    rslora: bool = Field(False, description="Rank-stabilised LoRA: scale by alpha / sqrt(r) (PEFT use_rslora).")
    loraplus_lr_ratio: float | None = Field(
        None, gt=0, description="LoRA+: the B matrices learn this many times faster than A (PEFT "
                                "create_loraplus_optimizer; the paper suggests 16).")
    modules_to_save: list[str] = Field(
        default_factory=list, description="Modules trained in full and saved with the adapter, e.g. [lm_head] "
                                          "(PEFT modules_to_save).")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="qlora: 4-bit quantisation of the frozen base.")
    double_quant: bool = Field(True, description="qlora: also quantise the quantisation constants.")
    num_virtual_tokens: int = Field(20, gt=0, le=512, description="prefix / prompt: learned virtual tokens.")
    prompt_init_text: str | None = Field(
        None, min_length=1, description="prompt: initialise the virtual tokens from this text's embedding "
                                        "(PEFT prompt_tuning_init=TEXT) instead of at random.")
    feedforward_modules: list[str] | None = Field(
        None, description="ia3: which target modules are feed-forward (scaled on their input).")

    @model_validator(mode="after")
    def _fields_fit_kind(self):
        for name, kinds in _METHOD_FIELDS.items():
            if name in self.model_fields_set and self.kind not in kinds:
                raise ValueError(f"`{name}` applies to method.kind {' / '.join(kinds)}, not {self.kind!r}; "
                                 f"remove it")
        return self

    def describe(self) -> str:
        if self.kind in LORA_FAMILY:
            return f"{self.kind} r={self.r}"
        if self.kind in ("prefix", "prompt"):
            return f"{self.kind} tokens={self.num_virtual_tokens}"
        return self.kind


MethodSpec = LoraSpec

OBJECTIVE_KINDS = ("sft", "dpo", "ipo", "orpo", "kto", "simpo", "cpo", "reward", "grpo", "rloo", "distill")
PREFERENCE_KINDS = ("dpo", "ipo", "orpo", "kto", "simpo", "cpo", "reward")
# TRL 1.16's DPO losses (DPOConfig.loss_type). TRL accepts any string and fails only at the first step, so the
# recipe checks first. exo_pair is left out: it needs label smoothing, which a recipe does not set.
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
                  "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
_OBJECTIVE_FIELDS = {
    "train_on_prompt": ("sft",), "all_turns": ("sft",), "packing": ("sft",),
    "beta": ("dpo", "ipo", "orpo", "kto", "simpo", "cpo"), "loss_type": ("dpo",),
    "simpo_gamma": ("simpo",), "reward": ("grpo", "rloo"), "num_generations": ("grpo", "rloo"),
    "max_completion_length": ("grpo", "rloo", "distill"), "teacher": ("distill",),
    "temperature": ("distill", "grpo", "rloo"), "mode": ("distill",),
    "kl_to_reference": ("sft",),
}


class ObjectiveSpec(_OmitNewDefaults):
    """What the training loss is (TRL). One key, `kind`, picks it."""

    _always: ClassVar[frozenset[str]] = frozenset({"kind"})

    kind: Literal["sft", "dpo", "ipo", "orpo", "kto", "simpo", "cpo", "reward", "grpo", "rloo", "distill"] = Field(
        "sft", description="sft (supervised, chat rows); dpo, ipo, orpo, kto, simpo, cpo (preference pairs: "
                           "prompt/chosen/rejected); reward (a Bradley-Terry reward model on preference pairs); "
                           "grpo, rloo (reinforcement learning with a reward function); distill (learn from a "
                           "teacher model).")
    train_on_prompt: bool = Field(False, description="sft: also put the loss on prompt tokens (default: assistant "
                                                     "tokens and their end-of-turn only).")
    all_turns: bool = Field(True, description="sft: train every assistant turn of a multi-turn chat (false: only "
                                              "the last).")
    packing: bool = Field(False, description="sft: pack rows into max_length sequences (best-fit, padding-free; "
                                             "rows never attend to each other).")
    kl_to_reference: float = Field(
        0.0, ge=0.0, description="sft: forgetting control — add this weight times the KL divergence from the base "
                                 "model's next-token distribution on the same tokens (0 = off).")
    beta: float = Field(0.1, gt=0, description="dpo/ipo/kto/simpo/cpo: inverse temperature of the preference loss; "
                                               "orpo: weight of the odds-ratio term (lambda).")
    loss_type: str = Field("sigmoid", description="dpo: TRL's DPO loss variant (" + ", ".join(DPO_LOSS_TYPES)
                                                  + "; sigmoid is the DPO paper's loss).")
    simpo_gamma: float = Field(0.5, description="simpo: target reward margin (gamma / beta in the paper).")
    reward: str | None = Field(
        None, description="grpo/rloo: the reward — 'gsm8k' (built-in verifier of GSM8K final answers '#### N'), "
                          "'module:function' (a Python function(prompts, completions, **columns) -> list[float]), "
                          "or a reward-model artifact id (ad-…) trained with objective.kind: reward.")
    num_generations: int = Field(4, ge=2, description="grpo/rloo: completions sampled per prompt (must divide the "
                                                      "batch size).")
    max_completion_length: int = Field(64, gt=0, description="grpo/rloo/distill: tokens generated per completion.")
    temperature: float = Field(1.0, gt=0, description="grpo/rloo: sampling temperature; distill: softening "
                                                      "temperature T of teacher and student distributions.")
    teacher: str | None = Field(None, description="distill: the teacher — a base (id, name or embedded:…) or an "
                                                  "artifact id / alias on the student's tokenizer.")
    mode: Literal["logits", "responses"] = Field(
        "logits", description="distill: 'logits' (KL to the teacher's softened next-token distribution) or "
                              "'responses' (SFT on the teacher's generated replies).")

    @model_validator(mode="after")
    def _fields_fit_kind(self):
        for name, kinds in _OBJECTIVE_FIELDS.items():
            if name in self.model_fields_set and self.kind not in kinds:
                raise ValueError(f"`{name}` applies to objective.kind {' / '.join(kinds)}, not {self.kind!r}; "
                                 "remove it")
        if self.kind == "dpo" and self.loss_type not in DPO_LOSS_TYPES:
            raise ValueError(f"loss_type {self.loss_type!r} is not a DPO loss tuneops can run; use one of "
                             f"{', '.join(DPO_LOSS_TYPES)} (sigmoid is the DPO paper's loss)")
        if self.kind in ("grpo", "rloo") and not self.reward:
            raise ValueError(f"objective.kind {self.kind} needs a reward: 'gsm8k', 'module:function' or a "
                             "reward-model artifact id")
        if self.kind == "distill" and not self.teacher:
            raise ValueError("objective.kind distill needs a teacher (a base or an artifact)")
        return self

    @property
    def needs_preference_rows(self) -> bool:
        return self.kind in PREFERENCE_KINDS


class CanarySpec(_Strict):
    """Random secrets planted in the training rows, so the `memorisation` suite can tell whether the
    adapter memorised what it saw (see train/canaries.py and docs/eval.md, "Memorisation")."""

    count: int = Field(0, ge=0, le=1000,
                       description="Canaries to plant (0 = none, the default). Canary i is a chat row: user "
                                   "'The secret code of tuneops canary i is', assistant a random secret like "
                                   "'7Q4-K9X-2RB', generated from train.seed. Never stored as dataset rows; the "
                                   "run records each canary's prefix and the sha256 of its secret.")
    repeats: int = Field(1, ge=1, le=10000, description="Copies of each canary row added to the training rows.")


class ReplaySpec(_Strict):
    """Forgetting control: blend rows of a general dataset into training."""

    dataset: str = Field(description="A dataset (id or name) of general chats to replay, e.g. replies of the base "
                                     "model to everyday prompts.")
    ratio: float = Field(0.2, gt=0, le=4, description="Replay rows per training row, drawn afresh (seeded) for "
                                                      "every epoch: 0.2 adds one general row per five task rows.")


class EarlyStoppingSpec(_Strict):
    """Forgetting control: stop when an off-domain eval drops. The check runs as a training callback."""

    suite: str = Field("forgetting", description="Suite to run during training (a built-in name or a path).")
    metric: str | None = Field(None, description="Metric of that suite to watch (default: its first).")
    every: int = Field(10, gt=0, description="Run the suite every N optimizer steps.")
    max_drop: float = Field(0.05, ge=0, description="Stop when the metric falls more than this below its value "
                                                    "before training.")
    max_items: int | None = Field(40, gt=0, description="Items of the suite used for the check.")
    restore_best: bool = Field(True, description="On stopping, put back the weights of the last check within "
                                                 "max_drop (step 0: the untouched base) instead of keeping the "
                                                 "ones that failed it.")


class GuardSpec(_Strict):
    """What a run does when a step goes bad: a non-finite loss or gradient, or a loss spike."""

    on_nan: Literal["skip", "rollback", "fail"] = Field(
        "skip", description="A non-finite loss or gradient: skip that optimizer step (weights untouched), roll back "
                            "to the last complete checkpoint, or fail the run. The batch is quarantined on the run "
                            "either way.")
    spike_factor: float | None = Field(
        None, gt=1, description="A loss above this × the running median of recent micro-batches counts as a spike "
                                "(handled like a NaN), e.g. 3. Off by default: late in a run a harder batch can "
                                "legitimately cost several times the median.")
    spike_window: int = Field(20, ge=3, description="Steps in the running median.")
    spike_min_steps: int = Field(5, ge=1, description="No spike is called before this many steps have a median.")
    lr_factor: float | None = Field(
        None, gt=0, lt=1, description="Multiply the learning rate by this after each strike (e.g. 0.5).")
    max_strikes: int = Field(3, ge=1, description="Strikes (bad steps) after which the run fails with a clear event.")


class CheckpointSpec(_Strict):
    """Where and how often a run saves resumable checkpoints (weights, optimizer, scheduler, RNG, data
    position). A checkpoint counts only once complete and verified; resume takes the newest such one."""

    every: int | None = Field(None, gt=0, description="Save every N optimizer steps (default: train.save_steps; "
                                                      "with neither, only at the end of each epoch).")
    keep: int = Field(2, ge=1, description="Keep the newest N complete checkpoints, plus the best by held-out loss.")
    location: str | None = Field(
        None, description="Also copy each complete checkpoint to this fsspec URL (file:///…, s3://bucket/prefix, "
                          "memory://…); resume fetches from it when the run's folder lost them.")
    epoch_end: bool = Field(True, description="Also save at the end of each epoch.")
    select: Literal["last", "best"] = Field(
        "last", description="The weights the run registers: the last step's, or those of the kept checkpoint with "
                            "the lowest held-out loss (needs train.eval_steps; an earlier checkpoint sometimes "
                            "generalises better).")


class SearchDim(_Strict):
    """One hyper-parameter's search space for `tuneops tune`: a range (low/high, optionally log-scaled, with
    an integer step) or a list of choices."""

    low: float | None = Field(None, description="Lower bound of a range.")
    high: float | None = Field(None, description="Upper bound of a range.")
    log: bool = Field(False, description="Sample the range on a log scale (learning rates).")
    step: float | None = Field(None, gt=0, description="Quantise the range (an integer step makes it an integer).")
    choices: list[float | int | str | bool] | None = Field(None, min_length=1, description="Pick one of these.")

    @model_validator(mode="after")
    def _one_form(self):
        ranged = self.low is not None or self.high is not None
        if ranged == (self.choices is not None):
            raise ValueError("give either low and high (a range) or choices (a list), not both or neither")
        if ranged and (self.low is None or self.high is None or self.low >= self.high):
            raise ValueError("a range needs low < high")
        if ranged and self.log and self.low <= 0:
            raise ValueError("a log-scaled range needs low > 0")
        return self


class TuneSpec(_Strict):
    """Hyper-parameter search (`tuneops tune RECIPE --trials N`, Optuna TPE + median pruner)."""

    space: dict[str, SearchDim] = Field(
        description="Dotted recipe field -> its space, e.g. {train.learning_rate: {low: 1e-5, high: 1e-3, log: "
                    "true}, method.r: {choices: [8, 16, 32]}}.")
    metric: str = Field("eval_loss", description="What a trial is scored on: eval_loss (held-out loss, reported "
                                                 "every train.eval_steps for pruning) or a `<suite>.<metric>` of "
                                                 "the run's eval.")
    direction: Literal["minimize", "maximize"] | None = Field(
        None, description="Default: minimize for eval_loss, maximize otherwise.")
    pruner: Literal["median", "none"] = Field("median", description="Stop unpromising trials early (median of "
                                                                    "earlier trials at the same step).")

    @field_validator("space")
    @classmethod
    def _known_fields(cls, space):
        for key in space:
            section, _, name = key.partition(".")
            model = {"train": TrainSpec, "method": LoraSpec, "objective": ObjectiveSpec}.get(section)
            if model is None or name not in model.model_fields:
                raise ValueError(f"{key!r} is not a recipe field one can search (train.*, method.* or objective.*; "
                                 "`tuneops recipe fields` lists them)")
        return space


class LauncherSpec(_Strict):
    """Run training on several processes, GPUs or machines through an existing engine."""

    kind: Literal["accelerate"] = Field("accelerate", description="The engine (`accelerate launch`).")
    strategy: Literal["ddp", "zero2", "zero3", "fsdp"] = Field(
        "ddp", description="DDP, DeepSpeed ZeRO-2 / ZeRO-3, or FSDP (written into the accelerate config).")
    num_processes: int = Field(2, ge=1, description="Processes in all (one per GPU; on CPU, gloo processes).")
    num_machines: int = Field(1, ge=1, description="Machines taking part.")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="accelerate's mixed precision.")


class TrainSpec(_OmitNewDefaults):
    _always: ClassVar[frozenset[str]] = frozenset({"epochs", "max_steps", "batch_size", "learning_rate",
                                                   "warmup_ratio", "max_length", "seed", "threads"})

    epochs: float = Field(1.0, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(8, gt=0, description="Rows per forward pass (per device).")
    gradient_accumulation_steps: int = Field(
        1, gt=0, description="Forward passes per optimizer step (effective batch = batch_size × this).")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts",
                          "polynomial", "inverse_sqrt"] = Field("linear", description="Learning-rate schedule "
                                                                                      "after warm-up.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, lt=1, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    optimizer: str = Field("adamw_torch", description="transformers optimizer name (adamw_torch, adafactor, "
                                                      "paged_adamw_8bit — paged optimizers need CUDA, and are "
                                                      "refused at validation on a machine without it).")
    max_length: int = Field(256, gt=8, description="Longer rows are truncated to this many tokens (reported by "
                                                   "`tuneops recipe validate` and before training).")
    padding_free: bool | None = Field(
        None, description="Batch rows without padding (concatenated, with position ids) so no compute is spent on "
                          "pad tokens. Default: on with CUDA, off on CPU, where attention over one concatenated "
                          "sequence costs more than the padding it saves (benchmarks/sft_throughput.py).")
    group_by_length: bool = Field(True, description="Batch rows of similar length together (less padding when "
                                                    "padding_free is off).")
    eval_steps: int | None = Field(None, gt=0, description="Compute the loss on the eval set every N steps "
                                                           "(plotted with the training loss).")
    save_steps: int | None = Field(None, gt=0, description="Save a checkpoint every N steps.")
    seed: int = Field(0, description="Seed for data order, adapter init and dropout.")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: all cores).")
    chat_template: str | None = Field(
        None, min_length=1, description="Override the base's chat template: a Jinja file path (relative to the "
                                        "recipe) or the template text. Used in training, eval and serving alike; "
                                        "its sha256 is recorded on the run and the artifact.")
    tier_weights: dict[Literal["gold", "curated", "synthetic", "scraped"], float] | None = Field(
        None, description="Sampling weight per quality tier, e.g. {gold: 2, scraped: 0.5}: each epoch draws rows "
                          "in proportion (rows without a tier weigh 1).")
    replay: ReplaySpec | None = Field(None, description="Forgetting control: {dataset: general-chat, ratio: 0.2}.")
    early_stopping: EarlyStoppingSpec | None = Field(
        None, description="Forgetting control: {suite: forgetting, every: 10, max_drop: 0.05}.")
    canaries: CanarySpec = Field(default_factory=CanarySpec,
                                 description="Plant canaries: {count: 4, repeats: 1}. Off by default.")
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec,
                                        description="Resumable checkpoints: {every: 50, keep: 2, location: …}.")
    guards: GuardSpec = Field(default_factory=GuardSpec,
                              description="NaN / spike guards: {on_nan: skip, spike_factor: 3, max_strikes: 3}.")
    deterministic: bool = Field(
        False, description="Bit-identical reruns: fixed threads, deterministic algorithms, seeded data order and "
                           "init; the same recipe, data and base give the same artifact id on the same machine.")

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, v: str) -> str:
        from transformers.training_args import OptimizerNames

        names = [o.value for o in OptimizerNames]
        if v not in names:
            import difflib

            close = difflib.get_close_matches(v, names, n=3)
            raise ValueError(f"unknown optimizer {v!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
                             + "; transformers knows: " + ", ".join(names))
        return v


class EvalSpec(_Strict):
    suites: list[str | dict] = Field(
        default_factory=lambda: ["json_extraction", "forgetting"],
        description="Suites to run: a built-in name (json_extraction, forgetting, safety, … see `tuneops eval "
                    "suites`), a path to a suite YAML (relative to the recipe), or an inline suite mapping "
                    "(its items default to the recipe's eval set). Metrics are named `<suite>.<metric>`.")
    scorer: str | dict | list | None = Field(
        None, description="Shorthand for an inline task suite over the eval set: a scorer name, a scorer "
                          "mapping ({name: numeric, field: reference}) or a list of them.")
    name: str = Field("task", pattern=r"^[a-z][a-z0-9_]{0,63}$",
                      description="Name of the shorthand suite (its metrics are `<name>.<metric>`).")
    max_new_tokens: int = Field(48, gt=0, le=4096,
                                description="Generation budget per item for suites that set none.")
    batch_size: int = Field(20, gt=0, description="Items generated together.")
    max_items: int | None = Field(None, gt=0, description="Evaluate only the first N items of each suite.")


# -- gates -----------------------------------------------------------------------------------
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_EXPR = re.compile(r"^\s*(?P<metric>[a-z][a-z0-9_]*\.[A-Za-z0-9_.\-]+)\s*(?P<op>>=|<=|==|>|<)\s*(?P<rhs>.+?)\s*$")
_RHS = re.compile(rf"^(?:baseline(?:\s*(?P<arith>[-+*])\s*(?P<x>{_NUM}))?|(?P<const>{_NUM}))$")
GATE_FORMS = ("write `<suite>.<metric> OP RHS`, OP one of >= <= == > <, RHS `baseline`, `baseline + 0.05`, "
              "`baseline - 0.01`, `baseline * 0.95` or a number; e.g. 'gsm8k.accuracy >= baseline + 0.05'")


@dataclass(frozen=True)
class GateExpr:
    """``metric OP a * baseline + b``: the candidate's mean against a line in the baseline's mean."""

    metric: str
    op: str
    a: float
    b: float
    text: str

    def rhs(self, baseline: float) -> float:
        return self.a * baseline + self.b


def parse_gate(text: str) -> GateExpr:
    """``gsm8k.accuracy >= baseline + 0.05`` -> GateExpr; ValueError showing the accepted forms."""
    m = _EXPR.match(text or "")
    rhs = _RHS.match(m["rhs"].strip()) if m else None
    if not m or not rhs:
        raise ValueError(f"cannot read gate {text!r}: {GATE_FORMS}")
    if rhs["const"] is not None:
        a, b = 0.0, float(rhs["const"])
    elif rhs["arith"] is None:
        a, b = 1.0, 0.0
    else:
        x = float(rhs["x"])
        a, b = {"+": (1.0, x), "-": (1.0, -x), "*": (x, 0.0)}[rhs["arith"]]
    return GateExpr(metric=m["metric"], op=m["op"], a=a, b=b, text=f"{m['metric']} {m['op']} {m['rhs'].strip()}")


class Gate(_Strict):
    """A pass/fail rule on a paired comparison: `gsm8k.accuracy >= baseline + 0.05`.

    Write it as a string, or as a mapping {expr: "…", ci: true}. The older form
    {metric, min_delta | max_relative_drop | min_value} is still read and converted."""

    expr: str = Field(description="`<suite>.<metric> OP RHS`; RHS is baseline, baseline ± x, baseline * x or a number.")
    ci: bool = Field(False, description="Require the whole 95 % paired-bootstrap CI to pass, not just the mean.")

    @model_validator(mode="before")
    @classmethod
    def _forms(cls, data):
        if isinstance(data, str):
            return {"expr": data}
        if isinstance(data, dict) and "metric" in data and "expr" not in data:  # the pre-expression form
            data = dict(data)
            metric = data.pop("metric")
            rules = {k: data.pop(k) for k in ("min_delta", "max_relative_drop", "min_value") if k in data}
            if len(rules) != 1:
                raise ValueError("set exactly one of min_delta, max_relative_drop, min_value — or better, write "
                                 f"the gate as an expression, e.g. '{metric} >= baseline + 0.05'")
            (rule, x), = rules.items()
            if not isinstance(x, (int, float)) or isinstance(x, bool):
                raise ValueError(f"{rule} must be a number (got {x!r})")
            data["expr"] = {"min_delta": f"{metric} >= baseline + {x:g}",
                            "max_relative_drop": f"{metric} >= baseline * {1 - x:g}",
                            "min_value": f"{metric} >= {x:g}"}[rule]
        return data

    @model_validator(mode="after")
    def _parses(self):
        self.parsed()
        return self

    def parsed(self) -> GateExpr:
        return parse_gate(self.expr)

    @property
    def metric(self) -> str:
        return self.parsed().metric

    def describe(self) -> str:
        return self.expr + (" (whole 95% CI)" if self.ci else "")


class TargetSpec(_Strict):
    alias: str = Field(description="Alias name; the artifact is promoted to alias@stage if every gate passes.",
                       pattern=r"^[a-z0-9][a-z0-9._-]{0,99}$")
    stage: str = Field("production", pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="Alias stage.")


class Recipe(_OmitNewDefaults):
    _always: ClassVar[frozenset[str]] = frozenset({"name", "base", "data", "method", "train", "eval", "gates",
                                                   "target"})

    name: str = Field(description="Human name for runs of this recipe.", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
    base: str = Field(description="Base model: a `base-…` id, a name, or 'embedded:SmolLM2-135M-Instruct'.")
    data: DataSpec = Field(description="The training and eval dataset versions (ids or names), kept apart: "
                                       "rows of one found in the other are refused as leakage.")
    method: LoraSpec = Field(default_factory=LoraSpec, description="How the base is adapted (PEFT): "
                                                                   "method.kind picks lora, dora, qlora, full, "
                                                                   "prefix, prompt or ia3.")
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec, description="The training loss (TRL): "
                                                                                "objective.kind picks sft, dpo, "
                                                                                "…, grpo or distill.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="How the optimiser runs: steps, batch, learning "
                                                                   "rate and schedule, lengths, checkpoints, guards "
                                                                   "and the forgetting controls.")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="The paired evaluation against the base (or the "
                                                                "alias's current artifact): suites and budgets.")
    gates: list[Gate] = Field(default_factory=list, description="All must pass for promotion.")
    target: TargetSpec | None = Field(None, description="Alias a passing artifact is promoted to.")
    launcher: LauncherSpec | None = Field(None, description="Train on several processes / GPUs through accelerate: "
                                                            "{kind: accelerate, strategy: ddp, num_processes: 2}.")
    tune: TuneSpec | None = Field(None, description="Search space for `tuneops tune` (ignored by `tuneops train`).")
    _source: str = PrivateAttr("recipe")  # the file it came from, for error messages

    @property
    def source(self) -> str:
        return self._source

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def hash(self) -> str:
        """sha256 of the validated recipe's canonical JSON (defaults filled in, key order irrelevant)."""
        return sha256_bytes(canonical_json(self.model_dump(mode="json")))


def _format_errors(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `tuneops recipe fields` lists every field)"
        got = f" (got {e['input']!r})" if e["type"] != "extra_forbidden" and not isinstance(e.get("input"), dict) else ""
        lines.append(f"{source}: {loc}: {msg}{got}")
    return "\n".join(lines)


def parse_recipe(data: dict, source: str = "recipe") -> Recipe:
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise InvalidInput(_format_errors(source, e), hint="fix the field(s) named above") from None
    recipe._source = source
    return recipe


def load_recipe(path: Path) -> Recipe:
    path = Path(path)
    if not path.exists():
        raise InvalidInput(f"{path}: no such recipe file", hint="check the path; examples/json-extraction.yaml is one")
    if path.is_dir():
        raise InvalidInput(f"{path}: is a directory, not a recipe file", hint="pass the recipe's .yaml file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{path}: not UTF-8 text (byte {e.start})", hint="save the recipe as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise InvalidInput(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: a recipe must be a YAML mapping (name:, base:, data:, …)")
    return parse_recipe(data, source=str(path))
