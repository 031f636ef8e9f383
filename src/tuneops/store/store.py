"""The Store: metadata DB (SQLite by default, any SQLAlchemy URL) + content-addressed blobs.

Every mutating call runs in one transaction and appends to the audit log in that same
transaction, so a record never exists without the event that explains it.
"""

import getpass
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from sqlalchemy import create_engine, event, inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError as DBIntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from tuneops.errors import Contention, NotFound, StateError
from tuneops.store.blobs import BlobStore
from tuneops.store.schema import (
    AliasMove,
    AliasRecord,
    ArtifactRecord,
    AuditEvent,
    Base,
    BaseModelRecord,
    DatasetName,
    DatasetRecord,
    ErasureRecord,
    EvalReportRecord,
    RunEvent,
    RunRecord,
    utcnow,
)

DEFAULT_HOME = ".tuneops"
_SCHEMA_LOCK = 7210553511  # PostgreSQL advisory lock key for schema setup
T = TypeVar("T")

# queued -> validating_data -> running -> evaluating -> succeeded | failed | cancelled | interrupted.
# `interrupted` (SIGTERM, a stopped heartbeat) and `paused` (`tuneops runs pause`) are kept apart from
# `failed`: such a run goes back to `queued` on `tuneops runs resume` and continues from its newest
# complete checkpoint. They are "ended" (no process works on them) but not final.
ACTIVE_STATES = ("queued", "validating_data", "running", "evaluating")
TERMINAL_STATES = ("succeeded", "failed", "cancelled", "interrupted", "paused")
RESUMABLE_STATES = ("interrupted", "paused")
RUN_TRANSITIONS: dict[str, set[str]] = {
    "queued": {"validating_data", "failed", "cancelled", "interrupted"},
    "validating_data": {"running", "failed", "cancelled", "interrupted", "paused"},
    "running": {"evaluating", "failed", "cancelled", "interrupted", "paused"},
    "evaluating": {"succeeded", "failed", "cancelled", "interrupted"},
    "succeeded": set(),
    "failed": set(),
    "cancelled": set(),
    "interrupted": {"queued", "cancelled"},
    "paused": {"queued", "cancelled"},
}

def default_actor() -> str:
    """Who acts: ``$TUNEOPS_ACTOR`` (a configured user name), else the OS user; with a signing key, its key
    id too ("alice (key-3f0c…)"), so the audit log answers "who promoted this" with something a key proves."""
    try:
        who = os.environ.get("TUNEOPS_ACTOR") or getpass.getuser()
    except Exception:  # no passwd entry in some containers
        who = "unknown"
    kid = os.environ.get("TUNEOPS_SIGNING_KEY")
    if not kid:
        from pathlib import Path as _P

        default = _P(os.environ.get("TUNEOPS_KEY_DIR") or _P.home() / ".config" / "tuneops" / "keys") / "default"
        try:
            kid = default.read_text().strip()
        except OSError:
            kid = None
    return f"{who} ({kid})" if kid else who


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # The driver's own transaction handling is switched off (isolation_level=None) so that the
        # "begin" hook below decides how each transaction starts: writers take SQLite's write lock
        # up front (BEGIN IMMEDIATE), so two writers queue on the busy timeout instead of both
        # reading, then one failing to upgrade its lock (or, worse, acting on a stale read).
        engine = create_engine(url, connect_args={"timeout": 60, "isolation_level": None})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL: readers (the server) never block writers
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("tuneops_write")
                                 else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True)


def _retryable(exc: BaseException) -> bool:
    """Lock timeouts, deadlocks and serialisation failures: the transaction can simply run again."""
    msg = str(getattr(exc, "orig", exc)).lower()
    return isinstance(exc, OperationalError) and any(
        k in msg for k in ("locked", "busy", "deadlock", "could not serialize", "lock timeout"))


def _open_schema(engine: Engine) -> None:
    """Make sure the database is at the schema this code expects (store/migrations).

    A current store costs one SELECT in a read transaction (no lock, no alembic import). Otherwise the
    upgrade runs in a write transaction (BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL) that
    re-checks first: of several processes opening an old or fresh store at once, one upgrades and the
    others find it done."""
    from tuneops.store import migrations

    sql, triggers = migrations.check_sql(engine.dialect.name)
    models = migrations.models_digest(Base.metadata)
    try:
        with engine.connect() as conn:
            row = conn.execute(text(sql)).first()
    except DBAPIError:  # no version table yet (a fresh store, or one from before the migrations)
        row = None
    if migrations.is_current(row, models, triggers):
        return
    with engine.execution_options(tuneops_write=True).begin() as conn:
        if engine.dialect.name == "postgresql":
            # Several processes may open a fresh database at once; DDL (CREATE OR REPLACE FUNCTION
            # in particular) is not safe to run concurrently, so schema setup takes a lock.
            conn.execute(text(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})"))
        # Under the lock, ask the catalog first: a failed SELECT would abort a PostgreSQL transaction.
        row = conn.execute(text(sql)).first() if inspect(conn).has_table(migrations.VERSION_TABLE) else None
        if not migrations.is_current(row, models, triggers):
            migrations.upgrade(conn, Base.metadata)


