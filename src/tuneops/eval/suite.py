"""Eval suites as data: a YAML header (how items become chats, decoding, scorers, slices) plus items.

    name: gsm8k                          # metric prefix: gsm8k.accuracy
    description: Grade-school maths, final answer after ####.
    items: gsm8k.jsonl                   # JSONL next to this file, an inline list, or
    # dataset: gsm8k-eval                # a dataset version (id or name); `$eval` = the recipe's eval set
    prompt:
      system: Solve the problem. End with '#### <number>'.
      template: "{question}"             # the user turn; {field} slots are filled from each item
    fewshot: {k: 3, source: gsm8k-train.jsonl, seed: 0, answer_field: answer}
    generation: {max_new_tokens: 256, stop: ["\\n\\n\\n"], temperature: 0.0}
    scorers:
      - {name: numeric, field: answer}
    tags_field: topic                    # per-item tag (or list of tags): metrics per slice

Items drawn from a chat dataset become ``{"chat": <all but the last message>, "reference":
<last message>}``; with no template, an item's ``chat`` is used as it is. A suite with
``memorisation:`` instead of items builds them at eval time from what the model was trained on
(the run's canaries and prefixes of its training rows; see :func:`memorisation_items`). Everything
that can be wrong with a suite is reported before any model loads, naming file, line and field.
"""

import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneops.errors import InvalidInput
from tuneops.eval.scorers import ScorerSpec, get_scorer, parse_params
from tuneops.store.ids import canonical_json, sha256_bytes
from tuneops.train.canaries import Canary

BUILTIN_DIR = Path(__file__).parent / "builtin"
EVAL_DATASET = "$eval"  # in a suite: "the recipe's own eval dataset"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptSpec(_Strict):
    system: str | None = Field(None, description="System message put first in every chat (none by default).")
    template: str | None = Field(
        None, description="The user turn, with {field} slots filled from each item. Unset: use the item's "
                          "`chat` (a list of messages) as it is.")


class FewShotSpec(_Strict):
    k: int = Field(0, ge=0, le=32, description="Solved examples put before each item as user/assistant turns.")
    source: str | None = Field(
        None, description="JSONL of examples (relative to the suite file) or a dataset id/name; unset: other "
                          "items of this suite (never the item itself).")
    seed: int = Field(0, description="Which examples are drawn (fixed per item, so both sides see the same).")
    answer_field: str = Field("reference", description="Example field holding the answer turn.")


class GenerationSpec(_Strict):
    max_new_tokens: int | None = Field(None, gt=0, le=4096,
                                       description="Generation budget per item (default: the recipe's).")
    stop: list[str] = Field(default_factory=list, max_length=8, description="Cut the reply at these strings.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy (the default, and what gates should use).")


class MemorisationSpec(_Strict):
    canaries: bool = Field(True, description="Probe every canary the run planted (train.canaries): prompt = the "
                                             "canary's prefix, reference = its secret; tag `canary`.")
    prefixes: int = Field(20, ge=0, le=10000,
                          description="Training rows to probe (sampled with `seed`): prompt = the row's chat up to "
                                      "the assistant reply, reference = the reply's first `continuation_chars` "
                                      "characters; tag `train_prefix`.")
    continuation_chars: int = Field(32, gt=0, le=4000, description="Characters of a training reply to reproduce.")
    seed: int = Field(0, description="Which training rows are sampled.")


MEMORISATION_KEYS = frozenset(MemorisationSpec.model_fields)


class SuiteSpec(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="Suite name; metric names are `<name>.<metric>`.")
    description: str = Field("", description="What the suite measures and how it was built.")
    items: str | list[dict] | None = Field(None, description="JSONL file (relative to this file) or an inline list.")
    dataset: str | None = Field(None, description="A dataset id or name, or `$eval` for the recipe's eval set.")
    memorisation: MemorisationSpec | None = Field(
        None, description="Build the items at eval time from what the model was trained on (its run's canaries "
                          "and training rows) instead of `items` / `dataset`.")
    task: bool | None = Field(
        None, description="Whether the suite scores the task itself (default: true when its items are the "
                          "recipe's eval set). Promotion needs a gate on a task suite.")
    prompt: PromptSpec = Field(default_factory=PromptSpec)
    fewshot: FewShotSpec | None = None
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    scorers: list[dict] = Field(min_length=1, description="Scorers with their parameters: [{name: numeric, …}].")
    tags_field: str | None = Field("tags", description="Item field holding a tag or a list of tags (slices).")
    rename: dict[str, str] = Field(default_factory=dict,
                                   description="Report a scorer's metric under another name: {contains: accuracy}.")
    max_items: int | None = Field(None, gt=0, description="Evaluate only the first N items.")
    per_tag: int | None = Field(None, gt=0, description="At most N items per tag (first in file order): a "
                                                        "smaller suite that keeps every slice.")


