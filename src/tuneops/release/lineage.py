"""Lineage both ways, and the base-compatibility check every adapter load goes through.

Forward (:func:`artifact_lineage`): from an artifact to what made it — base (id, name, source,
licence, chat-template hash), datasets by role (train, eval, replay; sources and licences counted
from their manifests), recipe (hash, name, objective, method), run (state, steps, metrics), eval
reports (verdicts and the gated metrics), aliases and every alias move that touched it, exports,
signature status, taint and deprecation.

Reverse (:func:`reverse_lineage`): from a dataset (id or name), a base (id or name), a run or an
artifact to every artifact derived from it — directly (trained on, replayed, evaluated on, adapter of,
produced by the run, a checkpoint of it, distilled from it as a teacher, scored by it as a reward
model) and through teachers and reward models (a student distilled from a teacher that learned from
a row set learned from that row set too) — with the aliases pointing at each. That answers "which
served adapters learned from this row set".

Everything is read from the store; nothing here loads a model.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import datetime
from typing import Any

import yaml
from sqlalchemy import or_, select

from tuneops.errors import InvalidInput, NotFound, TuneopsError
from tuneops.store import Store
from tuneops.store.ids import canonical_json
from tuneops.store.schema import (AliasMove, AliasRecord, ArtifactRecord, BaseModelRecord, DatasetName, DatasetRecord,
                                  EvalReportRecord, ExportRecord, RunEvent, RunRecord, TrustedKey)

# Roles a dataset plays in an artifact's lineage; the first two are what the model learned from.
LEARNED_ROLES = ("train", "replay")
ROLE_LABELS = {"train": "trained on", "replay": "replayed (forgetting control)", "eval": "evaluated on (held out)",
               "other": "named in lineage"}
RELATION_LABELS = {**ROLE_LABELS, "base": "adapter of this base", "teacher_base": "distilled from this base (teacher)",
                   "run_output": "produced by this run", "checkpoint": "checkpoint of this run",
                   "teacher": "distilled from it (teacher)", "reward": "trained against it (reward model)"}
REF_HINT = ("pass a dataset id or name (`tuneops data list`), a base id or name (`tuneops models list`), a run id "
            "(`tuneops runs list`), or an artifact id or alias (`tuneops registry list`)")


class IncompatibleBase(InvalidInput):
    """An adapter would be loaded on a base (or prompted with a chat template) other than the one it was
    trained on: refused, naming both."""

    error_code = "incompatible_base"


def when(dt: datetime | None) -> str | None:
    """A stored timestamp as text (UTC, to the second): stable, so cards and diffs stay deterministic."""
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt is not None else None


def short(digest: str | None, n: int = 12) -> str:
    return digest[:n] if digest else "—"


# -- refs -------------------------------------------------------------------------------------
def resolve_artifact_ref(store: Store, ref: str) -> ArtifactRecord:
    """An artifact id (``ad-…``), an alias (``name@stage``; a bare name means @production) or a run id
    (``run-…``, its artifact). NotFound / InvalidInput name the fix."""
    from tuneops.release.registry import ALIAS_RE, resolve_alias

    ref = (ref or "").strip()
    if ref.startswith("ad-"):
        return store.get_artifact(ref)
    if ref.startswith("run-"):
        run = store.get_run(ref)
        if not run.artifact_id:
            raise NotFound(f"run {ref} registered no artifact (it is {run.state})",
                           hint=f"see `tuneops runs show {ref}`; `tuneops runs checkpoints {ref} --register STEP` "
                                "registers a kept checkpoint")
        return store.get_artifact(run.artifact_id)
    if not ALIAS_RE.match(ref):
        raise NotFound(f"{ref!r} is not an artifact id, alias or run id",
                       hint="pass ad-… , name@stage or run-… ; list them with `tuneops registry list`")
    return resolve_alias(store, ref)


# -- small readers ------------------------------------------------------------------------------
def recipe_dict(run: RunRecord | None) -> dict:
    """The run's saved recipe as plain data ({} when there is none or it does not parse)."""
    if run is None or not run.recipe_yaml:
        return {}
    try:
        data = yaml.safe_load(run.recipe_yaml)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _get(d: dict, dotted: str, default=None):
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def method_summary(method: dict) -> str:
    kind = method.get("kind", "lora")
    if kind in ("lora", "dora", "qlora"):
        return f"{kind} r={method.get('r', 16)} alpha={method.get('alpha', 32)}"
    if kind in ("prefix", "prompt"):
        return f"{kind} tokens={method.get('num_virtual_tokens', 20)}"
    return kind