class Store:
    """The store rooted at ``home`` (created if needed unless ``create=False``).

    ``db_url`` (else ``$TUNEOPS_DB_URL``, else ``home/tuneops.db``): the metadata database. ``blob_url``
    (else ``$TUNEOPS_BLOB_URL``): an fsspec URL every blob and tree is also written to, and read back
    from (verified) when the local copy under ``home`` is missing; see store/blobs.py."""

    def __init__(self, home: Path | str = DEFAULT_HOME, db_url: str | None = None, *, create: bool = True,
                 blob_url: str | None = None):
        self.home = Path(home).resolve()
        self.db_url = db_url or os.environ.get("TUNEOPS_DB_URL") or f"sqlite:///{self.home / 'tuneops.db'}"
        self.blob_url = blob_url or os.environ.get("TUNEOPS_BLOB_URL") or None
        if not create and not self.exists(self.home, self.db_url):
            raise NotFound(f"no tuneops store at {self.home}",
                           hint="create one with `tuneops init`, or point at yours with --home DIR / $TUNEOPS_HOME")
        self.home.mkdir(parents=True, exist_ok=True)
        self.engine = _make_engine(self.db_url)
        _open_schema(self.engine)
        self._reads = sessionmaker(self.engine, expire_on_commit=False)
        self._writes = sessionmaker(self.engine.execution_options(tuneops_write=True), expire_on_commit=False)
        self.blobs = BlobStore(self.home, remote_url=self.blob_url)
        try:  # the hash chain over the audit log and alias moves (store/ledger.py), hooked on every flush
            from tuneops.store import ledger
        except ImportError:
            ledger = None
        if ledger is not None and hasattr(ledger, "install"):
            ledger.install(self)

    @staticmethod
    def exists(home: Path, db_url: str) -> bool:
        home = Path(home)
        if db_url.startswith("sqlite"):
            return (home / "tuneops.db").exists() or (db_url != f"sqlite:///{home / 'tuneops.db'}" and home.is_dir())
        return (home / "blobs").is_dir()

    @classmethod
    def open(cls, home: Path | str | None = None, *, create: bool = True) -> "Store":
        return cls(home or os.environ.get("TUNEOPS_HOME") or DEFAULT_HOME, create=create)

    def runs_dir(self, run_id: str) -> Path:
        path = self.home / "runs" / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextmanager
    def session(self, *, write: bool = True) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any exception.

        Write transactions hold SQLite's write lock from their first statement, so what they read
        is still true when they commit; pass ``write=False`` for read-only work."""
        with (self._writes if write else self._reads).begin() as s:
            yield s

    def transact(self, fn: Callable[[Session], T], *, attempts: int = 8) -> T:
        """Run ``fn(session)`` in one write transaction, retrying it on lock contention."""
        for attempt in range(attempts):
            try:
                with self.session() as s:
                    return fn(s)
            except OperationalError as e:
                if not _retryable(e) or attempt == attempts - 1:
                    if _retryable(e):
                        raise Contention(f"the store at {self.home} stayed busy through {attempts} attempts",
                                         hint="retry; if it persists, look for a stuck process holding the lock") from None
                    raise
                time.sleep(min(2.0, 0.05 * 2 ** attempt) * random.uniform(0.5, 1.5))
        raise AssertionError("unreachable")

    def insert_once(self, rec, *, on_create: Callable[[Session], None] | None = None):
        """Insert an immutable, content-addressed record unless one with its key exists; (record, created).

        Whatever the race, every caller gets the one stored record: a concurrent insert of the same
        key surfaces as a unique violation, after which the winner's record is returned."""
        model = type(rec)
        key = model.__mapper__.primary_key_from_instance(rec)
        key = key[0] if len(key) == 1 else tuple(key)

        def attempt(s: Session):
            existing = s.get(model, key)
            if existing is not None:
                s.expunge(existing)
                return existing, False
            s.add(rec)
            if on_create:
                on_create(s)
            s.flush()
            s.expunge(rec)
            return rec, True

        try:
            return self.transact(attempt)
        except DBIntegrityError:
            with self.session(write=False) as s:
                existing = s.get(model, key)
                if existing is None:
                    raise
                s.expunge(existing)
                return existing, False

    def audit(self, s: Session, action: str, record_type: str, record_id: str, **details) -> None:
        s.add(AuditEvent(actor=default_actor(), action=action, record_type=record_type,
                         record_id=record_id, details=details))

    # -- lookups ------------------------------------------------------------------------
    def get(self, model, key, what: str, hint: str):
        with self.session(write=False) as s:
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
        """A dataset id (``ds-…``) or a name (the version most recently ingested under it)."""
        with self.session(write=False) as s:
            rec = s.get(DatasetRecord, ref) if ref.startswith("ds-") else s.scalars(
                select(DatasetRecord).join(DatasetName, DatasetName.dataset_id == DatasetRecord.id)
                .where(DatasetName.name == ref)
                .order_by(DatasetName.created_at.desc(), DatasetRecord.created_at.desc())
            ).first()
            if rec is None:
                raise NotFound(f"dataset {ref!r} not found in {self.home}",
                               hint="ingest it with `tuneops data ingest FILE --name NAME`, list with `tuneops data list`")
            for er in s.scalars(select(ErasureRecord)):
                if rec.id in er.datasets:  # every use of a dataset resolves it here: an erased version stops here
                    clean = er.datasets[rec.id].get("replacement")
                    raise StateError(f"dataset {rec.id} had rows erased ({er.id}); it can no longer be used",
                                     hint=f"use its clean version {clean}" if clean else
                                     "every row was erased; ingest new data")
            s.expunge(rec)
            return rec

    def dataset_names(self) -> dict[str, list[str]]:
        """dataset id -> every name that points at it, oldest link first."""
        out: dict[str, list[str]] = {}
        with self.session(write=False) as s:
            for link in s.scalars(select(DatasetName).order_by(DatasetName.created_at)):
                out.setdefault(link.dataset_id, []).append(link.name)
        return out

    def all(self, model, order_by=None) -> list:
        with self.session(write=False) as s:
            rows = s.scalars(select(model).order_by(order_by if order_by is not None else model.created_at)).all()
            for r in rows:
                s.expunge(r)
            return list(rows)

    # -- runs ---------------------------------------------------------------------------
    def add_run_event(self, run_id: str, type_: str, **payload) -> None:
        self.transact(lambda s: s.add(RunEvent(run_id=run_id, type=type_, payload=payload, at=utcnow())))

    def transition_run(self, run_id: str, new_state: str, *, expect: tuple[str, ...] | None = None,
                       **fields) -> RunRecord:
        """Move a run along its state machine (compare-and-swap on its current state): illegal
        moves, or a state other than ``expect``, raise StateError and change nothing."""
        def move(s: Session) -> RunRecord:
            run = s.get(RunRecord, run_id, with_for_update=True)
            if run is None:
                raise NotFound(f"run {run_id!r} not found", hint="list them with `tuneops runs list`")
            if expect is not None and run.state not in expect:
                raise StateError(f"run {run_id} is {run.state}, not {' or '.join(expect)}; nothing changed")
            if new_state not in RUN_TRANSITIONS[run.state]:
                raise StateError(f"run {run_id} cannot go from {run.state} to {new_state}")
            old = run.state
            run.state = new_state
            run.updated_at = utcnow()
            for key, value in fields.items():
                setattr(run, key, value)
            payload = {"from": old, "to": new_state}
            if fields.get("error"):
                payload["reason"] = fields["error"]
            s.add(RunEvent(run_id=run_id, type="state", payload=payload, at=utcnow()))
            self.audit(s, f"run.{new_state}", "run", run_id, **({"reason": fields["error"]} if fields.get("error") else {}))
            s.flush()
            s.expunge(run)
            return run

        return self.transact(move)

    def run_events(self, run_id: str, type_: str | None = None) -> list[RunEvent]:
        with self.session(write=False) as s:
            q = select(RunEvent).where(RunEvent.run_id == run_id)
            if type_:
                q = q.where(RunEvent.type == type_)
            rows = s.scalars(q.order_by(RunEvent.seq)).all()
            for r in rows:
                s.expunge(r)
            return list(rows)

    # -- aliases ------------------------------------------------------------------------
    def alias_history(self, name: str, stage: str) -> list[AliasMove]:
        with self.session(write=False) as s:
            rows = s.scalars(
                select(AliasMove).where(AliasMove.name == name, AliasMove.stage == stage).order_by(AliasMove.seq)
            ).all()
            for r in rows:
                s.expunge(r)
            return list(rows)

    def audit_log(self, limit: int = 100) -> list[AuditEvent]:
        with self.session(write=False) as s:
            rows = s.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(limit)).all()
            for r in rows:
                s.expunge(r)
            return list(reversed(rows))




__all__ = [
    "Store", "RUN_TRANSITIONS", "AliasMove", "AliasRecord", "ArtifactRecord", "AuditEvent",
    "BaseModelRecord", "DatasetName", "DatasetRecord", "EvalReportRecord", "RunEvent", "RunRecord",
]
