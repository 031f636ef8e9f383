"""Paired evaluation: baseline and candidate answer the same items with the same decoding; every
metric gets both means, the difference with a paired-bootstrap CI, McNemar's exact test for 0/1
metrics, and the same per slice (item tag), worst slices first.

Two callers share the scoring and the aggregation here: :func:`run_paired_eval` (generate, then
score) and :func:`tuneops.eval.rescore.rescore_report` (score a stored report's outputs again,
no model): both score with :func:`_score_side` and turn per-item scores into metrics, slices and
report records with :func:`aggregate_suites`."""

import json
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tuneops.eval.generate import generate_chat
from tuneops.eval.loglik import make_loglik
from tuneops.eval.stats import compare
from tuneops.eval.suite import Suite
from tuneops.store import Store
from tuneops.store.ids import canonical_json, content_id, sha256_bytes
from tuneops.store.schema import EvalReportRecord

SIDES = ("base", "candidate")
JUDGE_MAX_NEW_TOKENS = 16
# Scorer kinds scored while a side's model is active, then (under the base) by the judge.
SIDE_KINDS, JUDGE_KINDS = frozenset({"output", "loglik"}), frozenset({"judge"})


def make_judge(model, tokenizer, max_new_tokens: int = JUDGE_MAX_NEW_TOKENS) -> Callable[[list[dict]], str]:
    """``judge(chat) -> reply``: what llm_judge scorers call. The model answers one chat at a time
    (batch 1, no padding), greedy; the caller decides which weights are active (eval: the base)."""

    def judge(chat: list[dict]) -> str:
        return generate_chat(model, tokenizer, [chat], max_new_tokens=max_new_tokens, batch_size=1)[0]["text"]

    return judge


def _score_side(suite: Suite, outputs: list[str] | None, kinds: set[str] | frozenset[str], loglik=None, judge=None,
                stored: Callable[[int, object, object], dict[str, float]] | None = None) -> list[dict]:
    """Per-item scores of one side from the scorers of the given kinds (metric names carry the suite).

    ``outputs`` are the side's reply texts (None when the suite generated nothing). With ``stored``,
    loglik and judge scorers are not run: ``stored(index, spec, params)`` gives their (suite-prefixed)
    scores from a stored report instead, so re-scoring never needs a model."""
    scores = []
    for i, item in enumerate(suite.items):
        merged: dict[str, float] = {}
        for spec, params in suite.scorers:
            if spec.kind not in kinds:
                continue
            if spec.kind != "output" and stored is not None:
                merged.update(stored(i, spec, params))
                continue
            if spec.kind == "output":
                got = spec.score(outputs[i], item, params)
            elif spec.kind == "loglik":
                got = spec.score(item, params, loglik)
            else:
                got = spec.score(outputs[i], item, params, judge)
            merged.update({suite.metric(k): float(v) for k, v in got.items()})
        scores.append(merged)
    return scores


def _paired_values(base_scores: list[dict], cand_scores: list[dict], metric: str,
                   subset: list[int] | None = None) -> tuple[list[float], list[float]]:
    idx = range(len(base_scores)) if subset is None else subset
    pairs = [(base_scores[i][metric], cand_scores[i][metric]) for i in idx
             if metric in base_scores[i] and metric in cand_scores[i]]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@dataclass
class ScoredSuite:
    """One suite's outputs and per-item scores on both sides: everything its metrics, slices and
    report records are computed from."""

    suite: Suite
    chats: list[list[dict]]
    tags: list[list[str]]
    outputs: dict[str, list[str] | None]  # side -> reply texts; None: a loglik-only suite generated nothing
    scores: dict[str, list[dict]]  # side -> per-item {<suite>.<metric>: value}
    decoding: dict


def scorer_records(suite: Suite) -> list[dict]:
    """The suite's scorers with every parameter (defaults filled in), as a report records them."""
    return [{"name": sp.name, **p.model_dump(mode="json", by_alias=True)} for sp, p in suite.scorers]


