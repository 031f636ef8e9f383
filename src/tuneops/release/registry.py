"""The registry: artifacts pinned by content hash, aliases (name@stage) whose every move is logged.

Promotion requires a passing eval report for the artifact (or ``force`` with a reason, which
is logged). Rollback walks the alias's history: each promote pushes a target, each rollback
pops one, so rolling back twice after three promotions lands on the first.
"""

import hashlib
import re
import subprocess
from datetime import timezone
from functools import lru_cache
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.orm import Session

import tuneops
from tuneops.errors import GateFailed, InvalidInput, NotFound, StateError
from tuneops.store import Store
from tuneops.store.ids import content_id
from tuneops.store.schema import AliasMove, AliasRecord, ArtifactRecord, EvalReportRecord, RunRecord, TaintRecord, utcnow
from tuneops.store.store import default_actor

ALIAS_RE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]{0,99})(?:@(?P<stage>[a-z0-9][a-z0-9_-]{0,63}))?$")
DEFAULT_STAGE = "production"


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
    template's sha256 and the objective."""
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
    return store.insert_once(rec, on_create=lambda s: store.audit(s, "artifact.register", "artifact", artifact_id,
                                                                  run=run_id, base=base_id))


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
                 to_artifact: str, reason: str | None, **audit_details) -> AliasMove:
    """Record one move under the alias lock: from = the current target, `at` never runs backwards."""
    last = s.scalars(select(AliasMove).where(AliasMove.name == name, AliasMove.stage == stage)
                     .order_by(AliasMove.seq.desc()).limit(1)).first()
    now = utcnow()
    if last is not None:
        last_at = last.at if last.at.tzinfo else last.at.replace(tzinfo=timezone.utc)
        now = max(now, last_at)  # clocks of different writers may disagree; history order may not
    move = AliasMove(name=name, stage=stage, action=action, to_artifact=to_artifact, at=now,
                     from_artifact=current.artifact_id if current else None, actor=default_actor(), reason=reason)
    if current is None:
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


def check_promotable(store: Store, artifact: ArtifactRecord) -> EvalReportRecord:
    """A promotion needs: intact files, a run that succeeded, and a passing eval report that gated
    the task itself. Raises (IntegrityError, GateFailed) naming what is missing."""
    artifact_dir(store, artifact)
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
    with store.session(write=False) as s:
        taints = s.scalars(select(TaintRecord).where(TaintRecord.artifact_id == artifact.id)).all()
        if taints:
            raise GateFailed(f"{artifact.id} is tainted: it was trained on {taints[0].dataset_id}, whose rows were "
                             f"erased ({taints[0].erasure_id}); it cannot be promoted",
                             hint="retrain on the clean version (`tuneops data impact` says how)")
    report = latest_eval(store, artifact.id, gated=True)
    if report is None:
        raise GateFailed(f"{artifact.id} has no eval report that judged gates, so it cannot be promoted",
                         hint=f"evaluate it with gates first (`tuneops eval run {artifact.id} --recipe R --gates R`), "
                              "or pass --force --reason '…' (logged)")
    if not report.passed:
        failed = "; ".join(f"{g['gate']} (candidate {g['candidate']}, needed {g['threshold']})"
                           for g in report.gates if not g["passed"])
        why = f"failed its gates in {report.id}: {failed}" if failed else \
            f"has no passing gate on its own task's eval data in {report.id}"
        raise GateFailed(f"{artifact.id} {why}; promotion refused",
                         hint="retrain or fix the recipe's gates, or pass --force --reason '…' (logged)")
    return report


def promote(store: Store, artifact_id: str, alias: str, *, force: bool = False, reason: str | None = None,
            expect_current: str | None = None) -> AliasMove:
    """Point ``alias`` (name@stage) at an artifact whose latest eval report passed its gates.

    ``expect_current`` makes the move conditional: it is refused unless the alias points there
    (``"none"``: the alias must not exist yet)."""
    name, stage = parse_alias(alias)
    artifact = store.get_artifact(artifact_id)
    if force:
        if not reason or not reason.strip():
            raise InvalidInput("--force needs --reason: an override of the gates is logged with its reason")
        artifact_dir(store, artifact)  # --force overrides gates, never integrity
        report = None
    else:
        report = check_promotable(store, artifact)

    def move(s: Session) -> AliasMove:
        current = _lock_alias(s, name, stage)
        now_at = current.artifact_id if current else None
        if expect_current is not None and (now_at or "none") != expect_current:
            raise StateError(f"{name}@{stage} points at {now_at or 'nothing'}, not {expect_current}; nothing changed",
                             hint=f"see `tuneops registry history {name}@{stage}`")
        if now_at == artifact.id:
            raise StateError(f"{name}@{stage} already points at {artifact.id}")
        return _append_move(s, store, name=name, stage=stage, action="promote", current=current,
                            to_artifact=artifact.id, forced=force,
                            reason=reason if force else f"gates passed in {report.id}")

    return store.transact(move)


def rollback(store: Store, alias: str, *, reason: str | None = None,
             expect_current: str | None = None) -> AliasMove:
    """Re-point ``alias`` to the target it had before its current one (read under the alias lock,
    so concurrent moves can never make it roll back to a target the history does not give)."""
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
        target = stack[-2]
        # Rolling back to files that were tampered with would serve them: refuse.
        artifact_dir(store, store.get_artifact(target))
        return _append_move(s, store, name=name, stage=stage, action="rollback", current=current,
                            to_artifact=target, reason=reason)

    return store.transact(move)


def resolve_alias(store: Store, alias: str) -> ArtifactRecord:
    name, stage = parse_alias(alias)
    with store.session(write=False) as s:
        rec = s.get(AliasRecord, (name, stage))
        if rec is None:
            raise NotFound(f"alias {name}@{stage} does not exist", hint="see `tuneops registry list`")
        artifact_id = rec.artifact_id
    return store.get_artifact(artifact_id)


def aliases(store: Store) -> list[AliasRecord]:
    return store.all(AliasRecord, order_by=AliasRecord.name)
