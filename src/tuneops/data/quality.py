"""Quality filters and held-out splits over canonical rows: pure functions, no store access.

Filters return reason codes per row, never silently drop anything:

- ``no_response``: an SFT row without an assistant message, a preference row without chosen/rejected.
- ``empty_response``: an assistant message (or chosen/rejected) that is empty or whitespace only
  (an assistant message that only makes tool calls is not empty).
- ``truncated_response``: the final response stops without a clean ending *and* its length is at
  the generator's cap (``length_cap``, in tokens, words or characters). Both must hold: many good
  answers end without punctuation ("#### 42"), and many long answers are complete, so without a
  known cap nothing is ever called truncated.
- ``too_short`` / ``too_long``: the final response (or, with ``length_scope="row"``, the row's
  text) is outside ``min_/max_chars`` or ``min_/max_words``.
- ``malformed_json``: with ``expect_json``, the final response does not parse as JSON (one
  surrounding Markdown code fence is allowed).

"Final response" is the training target: the last assistant message of an SFT row, and the last
message of ``chosen`` and of ``rejected`` for a preference row.

Splits (:func:`split_rows`) hold out a seeded, deterministic fraction, stratified by a field or a
length bucket, and never put two near-duplicates on different sides: whole clusters move.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from tuneops.data.dedup import DEFAULT_THRESHOLD, MinHashParams, _clusters, exact_digests, row_text
from tuneops.errors import InvalidInput

CODES = ("no_response", "empty_response", "truncated_response", "too_short", "too_long", "malformed_json")
# A response that ends with one of these (after trailing whitespace) ends cleanly; a letter, a
# digit, a comma, a colon or a semicolon does not.
_TERMINAL = set(".!?…。！？)]}\"'`»”’>*_~|")


@dataclass(frozen=True)
class QualityConfig:
    """Which checks run. Every bound is optional; ``None`` switches that check off."""

    min_chars: int | None = None  # final response shorter than this many characters: too_short
    max_chars: int | None = None
    min_words: int | None = None  # ... words (whitespace-separated)
    max_words: int | None = None
    length_scope: str = "response"  # "response" (final response) or "row" (all of the row's text)
    expect_json: bool = False  # the task's answers are JSON: malformed_json when one does not parse
    length_cap: int | None = None  # the generator's cap on a response; enables truncated_response
    length_cap_unit: str = "tokens"  # "tokens" (needs count_tokens), "words" or "chars"
    count_tokens: Callable[[str], int] | None = None  # e.g. lambda s: len(tokenizer(s).input_ids)
    cap_slack: float = 0.02  # "at the cap" means length >= cap * (1 - cap_slack)

    def __post_init__(self):
        if self.length_scope not in ("response", "row"):
            raise InvalidInput(f"length_scope must be 'response' or 'row' (got {self.length_scope!r})")
        if self.length_cap_unit not in ("tokens", "words", "chars"):
            raise InvalidInput(f"length_cap_unit must be 'tokens', 'words' or 'chars' (got {self.length_cap_unit!r})")
        if self.length_cap is not None and self.length_cap_unit == "tokens" and self.count_tokens is None:
            raise InvalidInput("length_cap in tokens needs count_tokens",
                               hint="pass count_tokens=lambda s: len(tokenizer(s).input_ids), or "
                                    "length_cap_unit='words'/'chars'")
        for name in ("min_chars", "max_chars", "min_words", "max_words", "length_cap"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 0):
                raise InvalidInput(f"{name} must be a non-negative integer (got {v!r})")
        if not 0 <= self.cap_slack < 1:
            raise InvalidInput(f"cap_slack must be in [0, 1) (got {self.cap_slack})")
        for unit in ("chars", "words"):
            lo, hi = getattr(self, f"min_{unit}"), getattr(self, f"max_{unit}")
            if lo is not None and hi is not None and lo > hi:  # every row would fail one bound or the other
                raise InvalidInput(f"min_{unit} ({lo}) is above max_{unit} ({hi})")

    def settings(self) -> dict:
        """The checks switched on, as a version's summary records them (defaults left out)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "count_tokens" and value != f.default:
                out[f.name] = value
        if self.length_cap is not None:  # the unit and slack say what the cap means
            out.update(length_cap_unit=self.length_cap_unit, cap_slack=self.cap_slack)
        return out