def dataset_roles(art: ArtifactRecord, run: RunRecord | None = None) -> list[tuple[str, str]]:
    """(dataset id, role) in lineage order. ``lineage["train_datasets"]`` says outright what was trained on
    when recorded; else the pipeline's order applies: [train, eval, further data trained on (replay)…] (a
    run records [train, eval]). ``lineage["replay_dataset"]`` names the replay set."""
    lineage = art.lineage or {}
    ids = [d for d in lineage.get("datasets") or [] if isinstance(d, str)]
    replay = lineage.get("replay_dataset")
    trained = lineage.get("train_datasets") if isinstance(lineage.get("train_datasets"), list) else None
    for extra in ([replay] if replay else []) + (trained or []):
        if extra not in ids:
            ids.append(extra)
    run_ids = list(run.dataset_ids or []) if run is not None else []
    out, seen = [], set()
    for i, ds in enumerate(ids):
        if ds in seen:
            continue
        seen.add(ds)
        if ds == replay:
            role = "replay"
        elif trained is not None:
            role = "train" if ds in trained else ("eval" if ds in run_ids[1:2] or i == 1 else "other")
        elif ds in run_ids:
            role = {0: "train", 1: "eval"}.get(run_ids.index(ds), "other")
        elif len(ids) == 1:
            role = "train"
        else:
            role = {0: "train", 1: "eval"}.get(i, "train")  # the registry's convention: all but the 2nd trained on
        out.append((ds, role))
    return out


def dataset_info(store: Store, ds_id: str, role: str | None = None, *, names: dict | None = None,
                 erased: dict | None = None) -> dict:
    """A dataset version as lineage shows it: rows, sources and licences counted from its manifest
    (the summary when the manifest blob is gone), PII policy, erasure status."""
    from tuneops.data.ingest import load_manifest

    with store.session(write=False) as s:
        rec = s.get(DatasetRecord, ds_id)
        if rec is not None:
            s.expunge(rec)
    out: dict[str, Any] = {"id": ds_id}
    if role is not None:
        out["role"] = role
    if rec is None:
        return {**out, "in_store": False}
    summary = rec.summary or {}
    try:
        meta = load_manifest(store, rec)["rows"]
        sources = dict(sorted(Counter(m["source"] for m in meta).items()))
        licenses = dict(sorted(Counter(m["license"] for m in meta).items()))
        tiers = dict(sorted(Counter(m["tier"] for m in meta if m.get("tier")).items()))
        purposes = dict(sorted(Counter(m["purpose"] for m in meta if m.get("purpose")).items()))
        subjects = sum(1 for m in meta if m.get("subject"))
    except (OSError, ValueError, KeyError, TypeError, TuneopsError):  # the manifest blob is gone: the summary
        sources, licenses = dict(summary.get("sources") or {}), dict(summary.get("licenses") or {})
        tiers, purposes = dict(summary.get("tiers") or {}), dict(summary.get("purposes") or {})
        subjects = summary.get("rows_with_subject", 0)
    names = names if names is not None else store.dataset_names()
    er = (erased or {}).get(ds_id)
    pii = summary.get("pii")
    dedup = summary.get("deduplicated") or {}
    out.update({
        "name": rec.name, "names": names.get(ds_id, [rec.name]), "rows": rec.num_rows,
        "kind": summary.get("kind", "sft"), "origin": summary.get("origin"),
        "sources": sources, "licenses": licenses, "license": summary.get("license"),
        "permitted_uses": summary.get("permitted_uses"), "obligations": summary.get("obligations") or [],
        "tiers": tiers, "purposes": purposes, "rows_with_subject": subjects,
        "pii": {"policy": pii.get("policy"), "found": pii.get("found") or {}} if isinstance(pii, dict) else None,
        "duplicates_removed": sum((dedup.get("removed") or {}).values()) if isinstance(dedup, dict) else 0,
        "dedupe": dedup.get("mode") if isinstance(dedup, dict) else None,
        "quarantined": (summary.get("quarantine") or {}).get("rows", 0),
        "retention_until_min": summary.get("retention_until_min"),
        "erased": {"erasure": er[0], "clean_version": er[1]} if er else None,
        "created_at": when(rec.created_at), "in_store": True,
    })
    return out


