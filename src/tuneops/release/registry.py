"""The registry: artifacts pinned by content hash, aliases (name@stage) whose every move is logged.

Promotion requires a passing eval report for the artifact (or ``force`` with a reason, which
is logged). Rollback walks the alias's history: each promote pushes a target, each rollback
pops one, so rolling back twice after three promotions lands on the first.
"""

import re
import subprocess
from functools import lru_cache
from pathlib import Path

from sqlalchemy import select

import tuneops
from tuneops.errors import GateFailed, InvalidInput, NotFound, StateError
from tuneops.store import Store
from tuneops.store.ids import content_id
from tuneops.store.schema import AliasMove, AliasRecord, ArtifactRecord, EvalReportRecord, utcnow
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
                     dataset_ids: list[str], recipe_hash: str | None) -> tuple[ArtifactRecord, bool]:
    """Pin an adapter directory as ``ad-<sha256 prefix>`` with its lineage; (record, created)."""
    manifest = store.blobs.tree_manifest(adapter_dir)
    digest = store.blobs.tree_digest(manifest)
    artifact_id = content_id("ad", digest)
    with store.session() as s:
        existing = s.get(ArtifactRecord, artifact_id)
        if existing is not None:
            s.expunge(existing)
            return existing, False
    store.get_base(base_id)
    tree, _ = store.blobs.put_tree(adapter_dir, manifest)
    lineage = {"base": base_id, "datasets": dataset_ids, "recipe_sha256": recipe_hash, "run": run_id,
               "code_version": code_version(), "files": manifest}
    rec = ArtifactRecord(id=artifact_id, kind="adapter", method=method, tree=tree, base_id=base_id, run_id=run_id,
                         lineage=lineage)
    with store.session() as s:
        s.add(rec)
        store.audit(s, "artifact.register", "artifact", artifact_id, run=run_id, base=base_id)
    return rec, True


def artifact_dir(store: Store, artifact: ArtifactRecord) -> Path:
    return store.blobs.tree_path(artifact.tree)


def latest_eval(store: Store, artifact_id: str) -> EvalReportRecord | None:
    with store.session() as s:
        rec = s.scalars(select(EvalReportRecord).where(EvalReportRecord.artifact_id == artifact_id)
                        .order_by(EvalReportRecord.created_at.desc())).first()
        if rec is not None:
            s.expunge(rec)
        return rec


def _stack(moves: list[AliasMove]) -> list[str]:
    stack: list[str] = []
    for mv in moves:
        if mv.action == "promote":
            stack.append(mv.to_artifact)
        elif mv.action == "rollback" and stack:
            stack.pop()
    return stack


def promote(store: Store, artifact_id: str, alias: str, *, force: bool = False,
            reason: str | None = None) -> AliasMove:
    """Point ``alias`` (name@stage) at an artifact whose latest eval report passed its gates."""
    name, stage = parse_alias(alias)
    artifact = store.get_artifact(artifact_id)
    report = latest_eval(store, artifact_id)
    if not force:
        if report is None:
            raise GateFailed(f"{artifact_id} has no eval report, so it cannot be promoted to {name}@{stage}",
                             hint=f"evaluate it first (`tuneops eval run {artifact_id} --recipe R`), "
                                  "or pass --force --reason '…' (logged)")
        if not report.passed:
            failed = "; ".join(f"{g['gate']} (candidate {g['candidate']}, needed {g['threshold']})"
                               for g in report.gates if not g["passed"])
            raise GateFailed(f"{artifact_id} failed its gates in {report.id}: {failed}; promotion refused",
                             hint="retrain, or pass --force --reason '…' to override (logged in the audit log)")
    elif not reason:
        raise InvalidInput("--force needs --reason: an override of the gates is logged with its reason")
    with store.session() as s:
        current = s.get(AliasRecord, (name, stage), with_for_update=True)
        if current is not None and current.artifact_id == artifact.id:
            raise StateError(f"{name}@{stage} already points at {artifact.id}")
        move = AliasMove(name=name, stage=stage, action="promote", to_artifact=artifact.id,
                         from_artifact=current.artifact_id if current else None, actor=default_actor(),
                         reason=reason if force else (f"gates passed in {report.id}" if report else None))
        if current is None:
            s.add(AliasRecord(name=name, stage=stage, artifact_id=artifact.id, updated_at=utcnow()))
        else:
            current.artifact_id = artifact.id
            current.updated_at = utcnow()
        s.add(move)
        store.audit(s, "alias.promote", "alias", f"{name}@{stage}", to=artifact.id, forced=force,
                    reason=move.reason, previous=move.from_artifact)
        s.flush()
        s.expunge(move)
        return move


def rollback(store: Store, alias: str, *, reason: str | None = None) -> AliasMove:
    """Re-point ``alias`` to the target it had before its current one."""
    name, stage = parse_alias(alias)
    stack = _stack(store.alias_history(name, stage))
    if len(stack) < 2:
        raise StateError(f"{name}@{stage} has no earlier target to roll back to",
                         hint=f"see `tuneops registry history {name}@{stage}`")
    with store.session() as s:
        current = s.get(AliasRecord, (name, stage), with_for_update=True)
        move = AliasMove(name=name, stage=stage, action="rollback", from_artifact=current.artifact_id,
                         to_artifact=stack[-2], actor=default_actor(), reason=reason)
        current.artifact_id = stack[-2]
        current.updated_at = utcnow()
        s.add(move)
        store.audit(s, "alias.rollback", "alias", f"{name}@{stage}", to=stack[-2], previous=move.from_artifact,
                    reason=reason)
        s.flush()
        s.expunge(move)
        return move


def resolve_alias(store: Store, alias: str) -> ArtifactRecord:
    name, stage = parse_alias(alias)
    with store.session() as s:
        rec = s.get(AliasRecord, (name, stage))
        if rec is None:
            raise NotFound(f"alias {name}@{stage} does not exist", hint="see `tuneops registry list`")
        artifact_id = rec.artifact_id
    return store.get_artifact(artifact_id)


def aliases(store: Store) -> list[AliasRecord]:
    return store.all(AliasRecord, order_by=AliasRecord.name)
