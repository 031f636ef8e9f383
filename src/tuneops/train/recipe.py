"""The recipe: one YAML file that drives a whole run. Every field documents itself here.

Unknown keys and bad values are errors naming the field (``recipe.yaml: method.r: …``).
What a run saves is the validated recipe (normalised YAML) plus its sha256.
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_serializer, model_validator

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


class LoraSpec(_Strict):
    kind: Literal["lora"] = Field("lora", description="PEFT method. Only LoRA in this version.")
    r: int = Field(16, gt=0, le=1024, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA branch.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules to adapt: 'all-linear' or a list of module names.")


class CanarySpec(_Strict):
    """Random secrets planted in the training rows, so the `memorisation` suite can tell whether the
    adapter memorised what it saw (see train/canaries.py and docs/eval.md, "Memorisation")."""

    count: int = Field(0, ge=0, le=1000,
                       description="Canaries to plant (0 = none, the default). Canary i is a chat row: user "
                                   "'The secret code of tuneops canary i is', assistant a random secret like "
                                   "'7Q4-K9X-2RB', generated from train.seed. Never stored as dataset rows; the "
                                   "run records each canary's prefix and the sha256 of its secret.")
    repeats: int = Field(1, ge=1, le=10000, description="Copies of each canary row added to the training rows.")


class TrainSpec(_Strict):
    epochs: float = Field(1.0, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(8, gt=0, description="Rows per optimizer step (per device).")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of steps spent warming up.")
    max_length: int = Field(256, gt=8, description="Longer rows are truncated to this many tokens.")
    seed: int = Field(0, description="Seed for data order, LoRA init and dropout.")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: all cores).")
    canaries: CanarySpec = Field(default_factory=CanarySpec,
                                 description="Plant canaries: {count: 4, repeats: 1}. Off by default.")

    @model_serializer(mode="wrap")
    def _omit_canaries_when_off(self, handler):
        # A recipe without canaries saves and hashes exactly as before the field existed.
        data = handler(self)
        if isinstance(data, dict) and not self.canaries.count:
            data.pop("canaries", None)
        return data


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


class Recipe(_Strict):
    name: str = Field(description="Human name for runs of this recipe.", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
    base: str = Field(description="Base model: a `base-…` id, a name, or 'embedded:SmolLM2-135M-Instruct'.")
    data: DataSpec
    method: LoraSpec = Field(default_factory=LoraSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    gates: list[Gate] = Field(default_factory=list, description="All must pass for promotion.")
    target: TargetSpec | None = Field(None, description="Alias a passing artifact is promoted to.")
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
            msg = "unknown key (check the spelling; see `tuneops train --help` for the recipe fields)"
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