def aggregate_suites(scored: list[ScoredSuite]) -> dict:
    """Metrics (both means, Δ with its paired CI, McNemar for 0/1 metrics), slices (worst first),
    per-item records and per-suite records from scored suites: the result both a paired eval and a
    re-score store as a report."""
    metrics, slices, items_out, per_item, directions, binary, suites_out = {}, {}, {}, {}, {}, set(), []
    task_metrics: set[str] = set()
    for part in scored:
        suite, scores, outputs = part.suite, part.scores, part.outputs
        present = list(dict.fromkeys(k for sc in scores["base"] for k in sc))
        directions.update(suite.direction())
        binary |= {m for m in present if suite.is_binary(m)}
        if suite.is_task:
            task_metrics |= set(present)
        tags = sorted({t for item_tags in part.tags for t in item_tags})
        for m in present:
            b, c = _paired_values(scores["base"], scores["candidate"], m)
            if not b:
                continue
            per_item[m] = (b, c)
            metrics[m] = compare(b, c, binary=m in binary) | {"higher_is_better": directions.get(m, True)}
            rows = []
            for tag in tags:
                subset = [i for i in range(len(suite.items)) if tag in part.tags[i]]
                sb, sc = _paired_values(scores["base"], scores["candidate"], m, subset)
                if sb:
                    rows.append({"tag": tag} | compare(sb, sc, binary=m in binary))
            if rows:
                sign = 1 if directions.get(m, True) else -1
                slices[m] = sorted(rows, key=lambda r: sign * r["delta"])  # worst slice first
        items_out[suite.name] = [
            {"index": i, "line": it.get("_line"), "tags": part.tags[i],
             "item": {k: v for k, v in it.items() if not k.startswith("_")}, "chat": part.chats[i],
             "base": outputs["base"][i] if outputs["base"] is not None else None,
             "candidate": outputs["candidate"][i] if outputs["candidate"] is not None else None,
             "base_scores": scores["base"][i], "candidate_scores": scores["candidate"][i]}
            for i, it in enumerate(suite.items)]
        suites_out.append({"name": suite.name, "source": suite.source, "sha256": suite.sha256, "task": suite.is_task,
                           "items": len(suite.items), "decoding": part.decoding, "scorers": scorer_records(suite),
                           "rename": dict(suite.spec.rename)})
    return {"metrics": metrics, "slices": slices, "items": items_out, "per_item": per_item,
            "task_metrics": sorted(task_metrics), "suites": suites_out}


