"""The registry: artifacts pinned by content hash and signed, aliases (name@stage) whose every move is logged.

Promotion requires, and each refusal names the condition and the fix:

- intact files (verify-on-load) and a valid signature by a key the store trusts — never overridable;
- a deprecation sunset that has not passed, no taint from an erasure, and training data whose licences
  permit the alias's declared use (``commercial``, ``internal``, ``research``: given with ``--use`` or
  taken from the artifact's recipe on the first promotion, recorded in the audit log) — not overridable
  either: the fix is to retrain or declare the use the model really has;
- an alias staying on one base, a run that succeeded, and a passing eval report that gated the task —
  ``force`` with a reason (logged) overrides these.

Rollback walks the alias's history: each promote pushes a target, each rollback pops one, so rolling
back twice after three promotions lands on the first; it too only lands on intact, validly signed
artifacts whose sunset has not passed. Serving checks the same (:func:`check_release`).
"""

import datetime as dt
import hashlib
import re
import subprocess
from datetime import timezone
from functools import lru_cache
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.orm import Session

import tuneops
from tuneops.errors import GateFailed, IntegrityError, InvalidInput, NotFound, StateError
from tuneops.release.signing import (
    SignatureError, load_key, sign_payload, trust_on_first_use, trusted_keys, try_load_key, verify_payload,
)
from tuneops.store import Store
from tuneops.store.ids import content_id
from tuneops.store.schema import (
    AliasMove, AliasRecord, ArtifactRecord, AuditEvent, DatasetRecord, EvalReportRecord, RunRecord, TaintRecord,
    TrustedKey, utcnow,
)
from tuneops.store.store import default_actor

ALIAS_RE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]{0,99})(?:@(?P<stage>[a-z0-9][a-z0-9_-]{0,63}))?$")
DEFAULT_STAGE = "production"
USES = ("commercial", "internal", "research")


class SunsetPassed(StateError):
    """A deprecated artifact's sunset date has passed: it is never promoted, rolled back to or served."""

    http_status = 410
    error_type = "invalid_request_error"
    error_code = "model_sunset"