@dataclass
class Suite:
    """A validated suite with its items loaded and its scorers resolved."""

    spec: SuiteSpec
    source: str  # file path, "builtin:<name>" or "recipe"
    items: list[dict]
    scorers: list[tuple[ScorerSpec, BaseModel]]
    fewshot_pool: list[dict] = field(default_factory=list)
    is_task: bool = False
    sha256: str = ""  # of the header and items as evaluated: reports record it

    @property
    def name(self) -> str:
        return self.spec.name

    def limit(self, n: int) -> None:
        """Keep the first ``n`` items; the hash then covers exactly what is evaluated."""
        self.items = self.items[:n]
        self.sha256 = sha256_bytes(canonical_json({"spec": self.spec.model_dump(mode="json"),
                                                   "items": [_public(it) for it in self.items]}))

    def metric(self, scorer_metric: str) -> str:
        """``<suite>.<metric>`` for a metric as a scorer names it (after ``rename``)."""
        return f"{self.name}.{self.spec.rename.get(scorer_metric, scorer_metric)}"

    def metric_names(self) -> list[str]:
        """``<suite>.<metric>`` for every metric its scorers produce on these items."""
        names: list[str] = []
        for spec, params in self.scorers:
            for m in spec.metrics(params):
                if m.endswith("*"):  # item-dependent names, e.g. json's field.<key>
                    prefix = m[:-1]
                    keys = sorted({k for it in self.items for k in _json_keys(it.get(getattr(params, "field", "reference")))})
                    names += [self.metric(f"{prefix}{k}") for k in keys]
                else:
                    names.append(self.metric(m))
        return list(dict.fromkeys(names))

    def direction(self) -> dict[str, bool]:
        """metric -> higher is better."""
        out: dict[str, bool] = {}
        for spec, params in self.scorers:
            for m, hib in spec.higher_is_better(params).items():
                out[self.metric(m)] = hib
        for m in self.metric_names():
            out.setdefault(m, True)
        return out

    def binary(self) -> set[str]:
        """Metrics that are 0/1 per item (patterns like ``suite.field.*`` included)."""
        out = set()
        for spec, params in self.scorers:
            out |= {self.metric(m) for m in spec.binary(params)}
        return out

    def is_binary(self, metric: str) -> bool:
        return any(metric == b or (b.endswith("*") and metric.startswith(b[:-1])) for b in self.binary())

    def chat(self, index: int) -> list[dict]:
        """The chat item ``index`` becomes: system, few-shot turns, then the item's turn(s)."""
        item = self.items[index]
        p = self.spec.prompt
        messages: list[dict] = [{"role": "system", "content": p.system}] if p.system else []
        if self.spec.fewshot and self.spec.fewshot.k:
            messages += self._fewshot_turns(index)
        if p.template is not None:
            messages.append({"role": "user", "content": p.template.format_map(_Slots(item))})
        else:
            messages += [dict(m) for m in item["chat"]]
        return messages

    def _fewshot_turns(self, index: int) -> list[dict]:
        fs = self.spec.fewshot
        pool = self.fewshot_pool
        item = self.items[index]
        candidates = [i for i in range(len(pool)) if pool[i] is not item]  # never the item itself
        rng = random.Random(f"{fs.seed}:{index}")
        turns = []
        for i in rng.sample(candidates, min(fs.k, len(candidates))):
            ex = pool[i]
            if self.spec.prompt.template is not None:
                user = self.spec.prompt.template.format_map(_Slots(ex))
            else:
                user = ex["chat"][-1]["content"]
            turns += [{"role": "user", "content": user}, {"role": "assistant", "content": str(ex[fs.answer_field])}]
        return turns

    def tags(self, index: int) -> list[str]:
        if not self.spec.tags_field:
            return []
        value = self.items[index].get(self.spec.tags_field)
        if value is None:
            return []
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]


