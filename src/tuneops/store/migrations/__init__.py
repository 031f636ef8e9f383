"""Schema versions of the store's database, with alembic (run from code: no alembic.ini, no env.py).

Opening a store costs one SELECT when it is current (``check_sql``): the version table
``tuneops_schema_version`` (alembic's own format, under a name of its own, so Optuna's
``alembic_version`` in the same database is never touched) holds the revision and a digest of the
models' tables, columns and indexes. Anything else — no version table (a fresh store, or one made by a
tuneops older than the migrations), an older revision, models that gained a table or a nullable
column, a dropped append-only trigger — takes the slow path, ``upgrade``, under the store's write lock:

1. a store without tuneops tables gets them from the models (``create_all``);
2. alembic runs every revision after the stored one (none stored: from the start). ``0001`` is the
   baseline: it brings a store made by an older tuneops up to the schema of the day the migrations
   began (missing tables and nullable columns, dataset name links), against a frozen copy of that
   schema, never today's models. Every revision is idempotent, so on a store created from the models
   it changes nothing that the models already have;
3. the additive sweep against today's models (new tables, nullable columns, indexes), the append-only
   triggers, and the version row with the models' digest.

Changes that are not additive (an index the models do not declare, NOT NULL, a rename, a data fix)
go in a new revision under ``versions/``; add its id to ``REVISIONS``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import Column, MetaData, String, Table, inspect, select, text, update

VERSION_TABLE = "tuneops_schema_version"
REVISIONS = ("0001", "0002")  # oldest first; tests check this against versions/
BASELINE = REVISIONS[0]
HEAD = REVISIONS[-1]

_VERSION = Table(VERSION_TABLE, MetaData(),
                 Column("version_num", String(32), primary_key=True),  # alembic's column
                 Column("models", String(64), nullable=True))  # digest of the models it was swept against

APPEND_ONLY_SQLITE = [
    "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END",
]
APPEND_ONLY_POSTGRES = [
    "CREATE OR REPLACE FUNCTION tuneops_audit_append_only() RETURNS trigger AS $$ "
    "BEGIN RAISE EXCEPTION 'audit log is append-only'; END; $$ LANGUAGE plpgsql",
    "DROP TRIGGER IF EXISTS audit_append_only ON audit",
    "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
    "FOR EACH ROW EXECUTE FUNCTION tuneops_audit_append_only()",
]
# The one SELECT of a store's open: revision, models digest, how many append-only triggers are in place.
_CHECK = {
    "sqlite": (f"SELECT version_num, models, (SELECT count(*) FROM sqlite_master WHERE type = 'trigger' "
               f"AND name IN ('audit_no_update', 'audit_no_delete')) FROM {VERSION_TABLE}", 2),
    "postgresql": (f"SELECT version_num, models, (SELECT count(*) FROM pg_trigger "
                   f"WHERE tgname = 'audit_append_only') FROM {VERSION_TABLE}", 1),
}


def models_digest(metadata: MetaData) -> str:
    """A short digest of the tables, columns and indexes the models declare: when it changes, the
    additive sweep runs once on each store."""
    lines = []
    for t in sorted(metadata.tables.values(), key=lambda t: t.name):
        cols = ",".join(f"{c.name}{'?' if c.nullable else ''}" for c in t.columns)
        idx = ",".join(sorted(i.name or "" for i in t.indexes))
        lines.append(f"{t.name}({cols})[{idx}]")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def check_sql(dialect: str) -> tuple[str, int] | None:
    """(the SELECT that says whether a store is current, the trigger count it must report)."""
    return _CHECK.get(dialect) or (f"SELECT version_num, models, 0 FROM {VERSION_TABLE}", 0)


def is_current(row, models: str, triggers: int) -> bool:
    return row is not None and row[0] == HEAD and row[1] == models and row[2] == triggers


def stored_revision(conn) -> str | None:
    """The revision a store's database is at (None: not versioned yet)."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(select(_VERSION.c.version_num)).scalar()