class AliasDisabled(StateError):
    """The alias is switched off for serving (`tuneops registry disable`): the server answers 503
    ``alias_disabled``, or the base with ``tuneops.fallback`` when it runs with ``--fallback base``."""

    http_status = 503
    error_type = "server_error"
    error_code = "alias_disabled"
    headers = {"x-should-retry": "false"}   # an operator switched it off: retrying will not help

    def __init__(self, message: str, *, alias: str, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.alias = alias   # name@stage


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit of the source tree when there is one."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(tuneops.__file__).parent,
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{tuneops.__version__}+g{sha}" if sha else tuneops.__version__


def parse_alias(ref: str) -> tuple[str, str]:
    """``name@stage`` (stage defaults to production) -> (name, stage)."""
    m = ALIAS_RE.match(ref)
    if not m:
        raise InvalidInput(f"{ref!r} is not an alias", hint="write name@stage, e.g. quickstart@production")
    return m["name"], m["stage"] or DEFAULT_STAGE


def register_adapter(store: Store, adapter_dir: Path, *, base_id: str, method: str, run_id: str | None,
                     dataset_ids: list[str], recipe_hash: str | None,
                     extra_lineage: dict | None = None) -> tuple[ArtifactRecord, bool]:
    """Pin an adapter directory (or, for method ``full``, a whole model's files) as ``ad-<sha256
    prefix>`` with its lineage; (record, created). ``extra_lineage`` adds facts such as the chat
    template's sha256 and the objective. ``dataset_ids`` lists the training data first, then the eval
    set, then any further data trained on (replay); ``extra_lineage={"train_datasets": [...]}`` says it
    outright.

    The record is signed with the active signing key (:func:`signing_payload`) when there is one; else
    it stays unsigned — it can be evaluated, not promoted or served — and the run gets a ``notice``
    event saying how to sign it."""
    manifest = store.blobs.tree_manifest(adapter_dir)
    digest = store.blobs.tree_digest(manifest)
    artifact_id = content_id("ad", digest)
    with store.session(write=False) as s:
        existing = s.get(ArtifactRecord, artifact_id)
        if existing is not None:
            s.expunge(existing)
            return existing, False
    store.get_base(base_id)
    tree, _ = store.blobs.put_tree(adapter_dir, manifest)
    lineage = {"base": base_id, "datasets": dataset_ids, "recipe_sha256": recipe_hash, "run": run_id,
               "code_version": code_version(), "files": manifest, **(extra_lineage or {})}
    rec = ArtifactRecord(id=artifact_id, kind="model" if method == "full" else "adapter", method=method, tree=tree,
                         base_id=base_id, run_id=run_id, lineage=lineage)
    key, no_key = try_load_key()
    if key is not None:
        rec.signature = sign_payload(signing_payload(rec), key)
    notes: list[str] = []

    def on_create(s: Session) -> None:
        if key is not None:
            trust_on_first_use(s, store, key)
            row = s.get(TrustedKey, key.key_id)
            if row is not None and row.revoked_at is not None:
                rec.signature = None
                notes.append(f"the signing key {key.key_id} is revoked in this store")
            elif row is None:
                notes.append(f"it is signed by {key.key_id}, a key this store does not trust yet")
        store.audit(s, "artifact.register", "artifact", artifact_id, run=run_id, base=base_id,
                    signed_by=rec.signature["key_id"] if rec.signature else None)

    result = store.insert_once(rec, on_create=on_create)
    if result[1] and (rec.signature is None or notes):
        if rec.signature is None:
            message = f"artifact {artifact_id} is unsigned ({notes[0] if notes else no_key}); it cannot be " \
                      "promoted or served until it is signed"
            hint = (f"create a key if you have none (`tuneops keys init`), then `tuneops registry sign "
                    f"{artifact_id}`")
        else:
            message = f"artifact {artifact_id}: {notes[0]}; it cannot be promoted or served until it does"
            hint = "someone the store trusts runs `tuneops keys trust KEY.pub --name WHO` for your public key " \
                   "(`tuneops keys export-public`)"
        _run_notice(store, run_id, message, hint)
    return result


def _run_notice(store: Store, run_id: str | None, message: str, hint: str) -> None:
    import logging

    logging.getLogger("tuneops.release").warning("%s (fix: %s)", message, hint)
    if run_id is None:
        return
    with store.session(write=False) as s:
        known = s.get(RunRecord, run_id) is not None
    if known:
        store.add_run_event(run_id, "notice", message=message, hint=hint)


def signing_payload(artifact: ArtifactRecord) -> dict:
    """What an artifact's signature covers: its id, tree digest and lineage (files with their sha256, base,
    datasets, recipe, run, code version), and the record's other immutable fields."""
    return {"id": artifact.id, "tree": artifact.tree, "lineage": artifact.lineage, "base_id": artifact.base_id,
            "run_id": artifact.run_id, "kind": artifact.kind, "method": artifact.method}


def verify_signature(store: Store, artifact: ArtifactRecord) -> str:
    """The key id that validly signed the artifact, among the keys the store trusts (revoked ones never);
    else SignatureError saying which: missing, untrusted, revoked, or not matching the record."""
    trusted, revoked = trusted_keys(store)
    return verify_payload(signing_payload(artifact), artifact.signature, trusted, revoked=revoked,
                          what=f"artifact {artifact.id}",
                          sign_hint=f"sign it: `tuneops registry sign {artifact.id}` (no key yet? "
                                    "`tuneops keys init` first)")


def _check_record_matches_files(store: Store, artifact: ArtifactRecord) -> None:
    """The record describes the stored files: its id and tree are the digest of its lineage's file list."""
    files = (artifact.lineage or {}).get("files")
    prefix = artifact.id.split("-", 1)[0]
    if not isinstance(files, dict) or store.blobs.tree_digest(files) != artifact.tree \
            or content_id(prefix, artifact.tree) != artifact.id:
        raise IntegrityError(f"artifact {artifact.id}: its record no longer matches its files (the id, tree digest "
                             "and the lineage's file list disagree); it will not be signed",
                             hint="re-register it from the original files; see `tuneops registry audit`")


def sign_artifact(store: Store, artifact_id: str, *, replace: bool = False, key=None) -> tuple[ArtifactRecord, bool]:
    """Sign an artifact with the active key (or ``key``); (record, changed). Only intact files whose record
    matches them are signed. A valid trusted signature is kept; one by an untrusted or revoked key is
    replaced only with ``replace``; one that does not match its record never is (that would launder a
    tampered record)."""
    artifact = store.get_artifact(artifact_id)
    artifact_dir(store, artifact)
    _check_record_matches_files(store, artifact)
    key = key or load_key()
    old_kid = None
    if artifact.signature:
        old_kid = artifact.signature.get("key_id") if isinstance(artifact.signature, dict) else None
        try:
            verify_signature(store, artifact)
            return artifact, False  # validly signed by a trusted key already
        except SignatureError as e:
            if e.reason not in ("untrusted", "revoked"):
                raise SignatureError(f"{e.message}; refusing to sign it again (that would vouch for whatever "
                                     "changed)", hint="re-register it from the original files", reason=e.reason)
            if not replace:
                raise SignatureError(e.message, hint=f"to vouch for it with your own key instead: `tuneops registry "
                                                     f"sign {artifact.id} --replace`", reason=e.reason) from None

    def do(s: Session) -> ArtifactRecord:
        rec = s.get(ArtifactRecord, artifact.id, with_for_update=True, populate_existing=True)
        if rec.signature != artifact.signature:
            raise StateError(f"the signature of {artifact.id} changed while signing it; nothing changed",
                             hint="look at `tuneops registry verify` and retry")
        trust_on_first_use(s, store, key)
        row = s.get(TrustedKey, key.key_id)
        if row is not None and row.revoked_at is not None:
            raise SignatureError(f"your signing key {key.key_id} is revoked in this store; it cannot sign",
                                 hint="create a new key (`tuneops keys init --new`) and have it trusted",
                                 reason="revoked")
        rec.signature = sign_payload(signing_payload(rec), key)
        store.audit(s, "artifact.sign", "artifact", rec.id, key=key.key_id, replaced=old_kid,
                    key_trusted=row is not None)
        s.flush()
        s.expunge(rec)
        return rec

    return store.transact(do), True


# -- deprecation -----------------------------------------------------------------------------

def _today() -> dt.date:
    return dt.datetime.now(timezone.utc).date()


def parse_sunset(value) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value).strip())
    except ValueError:
        raise InvalidInput(f"sunset {value!r} is not a date", hint="write YYYY-MM-DD, e.g. 2027-01-31") from None