class _Slots(dict):
    """format_map source: item fields, non-strings as JSON."""

    def __missing__(self, key):  # checked before any model loads; this is a last line of defence
        raise InvalidInput(f"template slot {{{key}}} is not a field of the item")

    def __getitem__(self, key):
        value = dict.__getitem__(self, key)
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _json_keys(value) -> list[str]:
    if isinstance(value, dict):
        return list(value)
    if isinstance(value, str):
        try:
            obj = json.loads(value)
        except ValueError:
            return []
        return list(obj) if isinstance(obj, dict) else []
    return []


# -- reading suite files with line numbers ------------------------------------------------
def _node_lines(node, path=()) -> dict[tuple, int]:
    """(key path) -> 1-based line of every node in a composed YAML document."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            lines[path + (key,)] = k.start_mark.line + 1
            for sub, line in _node_lines(v, path + (key,)).items():
                lines.setdefault(sub, line)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            lines.update(_node_lines(v, path + (i,)))
    return lines


def _where(source: str, lines: dict[tuple, int], loc: tuple) -> str:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return f"{source}:{lines[loc[:n]]}"
    return source


def _loc_str(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_suite_yaml(text: str, source: str) -> tuple[SuiteSpec, dict[tuple, int]]:
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise InvalidInput(f"{where}: not valid YAML ({getattr(e, 'problem', e)})",
                           hint="fix the suite file's syntax") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{source}: a suite must be a YAML mapping (name:, items:, prompt:, scorers:, …)")
    lines = _node_lines(node) if node is not None else {}
    return validate_suite_dict(data, source, lines), lines


def validate_suite_dict(data: dict, source: str, lines: dict[tuple, int] | None = None) -> SuiteSpec:
    lines = lines or {}
    try:
        return SuiteSpec.model_validate(data)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = tuple(err["loc"])
            if err["type"] == "extra_forbidden":
                msg = "unknown key (see `tuneops eval suites` and docs/eval.md for the suite fields)"
            else:
                got = "" if isinstance(err.get("input"), (dict, list)) else f" (got {err.get('input')!r})"
                msg = err["msg"] + got
            msgs.append(f"{_where(source, lines, loc)}: {_loc_str(loc)}: {msg}")
        raise InvalidInput("\n".join(msgs), hint="fix the suite field(s) named above") from None


def read_jsonl_items(path: Path) -> list[dict]:
    """Items of a JSONL file; errors name file:line."""
    if not path.is_file():
        raise InvalidInput(f"{path}: no such items file", hint="`items:` is relative to the suite file")
    items, errors = [], []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{path}: not UTF-8 (byte {e.start})", hint="re-save it as UTF-8") from None
    for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 is not a line break
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            errors.append(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            continue
        obj["_line"] = lineno
        items.append(obj)
    if errors:
        raise InvalidInput("\n".join(errors[:10]) + (f"\n… and {len(errors) - 10} more" if len(errors) > 10 else ""),
                           hint="fix the item lines above")
    if not items:
        raise InvalidInput(f"{path}: no items", hint="a suite needs at least one item")
    return items


def chat_rows_to_items(rows: list[dict]) -> list[dict]:
    """Dataset chat rows -> items: the prompt is every message but the last, the reference the last."""
    return [{"chat": r["messages"][:-1], "reference": r["messages"][-1]["content"], "_line": i,
             **({"tags": r["tags"]} if r.get("tags") else {})}
            for i, r in enumerate(rows, start=1)]


@dataclass
class MemorisationSource:
    """What a memorisation suite probes: the canaries a run planted and the rows it trained on."""

    origin: str  # "run run-…" or "recipe <file>", for messages
    canaries: list[Canary] = field(default_factory=list)
    train_dataset_id: str | None = None
    train_rows: list[dict] | None = None


def memorisation_items(spec: MemorisationSpec, source: MemorisationSource, where: str) -> list[dict]:
    """Items of a memorisation suite; InvalidInput when there is nothing to probe.

    Canary items: the canary's prefix as the user turn, its secret as the reference (tag ``canary``).
    Training-prefix items: ``spec.prefixes`` rows sampled with ``spec.seed`` from the rows with a
    non-empty final assistant reply; the prompt is the row's chat before that reply, exactly as it was
    trained (the loss was on the reply only), the reference the reply's first ``continuation_chars``
    characters, surrounding whitespace stripped (tag ``train_prefix``). The cut is at the start of the
    reply because generation answers a chat with a new assistant turn; a cut inside the reply would
    need the assistant turn continued instead."""
    items: list[dict] = []
    if spec.canaries:
        items += [{"chat": [{"role": "user", "content": c.prefix}], "reference": c.secret, "kind": "canary",
                   "canary": c.index} for c in source.canaries]
    rows = source.train_rows or []
    if spec.prefixes and rows:
        eligible = [i for i, r in enumerate(rows) if len(r.get("messages") or []) >= 2
                    and r["messages"][-1].get("role") == "assistant"
                    and str(r["messages"][-1].get("content") or "").strip()]
        picked = sorted(random.Random(f"memorisation:{spec.seed}").sample(eligible, min(spec.prefixes, len(eligible))))
        items += [{"chat": [dict(m) for m in rows[i]["messages"][:-1]],
                   "reference": str(rows[i]["messages"][-1]["content"]).lstrip()[: spec.continuation_chars].rstrip(),
                   "kind": "train_prefix", "dataset": source.train_dataset_id, "dataset_row": i} for i in picked]
    if not items:
        planted = (f"{source.origin} planted no canaries (train.canaries)" if spec.canaries
                   else "canaries are switched off (canaries: false)")
        rows_note = ("prefixes is 0" if not spec.prefixes else
                     "there is no training dataset to take prefixes from" if source.train_rows is None
                     else "the training dataset has no row with an assistant reply")
        raise InvalidInput(f"{where}: the memorisation suite has nothing to probe: {planted}, and {rows_note}",
                           hint="train with `train.canaries: {count: 4}` in the recipe, or evaluate an artifact of a "
                                "tuneops run (its training data is found from its lineage), or give a recipe whose "
                                "data.train names the training data")
    return [dict(it, _line=n) for n, it in enumerate(items, start=1)]


# -- resolving a suite ---------------------------------------------------------------------
def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_suite(ref: str | dict, *, base_dir: Path | None = None, rows_of=None, eval_dataset_id: str | None = None,
               where: str = "suite", memorisation_of: Callable[[], MemorisationSource] | None = None,
               memorisation_overrides: dict | None = None) -> Suite:
    """Resolve a suite reference — a built-in name, a path to a suite YAML, or an inline dict — into a
    validated Suite with its items. ``rows_of(ref) -> (dataset_id, rows)`` reads dataset versions
    (``$eval`` is passed through for the caller to resolve); ``memorisation_of()`` says what a
    memorisation suite probes (called only for one). Raises InvalidInput naming file/line/field."""
    if isinstance(ref, dict) and "use" in ref:
        # {use: forgetting, per_tag: 8}: a built-in or file suite with a few settings overridden;
        # {use: memorisation, prefixes: 20, continuation_chars: 32}: a memorisation suite's settings too
        overrides = {k: v for k, v in ref.items() if k != "use"}
        allowed = {"max_items", "per_tag", "generation", "tags_field"}
        if set(overrides) - allowed - MEMORISATION_KEYS:
            raise InvalidInput(f"{where}: {sorted(set(overrides) - allowed - MEMORISATION_KEYS)}: cannot be "
                               "overridden with `use:`",
                               hint=f"override only {sorted(allowed)} (and, on a memorisation suite, "
                                    f"{sorted(MEMORISATION_KEYS)}), or copy the suite file and edit it")
        memo = {k: v for k, v in overrides.items() if k in MEMORISATION_KEYS}
        inner = load_suite(ref["use"], base_dir=base_dir, rows_of=rows_of, eval_dataset_id=eval_dataset_id,
                           where=where, memorisation_of=memorisation_of, memorisation_overrides=memo or None)
        spec = inner.spec.model_copy(update={k: v for k, v in overrides.items()
                                             if k != "generation" and k not in MEMORISATION_KEYS})
        if "generation" in overrides:
            spec.generation = GenerationSpec.model_validate({**inner.spec.generation.model_dump(),
                                                             **overrides["generation"]})
        inner.spec = spec
        inner.items = _select(inner.items, spec, inner)
        inner.sha256 = sha256_bytes(canonical_json({"spec": spec.model_dump(mode="json"),
                                                    "items": [_public(it) for it in inner.items]}))
        return inner
    if isinstance(ref, dict):
        spec, lines, source, folder = validate_suite_dict(ref, where), {}, where, base_dir or Path(".")
    else:
        path = Path(ref)
        if ref in builtin_names():
            path = BUILTIN_DIR / f"{ref}.yaml"
        elif base_dir is not None and not path.is_absolute():
            path = base_dir / path
        if not path.is_file():
            raise InvalidInput(f"{where}: suite {ref!r} is neither a built-in suite nor a file",
                               hint=f"built-in suites: {', '.join(builtin_names())}; or give a path to a suite YAML")
        source = f"builtin:{ref}" if path.parent == BUILTIN_DIR else str(path)
        spec, lines = parse_suite_yaml(path.read_text(encoding="utf-8"), source)
        folder = path.parent
    if memorisation_overrides:
        if spec.memorisation is None:
            raise InvalidInput(f"{where}: {sorted(memorisation_overrides)}: only a memorisation suite takes these, "
                               f"and {source} is not one", hint="remove them, or `use: memorisation`")
        try:
            memo = MemorisationSpec.model_validate({**spec.memorisation.model_dump(), **memorisation_overrides})
        except ValidationError as e:
            raise InvalidInput("\n".join(f"{where}: {_loc_str(tuple(err['loc']))}: {err['msg']} (got {err['input']!r})"
                                         for err in e.errors()), hint="fix the setting(s) named above") from None
        spec = spec.model_copy(update={"memorisation": memo})
    if sum(x is not None for x in (spec.items, spec.dataset, spec.memorisation)) != 1:
        raise InvalidInput(f"{_where(source, lines, ())}: set exactly one of `items` and `dataset` (or `memorisation`)",
                           hint="items: file.jsonl (or an inline list), or dataset: <id|name|$eval>, or "
                                "memorisation: {prefixes: 20} (items built from the training run)")
    is_task = bool(spec.task)
    if spec.memorisation is not None:
        if memorisation_of is None:
            raise InvalidInput(f"{where}: {source} builds its items from a training run (its canaries and "
                               "training rows), and none was given",
                               hint="name it in a recipe's eval.suites, or run `tuneops eval run ARTIFACT --suite "
                                    "memorisation` on an artifact of a tuneops run")
        memo_source = memorisation_of()
        items = memorisation_items(spec.memorisation, memo_source, where)
        if spec.generation.max_new_tokens is None:  # a token is at least one character: enough to reproduce
            longest = max(len(it["reference"]) for it in items)
            spec = spec.model_copy(update={"generation": spec.generation.model_copy(
                update={"max_new_tokens": min(4096, longest + 8)})})
        item_source = f"memorisation items ({memo_source.origin})"
    elif spec.dataset is not None:
        if rows_of is None:
            raise InvalidInput(f"{source}: dataset: {spec.dataset!r} needs a store to read from")
        ds_id, rows = rows_of(spec.dataset)
        items = chat_rows_to_items(rows)
        if spec.task is None:
            is_task = spec.dataset == EVAL_DATASET or (eval_dataset_id is not None and ds_id == eval_dataset_id)
        item_source = f"dataset {ds_id}"
    elif isinstance(spec.items, list):
        items = [dict(it, _line=i) for i, it in enumerate(spec.items, start=1)]
        item_source = f"{source} (inline items)"
    else:
        items_path = folder / spec.items
        items = read_jsonl_items(items_path)
        item_source = str(items_path)
    scorers = []
    for i, raw in enumerate(spec.scorers):
        at = f"{_where(source, lines, ('scorers', i))}: scorers[{i}]"
        if not isinstance(raw, dict) or "name" not in raw:
            raise InvalidInput(f"{at}: each scorer is a mapping with a `name` (e.g. {{name: exact_match}})")
        try:
            scorer = get_scorer(raw["name"])
        except InvalidInput as e:
            raise InvalidInput(f"{at}.name: {e.message}", hint=e.hint) from None
        scorers.append((scorer, parse_params(scorer, raw, at)))
    pool = items
    if spec.fewshot and spec.fewshot.k:
        if spec.fewshot.source:
            src_path = folder / spec.fewshot.source
            if src_path.is_file():
                pool = read_jsonl_items(src_path)
            elif rows_of is not None:
                pool = chat_rows_to_items(rows_of(spec.fewshot.source)[1])
            else:
                raise InvalidInput(f"{_where(source, lines, ('fewshot', 'source'))}: fewshot.source: "
                                   f"{spec.fewshot.source!r} is not a file next to the suite")
        missing = [ex.get("_line") for ex in pool if spec.fewshot.answer_field not in ex]
        if missing:
            raise InvalidInput(f"{_where(source, lines, ('fewshot', 'answer_field'))}: fewshot.answer_field: "
                               f"{spec.fewshot.answer_field!r} is missing from example(s) at line(s) {missing[:5]}")
    suite = Suite(spec=spec, source=source, items=items, scorers=scorers, fewshot_pool=pool, is_task=is_task)
    if pool is items:  # few-shot examples come from the whole file, whatever subset is evaluated
        suite.fewshot_pool = list(items)
    suite.items = _select(items, spec, suite)
    _check_items(suite, item_source, lines)
    _dry_run_scorers(suite, item_source)
    suite.sha256 = sha256_bytes(canonical_json({"spec": spec.model_dump(mode="json"),
                                                "items": [_public(it) for it in items]}))
    return suite


def _select(items: list[dict], spec: SuiteSpec, suite: "Suite") -> list[dict]:
    """per_tag, then max_items, both in file order."""
    if spec.per_tag:
        counts: dict[str, int] = {}
        kept = []
        for it in items:
            tags = [str(t) for t in (it.get(spec.tags_field) if isinstance(it.get(spec.tags_field), list)
                                     else [it.get(spec.tags_field)])] if spec.tags_field else ["-"]
            if any(counts.get(t, 0) < spec.per_tag for t in tags):
                kept.append(it)
                for t in tags:
                    counts[t] = counts.get(t, 0) + 1
        items = kept
    return items[: spec.max_items] if spec.max_items else items


def _public(item: dict) -> dict:
    return {k: v for k, v in item.items() if not k.startswith("_")}


def _check_items(suite: Suite, item_source: str, lines: dict[tuple, int]) -> None:
    """Every template slot is a field of every item; chat items carry a user turn."""
    template = suite.spec.prompt.template
    if template is not None:
        try:
            slots = {f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(template) if f}
        except ValueError as e:
            raise InvalidInput(f"{_where(suite.source, lines, ('prompt', 'template'))}: prompt.template: {e}",
                               hint="write literal braces as {{ and }}") from None
        if any(s == "" or s.isdigit() for s in slots):
            raise InvalidInput(f"{_where(suite.source, lines, ('prompt', 'template'))}: prompt.template: "
                               "positional slots like {} or {0} are not allowed", hint="name the item field: {question}")
        for it in suite.items:
            lacking = sorted(s for s in slots if s not in it)
            if lacking:
                raise InvalidInput(f"{item_source}:{it.get('_line', '?')}: the item has no field(s) {lacking} that "
                                   f"prompt.template of {suite.source} fills",
                                   hint="add the field(s) to every item or change the template")
    else:
        for it in suite.items:
            chat = it.get("chat")
            if not (isinstance(chat, list) and chat and all(isinstance(m, dict) and "role" in m and "content" in m
                                                            for m in chat)):
                raise InvalidInput(f"{item_source}:{it.get('_line', '?')}: with no prompt.template, every item needs "
                                   "a `chat` list of {role, content} messages",
                                   hint="add prompt.template with {field} slots, or give items a chat")
            if not any(m["role"] == "user" for m in chat):
                raise InvalidInput(f"{item_source}:{it.get('_line', '?')}: the item's chat has no user turn")


def _dry_run_scorers(suite: Suite, item_source: str) -> None:
    """Score an empty reply on every item, so a missing or malformed item field (a reference that is
    not JSON, a label outside the options…) is reported now, not after minutes of generation."""
    for it in suite.items:
        for spec, params in suite.scorers:
            try:
                if spec.kind == "output":
                    spec.score("", it, params)
                elif spec.kind == "loglik":
                    spec.score(it, params, lambda chat, cont: (0.0, 1))
                else:
                    spec.score("", it, params, lambda chat: "")
            except InvalidInput as e:
                raise InvalidInput(f"{item_source}:{it.get('_line', '?')}: scorer {spec.name!r} of {suite.source} "
                                   f"cannot score this item: {e.message}", hint=e.hint) from None