def add_missing(conn, metadata: MetaData, *, indexes: bool = True) -> dict[str, list[str]]:
    """Create what ``metadata`` declares and the database lacks: tables, nullable columns, indexes.
    Nothing is altered or dropped. Returns {"tables": [...], "columns": ["table.col", ...], "indexes": [...]}."""
    insp = inspect(conn)
    before = set(insp.get_table_names())
    done: dict[str, list[str]] = {"tables": [], "columns": [], "indexes": []}
    missing = [t for t in metadata.sorted_tables if t.name not in before]
    if missing:
        metadata.create_all(conn, tables=missing)
        done["tables"] = [t.name for t in missing]
    for table in metadata.sorted_tables:
        if table.name not in before:
            continue
        have = {c["name"] for c in insp.get_columns(table.name)}
        for col in table.columns:
            if col.name not in have and col.nullable:
                ddl = col.type.compile(dialect=conn.dialect)
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{col.name}" {ddl}'))
                done["columns"].append(f"{table.name}.{col.name}")
        if indexes and table.indexes:
            have_idx = {i["name"] for i in insp.get_indexes(table.name)}
            for index in sorted(table.indexes, key=lambda i: i.name or ""):
                if index.name and index.name not in have_idx and all(c.name in have or c.nullable
                                                                     for c in index.columns):
                    index.create(conn)
                    done["indexes"].append(index.name)
    return done


def ensure_triggers(conn) -> None:
    """The audit log's append-only triggers (re-created when missing; the ledger's hash chain is what
    detects edits made while they were gone)."""
    if conn.dialect.name == "sqlite":
        for stmt in APPEND_ONLY_SQLITE:  # IF NOT EXISTS: a no-op once they are there
            conn.execute(text(stmt))
    elif conn.dialect.name == "postgresql":
        present = conn.execute(text("SELECT 1 FROM pg_trigger WHERE tgname = 'audit_append_only'")).first()
        if present is None:
            for stmt in APPEND_ONLY_POSTGRES:
                conn.execute(text(stmt))


def script_directory():
    """The revisions shipped in this package, as an alembic ScriptDirectory (and its Config)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent))
    cfg.set_main_option("path_separator", "os")
    return ScriptDirectory.from_config(cfg), cfg


def run_revisions(conn, destination: str = HEAD) -> list[str]:
    """Run the alembic revisions after the stored one up to ``destination`` on ``conn`` (inside the
    caller's transaction); returns the revisions applied."""
    from alembic.runtime.environment import EnvironmentContext

    script, cfg = script_directory()
    applied: list[str] = []

    def upgrade(rev, _context):
        return script._upgrade_revs(destination, rev)

    def record(ctx, step, heads, run_args):  # alembic's on_version_apply hook
        applied.append(step.up_revision_id)

    with EnvironmentContext(cfg, script, fn=upgrade, destination_rev=destination) as env:
        env.configure(connection=conn, version_table=VERSION_TABLE, on_version_apply=record)
        with env.begin_transaction():
            env.run_migrations()
    return applied


def upgrade(conn, metadata: MetaData) -> dict:
    """Bring the store's database to HEAD and to ``metadata`` (see the module docstring). The caller
    holds the store's write lock (BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL) and
    commits: the whole upgrade is one transaction wherever the database's DDL is transactional."""
    from tuneops.errors import StateError

    report: dict = {"from": None, "created": False}
    current = stored_revision(conn)
    report["from"] = current
    if current is not None and current not in REVISIONS:
        raise StateError(f"this store's schema is at revision {current}, which this tuneops does not know: "
                         "a newer tuneops upgraded it",
                         hint="upgrade tuneops (pip install -U tuneops) to use this store")
    if current is None:
        _VERSION.create(conn, checkfirst=True)
        tables = set(inspect(conn).get_table_names())
        if not tables & {t.name for t in metadata.sorted_tables}:
            metadata.create_all(conn)  # a fresh store: today's models; the revisions below are no-ops on it
            report["created"] = True
    else:
        cols = {c["name"] for c in inspect(conn).get_columns(VERSION_TABLE)}
        if "models" not in cols:  # a version table stamped by alembic's own CLI
            conn.execute(text(f"ALTER TABLE {VERSION_TABLE} ADD COLUMN models VARCHAR(64)"))
    report["revisions"] = run_revisions(conn) if current != HEAD else []
    report["added"] = add_missing(conn, metadata)
    ensure_triggers(conn)
    conn.execute(update(_VERSION).values(models=models_digest(metadata)))
    report["to"] = HEAD
    return report