@dataclass(frozen=True)
class QualityIssue:
    code: str  # one of CODES
    field: str  # where: "messages[3].content", "chosen[0].content", "row"
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class QualityResult:
    kept: list[int]
    rejected: dict[int, list[QualityIssue]]  # row index -> its issues
    counts: dict[str, int]  # code -> rows with that code

    def reasons(self, n_rows: int) -> list[list[str]]:
        """Reason codes per row (empty list: the row passed)."""
        return [sorted({i.code for i in self.rejected.get(r, ())}) for r in range(n_rows)]

    def report(self, examples: int = 5) -> dict:
        return {"kept": len(self.kept), "rejected": len(self.rejected), "counts": self.counts,
                "examples": [{"row": r, "issues": [i.to_dict() for i in issues]}
                             for r, issues in list(self.rejected.items())[:examples]]}


def _text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text") or "" if isinstance(p, Mapping) else str(p) for p in content)
    return str(content)


def _responses(row: Mapping) -> tuple[list[tuple[str, Mapping]], list[tuple[str, str]]] | None:
    """(every assistant turn as (field, message), final responses as (field, text)); None when
    the row has no response at all."""
    if "messages" in row:
        msgs = row["messages"] or []
        turns = [(f"messages[{j}]", m) for j, m in enumerate(msgs)
                 if isinstance(m, Mapping) and m.get("role") == "assistant"]
        if not turns:
            return None
        name, last = turns[-1]
        return turns, [(f"{name}.content", _text(last.get("content")))]
    if "chosen" in row or "rejected" in row:
        turns, finals = [], []
        for key in ("chosen", "rejected"):
            seq = row.get(key)
            if isinstance(seq, str):
                seq = [{"role": "assistant", "content": seq}]
            if not seq:
                return None
            side = [(f"{key}[{j}]", m) for j, m in enumerate(seq) if isinstance(m, Mapping)]
            turns.extend((n, m) for n, m in side if m.get("role", "assistant") == "assistant")
            if side:
                finals.append((f"{side[-1][0]}.content", _text(side[-1][1].get("content"))))
        return (turns, finals) if finals else None
    raise InvalidInput(f"row has neither 'messages' nor 'chosen'/'rejected' (keys: {sorted(row)})")


def ends_cleanly(text: str) -> bool:
    """True when the text ends like a finished answer: terminal punctuation or a closing bracket,
    quote or Markdown mark, and no code fence left open."""
    stripped = text.rstrip()
    if not stripped:
        return True
    if stripped.count("```") % 2:
        return False
    return stripped[-1] in _TERMINAL


def _parse_json(text: str) -> str | None:
    """None when the text is JSON (optionally inside one ``` fence), else the parser's complaint."""
    s = text.strip()
    if s.startswith("```"):
        first_nl = s.find("\n")
        if first_nl < 0 or not s.endswith("```") or len(s) < 6:
            return "unclosed code fence"
        s = s[first_nl + 1:-3].strip()
    try:
        json.loads(s)
    except (json.JSONDecodeError, RecursionError) as e:
        return str(e) if isinstance(e, json.JSONDecodeError) else "nested too deeply"
    return None


def _length(text: str, unit: str, config: QualityConfig) -> int:
    if unit == "chars":
        return len(text)
    if unit == "words":
        return len(text.split())
    return int(config.count_tokens(text))


def check_row(row: Mapping, config: QualityConfig | None = None) -> list[QualityIssue]:
    """Every quality issue of one canonical row (an empty list when it passes)."""
    config = config or QualityConfig()
    if not isinstance(row, Mapping):
        raise InvalidInput(f"quality checks need canonical rows (mappings), got {type(row).__name__}")
    found = _responses(row)
    if found is None:
        return [QualityIssue("no_response", "row", "the row has no assistant response to train on")]
    turns, finals = found
    issues = []
    for name, m in turns:
        if not _text(m.get("content")).strip() and not m.get("tool_calls"):
            issues.append(QualityIssue("empty_response", f"{name}.content", "empty or whitespace-only response"))
    empty = {i.field for i in issues}
    targets = finals if config.length_scope == "response" else [("row", row_text(row))]
    for name, text in targets:
        n_chars, n_words = len(text), len(text.split())
        for value, lo, hi, unit in ((n_chars, config.min_chars, config.max_chars, "characters"),
                                    (n_words, config.min_words, config.max_words, "words")):
            if lo is not None and value < lo and name not in empty:
                issues.append(QualityIssue("too_short", name, f"{value} {unit} < {lo}"))
            if hi is not None and value > hi:
                issues.append(QualityIssue("too_long", name, f"{value} {unit} > {hi}"))
    for name, text in finals:
        if name in empty:
            continue
        if config.length_cap is not None:
            length = _length(text, config.length_cap_unit, config)
            if length >= config.length_cap * (1 - config.cap_slack) and not ends_cleanly(text):
                tail = text.rstrip()[-30:]
                issues.append(QualityIssue("truncated_response", name,
                                           f"{length} {config.length_cap_unit} at the cap of {config.length_cap} and "
                                           f"ends mid-sentence: …{tail!r}"))
        if config.expect_json:
            problem = _parse_json(text)
            if problem is not None:
                issues.append(QualityIssue("malformed_json", name, f"not valid JSON: {problem}"))
    return issues