def deprecation_status(artifact: ArtifactRecord, *, today: dt.date | None = None) -> dict | None:
    """None, or {"sunset", "reason", "by", "at", "past_sunset", "message"}: served with a warning until
    the sunset date (inclusive, UTC), refused after it."""
    dep = artifact.deprecation
    if not dep:
        return None
    sunset = parse_sunset(dep.get("sunset"))
    past = (today or _today()) > sunset
    why = f": {dep['reason']}" if dep.get("reason") else ""
    message = (f"artifact {artifact.id} was deprecated and its sunset {sunset.isoformat()} has passed{why}" if past
               else f"artifact {artifact.id} is deprecated and will be refused after {sunset.isoformat()}{why}")
    return {**dep, "sunset": sunset.isoformat(), "past_sunset": past, "message": message}


def check_sunset(artifact: ArtifactRecord, doing: str = "served") -> dict | None:
    """SunsetPassed if the artifact's sunset has passed; else its deprecation status (or None)."""
    status = deprecation_status(artifact)
    if status and status["past_sunset"]:
        raise SunsetPassed(f"{status['message']}; it can no longer be {doing}",
                           hint="use its successor (see `tuneops registry list`), or lift the deprecation: "
                                f"`tuneops registry deprecate {artifact.id} --undo`")
    return status