def base_info(store: Store, base_id: str) -> dict:
    with store.session(write=False) as s:
        rec = s.get(BaseModelRecord, base_id)
    if rec is None:
        return {"id": base_id, "in_store": False}
    return {"id": rec.id, "name": rec.name, "source": rec.source, "license": rec.license,
            "chat_template_sha256": rec.chat_template_sha256, "num_parameters": rec.num_parameters,
            "weights_sha256": rec.weights_sha256, "in_store": True}


def run_events(store: Store, run_id: str | None) -> list[RunEvent]:
    return store.run_events(run_id) if run_id else []


def artifact_event(events: list[RunEvent], artifact_id: str) -> dict:
    """The run's ``artifact`` event for this artifact (training figures: steps, seconds, tokens/s …)."""
    for e in events:
        if e.type == "artifact" and e.payload.get("artifact") == artifact_id:
            return dict(e.payload)
    return {}


def key_metrics(report: EvalReportRecord) -> dict[str, dict]:
    """The metrics a report's gates judged (all but per-field metrics when it has no gates)."""
    gated = [g.get("metric") for g in report.gates or [] if g.get("metric")]
    names = [m for m in report.metrics if m in gated] or [m for m in report.metrics if ".field." not in m]
    return {m: {k: report.metrics[m].get(k) for k in ("base", "candidate", "delta", "ci95_delta", "n")}
            for m in names}


def signing_payload(art: ArtifactRecord) -> dict:
    """What an artifact's signature covers (the registry's definition when it has one)."""
    from tuneops.release import registry

    custom = getattr(registry, "signing_payload", None)
    return custom(art) if callable(custom) else {"id": art.id, "tree": art.tree, "lineage": art.lineage}


SIGNATURE_STATES = {"missing": "unsigned", "untrusted": "untrusted", "revoked": "revoked", "invalid": "invalid"}


def signature_status(store: Store, art: ArtifactRecord) -> dict:
    """{"status": verified | unsigned | untrusted | revoked | invalid, "key_id", ("signer" | "detail")}; never
    raises. Uses the registry's verification (trusted, unrevoked keys only) when it has one."""
    from tuneops.release import registry

    sig = art.signature if isinstance(art.signature, dict) else None
    kid = sig.get("key_id") if sig else None
    verify = getattr(registry, "verify_signature", None)
    if callable(verify):
        from tuneops.release.signing import SignatureError

        try:
            kid = verify(store, art)
        except SignatureError as e:
            state = SIGNATURE_STATES.get(getattr(e, "reason", "invalid"), "invalid")
            return {"status": state, "key_id": kid} | ({"detail": e.message} if state != "unsigned" else {})
        with store.session(write=False) as s:
            key = s.get(TrustedKey, kid)
            return {"status": "verified", "key_id": kid, "signer": key.name if key is not None else None}
    if not sig or not sig.get("signature"):
        return {"status": "unsigned", "key_id": None}
    with store.session(write=False) as s:
        key = s.get(TrustedKey, kid) if kid else None
        key = (key.public_key, key.revoked_at, key.name) if key is not None else None
    if key is None:
        return {"status": "untrusted", "key_id": kid, "detail": f"{kid} is not a key this store trusts"}
    public, revoked, holder = key
    if revoked is not None:
        return {"status": "revoked", "key_id": kid, "detail": f"{kid} was revoked {when(revoked)}"}
    from tuneops.release.signing import verify_with

    payload = canonical_json(signing_payload(art))
    if verify_with(public, payload, sig["signature"]):
        return {"status": "verified", "key_id": kid, "signer": holder}
    detail = "the signature does not match the artifact's id, files and lineage"
    if sig.get("payload_sha256") and sig["payload_sha256"] != hashlib.sha256(payload).hexdigest():
        detail += " (the signed payload's hash differs: lineage or files changed after signing)"
    return {"status": "invalid", "key_id": kid, "detail": detail}


def alias_target_at(store: Store, alias: str, at: datetime | None) -> str | None:
    """What ``alias`` pointed at at time ``at`` (its history replayed), else what it points at now."""
    from tuneops.release.registry import TARGET_ACTIONS, parse_alias

    try:
        name, stage = parse_alias(alias)
    except TuneopsError:
        return None
    target = None
    for mv in store.alias_history(name, stage):
        if at is not None and mv.at is not None and mv.at.replace(tzinfo=None) > at.replace(tzinfo=None):
            break
        if mv.action not in TARGET_ACTIONS:  # canary/shadow moves route traffic, they do not move the target
            continue
        target = mv.to_artifact
    if target is None:
        with store.session(write=False) as s:
            rec = s.get(AliasRecord, (name, stage))
            target = rec.artifact_id if rec is not None else None
    return target