def filter_rows(rows: Sequence[Mapping], config: QualityConfig | None = None) -> QualityResult:
    """Run :func:`check_row` on every row: the rows that pass, and the issues of those that don't."""
    config = config or QualityConfig()
    kept, rejected, counts = [], {}, Counter()
    for i, row in enumerate(rows):
        issues = check_row(row, config)
        if issues:
            rejected[i] = issues
            counts.update({x.code for x in issues})
        else:
            kept.append(i)
    return QualityResult(kept=kept, rejected=rejected, counts=dict(sorted(counts.items())))


# `tuneops data ingest --quality KEY=VALUE`: the QualityConfig fields a command line can set.
QUALITY_OPTIONS = {
    "min-chars": "min_chars", "max-chars": "max_chars", "min-words": "min_words", "max-words": "max_words",
    "length-scope": "length_scope", "length-cap": "length_cap", "length-cap-unit": "length_cap_unit",
    "cap-slack": "cap_slack",
}


def quality_config_from_options(options: Sequence[str] = (), *, expect_json: bool = False) -> QualityConfig | None:
    """The QualityConfig that ``--quality KEY=VALUE`` options (and ``--expect-json``) ask for; None when
    they ask for no check. A bad option is an InvalidInput naming it and the fix."""
    if not options and not expect_json:
        return None
    keys = ", ".join(QUALITY_OPTIONS)
    values: dict[str, Any] = {}
    for option in options:
        key, sep, value = (part.strip() for part in str(option).partition("="))
        key = key.replace("_", "-")
        where = f"--quality {option!r}"
        if not sep or not key or not value:
            raise InvalidInput(f"{where}: expected KEY=VALUE", hint=f"e.g. --quality min-words=3; keys: {keys}")
        if key == "expect-json":
            raise InvalidInput(f"{where}: JSON answers are asked for with a flag", hint="use --expect-json")
        if key not in QUALITY_OPTIONS:
            raise InvalidInput(f"{where}: unknown quality filter {key!r}", hint=f"use one of {keys}")
        name = QUALITY_OPTIONS[key]
        if name in values:
            raise InvalidInput(f"{where}: {key} is given twice", hint="give each filter once")
        if name == "length_scope":
            if value not in ("response", "row"):
                raise InvalidInput(f"{where}: length-scope is 'response' (the final response) or 'row' (all "
                                   "of the row's text)", hint="e.g. --quality length-scope=row")
            values[name] = value
        elif name == "length_cap_unit":
            if value == "tokens":
                raise InvalidInput(f"{where}: ingest does not know the model's tokenizer, so it cannot count tokens",
                                   hint="give the generator's cap in words or chars (length-cap-unit=words)")
            if value not in ("words", "chars"):
                raise InvalidInput(f"{where}: length-cap-unit is words or chars", hint="e.g. length-cap-unit=words")
            values[name] = value
        elif name == "cap_slack":
            try:
                values[name] = float(value)
            except ValueError:
                values[name] = None
            if values[name] is None or not 0 <= values[name] < 1:
                raise InvalidInput(f"{where}: cap-slack is a fraction in [0, 1)", hint="e.g. cap-slack=0.02")
        else:
            if not value.isdigit():
                raise InvalidInput(f"{where}: {key} must be a whole number >= 0", hint=f"e.g. --quality {key}=3")
            values[name] = int(value)
    if "length_cap" in values and "length_cap_unit" not in values:
        raise InvalidInput("--quality length-cap: say what the cap counts",
                           hint="add --quality length-cap-unit=words (or chars)")
    if "length_cap" not in values and ("length_cap_unit" in values or "cap_slack" in values):
        raise InvalidInput("--quality length-cap-unit / cap-slack only apply with a cap",
                           hint="add --quality length-cap=N (the generator's cap on a response)")
    try:
        return QualityConfig(**values, expect_json=expect_json)
    except InvalidInput as e:  # the bounds' order: name the options, not the fields
        raise InvalidInput(f"--quality: {e.message.replace('_', '-')}",
                           hint="the minimum must not be above the maximum") from None


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------

@dataclass
class Split:
    train: list[int]
    heldout: list[int]
    strata: dict[str, dict[str, int]]  # stratum -> {"rows", "heldout"}
    clusters: int  # groups that were kept together
    seed: int
    heldout_fraction: float
    stratify_by: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict:
        return {"train": len(self.train), "heldout": len(self.heldout), "heldout_fraction": self.heldout_fraction,
                "seed": self.seed, "stratify_by": self.stratify_by, "strata": self.strata, "clusters": self.clusters,
                **self.details}