def deprecate(store: Store, artifact_id: str, *, sunset=None, reason: str | None = None,
              undo: bool = False) -> ArtifactRecord:
    """Deprecate an artifact with a sunset date (served with a warning until then, refused after), or
    lift a deprecation (``undo``). Logged as ``artifact.deprecate`` / ``artifact.undeprecate``."""
    if not undo:
        if not reason or not reason.strip():
            raise InvalidInput("a deprecation needs --reason (clients are told why)")
        if sunset is None:
            raise InvalidInput("a deprecation needs --sunset YYYY-MM-DD (the date after which it is refused)")
        sunset = parse_sunset(sunset)

    def do(s: Session) -> ArtifactRecord:
        rec = s.get(ArtifactRecord, artifact_id, with_for_update=True, populate_existing=True)
        if rec is None:
            raise NotFound(f"artifact {artifact_id!r} not found in {store.home}",
                           hint="list them with `tuneops registry list`")
        if undo:
            if not rec.deprecation:
                raise StateError(f"{artifact_id} is not deprecated; nothing changed")
            previous = rec.deprecation
            rec.deprecation = None
            store.audit(s, "artifact.undeprecate", "artifact", artifact_id, previous=previous, reason=reason)
        else:
            rec.deprecation = {"sunset": sunset.isoformat(), "reason": reason.strip(), "by": default_actor(),
                               "at": utcnow().isoformat(timespec="seconds")}
            store.audit(s, "artifact.deprecate", "artifact", artifact_id, sunset=sunset.isoformat(),
                        reason=reason.strip())
        s.flush()
        s.expunge(rec)
        return rec

    return store.transact(do)


def aliases_of(store: Store, artifact_id: str) -> list[str]:
    query = (select(AliasRecord).where(AliasRecord.artifact_id == artifact_id)
             .order_by(AliasRecord.name, AliasRecord.stage))
    with store.session(write=False) as s:
        return [f"{a.name}@{a.stage}" for a in s.scalars(query)]


# -- what every consumer that releases an artifact checks ------------------------------------

def check_release(store: Store, artifact: ArtifactRecord, *, doing: str = "served") -> dict | None:
    """What serving (and rollback) needs beyond intact files: a valid signature by a trusted key and a
    sunset that has not passed. Raises SignatureError / SunsetPassed; returns the deprecation status to
    warn with (None when not deprecated)."""
    verify_signature(store, artifact)
    return check_sunset(artifact, doing)


def verify_artifact(store: Store, artifact: ArtifactRecord) -> dict:
    """Every check, none raising: {"integrity": [problems], "signature": {...}, "deprecation": {...} | None,
    "ok": bool, "error": first failure or None} (``tuneops registry verify``)."""
    out: dict = {"artifact": artifact.id}
    out["integrity_problems"] = store.blobs.tree_problems(artifact.tree)
    sig = artifact.signature if isinstance(artifact.signature, dict) else None
    try:
        kid = verify_signature(store, artifact)
        out["signature"] = {"ok": True, "key_id": kid, "reason": None, "message": f"valid, by trusted key {kid}"}
    except SignatureError as e:
        out["signature"] = {"ok": False, "key_id": sig.get("key_id") if sig else None, "reason": e.reason,
                            "message": e.message, "hint": e.hint}
    out["deprecation"] = deprecation_status(artifact)
    errors = []
    if out["integrity_problems"]:
        errors.append(("integrity", f"artifact {artifact.id} failed its integrity check: "
                                    + "; ".join(out["integrity_problems"][:5])))
    if not out["signature"]["ok"]:
        errors.append(("signature", out["signature"]["message"]))
    if out["deprecation"] and out["deprecation"]["past_sunset"]:
        errors.append(("sunset", out["deprecation"]["message"]))
    out["ok"] = not errors
    out["failed"] = [name for name, _ in errors]
    out["error"] = errors[0][1] if errors else None
    return out


def artifact_dir(store: Store, artifact: ArtifactRecord) -> Path:
    """The artifact's files, verified against the hashes recorded at registration (IntegrityError
    naming the changed files otherwise). Every consumer — promote, eval, serve, export — comes here;
    unchanged files are not re-hashed, so calling it per request is cheap."""
    return store.blobs.verified_tree_path(artifact.tree, f"artifact {artifact.id}")


def latest_eval(store: Store, artifact_id: str, *, gated: bool = False) -> EvalReportRecord | None:
    """The artifact's newest eval report; with ``gated``, the newest that judged gates. An ungated
    report (``eval run`` without gates, an lm-evaluation-harness run, a look at another suite)
    informs but decides nothing, so it never hides the gated verdict promotion relies on."""
    with store.session(write=False) as s:
        query = (select(EvalReportRecord).where(EvalReportRecord.artifact_id == artifact_id)
                 .order_by(EvalReportRecord.created_at.desc()))
        rec = next((r for r in s.scalars(query) if r.gates or not gated), None)
        if rec is not None:
            s.expunge(rec)
        return rec


