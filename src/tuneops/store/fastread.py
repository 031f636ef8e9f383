"""Read-only listings straight from the SQLite file, without SQLAlchemy (which takes 0.3-0.5 s to import).

``tuneops models|data|runs|eval|registry list`` print what ``Store.all`` would give them, and
nothing more; on the default SQLite store they get it here from the stdlib ``sqlite3`` module:
the file is opened read-only (``file:…?mode=ro``; WAL lets it read while a writer works), no
schema setup runs, nothing is written. Each ``list_*`` function returns the rows exactly as the
command prints them (plain dicts, datetimes as "%Y-%m-%d %H:%M:%S", the same order), or
``None`` where this module does not apply and the caller must take the SQLAlchemy path, which
then behaves as it always did:

* the store is not a SQLite file (PostgreSQL, …), or its URL is one this module does not parse;
* the store or its database file does not exist (the SQLAlchemy path raises NotFound);
* the schema is older than this code (a table or column is missing: ``sqlite3.OperationalError``;
  opening the store through ``Store`` upgrades it in place), or anything else goes wrong reading.

Values come back as SQLAlchemy would hand them over: DATETIME columns are parsed with
``datetime.fromisoformat`` (naive, UTC), BOOLEAN ones become ``bool``, JSON ones are decoded.
"""

import json
import os
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

from tuneops.store.liveness import listing_row

DEFAULT_HOME = ".tuneops"  # as tuneops.store.store.DEFAULT_HOME
SQLITE_SCHEMES = ("sqlite", "sqlite+pysqlite")  # drivers that are the stdlib sqlite3 module
DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # as tuneops.cli.render._plain
T = TypeVar("T")


def sqlite_file(home: Path | str | None = None, db_url: str | None = None) -> Path | None:
    """The SQLite file that ``Store.open(home, create=False)`` would read, if a fast read can stand in
    for it (see the module docstring); else None. ``home`` and ``db_url`` default as in ``Store``:
    $TUNEOPS_HOME or ./.tuneops, $TUNEOPS_DB_URL or the store's own tuneops.db."""
    home = Path(home or os.environ.get("TUNEOPS_HOME") or DEFAULT_HOME).resolve()
    default_url = f"sqlite:///{home / 'tuneops.db'}"
    url = db_url or os.environ.get("TUNEOPS_DB_URL") or default_url
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SQLITE_SCHEMES or not rest.startswith("/"):
        return None  # another backend, or in-memory SQLite (sqlite://)
    name = rest[1:]  # sqlite:///rel.db -> rel.db (relative to the cwd), sqlite:////abs.db -> /abs.db
    if not name or name == ":memory:" or name.startswith("file:") or any(c in name for c in "?#%"):
        return None  # URI filenames, query parameters, escapes: leave those to SQLAlchemy's URL parser
    path = Path(name)
    # Store.exists, for SQLite: what tells a store apart from a folder that is not one.
    store_exists = (home / "tuneops.db").exists() or (url != default_url and home.is_dir())
    return path if store_exists and path.is_file() else None


def _read(fn: Callable[[sqlite3.Connection], T], home, db_url) -> T | None:
    """``fn(connection)`` on a read-only connection inside one read transaction (one snapshot of the
    store); None where the fast path does not apply or reading fails in any way."""
    path = sqlite_file(home, db_url)
    if path is None:
        return None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        conn.execute("BEGIN")
        return fn(conn)
    except (sqlite3.Error, ValueError, TypeError):  # an older schema (no such table/column), an odd value…
        return None
    finally:
        conn.close()


def _converter(decl_type: str) -> Callable[[Any], Any] | None:
    """How SQLAlchemy turns a stored value of this declared column type into a Python value."""
    t = decl_type.upper()
    if t in ("DATETIME", "TIMESTAMP"):
        return datetime.fromisoformat
    if t == "BOOLEAN":
        return bool
    if t == "JSON":
        return json.loads
    return None


