"""Concurrent registry writers (issue 11), small: 4 processes × 40 mixed writes — ingest, register,
sign, promote, rollback, deprecate, run events and transitions — on SQLite and on PostgreSQL. Nothing a
writer saw commit is lost, nothing is corrupted, every alias history is a chain, the ledger verifies,
and no error (a "database is locked" above all) reaches a caller. benchmarks/registry.py runs 8 × 500.

Also: `audit --verify` on a ledger written by concurrent processes still detects an edited, a deleted
and a reordered entry (tests/store/test_ledger.py covers each on hand-made entries, on both databases)."""

import pytest
from sqlalchemy import text

from tests.conftest import PG_URL, _pg_database_url
from tests.release.registry_workload import run_workload

BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


@pytest.fixture(scope="module", params=BACKENDS)
def raced(request, tmp_path_factory, signing_key):
    """(home, db_url, result) of one workload per backend, shared by the tests below."""
    db_url = _pg_database_url() if request.param == "postgresql" else None
    home = tmp_path_factory.mktemp(f"registry-race-{request.param}") / "store"
    return home, db_url, run_workload(home, db_url, writers=4, ops=40, timeout_s=240)


def test_concurrent_writers_lose_and_corrupt_nothing(raced):
    _, _, r = raced
    assert r["errors"] == []  # no lock error, no raw IntegrityError, no unexpected refusal reached a caller
    assert r["ops"] == 4 * 40
    assert r["lost"] == 0, r["lost_examples"]
    assert r["corrupted"] == 0, r["corrupted_examples"]
    assert r["inconsistent_moves"] == 0
    assert all(rep["ok"] for rep in r["ledger"].values()), r["ledger"]
    assert all(n == 1 for n in r["shared_rowset_versions"].values())  # same rows, one version, any race
    # the workload really did write concurrently, of every kind
    kinds = r["committed_by_kind"]
    assert r["alias_moves"] >= 20
    for kind in ("dataset", "artifact", "move", "event"):
        assert kinds.get(kind, 0) > 0, kinds


def _tamper(home, db_url, stmt):
    """Raw SQL as someone with database access: the audit table's append-only triggers dropped first."""
    from tuneops.store import Store

    store = Store(home, db_url=db_url)
    with store.engine.begin() as conn:
        if store.engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER IF EXISTS audit_no_update"))
            conn.execute(text("DROP TRIGGER IF EXISTS audit_no_delete"))
        else:
            conn.execute(text("DROP TRIGGER IF EXISTS audit_append_only ON audit"))
        conn.execute(text(stmt))
    store.engine.dispose()


def _verify_cli(home, db_url, monkeypatch, capsys):
    from tuneops.cli.main import run_cli

    monkeypatch.setenv("TUNEOPS_HOME", str(home))
    if db_url:
        monkeypatch.setenv("TUNEOPS_DB_URL", db_url)
    else:
        monkeypatch.delenv("TUNEOPS_DB_URL", raising=False)
    capsys.readouterr()
    code = run_cli(["registry", "audit", "--verify"])
    out = capsys.readouterr()
    return code, out.out + out.err


def _copy(raced, tmp_path):
    """A copy of the raced store to tamper with: its folder, and its database (SQLite's backup API;
    PostgreSQL: CREATE DATABASE … TEMPLATE, the workload's connections are all closed by now)."""
    import shutil
    import sqlite3
    import uuid

    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    home, db_url, _ = raced
    dest = tmp_path / "store"
    shutil.copytree(home, dest, ignore=shutil.ignore_patterns("tuneops.db*"))
    if db_url is None:
        src, dst = sqlite3.connect(home / "tuneops.db"), sqlite3.connect(dest / "tuneops.db")
        src.backup(dst)
        src.close()
        dst.close()
        return dest, None
    name = f"tuneops_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{make_url(db_url).database}"'))
    admin.dispose()
    return dest, make_url(db_url).set(database=name).render_as_string(hide_password=False)


def _seqs(home, db_url, chain):
    from tuneops.store import Store

    store = Store(home, db_url=db_url)
    with store.engine.connect() as conn:
        seqs = [r[0] for r in conn.execute(text(f"SELECT seq FROM {chain} ORDER BY seq"))]
    store.engine.dispose()
    return seqs


@pytest.mark.parametrize("tamper", ["edited", "deleted", "reordered"])
@pytest.mark.parametrize("chain", ["audit", "alias_moves"])
def test_verify_names_tampering_in_a_concurrently_written_ledger(raced, tmp_path, monkeypatch, capsys,
                                                                 tamper, chain):
    home, db_url = _copy(raced, tmp_path)
    code, out = _verify_cli(home, db_url, monkeypatch, capsys)
    assert code == 0, out
    seqs = _seqs(home, db_url, chain)
    assert len(seqs) > 10
    a, b = seqs[len(seqs) // 3], seqs[2 * len(seqs) // 3]
    if tamper == "edited":
        _tamper(home, db_url, f"UPDATE {chain} SET actor = 'mallory' WHERE seq = {a}")
    elif tamper == "deleted":
        _tamper(home, db_url, f"DELETE FROM {chain} WHERE seq = {a}")
    else:  # two whole rows swap places (seq numbers exchanged, hashes travel with them)
        _tamper(home, db_url, f"UPDATE {chain} SET seq = -1 WHERE seq = {a}")
        _tamper(home, db_url, f"UPDATE {chain} SET seq = {a} WHERE seq = {b}")
        _tamper(home, db_url, f"UPDATE {chain} SET seq = {b} WHERE seq = -1")
    code, out = _verify_cli(home, db_url, monkeypatch, capsys)
    assert code != 0, out
    assert tamper in out, out
    i = seqs.index(a)
    named = f"between seq {seqs[i - 1]} and seq {seqs[i + 1]}" if tamper == "deleted" else f"audit entry seq {a}" \
        if chain == "audit" else f"{chain} entry seq {a}"
    assert named in out, out