# The moves that re-point an alias. Route moves (canary, canary_rollback, shadow, route_clear: see
# release/routing.py) and disable / enable are logged in the same hash-chained history but leave the
# target and this list alone.
TARGET_ACTIONS = ("promote", "rollback")


def _stack(moves: list[AliasMove]) -> list[str]:
    """The rollback list: each promote pushes its target, each rollback pops the current one."""
    stack: list[str] = []
    for mv in moves:
        if mv.action == "promote":
            stack.append(mv.to_artifact)
        elif mv.action == "rollback" and stack:
            stack.pop()
    return stack


def _lock_alias(s: Session, name: str, stage: str) -> AliasRecord | None:
    """Serialise every move of one alias: the caller's transaction holds the lock until it commits.

    SQLite: write transactions start with BEGIN IMMEDIATE (see Store), which already excludes
    every other writer. PostgreSQL: a transaction-scoped advisory lock on the alias (which also
    covers an alias that does not exist yet, where a row lock has nothing to lock), then the row
    itself FOR UPDATE."""
    if s.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"alias:{name}@{stage}".encode()).digest()[:8], "big", signed=True)
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    return s.get(AliasRecord, (name, stage), with_for_update=True, populate_existing=True)


def _append_move(s: Session, store: Store, *, name: str, stage: str, action: str, current: AliasRecord | None,
                 to_artifact: str, reason: str | None, from_artifact: str | None = None,
                 **audit_details) -> AliasMove:
    """Record one move under the alias lock: from = the current target (unless given), `at` never runs
    backwards. Only the TARGET_ACTIONS re-point the alias; a route move is recorded and nothing else."""
    last = s.scalars(select(AliasMove).where(AliasMove.name == name, AliasMove.stage == stage)
                     .order_by(AliasMove.seq.desc()).limit(1)).first()
    now = utcnow()
    if last is not None:
        last_at = last.at if last.at.tzinfo else last.at.replace(tzinfo=timezone.utc)
        now = max(now, last_at)  # clocks of different writers may disagree; history order may not
    if from_artifact is None:
        from_artifact = current.artifact_id if current else None
    move = AliasMove(name=name, stage=stage, action=action, to_artifact=to_artifact, at=now,
                     from_artifact=from_artifact, actor=default_actor(), reason=reason)
    if action not in TARGET_ACTIONS:
        pass  # a route move (release/routing.py): logged and chained, the alias keeps its target
    elif current is None:
        s.add(AliasRecord(name=name, stage=stage, artifact_id=to_artifact, updated_at=now))
    else:
        current.artifact_id = to_artifact
        current.updated_at = now
    s.add(move)
    store.audit(s, f"alias.{action}", "alias", f"{name}@{stage}", to=to_artifact, previous=move.from_artifact,
                reason=reason, **audit_details)
    s.flush()
    s.expunge(move)
    return move


# -- promotion conditions --------------------------------------------------------------------

def trained_on(artifact: ArtifactRecord) -> list[str]:
    """The dataset versions in the artifact's weights: ``lineage.train_datasets`` when recorded, else
    ``lineage.datasets`` without its second entry (register_adapter's callers list train, eval, then any
    further data trained on, such as replay)."""
    lineage = artifact.lineage or {}
    if isinstance(lineage.get("train_datasets"), list):
        return list(lineage["train_datasets"])
    datasets = [d for d in lineage.get("datasets") or [] if isinstance(d, str)]
    return [d for i, d in enumerate(datasets) if i != 1] if len(datasets) > 1 else datasets