def _select(conn: sqlite3.Connection, table: str, columns: Iterable[str], order_by: str) -> list[dict]:
    """Rows of ``table`` (the given columns, in the order SQLAlchemy's ``ORDER BY order_by`` gives them)
    as dicts of Python values."""
    columns = list(dict.fromkeys(columns))  # unique, in order
    if not all(c.isidentifier() for c in columns + [table, order_by]):
        raise ValueError(f"not a plain column name in {columns!r}")
    types = {row[1]: row[2] for row in conn.execute(f"PRAGMA table_info([{table}])")}
    convert = [_converter(types.get(c, "")) for c in columns]
    # [name], not "name": SQLite reads a double-quoted name that is no column as a string literal,
    # which would hide a missing column instead of raising "no such column".
    sql = f"SELECT {', '.join(f'[{c}]' for c in columns)} FROM [{table}] ORDER BY [{order_by}]"
    return [{c: (v if v is None or f is None else f(v)) for c, f, v in zip(columns, convert, row)}
            for row in conn.execute(sql)]


def _plain(v: Any) -> Any:
    return v.strftime(DATETIME_FORMAT) if isinstance(v, datetime) else v


def _pick(rec: dict, fields: Sequence[str]) -> dict:
    return {f: _plain(rec.get(f)) for f in fields}


# -- the listings (each as its command in tuneops.cli.main prints it) ---------------------------
def list_bases(fields: Sequence[str], *, home=None, db_url=None) -> list[dict] | None:
    """``tuneops models list``."""
    return _read(lambda c: [_pick(r, fields) for r in _select(c, "bases", fields, "created_at")], home, db_url)


def list_datasets(fields: Sequence[str], *, home=None, db_url=None) -> list[dict] | None:
    """``tuneops data list``: each version with every name that points at it, oldest link first."""
    def read(conn):
        names: dict[str, list[str]] = {}
        for link in _select(conn, "dataset_names", ("name", "dataset_id", "created_at"), "created_at"):
            names.setdefault(link["dataset_id"], []).append(link["name"])
        return [{**_pick(r, fields), "names": ", ".join(names.get(r["id"], [r["name"]]))}
                for r in _select(conn, "datasets", (*fields, "id", "name"), "created_at")]
    return _read(read, home, db_url)


LIVENESS_COLUMNS = ("state", "pid", "host", "heartbeat_at", "updated_at", "created_at")


def list_runs(fields: Sequence[str], *, as_json: bool, home=None, db_url=None) -> list[dict] | None:
    """``tuneops runs list``: a stale run (active, nobody working on it) says so: ``"stale": true`` in
    JSON, "running (stale)" in the table."""
    def read(conn):
        rows = []
        for r in _select(conn, "runs", (*fields, *LIVENESS_COLUMNS), "created_at"):
            rows.append(listing_row(_pick(r, fields), r, as_json=as_json))
        return rows
    return _read(read, home, db_url)


def list_eval_reports(fields: Sequence[str], *, home=None, db_url=None) -> list[dict] | None:
    """``tuneops eval list``."""
    return _read(lambda c: [_pick(r, fields) for r in _select(c, "eval_reports", fields, "created_at")],
                 home, db_url)


def list_artifacts(fields: Sequence[str], *, home=None, db_url=None) -> list[dict] | None:
    """``tuneops registry list``: each artifact with the aliases (name@stage) pointing at it."""
    def read(conn):
        by_artifact: dict[str, list[str]] = {}
        for a in _select(conn, "aliases", ("name", "stage", "artifact_id", "disabled_reason"), "name"):
            off = " (off)" if a["disabled_reason"] is not None else ""
            by_artifact.setdefault(a["artifact_id"], []).append(f"{a['name']}@{a['stage']}{off}")
        return [{**_pick(r, fields), "aliases": ", ".join(by_artifact.get(r["id"], [])) or None}
                for r in _select(conn, "artifacts", (*fields, "id"), "created_at")]
    return _read(read, home, db_url)