def _base_by_ref(store: Store, ref: str) -> str | None:
    from tuneops.models.base import EMBEDDED_NAME, EMBEDDED_REF

    with store.session(write=False) as s:
        if ref.startswith("base-"):
            return ref
        name = EMBEDDED_NAME if ref == EMBEDDED_REF else ref
        return s.scalars(select(BaseModelRecord.id).where(BaseModelRecord.name == name)
                         .order_by(BaseModelRecord.created_at.desc())).first()


def upstream(store: Store, art: ArtifactRecord, run: RunRecord | None, recipe: dict | None = None) -> dict:
    """Models this artifact learned from besides its base: a distillation teacher (artifact or base) and a
    reward model. ``lineage["teacher"]`` (an id, or {"artifact", "base"}) when recorded, else the run's
    recipe (an alias there is resolved to what it pointed at when the run started)."""
    recipe = recipe if recipe is not None else recipe_dict(run)
    out: dict[str, dict] = {}
    recorded = art.lineage.get("teacher")
    if isinstance(recorded, dict):
        out["teacher"] = {k: recorded.get(k) for k in ("ref", "artifact", "base")}
    else:
        ref = recorded if isinstance(recorded, str) else _get(recipe, "objective.teacher")
        if isinstance(ref, str) and ref:
            teacher: dict[str, Any] = {"ref": ref, "artifact": None, "base": None}
            if ref.startswith("ad-"):
                teacher["artifact"] = ref
            elif "@" in ref:
                teacher["artifact"] = alias_target_at(store, ref, run.created_at if run is not None else None)
            else:
                teacher["base"] = _base_by_ref(store, ref)
            if teacher["artifact"]:
                with store.session(write=False) as s:
                    t = s.get(ArtifactRecord, teacher["artifact"])
                    teacher["base"] = t.base_id if t is not None else None
            out["teacher"] = teacher
    reward = art.lineage.get("reward_model") or _get(recipe, "objective.reward")
    if isinstance(reward, str) and reward.startswith("ad-"):
        out["reward"] = {"ref": reward, "artifact": reward}
    return out


# -- forward ----------------------------------------------------------------------------------
def artifact_lineage(store: Store, art: ArtifactRecord) -> dict:
    """Everything upstream and around one artifact, as plain data (what `registry lineage --json` prints)."""
    from tuneops.data.erasure import erased_versions, taints_of

    with store.session(write=False) as s:
        run = s.get(RunRecord, art.run_id) if art.run_id else None
        if run is not None:
            s.expunge(run)
        reports = s.scalars(select(EvalReportRecord).where(EvalReportRecord.artifact_id == art.id)
                            .order_by(EvalReportRecord.created_at, EvalReportRecord.id)).all()
        baseline_for = s.scalars(select(EvalReportRecord.id).where(EvalReportRecord.baseline == art.id)
                                 .order_by(EvalReportRecord.created_at, EvalReportRecord.id)).all()
        current = s.scalars(select(AliasRecord).where(AliasRecord.artifact_id == art.id)
                            .order_by(AliasRecord.name, AliasRecord.stage)).all()
        moves = s.scalars(select(AliasMove).where(or_(AliasMove.to_artifact == art.id,
                                                      AliasMove.from_artifact == art.id))
                          .order_by(AliasMove.seq)).all()
        exports = s.scalars(select(ExportRecord).where(ExportRecord.artifact_id == art.id)
                            .order_by(ExportRecord.created_at, ExportRecord.id)).all()
        reports = [{"id": r.id, "passed": r.passed, "baseline": r.baseline, "suites": list(r.suites or []),
                    "created_at": when(r.created_at), "gated": bool(r.gates),
                    "gates": [{"gate": g.get("gate"), "passed": g.get("passed")} for g in r.gates or []],
                    "key_metrics": key_metrics(r)} for r in reports]
        aliases = [f"{a.name}@{a.stage}" for a in current]
        history = [{"alias": f"{m.name}@{m.stage}", "seq": m.seq, "action": m.action, "from": m.from_artifact,
                    "to": m.to_artifact, "actor": m.actor, "at": when(m.at), "reason": m.reason} for m in moves]
        exports = [{"id": e.id, "format": e.format, "digest": e.digest, "path": e.path, "actor": e.actor,
                    "created_at": when(e.created_at)} for e in exports]
    recipe = recipe_dict(run)
    events = run_events(store, run.id if run else None)
    ev = artifact_event(events, art.id)
    names, erased = store.dataset_names(), erased_versions(store)
    datasets = [dataset_info(store, ds, role, names=names, erased=erased) for ds, role in dataset_roles(art, run)]
    steps = art.lineage.get("checkpoint_step")
    if steps is None and run is not None:
        steps = ev.get("steps") or (run.metrics or {}).get("train_steps")
    method = recipe.get("method") or {"kind": art.method}
    ups = upstream(store, art, run, recipe)
    recipe_info = None
    if run is not None or art.lineage.get("recipe_sha256"):
        recipe_info = {"sha256": art.lineage.get("recipe_sha256") or (run.recipe_hash if run else None),
                       "name": recipe.get("name") or (run.recipe_name if run else None),
                       "objective": _get(recipe, "objective.kind") or art.lineage.get("objective"),
                       "method": method.get("kind", art.method), "method_summary": method_summary(method),
                       "use": _get(recipe, "data.use", "commercial") if recipe else None}
    return {
        "artifact": {"id": art.id, "kind": art.kind, "method": art.method, "tree": art.tree,
                     "created_at": when(art.created_at), "code_version": art.lineage.get("code_version"),
                     "objective": art.lineage.get("objective") or _get(recipe, "objective.kind"),
                     "template_sha256": art.lineage.get("template_sha256"),
                     "checkpoint_step": art.lineage.get("checkpoint_step"),
                     "files": sorted((art.lineage.get("files") or {}).keys()),
                     "integrity_problems": store.blobs.tree_problems(art.tree),
                     "deprecation": art.deprecation,
                     "tainted_by": [{"erasure": t.erasure_id, "dataset": t.dataset_id}
                                    for t in taints_of(store, art.id)]},
        "base": base_info(store, art.base_id),
        "datasets": datasets,
        "recipe": recipe_info,
        "run": {"id": run.id, "state": run.state, "steps": steps, "created_at": when(run.created_at),
                "updated_at": when(run.updated_at), "error": run.error, "metrics": dict(run.metrics or {})}
        if run is not None else ({"id": art.run_id, "in_store": False} if art.run_id else None),
        "upstream": ups,
        "eval_reports": reports,
        "baseline_for": list(baseline_for),
        "aliases": aliases,
        "alias_history": history,
        "exports": exports,
        "signature": signature_status(store, art),
    }