def licence_conflict(store: Store, artifact: ArtifactRecord, use: str) -> tuple[str | None, list[str]]:
    """(why the training data may not be used for ``use``, or None; dataset ids not in this store, whose
    licences could not be checked). Licences and retention dates come from each row's provenance."""
    from tuneops.data.ingest import load_manifest
    from tuneops.data.licenses import check_use

    if use not in USES:
        raise InvalidInput(f"use {use!r} is not one of {', '.join(USES)}")
    unverified = []
    for ds_id in trained_on(artifact):
        with store.session(write=False) as s:
            ds = s.get(DatasetRecord, ds_id)
            if ds is not None:
                s.expunge(ds)
        if ds is None:
            unverified.append(ds_id)
            continue
        summary = ds.summary or {}
        permitted = summary.get("permitted_uses")
        if isinstance(permitted, list) and use in permitted and not summary.get("retention_until_min"):
            continue  # every row permits it and none has a retention date: no need to read the manifest
        try:
            rows = load_manifest(store, ds)["rows"]
        except (InvalidInput, OSError, ValueError, KeyError):
            unverified.append(ds_id)
            continue
        checked = check_use(rows, use)
        if not checked.ok:
            return checked.message(use, f"training data {ds_id}"), unverified
    return None, unverified


def declared_use(s: Session, name: str, stage: str) -> str | None:
    """The use an alias was declared for: the newest ``use`` recorded with its promotions (audit log)."""
    events = s.scalars(select(AuditEvent).where(AuditEvent.record_type == "alias",
                                                AuditEvent.record_id == f"{name}@{stage}",
                                                AuditEvent.action == "alias.promote")
                       .order_by(AuditEvent.seq.desc()))
    return next((e.details["use"] for e in events if isinstance(e.details, dict) and e.details.get("use")), None)


def recipe_use(store: Store, artifact: ArtifactRecord) -> str | None:
    """The intended use the artifact's recipe declared (``data.use``; commercial when left out)."""
    import yaml

    if not artifact.run_id:
        return None
    with store.session(write=False) as s:
        run = s.get(RunRecord, artifact.run_id)
        text_ = run.recipe_yaml if run is not None else None
    try:
        spec = yaml.safe_load(text_) if text_ else None
    except yaml.YAMLError:
        return None
    data = spec.get("data") if isinstance(spec, dict) else None
    if not isinstance(data, dict):
        return None
    use = data.get("use", "commercial")
    return use if use in USES else None


def _check_untainted(store: Store, artifact: ArtifactRecord) -> None:
    with store.session(write=False) as s:
        taints = s.scalars(select(TaintRecord).where(TaintRecord.artifact_id == artifact.id)).all()
        if taints:
            raise GateFailed(f"{artifact.id} is tainted: it was trained on {taints[0].dataset_id}, whose rows were "
                             f"erased ({taints[0].erasure_id}); it cannot be promoted (--force does not change that)",
                             hint="retrain on the clean version (`tuneops data impact` says how)")


def _check_gates(store: Store, artifact: ArtifactRecord) -> EvalReportRecord:
    """A run that succeeded and a passing eval report that gated the task itself (GateFailed otherwise)."""
    if artifact.run_id is None:
        raise GateFailed(f"{artifact.id} was not produced by a tuneops run, so no run vouches for it",
                         hint="pass --force --reason '…' to promote it anyway (logged)")
    with store.session(write=False) as s:
        run = s.get(RunRecord, artifact.run_id)
        run_state = run.state if run is not None else None
    if run_state != "succeeded":
        raise GateFailed(f"{artifact.id} comes from run {artifact.run_id}, which "
                         + (f"is {run_state}" if run_state else "is not in this store")
                         + "; only artifacts of succeeded runs are promoted",
                         hint="re-run the recipe, or pass --force --reason '…' (logged)")
    report = latest_eval(store, artifact.id, gated=True)
    if report is None:
        raise GateFailed(f"{artifact.id} has no eval report that judged gates, so it cannot be promoted",
                         hint=f"evaluate it with gates first (`tuneops eval run {artifact.id} --recipe R --gates R`), "
                              "or pass --force --reason '…' (logged)")
    if not report.passed:
        failed = "; ".join(f"{g['gate']} (candidate {g.get('candidate')}, needed {g.get('threshold')})"
                           for g in report.gates if not g["passed"])
        why = f"failed its gates in {report.id}: {failed}" if failed else \
            f"has no passing gate on its own task's eval data in {report.id}"
        raise GateFailed(f"{artifact.id} {why}; promotion refused",
                         hint="retrain or fix the recipe's gates, or pass --force --reason '…' (logged)")
    return report


