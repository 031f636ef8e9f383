"""Re-score a stored eval report without generating anything.

A stored report (:func:`tuneops.eval.paired.load_full_report`) holds every item, the chat sent,
both sides' outputs, every per-item score, the decoding settings and each suite's scorers.
:func:`rescore_report` scores those outputs again — with today's scorer code, or with the scorers
and parameters of replacement suite definitions — recomputes metrics, paired CIs, McNemar,
slices and gate verdicts (the original report's gates, or the ones given), and stores a **new**
report that records ``rescored_from: <original id>``. The original is a content record and is
never touched. No model is loaded.

What can be re-scored:

* **Output scorers** (exact_match, contains, json, refusal, …): always, from the stored outputs.
* **loglik and judge scorers** (choice_loglik, nll, llm_judge) need a model. If such a scorer is
  exactly as in the report (same name and parameters), its stored per-item scores are **kept as
  they were** (recorded under ``rescore.kept``); if a replacement suite adds one or changes its
  parameters, the re-score is refused with a message saying so.
* **A replacement suite must score the same items**: same item list (compared by the sha256 of
  its items), the same chats (prompt, system, few-shot) and the same decoding; stored outputs
  answer those items and cannot be re-used for others. A replacement whose first N items are the
  report's N items is cut to N, as ``eval.max_items`` / ``--max-items`` cut the original. Whether a
  suite is the task's is taken from the original report (the items are the same).

Re-scoring the same report with the same suites and gates gives the same content, hence the same
report id: it is stored once.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

import tuneops
from tuneops.errors import InvalidInput, TuneopsError
from tuneops.eval.gates import check_gates
from tuneops.eval.paired import (
    JUDGE_KINDS, SIDE_KINDS, SIDES, ScoredSuite, _score_side, aggregate_suites, load_full_report, save_eval_report,
)
from tuneops.eval.scorers import get_scorer, parse_params
from tuneops.eval.suite import BUILTIN_DIR, EVAL_DATASET, Suite, SuiteSpec, load_suite, parse_suite_yaml
from tuneops.store import Store
from tuneops.store.ids import canonical_json, sha256_bytes
from tuneops.store.schema import EvalReportRecord

MODEL_KINDS = {"loglik": "log-likelihoods from the model", "judge": "a judge model"}


def rescore_report(store: Store, report_id: str, *, suites: list[str | dict] | None = None,
                   gates: list | None = None) -> EvalReportRecord:
    """Score the stored outputs of report ``report_id`` again and store the result as a new report.

    ``suites``: replacement suite definitions (built-in name, YAML path or inline mapping, as in a
    recipe) for suites of the report with the same name; the others are re-scored with their
    stored scorers under today's code. ``gates``: gates to apply (``Gate`` objects, expression
    strings or ``{expr, ci}`` mappings); default: the original report's gates. Raises InvalidInput
    (naming the suite) when a replacement scores other items or needs a model."""
    original = store.get_eval_report(report_id)
    full = load_full_report(store, original)
    stored = _stored_suites(full, original.id)
    replacements = _load_replacements(store, suites or [], stored, full, original.id)
    scored, kept = [], {}
    for name, record in stored.items():
        rows = full["items"].get(name)
        if rows is None:
            raise InvalidInput(f"{original.id}: suite {name!r} has no stored items, so it cannot be re-scored")
        suite = replacements.get(name) or _stored_suite(record, rows, original.id)
        if name in replacements:
            _check_same_items(suite, record, rows, original.id)
        part, kept_here = _rescore_suite(suite, record, rows, original.id, own_tags=name in replacements)
        scored.append(part)
        if kept_here:
            kept[name] = kept_here
    result = aggregate_suites(scored)
    verdicts = check_gates(_gates(gates, full, original.id), result["per_item"], set(result["task_metrics"]))
    extra = {"rescored_from": original.id,
             "rescore": {"replaced_suites": sorted(replacements), "kept": kept, "tuneops": tuneops.__version__}}
    return save_eval_report(store, artifact_id=original.artifact_id, baseline_id=original.baseline,
                            suites=list(stored), result=result, verdicts=verdicts, extra=extra)


# -- the stored report -------------------------------------------------------------------------
def _stored_suites(full: dict, report_id: str) -> dict[str, dict]:
    records = full.get("suites") or []
    foreign = [s["name"] for s in records if isinstance(s, dict) and s.get("kind") == "lm-eval-harness"]
    if foreign:
        raise InvalidInput(f"{report_id}: suite(s) {foreign} were scored by lm-evaluation-harness, not by tuneops "
                           "scorers, so tuneops cannot re-score them", hint="run `tuneops eval harness` again")
    if not all(isinstance(s, dict) and "scorers" in s for s in records) or not records:
        raise InvalidInput(f"{report_id}: this report does not record its suites' scorers and decoding, so it "
                           "cannot be re-scored", hint="run `tuneops eval run` again to get a report that can")
    return {s["name"]: s for s in records}


def _items_sha256(items: list[dict]) -> str:
    return sha256_bytes(canonical_json(items))


def _stored_rename(record: dict) -> dict[str, str]:
    """The suite's metric renames; reports written before they were recorded take them from the
    suite file the report names (a built-in, or a file that still exists)."""
    if "rename" in record:
        return dict(record["rename"])
    source = str(record.get("source", ""))
    path = BUILTIN_DIR / f"{source.removeprefix('builtin:')}.yaml" if source.startswith("builtin:") else Path(source)
    try:
        if path.is_file():
            return dict(parse_suite_yaml(path.read_text(encoding="utf-8"), str(path))[0].rename)
    except (OSError, TuneopsError):
        pass
    return {}


def _stored_suite(record: dict, rows: list[dict], report_id: str) -> Suite:
    """The suite as the report ran it: its items, scorers (parsed by today's code) and renames."""
    name = record["name"]
    raw = record["scorers"]
    try:
        spec = SuiteSpec.model_validate({"name": name, "items": [r["item"] for r in rows], "scorers": raw,
                                         "rename": _stored_rename(record), "tags_field": None})
    except ValidationError as e:
        raise InvalidInput(f"{report_id}: suite {name!r} as stored no longer validates: {e.errors()[0]['msg']}",
                           hint=f"re-score with --suite giving a current definition of {name!r}") from None
    scorers = []
    for i, sc in enumerate(raw):
        where = f"{report_id}: suite {name!r}: scorers[{i}]"
        try:
            scorer = get_scorer(sc.get("name"))
        except InvalidInput as e:
            raise InvalidInput(f"{where}: {e.message}", hint=f"re-score with --suite giving a current definition "
                                                             f"of {name!r}") from None
        try:
            params = parse_params(scorer, sc, where)
        except InvalidInput as e:
            raise InvalidInput(e.message, hint=f"today's {scorer.name!r} reads its parameters differently; re-score "
                                               f"with --suite giving a current definition of {name!r}") from None
        scorers.append((scorer, params))
    suite = Suite(spec=spec, source=record.get("source", "report"),
                  items=[dict(r["item"], _line=r.get("line")) for r in rows], scorers=scorers,
                  is_task=bool(record.get("task")), sha256=record.get("sha256", ""))
    declared = set(suite.metric_names())
    produced = {k for r in rows for k in (r.get("base_scores") or {})}
    if produced - declared:
        raise InvalidInput(f"{report_id}: suite {name!r}: stored metric(s) {sorted(produced - declared)} are not "
                           f"what its scorers name today ({sorted(declared)}); the report does not record how they "
                           "were renamed", hint=f"re-score with --suite giving the definition of {name!r}")
    return suite


# -- replacement suites ------------------------------------------------------------------------
def _load_replacements(store: Store, refs: list[str | dict], stored: dict[str, dict], full: dict,
                       report_id: str) -> dict[str, Suite]:
    from tuneops.data.ingest import load_rows

    def rows_of(ref: str) -> tuple[str, list[dict]]:
        if ref == EVAL_DATASET:
            return _eval_rows_from_report(stored, full, report_id)
        ds = store.resolve_dataset(ref)
        return ds.id, load_rows(store, ds)

    out: dict[str, Suite] = {}
    for i, ref in enumerate(refs):
        where = f"--suite {ref}" if isinstance(ref, str) else f"suites[{i}]"
        suite = load_suite(ref, rows_of=rows_of, where=where)
        if suite.name not in stored:
            raise InvalidInput(f"{where}: report {report_id} has no suite {suite.name!r} to re-score "
                               f"(it has {sorted(stored)})",
                               hint="a replacement suite keeps the name of the suite it replaces")
        if suite.name in out:
            raise InvalidInput(f"{where}: suite {suite.name!r} is given twice")
        suite.is_task = bool(stored[suite.name].get("task"))
        out[suite.name] = suite
    return out


def _eval_rows_from_report(stored: dict[str, dict], full: dict, report_id: str) -> tuple[str, list[dict]]:
    """``$eval`` in a replacement suite: the chat items of the report's task suite, as dataset rows."""
    chat_suites = [n for n, s in stored.items() if s.get("task")
                   and all({"chat", "reference"} <= set(r["item"]) for r in full["items"].get(n, []))]
    if len(chat_suites) != 1:
        raise InvalidInput(f"`dataset: {EVAL_DATASET}`: report {report_id} has {len(chat_suites)} task suites over "
                           "chat items, so which eval set is meant is unclear",
                           hint="name the dataset (id or name) in the replacement suite instead")
    rows = []
    for r in full["items"][chat_suites[0]]:
        item = r["item"]
        rows.append({"messages": [*item["chat"], {"role": "assistant", "content": item["reference"]}],
                     **{k: v for k, v in item.items() if k not in ("chat", "reference")}})
    return f"{EVAL_DATASET} of {report_id}", rows


def _check_same_items(suite: Suite, record: dict, rows: list[dict], report_id: str) -> None:
    """A replacement suite must ask exactly what the report asked: items, chats and decoding."""
    name = suite.name
    want = [r["item"] for r in rows]

    def public(items):
        return [{k: v for k, v in it.items() if not k.startswith("_")} for it in items]

    got = public(suite.items)
    if len(got) > len(want) and _items_sha256(got[:len(want)]) == _items_sha256(want):
        suite.limit(len(want))  # the original ran its first N items (eval.max_items / --max-items)
        got = public(suite.items)
    if _items_sha256(got) != _items_sha256(want):
        raise InvalidInput(
            f"suite {name!r}: its {len(got)} items (sha256 {_items_sha256(got)[:16]}) are not the {len(want)} items "
            f"report {report_id} scored (sha256 {_items_sha256(want)[:16]}); the stored outputs answer those items "
            "and cannot be re-used for others",
            hint="a re-score may change scorers and their parameters only; run `tuneops eval run` for other items")
    for i, r in enumerate(rows):
        if suite.chat(i) != r["chat"]:
            raise InvalidInput(
                f"suite {name!r}: item {i} (line {r.get('line')}) would be sent a different chat than report "
                f"{report_id} sent (prompt, system message or few-shot changed); the stored outputs answer the old one",
                hint="keep prompt and fewshot as they were; change scorers only")
    stored_dec = record.get("decoding") or {}
    gen = suite.spec.generation
    diffs = []
    if gen.max_new_tokens is not None and gen.max_new_tokens != stored_dec.get("max_new_tokens"):
        diffs.append(f"max_new_tokens {gen.max_new_tokens} vs {stored_dec.get('max_new_tokens')}")
    if list(gen.stop) != list(stored_dec.get("stop") or []):
        diffs.append(f"stop {gen.stop} vs {stored_dec.get('stop') or []}")
    if gen.temperature != stored_dec.get("temperature", gen.temperature):
        diffs.append(f"temperature {gen.temperature} vs {stored_dec.get('temperature')}")
    if diffs:
        raise InvalidInput(f"suite {name!r}: its generation settings differ from those report {report_id}'s outputs "
                           f"were generated with ({'; '.join(diffs)})",
                           hint="keep `generation` as it was; change scorers only")


# -- scoring -----------------------------------------------------------------------------------
def _rescore_suite(suite: Suite, record: dict, rows: list[dict], report_id: str, *,
                   own_tags: bool = False) -> tuple[ScoredSuite, list[str]]:
    """Score the stored outputs with the suite's output scorers; keep the stored scores of
    unchanged loglik/judge scorers (refuse changed ones: they need a model). Slices come from the
    stored tags, or with ``own_tags`` (a replacement suite) from the suite's own ``tags_field``."""
    name = suite.name
    old_rename = _stored_rename(record)
    old_scorers = _parsed_scorers(record)
    output_metrics = {suite.metric(m) for spec, p in suite.scorers if spec.kind == "output" for m in spec.metrics(p)}
    kept = []
    for spec, params in suite.scorers:
        if spec.kind == "output":
            continue
        if (spec.name, params) not in old_scorers:
            raise InvalidInput(
                f"suite {name!r}: scorer {spec.name!r} is a {spec.kind} scorer: it needs {MODEL_KINDS[spec.kind]}, so "
                f"it cannot be re-scored from stored outputs, and report {report_id} has no scores of it with these "
                "parameters",
                hint=f"keep {spec.name!r} exactly as in the report (its stored scores are then kept as they were), "
                     "or run `tuneops eval run` to score it with the model")
        clash = {suite.metric(m) for m in spec.metrics(params)} & output_metrics
        if clash:
            raise InvalidInput(f"suite {name!r}: metric(s) {sorted(clash)} come from both {spec.name!r} (needs a "
                               "model) and an output scorer, so the stored model scores cannot be told apart",
                               hint="rename one of them with the suite's `rename:`")
        kept.append(spec.name)

    def stored_scores(side: str):
        def take(i: int, spec, params) -> dict[str, float]:
            have = rows[i].get(f"{side}_scores") or {}
            out = {}
            for m in spec.metrics(params):
                old = f"{name}.{old_rename.get(m, m)}"
                if old in have:
                    out[suite.metric(m)] = have[old]
            return out
        return take

    outputs = {side: _texts(rows, side) for side in SIDES}
    needs_outputs = any(spec.kind == "output" for spec, _ in suite.scorers)
    scores = {}
    for side in SIDES:
        if needs_outputs and outputs[side] is None:
            raise InvalidInput(f"{report_id}: suite {name!r} stored no {side} outputs (it generated nothing), so "
                               "output scorers cannot score it", hint="run `tuneops eval run` instead")
        scores[side] = _score_side(suite, outputs[side], SIDE_KINDS, stored=stored_scores(side))
        for merged, extra in zip(scores[side], _score_side(suite, outputs[side], JUDGE_KINDS,
                                                           stored=stored_scores(side))):
            merged.update(extra)
    tags = [suite.tags(i) for i in range(len(rows))] if own_tags else [list(r.get("tags") or []) for r in rows]
    part = ScoredSuite(suite=suite, chats=[r["chat"] for r in rows], tags=tags,
                       outputs=outputs, scores=scores, decoding=record.get("decoding") or {})
    return part, kept


def _parsed_scorers(record: dict) -> list[tuple[str, object]]:
    """(name, parameters) of the scorers a report ran, read by today's code (unreadable ones left out)."""
    out = []
    for sc in record["scorers"]:
        try:
            spec = get_scorer(sc.get("name"))
            out.append((spec.name, parse_params(spec, sc, "report")))
        except InvalidInput:
            continue
    return out


def _texts(rows: list[dict], side: str) -> list[str] | None:
    texts = [r.get(side) for r in rows]
    return None if any(t is None for t in texts) else texts


def _gates(gates: list | None, full: dict, report_id: str) -> list:
    from tuneops.train.recipe import Gate

    if gates is None:  # the original report's gates, as it stated them
        raw = [{"expr": g["gate"].removesuffix(" (whole 95% CI)") if g.get("require_ci") else g["gate"],
                "ci": bool(g.get("require_ci"))} for g in full.get("gates") or []]
        where = f"{report_id}: gates"
    else:
        raw, where = list(gates), "gates"
    out = []
    for i, g in enumerate(raw):
        if isinstance(g, Gate):
            out.append(g)
            continue
        try:
            out.append(Gate.model_validate(g))
        except ValidationError as e:
            raise InvalidInput(f"{where}[{i}]: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    return out