def _counts(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "—"


def render_tree(root: str, children: list) -> str:
    """A text tree: ``children`` is a list of (label, children) pairs (or bare labels)."""
    lines = [root]

    def walk(nodes: list, prefix: str):
        for i, node in enumerate(nodes):
            label, kids = node if isinstance(node, tuple) else (node, [])
            last = i == len(nodes) - 1
            lines.append(prefix + ("└── " if last else "├── ") + label)
            walk(kids, prefix + ("    " if last else "│   "))

    walk(children, "")
    return "\n".join(lines)


def lineage_tree(data: dict) -> str:
    """The forward lineage as a tree for people."""
    a, b = data["artifact"], data["base"]
    base = (f"{b['id']}  {b['name']}  ({b['source']}; licence {b['license']}; chat template "
            f"{short(b['chat_template_sha256'])})" if b.get("in_store") else f"{b['id']}  (not in this store)")
    ds_nodes = []
    for d in data["datasets"]:
        if not d.get("in_store"):
            ds_nodes.append(f"{d['role']:<6} {d['id']}  (not in this store)")
            continue
        extra = [f"sources: {_counts(d['sources'])}", f"licences: {_counts(d['licenses'])}"
                 + (f" (permits {', '.join(d['permitted_uses'])})" if d.get("permitted_uses") else "")]
        if d.get("pii"):
            extra.append(f"PII at ingest: {d['pii']['policy']}; found {_counts(d['pii']['found'])}")
        if d.get("erased"):
            extra.append(f"ERASED by {d['erased']['erasure']} (clean version {d['erased']['clean_version']})")
        ds_nodes.append((f"{d['role']:<6} {d['id']}  {', '.join(d['names'])}  {d['rows']} rows", extra))
    children: list = [f"base      {base}", ("datasets", ds_nodes or ["none recorded"])]
    r = data["recipe"]
    children.append(f"recipe    {r['name']}  sha256 {short(r['sha256'])}  {r['objective']} · {r['method_summary']}"
                    + (f" · use {r['use']}" if r.get("use") else "") if r else "recipe    none recorded")
    run = data["run"]
    if run and run.get("state"):
        m = run["metrics"]
        loss = f" · final loss {m['final_loss']:.4g}" if isinstance(m.get("final_loss"), (int, float)) else ""
        children.append(f"run       {run['id']}  {run['state']} · {run['steps']} steps{loss}"
                        + (f" · checkpoint step {a['checkpoint_step']}" if a.get("checkpoint_step") else ""))
    else:
        children.append(f"run       {run['id']} (not in this store)" if run else "run       none (registered by hand)")
    for kind, up in sorted(data["upstream"].items()):
        target = up.get("artifact") or up.get("base")
        children.append(f"{kind:<9} {target or '?'}" + (f"  (recipe said {up['ref']})" if up.get("ref") and
                                                         up.get("ref") != target else ""))
    ev_nodes = []
    for rep in data["eval_reports"]:
        verdict = "PASSED" if rep["passed"] else ("not passed" if rep["gated"] else "ungated")
        ev_nodes.append((f"{rep['id']}  {verdict}  vs {rep['baseline']}  ({rep['created_at']})",
                         [f"{m}: {v['base']:.3f} → {v['candidate']:.3f} (Δ {v['delta']:+.3f}, 95% CI "
                          f"[{v['ci95_delta'][0]:+.3f}, {v['ci95_delta'][1]:+.3f}], n {v['n']})"
                          for m, v in rep["key_metrics"].items()]))
    children.append(("eval reports", ev_nodes or ["none"]))
    hist = [f"{h['at']}  {h['alias']}  {h['action']}  {h['from'] or '∅'} → {h['to']}  by {h['actor']}"
            + (f"  ({h['reason']})" if h.get("reason") else "") for h in data["alias_history"]]
    children.append((f"aliases   {', '.join(data['aliases']) or 'none now'}", hist))
    children.append(("exports", [f"{e['format']}  {e['id']}  sha256 {short(e['digest'])}  {e['path']}"
                                 for e in data["exports"]] or ["none"]))
    sig = data["signature"]
    children.append(f"signature {sig['status']}" + (f" by {sig['key_id']}" if sig.get("key_id") else "")
                    + (f" ({sig['detail']})" if sig.get("detail") else ""))
    if a["tainted_by"]:
        children.append("TAINTED   " + "; ".join(f"{t['erasure']} erased rows of {t['dataset']}"
                                                  for t in a["tainted_by"]))
    if a.get("deprecation"):
        dep = a["deprecation"]
        children.append(f"DEPRECATED {dep.get('reason', '')} (sunset {dep.get('sunset', '?')})")
    if a["integrity_problems"]:
        children.append("INTEGRITY " + "; ".join(a["integrity_problems"]))
    root = f"{a['id']}  {a['kind']} · {a['method']} · {a['objective'] or '?'}  (created {a['created_at']})"
    return render_tree(root, children)


# -- reverse ----------------------------------------------------------------------------------
def _resolve_reverse_ref(store: Store, ref: str) -> tuple[str, list[dict]]:
    """(kind, matches) for a dataset, base, run or artifact ref; a name that fits two kinds is refused."""
    ref = (ref or "").strip()
    if not ref:
        raise InvalidInput("--reverse needs a dataset, base, run or artifact", hint=REF_HINT)
    with store.session(write=False) as s:
        if ref.startswith("ds-"):
            ds = s.get(DatasetRecord, ref)
            if ds is None:
                raise NotFound(f"dataset {ref!r} not found in {store.home}", hint=REF_HINT)
            return "dataset", [{"id": ds.id, "name": ds.name}]
        if ref.startswith("base-"):
            b = s.get(BaseModelRecord, ref)
            if b is None:
                raise NotFound(f"base model {ref!r} not found in {store.home}", hint=REF_HINT)
            return "base", [{"id": b.id, "name": b.name}]
        if ref.startswith("run-"):
            run = s.get(RunRecord, ref)
            if run is None:
                raise NotFound(f"run {ref!r} not found in {store.home}", hint=REF_HINT)
            return "run", [{"id": run.id, "name": run.recipe_name}]
        if ref.startswith("ad-"):
            a = s.get(ArtifactRecord, ref)
            if a is None:
                raise NotFound(f"artifact {ref!r} not found in {store.home}", hint=REF_HINT)
            return "artifact", [{"id": a.id, "name": None}]
        found: dict[str, list[dict]] = {}
        links = s.execute(select(DatasetName.dataset_id, DatasetName.created_at).where(DatasetName.name == ref)
                          .order_by(DatasetName.created_at.desc(), DatasetName.dataset_id)).all()
        if links:  # a name: every version ever linked to it, newest first
            found["dataset"] = [{"id": d, "name": ref} for d, _ in links]
        bases = s.scalars(select(BaseModelRecord).where(BaseModelRecord.name == ref)
                          .order_by(BaseModelRecord.created_at.desc())).all()
        if bases:
            found["base"] = [{"id": b.id, "name": b.name} for b in bases]
    if "@" in ref or not found:
        try:
            art = resolve_artifact_ref(store, ref)
            found["artifact"] = [{"id": art.id, "name": ref}]
        except TuneopsError:
            pass
    if not found:
        raise NotFound(f"{ref!r} is not a dataset, base, run or artifact in {store.home}", hint=REF_HINT)
    if len(found) > 1:
        listed = "; ".join(f"{k} {', '.join(m['id'] for m in v)}" for k, v in found.items())
        raise InvalidInput(f"{ref!r} names more than one kind of record ({listed})",
                           hint="pass the id instead of the name")
    (kind, matches), = found.items()
    return kind, matches


def _direct_relations(kind: str, targets: set[str], art: ArtifactRecord, run: RunRecord | None,
                      ups: dict) -> list[dict]:
    rels: list[dict] = []
    if kind == "dataset":
        for ds, role in dataset_roles(art, run):
            if ds in targets:
                rels.append({"relation": role, "of": ds})
    elif kind == "base":
        if art.base_id in targets:
            rels.append({"relation": "base", "of": art.base_id})
        t = ups.get("teacher", {})
        if t.get("base") in targets and not t.get("artifact"):
            rels.append({"relation": "teacher_base", "of": t["base"]})
    elif kind == "run":
        if art.run_id in targets:
            step = art.lineage.get("checkpoint_step")
            rels.append({"relation": "checkpoint" if step is not None and (run is None or run.artifact_id != art.id)
                         else "run_output", "of": art.run_id, **({"step": step} if step is not None else {})})
    elif kind == "artifact":
        for rel in ("teacher", "reward"):
            if ups.get(rel, {}).get("artifact") in targets:
                rels.append({"relation": rel, "of": ups[rel]["artifact"]})
    return rels


def reverse_lineage(store: Store, ref: str) -> dict:
    """Every artifact derived from ``ref`` (dataset id or name, base id or name, run id, artifact id or
    alias): direct relations first, then artifacts that learned from those through a teacher or reward
    model, each with its aliases. ``learned`` says whether the artifact learned from ``ref`` (an artifact
    that was only evaluated on a dataset did not)."""
    from tuneops.data.erasure import taints_of

    kind, matches = _resolve_reverse_ref(store, ref)
    targets = {m["id"] for m in matches}
    arts = store.all(ArtifactRecord, order_by=ArtifactRecord.created_at)
    with store.session(write=False) as s:
        runs = {r.id: r for r in s.scalars(select(RunRecord).where(
            RunRecord.id.in_([a.run_id for a in arts if a.run_id])))}
        for r in runs.values():
            s.expunge(r)
        alias_of: dict[str, list[str]] = {}
        for a in s.scalars(select(AliasRecord).order_by(AliasRecord.name, AliasRecord.stage)):
            alias_of.setdefault(a.artifact_id, []).append(f"{a.name}@{a.stage}")
    ups = {a.id: upstream(store, a, runs.get(a.run_id)) for a in arts}
    rows: dict[str, dict] = {}
    for a in arts:
        rels = _direct_relations(kind, targets, a, runs.get(a.run_id), ups[a.id])
        if rels:
            learned = any(r["relation"] not in ("eval", "other") for r in rels)
            rows[a.id] = {"relations": rels, "learned": learned, "via": None, "depth": 1}
    # Through teachers and reward models, to a fixed point: only what learned propagates.
    changed = True
    while changed:
        changed = False
        for a in arts:
            if a.id in rows and rows[a.id]["learned"]:
                continue
            for rel in ("teacher", "reward"):
                src = ups[a.id].get(rel, {}).get("artifact")
                if src and src != a.id and src in rows and rows[src]["learned"]:
                    entry = rows.setdefault(a.id, {"relations": [], "learned": False, "via": None, "depth": 0})
                    entry["relations"].append({"relation": rel, "of": src})
                    entry.update(learned=True, via=src, depth=rows[src]["depth"] + 1)
                    changed = True
                    break
    out = []
    for a in arts:
        if a.id not in rows:
            continue
        row = rows[a.id]
        run = runs.get(a.run_id)
        out.append({"id": a.id, "kind": a.kind, "method": a.method, "base_id": a.base_id, "run_id": a.run_id,
                    "recipe": run.recipe_name if run else None, "created_at": when(a.created_at),
                    "relations": row["relations"], "learned": row["learned"], "via": row["via"],
                    "depth": row["depth"], "aliases": alias_of.get(a.id, []),
                    "tainted": bool(taints_of(store, a.id)), "deprecated": a.deprecation is not None})
    return {"ref": ref, "kind": kind, "matches": matches, "artifacts": out,
            "learned_from": [r["id"] for r in out if r["learned"]],
            "serving": sorted({al for r in out if r["learned"] for al in r["aliases"]})}


def relation_text(rel: dict) -> str:
    label = RELATION_LABELS.get(rel["relation"], rel["relation"])
    if rel["relation"] == "checkpoint" and rel.get("step") is not None:
        label = f"checkpoint (step {rel['step']}) of this run"
    return label


def reverse_tree(data: dict) -> str:
    """The reverse lineage as a tree: each artifact under what it came from."""
    by_via: dict[str | None, list[dict]] = {}
    for r in data["artifacts"]:
        by_via.setdefault(r["via"], []).append(r)

    def node(r: dict) -> tuple[str, list]:
        rels = "; ".join(relation_text(x) if r["via"] is None else
                         f"{'distilled from' if x['relation'] == 'teacher' else 'reward model'} {x['of']}"
                         for x in r["relations"])
        flags = [f"← {', '.join(r['aliases'])}"] if r["aliases"] else []
        flags += ["TAINTED"] * r["tainted"] + ["deprecated"] * r["deprecated"] + ([] if r["learned"] else
                                                                                 ["did not learn from it"])
        label = f"{r['id']}  {r['method']}  {rels}  (run {r['run_id'] or '—'}, {r['created_at']})" + \
            (f"  {'  '.join(flags)}" if flags else "")
        return label, [node(k) for k in by_via.get(r["id"], [])]

    m = data["matches"]
    root = f"{data['kind']} " + ", ".join(f"{x['id']}" + (f" ({x['name']})" if x.get("name") and x["name"] != x["id"]
                                                          else "") for x in m)
    kids = [node(r) for r in by_via.get(None, [])]
    if not kids:
        kids = ["no artifact derives from it"]
    return render_tree(root, kids)


# -- base compatibility -----------------------------------------------------------------------
def check_base_compatible(store: Store, artifact: ArtifactRecord, base: BaseModelRecord | str, *,
                          template_sha256: str | None = None) -> None:
    """Refuse (IncompatibleBase, naming both bases and their chat-template hashes) to load ``artifact`` on
    any base other than the one it was trained on, or to prompt it with a chat template other than the one
    it was trained with. ``template_sha256``: the template the loader will prompt with (default: the one
    the artifact ships, else the base's)."""
    base = store.get_base(base) if isinstance(base, str) else base
    trained_on = artifact.base_id
    recorded = artifact.lineage.get("base") or trained_on
    trained_tpl = artifact.lineage.get("template_sha256")

    def describe(base_id: str, tpl: str | None) -> str:
        with store.session(write=False) as s:
            rec = s.get(BaseModelRecord, base_id)
        name = f"{rec.name} ({base_id})" if rec is not None else f"{base_id} (not in this store)"
        return f"{name}, chat template {short(tpl, 16) if tpl else 'unrecorded'}"

    if recorded != trained_on:
        raise IncompatibleBase(f"{artifact.id} records two bases: {recorded} in its lineage and {trained_on} on its "
                               "record; it is not loaded", hint="re-register it from its run")
    if base.id != trained_on:
        raise IncompatibleBase(
            f"{artifact.id} was trained on {describe(trained_on, trained_tpl)}; refusing to load it on "
            f"{describe(base.id, base.chat_template_sha256)}",
            hint=f"load it on {trained_on} (e.g. `tuneops serve --base {trained_on}`), or retrain its recipe "
                 f"with base: {base.id}")
    ships = "chat_template.jinja" in (artifact.lineage.get("files") or {})
    used = template_sha256 or (trained_tpl if ships else base.chat_template_sha256)
    if trained_tpl and used and used != trained_tpl:
        raise IncompatibleBase(
            f"{artifact.id} was trained on {base.name} ({base.id}) with chat template {short(trained_tpl, 16)}, but "
            f"would be prompted with chat template {short(used, 16)} (the base's is "
            f"{short(base.chat_template_sha256, 16)}); refusing to load it",
            hint="prompt it with the template it was trained with (the artifact's chat_template.jinja, or the "
                 "base's), or retrain with the template you serve")
