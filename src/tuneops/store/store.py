"""The Store: metadata DB (SQLite by default, any SQLAlchemy URL) + content-addressed blobs.

Every mutating call runs in one transaction and appends to the audit log in that same
transaction, so a record never exists without the event that explains it.
"""

import getpass
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from tuneops.errors import NotFound, StateError
from tuneops.store.blobs import BlobStore
from tuneops.store.schema import (
    AliasMove,
    AliasRecord,
    ArtifactRecord,
    AuditEvent,
    Base,
    BaseModelRecord,
    DatasetRecord,
    EvalReportRecord,
    RunEvent,
    RunRecord,
    utcnow,
)

DEFAULT_HOME = ".tuneops"

# queued -> validating_data -> running -> evaluating -> succeeded | failed | cancelled
RUN_TRANSITIONS: dict[str, set[str]] = {
    "queued": {"validating_data", "failed", "cancelled"},
    "validating_data": {"running", "failed", "cancelled"},
    "running": {"evaluating", "failed", "cancelled"},
    "evaluating": {"succeeded", "failed", "cancelled"},
    "succeeded": set(),
    "failed": set(),
    "cancelled": set(),
}

_APPEND_ONLY_SQLITE = [
    "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END",
]
_APPEND_ONLY_POSTGRES = [
    "CREATE OR REPLACE FUNCTION tuneops_audit_append_only() RETURNS trigger AS $$ "
    "BEGIN RAISE EXCEPTION 'audit log is append-only'; END; $$ LANGUAGE plpgsql",
    "DROP TRIGGER IF EXISTS audit_append_only ON audit",
    "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
    "FOR EACH ROW EXECUTE FUNCTION tuneops_audit_append_only()",
]


def default_actor() -> str:
    try:
        return os.environ.get("TUNEOPS_ACTOR") or getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL: readers (the server) never block writers
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class Store:
    """Open (creating if needed) the store rooted at ``home``."""

    def __init__(self, home: Path | str = DEFAULT_HOME, db_url: str | None = None):
        self.home = Path(home).resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.db_url = db_url or os.environ.get("TUNEOPS_DB_URL") or f"sqlite:///{self.home / 'tuneops.db'}"
        self.engine = _make_engine(self.db_url)
        Base.metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            statements = _APPEND_ONLY_SQLITE if self.engine.dialect.name == "sqlite" else _APPEND_ONLY_POSTGRES
            if self.engine.dialect.name in ("sqlite", "postgresql"):
                for stmt in statements:
                    conn.execute(text(stmt))
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.blobs = BlobStore(self.home)

    @classmethod
    def open(cls, home: Path | str | None = None) -> "Store":
        return cls(home or os.environ.get("TUNEOPS_HOME") or DEFAULT_HOME)

    def runs_dir(self, run_id: str) -> Path:
        path = self.home / "runs" / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any exception."""
        with self._sessions.begin() as s:
            yield s

    def audit(self, s: Session, action: str, record_type: str, record_id: str, **details) -> None:
        s.add(AuditEvent(actor=default_actor(), action=action, record_type=record_type,
                         record_id=record_id, details=details))

    # -- lookups ------------------------------------------------------------------------
    def get(self, model, key, what: str, hint: str):
        with self.session() as s:
            rec = s.get(model, key)
            if rec is None:
                raise NotFound(f"{what} {key!r} not found in {self.home}", hint=hint)
            s.expunge(rec)
            return rec

    def get_base(self, base_id: str) -> BaseModelRecord:
        return self.get(BaseModelRecord, base_id, "base model", "list them with `tuneops models list`")

    def get_artifact(self, artifact_id: str) -> ArtifactRecord:
        return self.get(ArtifactRecord, artifact_id, "artifact", "list them with `tuneops registry list`")

    def get_run(self, run_id: str) -> RunRecord:
        return self.get(RunRecord, run_id, "run", "list them with `tuneops runs list`")

    def get_eval_report(self, report_id: str) -> EvalReportRecord:
        return self.get(EvalReportRecord, report_id, "eval report", "list them with `tuneops eval list`")

    def resolve_dataset(self, ref: str) -> DatasetRecord:
        """A dataset id (``ds-…``) or a name (its newest version)."""
        with self.session() as s:
            rec = s.get(DatasetRecord, ref) if ref.startswith("ds-") else s.scalars(
                select(DatasetRecord).where(DatasetRecord.name == ref).order_by(DatasetRecord.created_at.desc())
            ).first()
            if rec is None:
                raise NotFound(f"dataset {ref!r} not found in {self.home}",
                               hint="ingest it with `tuneops data ingest FILE --name NAME`, list with `tuneops data list`")
            s.expunge(rec)
            return rec

    def all(self, model, order_by=None) -> list:
        with self.session() as s:
            rows = s.scalars(select(model).order_by(order_by if order_by is not None else model.created_at)).all()
            for r in rows:
                s.expunge(r)
            return list(rows)

    # -- runs ---------------------------------------------------------------------------
    def add_run_event(self, run_id: str, type_: str, **payload) -> None:
        with self.session() as s:
            s.add(RunEvent(run_id=run_id, type=type_, payload=payload))

    def transition_run(self, run_id: str, new_state: str, **fields) -> RunRecord:
        """Move a run along its state machine; illegal moves raise StateError."""
        with self.session() as s:
            run = s.get(RunRecord, run_id, with_for_update=True)
            if run is None:
                raise NotFound(f"run {run_id!r} not found")
            if new_state not in RUN_TRANSITIONS[run.state]:
                raise StateError(f"run {run_id} cannot go from {run.state} to {new_state}")
            old = run.state
            run.state = new_state
            run.updated_at = utcnow()
            for key, value in fields.items():
                setattr(run, key, value)
            s.add(RunEvent(run_id=run_id, type="state", payload={"from": old, "to": new_state}))
            self.audit(s, f"run.{new_state}", "run", run_id)
            s.flush()
            s.expunge(run)
            return run

    def run_events(self, run_id: str, type_: str | None = None) -> list[RunEvent]:
        with self.session() as s:
            q = select(RunEvent).where(RunEvent.run_id == run_id)
            if type_:
                q = q.where(RunEvent.type == type_)
            rows = s.scalars(q.order_by(RunEvent.seq)).all()
            for r in rows:
                s.expunge(r)
            return list(rows)

    # -- aliases ------------------------------------------------------------------------
    def alias_history(self, name: str, stage: str) -> list[AliasMove]:
        with self.session() as s:
            rows = s.scalars(
                select(AliasMove).where(AliasMove.name == name, AliasMove.stage == stage).order_by(AliasMove.seq)
            ).all()
            for r in rows:
                s.expunge(r)
            return list(rows)

    def audit_log(self, limit: int = 100) -> list[AuditEvent]:
        with self.session() as s:
            rows = s.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(limit)).all()
            for r in rows:
                s.expunge(r)
            return list(reversed(rows))




__all__ = [
    "Store", "RUN_TRANSITIONS", "AliasMove", "AliasRecord", "ArtifactRecord", "AuditEvent",
    "BaseModelRecord", "DatasetRecord", "EvalReportRecord", "RunEvent", "RunRecord",
]