def run_paired_eval(model, tokenizer, *, suites: list[Suite], sides: dict[str, Callable[[], AbstractContextManager]],
                    batch_size: int, default_max_new_tokens: int,
                    on_progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Run every suite on both sides (``sides["base"]()`` / ``sides["candidate"]()`` switch the model)
    and compare per item. Returns metrics, slices, per-item records and what is needed to re-score."""
    needs_generation = {s.name: any(sp.kind != "loglik" for sp, _ in s.scorers) for s in suites}
    total = 2 * sum(len(s.items) for s in suites if needs_generation[s.name]) or 1
    done = 0
    scored: list[ScoredSuite] = []
    loglik = make_loglik(model, tokenizer)
    for suite in suites:
        chats = [suite.chat(i) for i in range(len(suite.items))]
        gen = suite.spec.generation
        decoding = {"max_new_tokens": gen.max_new_tokens or default_max_new_tokens, "stop": gen.stop,
                    "temperature": gen.temperature, "batch_size": batch_size}
        outputs, scores = {}, {}
        for side in SIDES:
            def _tick(n, side=side, suite=suite):
                nonlocal done
                done += n
                if on_progress:
                    on_progress(f"{suite.name} · {side}", done, total)

            with sides[side]():
                generated = generate_chat(
                    model, tokenizer, chats, max_new_tokens=decoding["max_new_tokens"], batch_size=batch_size,
                    temperature=gen.temperature, seed=0 if gen.temperature > 0 else None, stop=gen.stop or None,
                    on_batch=_tick) if needs_generation[suite.name] else None
                outputs[side] = [g["text"] for g in generated] if generated is not None else None
                scores[side] = _score_side(suite, outputs[side], SIDE_KINDS, loglik=loglik)
        if any(sp.kind == "judge" for sp, _ in suite.scorers):
            with sides["base"]():  # the judge is the base model, for both sides' replies
                judge = make_judge(model, tokenizer)
                for side in SIDES:
                    for merged, extra in zip(scores[side], _score_side(suite, outputs[side], JUDGE_KINDS, judge=judge)):
                        merged.update(extra)
        scored.append(ScoredSuite(suite=suite, chats=chats, tags=[suite.tags(i) for i in range(len(suite.items))],
                                  outputs=outputs, scores=scores, decoding=decoding))
    return aggregate_suites(scored)


def score_model(model, tokenizer, suite: Suite, *, batch_size: int, default_max_new_tokens: int) -> dict[str, float]:
    """One side only: the suite's mean metrics for ``model`` as it is now (no judge scorers). What a
    training callback uses to watch an off-domain suite (early stopping); never a gate."""
    import statistics

    gen = suite.spec.generation
    needs_generation = any(sp.kind == "output" for sp, _ in suite.scorers)
    chats = [suite.chat(i) for i in range(len(suite.items))]
    outputs = None
    if needs_generation:
        outputs = [g["text"] for g in generate_chat(
            model, tokenizer, chats, max_new_tokens=gen.max_new_tokens or default_max_new_tokens,
            batch_size=batch_size, temperature=gen.temperature, seed=0 if gen.temperature > 0 else None,
            stop=gen.stop or None)]
    scores = _score_side(suite, outputs, SIDE_KINDS, loglik=make_loglik(model, tokenizer))
    keys = list(dict.fromkeys(k for sc in scores for k in sc))
    return {k: statistics.fmean(sc[k] for sc in scores if k in sc) for k in keys}


def save_eval_report(store: Store, *, artifact_id: str, baseline_id: str, suites: list[str], result: dict,
                     verdicts: list[dict], extra: dict | None = None) -> EvalReportRecord:
    """Store the full report (per-item outputs) as a blob and its summary as a record.

    A report passes only if every gate passed AND at least one gate judged a metric computed on
    the task's own eval data: a report that only checked forgetting, or checked nothing, never
    passes, so it can never carry an artifact into production. ``extra`` adds top-level keys to the
    full report (a re-score records ``rescored_from``); they are part of its content, so of its id."""
    passed, verdict = report_verdict(verdicts)
    full = {"artifact": artifact_id, "baseline": baseline_id, "suites": result.get("suites", suites),
            "metrics": result["metrics"], "slices": result.get("slices", {}), "gates": verdicts, "passed": passed,
            "verdict": verdict, "items": result["items"]} | (extra or {})
    blob = store.blobs.put_bytes(canonical_json(full))
    report_id = content_id("ev", sha256_bytes(blob.encode()))
    rec = EvalReportRecord(id=report_id, artifact_id=artifact_id, baseline=baseline_id, suites=list(suites),
                           metrics=result["metrics"], gates=verdicts, passed=passed, report_blob=blob)
    audit = {"rescored_from": extra["rescored_from"]} if extra and "rescored_from" in extra else {}
    rec, _ = store.insert_once(rec, on_create=lambda s: store.audit(s, "eval.report", "eval", report_id,
                                                                    artifact=artifact_id, passed=passed,
                                                                    verdict=verdict, **audit))
    return rec


def report_verdict(verdicts: list[dict]) -> tuple[bool, str]:
    """(passed, why) for a list of gate verdicts."""
    if not verdicts:
        return False, "no gates: nothing was required of the candidate"
    if not any(v.get("task") for v in verdicts):
        return False, "no gate judges a metric of the task's own eval data (only e.g. forgetting was gated)"
    failed = [v["gate"] for v in verdicts if not v["passed"]]
    if failed:
        return False, "failed: " + "; ".join(failed)
    return True, "all gates passed"


def load_full_report(store: Store, rec: EvalReportRecord) -> dict:
    return json.loads(store.blobs.get_bytes(rec.report_blob))


def plot_comparison(metrics: dict[str, dict], path: Path, title: str) -> Path:
    """Grouped bars, base vs candidate, with the 95 % CI of the delta drawn on the candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # 0-1 metrics share one chart; others (bleu 0-100, nll) would flatten it, so they are left to the tables
    names = [k for k in metrics if ".field." not in k and 0 <= metrics[k]["base"] <= 1 and 0 <= metrics[k]["candidate"] <= 1]
    x = np.arange(len(names))
    base = [metrics[k]["base"] for k in names]
    cand = [metrics[k]["candidate"] for k in names]
    err = np.array([[metrics[k]["delta"] - metrics[k]["ci95_delta"][0],
                     metrics[k]["ci95_delta"][1] - metrics[k]["delta"]] for k in names]).T
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names)), 4))
    ax.bar(x - 0.2, base, 0.4, label="base", color="#9aa5b1")
    ax.bar(x + 0.2, cand, 0.4, yerr=err, capsize=4, label="candidate (95% CI of Δ)", color="#2f7ed8")
    ax.set_xticks(x, [n.replace(".", "\n", 1) for n in names], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_slices(slices: list[dict], path: Path, title: str) -> Path:
    """Per-slice difference with its 95 % CI, worst first: where the candidate lost or won."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = slices[:20]
    y = np.arange(len(rows))
    d = [r["delta"] for r in rows]
    err = np.array([[r["delta"] - r["ci95_delta"][0], r["ci95_delta"][1] - r["delta"]] for r in rows]).T
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.35 * len(rows) + 1)))
    ax.barh(y, d, xerr=err, capsize=3, color=["#d9534f" if v < 0 else "#2f7ed8" for v in d])
    ax.set_yticks(y, [f"{r['tag']} (n={r['n']})" for r in rows], fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("candidate − baseline")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