def check_promotable(store: Store, artifact: ArtifactRecord, *, use: str | None = None,
                     force: bool = False) -> tuple[EvalReportRecord | None, dict]:
    """Every condition of a promotion that does not depend on the alias's current target, in this order:
    intact files (IntegrityError), a valid trusted signature (SignatureError), a sunset not passed
    (SunsetPassed), no taint and, with ``use``, training data licensed for it (GateFailed) — none of
    these yields to ``force`` — then a succeeded run and a passing gated eval report (GateFailed; skipped
    with ``force``). Returns (the report or None when forced, facts for the audit log)."""
    artifact_dir(store, artifact)
    facts: dict = {"signed_by": verify_signature(store, artifact)}
    status = check_sunset(artifact, "promoted")
    if status:
        facts["deprecated_sunset"] = status["sunset"]
    _check_untainted(store, artifact)
    if use is not None:
        conflict, unverified = licence_conflict(store, artifact, use)
        if conflict:
            raise GateFailed(f"{artifact.id}: {conflict}; the alias is declared for {use} use, so it cannot be "
                             "promoted (--force does not change that)",
                             hint="retrain on data whose licences permit it, or promote to an alias declared for "
                                  "the use the model really has (`--use research|internal|commercial`)")
        if unverified:
            facts["licence_unverified"] = unverified
    return (None if force else _check_gates(store, artifact)), facts


def _check_same_base(s: Session, name: str, stage: str, current: AliasRecord | None, artifact: ArtifactRecord) -> None:
    if current is None:
        return
    now = s.get(ArtifactRecord, current.artifact_id)
    if now is not None and now.base_id != artifact.base_id:
        raise GateFailed(f"{name}@{stage} serves {now.id}, trained on {now.base_id}, but {artifact.id} was trained "
                         f"on {artifact.base_id}: a server of {name}@{stage} runs one base, so the move would break it",
                         hint="promote it to an alias of its own, or pass --force --reason '…' if the alias's "
                              "clients move to the new base (logged)")


def promote(store: Store, artifact_id: str, alias: str, *, force: bool = False, reason: str | None = None,
            expect_current: str | None = None, use: str | None = None) -> AliasMove:
    """Point ``alias`` (name@stage) at an artifact that meets every condition of :func:`check_promotable`
    and stays on the alias's base.

    ``use`` declares what the alias is for (commercial, internal, research); without it the alias keeps
    its declared use, and an alias promoted for the first time takes the artifact's recipe's
    (``data.use``), else commercial. It is recorded with the move (audit log). ``force`` (with a
    ``reason``, logged) overrides the eval gates, the run's state and a base change — never integrity,
    signature, sunset, taint or licence. ``expect_current`` makes the move conditional: it is refused
    unless the alias points there (``"none"``: the alias must not exist yet)."""
    name, stage = parse_alias(alias)
    if use is not None and use not in USES:
        raise InvalidInput(f"--use {use!r} is not one of {', '.join(USES)}")
    if force and (not reason or not reason.strip()):
        raise InvalidInput("--force needs --reason: an override of the gates is logged with its reason")
    artifact = store.get_artifact(artifact_id)
    with store.session(write=False) as s:
        declared = declared_use(s, name, stage)
    effective_use = use or declared or recipe_use(store, artifact) or "commercial"
    report, facts = check_promotable(store, artifact, use=effective_use, force=force)

    def move(s: Session) -> AliasMove:
        current = _lock_alias(s, name, stage)
        now_at = current.artifact_id if current else None
        if expect_current is not None and (now_at or "none") != expect_current:
            raise StateError(f"{name}@{stage} points at {now_at or 'nothing'}, not {expect_current}; nothing changed",
                             hint=f"see `tuneops registry history {name}@{stage}`")
        if now_at == artifact.id:
            raise StateError(f"{name}@{stage} already points at {artifact.id}")
        if declared_use(s, name, stage) != declared:
            raise StateError(f"the declared use of {name}@{stage} changed while promoting; nothing changed",
                             hint="retry")
        if not force:
            _check_same_base(s, name, stage, current, artifact)
        details = {**facts, "use": effective_use}
        if declared and effective_use != declared:
            details["use_changed_from"] = declared
        return _append_move(s, store, name=name, stage=stage, action="promote", current=current,
                            to_artifact=artifact.id, forced=force,
                            reason=reason if force else f"gates passed in {report.id}", **details)

    return store.transact(move)


