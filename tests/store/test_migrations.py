"""Schema versions: a store made by an older tuneops upgrades in place with its data intact, on SQLite and
PostgreSQL; a current store opens with one SELECT; Optuna's alembic_version table is left alone; several
processes opening an old store at once all succeed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, select, text

from tests.conftest import PG_URL, _pg_database_url
from tests.store.fixtures.old_store import OLD, make_old_store
from tuneops.errors import StateError
from tuneops.store import Store, ledger, migrations
from tuneops.store.schema import AuditEvent, Base, DatasetName

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite"] + (["postgresql"] if PG_URL else []))
def where(request, tmp_path):
    """(home, db_url) of an empty place for a store: a SQLite file in home, or a fresh PostgreSQL database."""
    home = tmp_path / "store"
    if request.param == "postgresql":
        return home, _pg_database_url()
    return home, f"sqlite:///{home / 'tuneops.db'}"


def _version(store) -> tuple[str, str]:
    with store.engine.connect() as conn:
        return tuple(conn.execute(text(f"SELECT version_num, models FROM {migrations.VERSION_TABLE}")).one())


def _indexes(store, table) -> set[str]:
    with store.engine.connect() as conn:
        return {i["name"] for i in inspect(conn).get_indexes(table)}


def test_revisions_constant_matches_the_shipped_scripts():
    script, _ = migrations.script_directory()
    chain = [r.revision for r in reversed(list(script.walk_revisions()))]
    assert tuple(chain) == migrations.REVISIONS
    assert script.get_heads() == [migrations.HEAD]


def test_a_fresh_store_is_created_at_head(where):
    home, url = where
    store = Store(home, db_url=url)
    assert _version(store) == (migrations.HEAD, migrations.models_digest(Base.metadata))
    assert {"ix_audit_record_id"} <= _indexes(store, "audit")
    assert {"ix_alias_moves_name_stage_seq", "ix_alias_moves_name"} <= _indexes(store, "alias_moves")
    with store.engine.connect() as conn:
        assert not inspect(conn).has_table("alembic_version")  # that name is Optuna's
    store.engine.dispose()


def test_an_old_store_upgrades_in_place_with_its_data(where):
    home, url = where
    make_old_store(home, url)
    store = Store(home, db_url=url)

    assert _version(store)[0] == migrations.HEAD
    with store.engine.connect() as conn:
        insp = inspect(conn)
        tables = set(insp.get_table_names())
        run_cols = {c["name"] for c in insp.get_columns("runs")}
    assert {"dataset_names", "checkpoints", "erasures", "taints", "ledger_heads", "trusted_keys", "exports"} <= tables
    assert {"heartbeat_at", "host", "pid", "priority", "worker", "attempts", "control"} <= run_cols
    assert "ix_audit_record_id" in _indexes(store, "audit")

    # The rows the old tuneops wrote read back through today's code.
    base = store.get_base(OLD["base"])
    assert (base.num_parameters, base.license) == (1234, "apache-2.0")
    ds = store.resolve_dataset(OLD["dataset_name"])  # by name: linked by the baseline revision
    assert ds.id == OLD["dataset"] and ds.summary == {"sources": {"crm": 12}}
    run = store.get_run(OLD["run"])
    assert run.state == "succeeded" and run.dataset_ids == [OLD["dataset"]] and run.heartbeat_at is None
    assert [e.payload for e in store.run_events(OLD["run"])] == [{"from": "queued", "to": "running"}]
    art = store.get_artifact(OLD["artifact"])
    assert art.lineage == {"datasets": [OLD["dataset"]]} and art.signature is None
    assert store.get_eval_report(OLD["report"]).passed is True
    moves = store.alias_history(*OLD["alias"])
    assert [(m.action, m.to_artifact, m.actor) for m in moves] == [("promote", OLD["artifact"], "alice")]
    assert [e.record_id for e in store.audit_log()] == OLD["audit_records"]

    # The old rows are sealed into the hash chains, and new writes chain after them.
    store.transact(lambda s: store.audit(s, "store.upgraded", "store", "test"))
    reports = {r.chain: r for r in ledger.verify_all(store)}
    assert reports["audit"].ok and reports["audit"].legacy == 3 and reports["audit"].entries == 1
    assert reports["alias_moves"].ok and reports["alias_moves"].legacy == 1
    # …and the audit log is still append-only.
    with pytest.raises(Exception, match="append-only"):
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE audit SET actor = 'mallory'"))
    store.engine.dispose()

    again = Store(home, db_url=url)  # the second open finds it current and changes nothing
    with again.session(write=False) as s:
        assert s.scalars(select(DatasetName.name)).all() == [OLD["dataset_name"]]
        assert len(s.scalars(select(AuditEvent)).all()) == 4
    again.engine.dispose()


def test_a_current_store_opens_with_one_select_and_no_alembic(where, monkeypatch):
    home, url = where
    Store(home, db_url=url).engine.dispose()
    monkeypatch.setattr(migrations, "upgrade", lambda *a, **k: pytest.fail("a current store was upgraded"))
    statements = []
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        store = Store(home, db_url=url)
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    schema_reads = [s for s in statements if migrations.VERSION_TABLE in s]
    assert len(schema_reads) == 1, statements
    store.engine.dispose()
    code = ("import sys; from tuneops.store import Store; Store(sys.argv[1], db_url=sys.argv[2]); "
            "assert 'alembic' not in sys.modules, 'alembic was imported'")
    subprocess.run([sys.executable, "-c", code, str(home), url], check=True, cwd=REPO)


def test_a_store_at_an_older_revision_runs_the_rest(where):
    home, url = where
    store = Store(home, db_url=url)
    with store.engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_audit_record_id"))
        conn.execute(text("DROP INDEX ix_alias_moves_name_stage_seq"))
        conn.execute(text(f"UPDATE {migrations.VERSION_TABLE} SET version_num = '0001'"))
    store.engine.dispose()
    store = Store(home, db_url=url)
    assert _version(store)[0] == migrations.HEAD == "0002"
    assert "ix_audit_record_id" in _indexes(store, "audit")
    assert "ix_alias_moves_name_stage_seq" in _indexes(store, "alias_moves")
    store.engine.dispose()


def test_the_audit_index_serves_lookups_by_record(tmp_path):
    store = Store(tmp_path / "store")
    with store.engine.connect() as conn:
        plan = conn.execute(text("EXPLAIN QUERY PLAN SELECT seq FROM audit WHERE record_id = 'x'")).all()
    assert "ix_audit_record_id" in " ".join(str(r) for r in plan)
    store.engine.dispose()


def test_models_that_gained_a_column_or_lost_a_trigger_are_swept(where):
    """Additive changes to the models need no revision: a changed models digest triggers the sweep."""
    home, url = where
    store = Store(home, db_url=url)
    sqlite = url.startswith("sqlite")
    with store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE runs DROP COLUMN control"))  # as a store from before that column
        conn.execute(text(f"UPDATE {migrations.VERSION_TABLE} SET models = 'older-models'"))
        conn.execute(text("DROP TRIGGER audit_no_update" if sqlite else "DROP TRIGGER audit_append_only ON audit"))
    store.engine.dispose()
    store = Store(home, db_url=url)
    with store.engine.connect() as conn:
        assert "control" in {c["name"] for c in inspect(conn).get_columns("runs")}
    assert _version(store)[1] == migrations.models_digest(Base.metadata)
    store.transact(lambda s: store.audit(s, "x", "store", "y"))
    with pytest.raises(Exception, match="append-only"):
        with store.engine.begin() as conn:
            conn.execute(text("DELETE FROM audit"))
    store.engine.dispose()


def test_a_store_upgraded_by_a_newer_tuneops_is_refused(where):
    home, url = where
    store = Store(home, db_url=url)
    with store.engine.begin() as conn:
        conn.execute(text(f"UPDATE {migrations.VERSION_TABLE} SET version_num = '0999'"))
    store.engine.dispose()
    with pytest.raises(StateError, match="0999.*newer tuneops") as e:
        Store(home, db_url=url)
    assert "upgrade tuneops" in e.value.hint


def test_optunas_alembic_version_does_not_confuse_tuneops(where):
    optuna = pytest.importorskip("optuna")
    home, url = where
    home.mkdir(parents=True)
    optuna.storages.RDBStorage(url).engine.dispose()  # Optuna first: its tables and its alembic_version
    engine = create_engine(url)
    with engine.connect() as conn:
        optuna_rev = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    store = Store(home, db_url=url)  # a fresh tuneops store beside Optuna's tables
    assert _version(store)[0] == migrations.HEAD
    store.engine.dispose()
    storage = optuna.storages.RDBStorage(url)  # Optuna again, after tuneops: its version check still passes
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    storage.engine.dispose()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == optuna_rev
    engine.dispose()
    again = Store(home, db_url=url)  # and tuneops opens it as current
    assert _version(again)[0] == migrations.HEAD and again.audit_log() == []
    again.engine.dispose()


def test_an_old_store_with_optuna_tables_upgrades(where):
    optuna = pytest.importorskip("optuna")
    home, url = where
    make_old_store(home, url)
    optuna.storages.RDBStorage(url).engine.dispose()
    store = Store(home, db_url=url)
    assert _version(store)[0] == migrations.HEAD
    assert store.resolve_dataset(OLD["dataset_name"]).id == OLD["dataset"]
    store.engine.dispose()


def test_several_processes_opening_an_old_store_at_once_all_succeed(where):
    home, url = where
    make_old_store(home, url)
    code = ("import sys; from tuneops.store import Store; s = Store(sys.argv[1], db_url=sys.argv[2]); "
            "print(s.resolve_dataset(sys.argv[3]).id)")
    env = {**os.environ, "TUNEOPS_HOME": str(home)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(home), url, OLD["dataset_name"]], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    for out, err, rc in results:
        assert rc == 0, err[-2000:]
        assert out.strip() == OLD["dataset"]
    store = Store(home, db_url=url)
    assert _version(store)[0] == migrations.HEAD
    with store.session(write=False) as s:
        assert s.scalars(select(DatasetName.name)).all() == [OLD["dataset_name"]]  # linked once
    store.engine.dispose()