def _field(row: Mapping, path: str):
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def length_buckets(rows: Sequence[Mapping | str], buckets: int = 4) -> list[str]:
    """Length bucket per row (word-count quantiles of this dataset): "len<=23", ..., "len>180"."""
    counts = np.array([len(row_text(r).split()) for r in rows])
    if counts.size == 0:
        return []
    edges = np.unique(np.quantile(counts, np.linspace(0, 1, buckets + 1)[1:-1], method="lower").astype(int))
    which = np.searchsorted(edges, counts, side="left")
    names = [f"len<={int(e)}" for e in edges] + [f"len>{int(edges[-1])}" if edges.size else "len:all"]
    return [names[w] for w in which]


def split_rows(rows: Sequence[Mapping | str], *, heldout_fraction: float = 0.1, seed: int = 0,
               stratify_by: str | None = None, length_bucket_count: int = 4,
               clusters: Sequence[int] | None = None,
               near_dup_threshold: float | None = DEFAULT_THRESHOLD) -> Split:
    """Hold out ``heldout_fraction`` of the rows, deterministically for a ``seed``.

    ``stratify_by``: None, ``"length"`` (word-count quantile buckets) or a row field (dotted
    path, e.g. ``"meta.category"``); each stratum gives its share (largest remainder). Rows in
    the same cluster (``clusters`` labels, or by default exact/near duplicates at
    ``near_dup_threshold``; ``None`` turns it off) land on the same side, counted in the stratum
    of the cluster's first row. Which clusters are held out depends on their content and the
    seed, not on row order, so adding rows later moves few old ones."""
    n = len(rows)
    if not 0 < heldout_fraction < 1:
        raise InvalidInput(f"heldout_fraction must be in (0, 1) (got {heldout_fraction})")
    if n < 2:
        raise InvalidInput(f"need at least 2 rows to split (got {n})")
    if clusters is not None:
        labels = np.asarray(clusters)
        if labels.shape != (n,):
            raise InvalidInput(f"clusters must have one label per row ({n}), got shape {labels.shape}")
        digests = exact_digests(rows)
    elif near_dup_threshold is not None:
        labels, digests = _clusters(rows, MinHashParams.create(near_dup_threshold))
    else:
        labels, digests = np.arange(n), exact_digests(rows)

    if stratify_by is None:
        strata = ["all"] * n
    elif stratify_by == "length":
        strata = length_buckets(rows, length_bucket_count)
    else:
        strata = []
        for i, r in enumerate(rows):
            if not isinstance(r, Mapping):
                raise InvalidInput(f"row {i} is a string; stratify_by={stratify_by!r} needs rows with that field")
            v = _field(r, stratify_by)
            strata.append("<missing>" if v is None else json.dumps(v, sort_keys=True) if not isinstance(v, str) else v)

    members: dict[Any, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels.tolist()):
        members[lab].append(i)
    by_stratum: dict[str, list[list[int]]] = defaultdict(list)  # a cluster goes with its first row's stratum
    for group in members.values():
        by_stratum[strata[group[0]]].append(group)

    # Largest-remainder shares, so the strata add up to round(fraction * n) (at least 1).
    total = max(1, round(heldout_fraction * n))
    names = sorted(by_stratum)
    sizes = np.array([sum(len(g) for g in by_stratum[s]) for s in names], dtype=float)
    exact = sizes * total / n
    target = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - target), kind="stable")[:total - int(target.sum())]:
        target[k] += 1

    heldout: list[int] = []
    report = {}
    for s, want in zip(names, target.tolist()):
        groups = sorted(by_stratum[s], key=lambda g: _cluster_key(seed, digests, g))
        got = 0
        for g in groups:
            if got + len(g) <= want:
                heldout.extend(g)
                got += len(g)
            if got == want:
                break
        report[s] = {"rows": sum(len(g) for g in by_stratum[s]), "heldout": got}
    held = set(heldout)
    return Split(train=[i for i in range(n) if i not in held], heldout=sorted(held), strata=report,
                 clusters=len(members), seed=seed, heldout_fraction=heldout_fraction, stratify_by=stratify_by,
                 details={"largest_cluster": max(len(g) for g in members.values())})


def _cluster_key(seed: int, digests: list[bytes], group: list[int]) -> bytes:
    # Content, not position: the same cluster sorts the same wherever it sits in the dataset.
    return hashlib.sha256(seed.to_bytes(8, "little", signed=True) + min(digests[i] for i in group)).digest()