def rollback(store: Store, alias: str, *, reason: str | None = None,
             expect_current: str | None = None) -> AliasMove:
    """Re-point ``alias`` to the target it had before its current one (read under the alias lock,
    so concurrent moves can never make it roll back to a target the history does not give). The
    target must still be intact, validly signed and before its sunset: a rollback lands on something
    a server will serve."""
    name, stage = parse_alias(alias)

    def move(s: Session) -> AliasMove:
        current = _lock_alias(s, name, stage)
        moves = s.scalars(select(AliasMove).where(AliasMove.name == name, AliasMove.stage == stage)
                          .order_by(AliasMove.seq)).all()
        stack = _stack(moves)
        if current is None or len(stack) < 2:
            raise StateError(f"{name}@{stage} has no earlier target to roll back to",
                             hint=f"see `tuneops registry history {name}@{stage}`")
        if expect_current is not None and current.artifact_id != expect_current:
            raise StateError(f"{name}@{stage} points at {current.artifact_id}, not {expect_current}; nothing changed",
                             hint=f"see `tuneops registry history {name}@{stage}`")
        target = store.get_artifact(stack[-2])
        # Rolling back to files that were tampered with, or to a record nobody trusted signed, would serve them.
        artifact_dir(store, target)
        check_release(store, target, doing="rolled back to")
        return _append_move(s, store, name=name, stage=stage, action="rollback", current=current,
                            to_artifact=target.id, reason=reason)

    return store.transact(move)


def resolve_alias(store: Store, alias: str, *, serving: bool = False) -> ArtifactRecord:
    """The alias's target. ``serving``: an alias switched off (`tuneops registry disable`) raises
    AliasDisabled instead; evaluating, exporting or showing its target still works."""
    name, stage = parse_alias(alias)
    with store.session(write=False) as s:
        rec = s.get(AliasRecord, (name, stage))
        if rec is None:
            raise NotFound(f"alias {name}@{stage} does not exist", hint="see `tuneops registry list`")
        artifact_id, disabled = rec.artifact_id, rec.disabled_reason
    if serving and disabled is not None:
        raise AliasDisabled(f"{name}@{stage} is switched off: {disabled}", alias=f"{name}@{stage}",
                            hint=f"`tuneops registry enable {name}@{stage} --reason …` switches it back on")
    return store.get_artifact(artifact_id)


def set_enabled(store: Store, alias: str, enabled: bool, *, reason: str | None) -> AliasMove:
    """Switch an alias off for serving (``enabled=False``) or back on, as a ``disable`` / ``enable`` move in
    its hash-chained history. Its target and rollback list stay as they are; a promote or rollback while
    it is off keeps it off. Refused (StateError) when it already is in that state."""
    name, stage = parse_alias(alias)
    action = "enable" if enabled else "disable"
    if not reason or not reason.strip():
        raise InvalidInput(f"switching {name}@{stage} {'on' if enabled else 'off'} needs --reason: it is logged "
                           "in the alias's history")
    reason = reason.strip()

    def move(s: Session) -> AliasMove:
        current = _lock_alias(s, name, stage)
        if current is None:
            raise NotFound(f"alias {name}@{stage} does not exist", hint="see `tuneops registry list`")
        if (current.disabled_reason is None) == enabled:
            raise StateError(f"{name}@{stage} is already {'on' if enabled else 'off'}"
                             + (f" (switched off: {current.disabled_reason})" if not enabled else ""),
                             hint=f"see `tuneops registry history {name}@{stage}`")
        current.disabled_reason = None if enabled else reason
        return _append_move(s, store, name=name, stage=stage, action=action, current=current,
                            to_artifact=current.artifact_id, reason=reason)

    return store.transact(move)


def aliases(store: Store) -> list[AliasRecord]:
    return store.all(AliasRecord, order_by=AliasRecord.name)
