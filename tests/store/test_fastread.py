"""The read-only listings (tuneops.store.fastread) print exactly what the SQLAlchemy path prints, on a
store holding records of every kind; anything else (PostgreSQL, an older schema, no store) falls back."""

import json
import socket
import sqlite3
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest

from tuneops.cli import main as cli_main
from tuneops.cli import render
from tuneops.cli.render import record_dict
from tuneops.data.ingest import ingest_rows
from tuneops.release.registry import promote, register_adapter
from tuneops.store import fastread, liveness as pure_liveness
from tuneops.store.schema import (
    ArtifactRecord, BaseModelRecord, DatasetRecord, EvalReportRecord, RunRecord, utcnow,
)

LISTINGS = {  # command -> the fastread function it uses
    "models": "list_bases", "data": "list_datasets", "runs": "list_runs", "eval": "list_eval_reports",
    "registry": "list_artifacts",
}


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _chat_rows(n: int, tag: str) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"{tag} q{i}"}, {"role": "assistant", "content": f"a{i}"}],
             "source": f"test:{tag}", "license": "CC0-1.0"} for i in range(n)]


@pytest.fixture
def filled(store, tmp_path):
    """Bases, datasets (one version under two names), runs in every liveness (two stale), artifacts with
    passing and failing eval reports, and aliases (two stages on one artifact)."""
    now = utcnow()
    with store.session() as s:
        s.add(BaseModelRecord(id="base-0001", name="tiny", source="test:a", source_digest="x", license="MIT",
                              tree="t", weights_sha256="w", num_parameters=123, created_at=now - timedelta(days=2)))
        s.add(BaseModelRecord(id="base-0002", name="[bold]b[/x]", source="test:b", source_digest="y",
                              license="Apache-2.0", tree="t2", weights_sha256="w2", chat_template_sha256="c",
                              num_parameters=7, created_at=now - timedelta(days=1)))
    ingest_rows(store, _chat_rows(3, "train"), name="train")
    ingest_rows(store, _chat_rows(3, "train"), name="train-copy")  # the same version, a second name
    ingest_rows(store, _chat_rows(2, "eval"), name="eval")
    old = now - timedelta(hours=2)
    runs = [  # id, state, heartbeat_at, host, pid, updated_at
        ("run-a-done", "succeeded", old, "elsewhere", 11, old),
        ("run-b-done", "succeeded", None, None, None, old),
        ("run-c-alive", "running", now, "elsewhere", 12, now),
        ("run-d-stale-beat", "running", old, "elsewhere", 13, old),
        ("run-e-queued", "queued", None, None, None, old),
        ("run-f-stale-pid", "running", now, socket.gethostname(), _dead_pid(), now),
        ("run-g-never-beat", "evaluating", None, None, None, old),
        ("run-h-failed", "failed", None, None, None, old),
    ]
    for k, (run_id, state, beat, host, pid, updated) in enumerate(runs):
        with store.session() as s:
            s.add(RunRecord(id=run_id, recipe_name=f"recipe-{k}", recipe_yaml="", recipe_hash="0" * 64, state=state,
                            base_id="base-0001" if k % 2 else None, dataset_ids=["ds-x"], metrics={"loss": k / 3},
                            artifact_id=None, error="boom" if state == "failed" else None,
                            created_at=now - timedelta(minutes=60 - k), updated_at=updated, heartbeat_at=beat,
                            host=host, pid=pid))
    arts = []
    for i, run_id in enumerate(("run-a-done", "run-b-done", None)):
        d = tmp_path / f"adapter{i}"
        d.mkdir()
        (d / "adapter_model.safetensors").write_bytes(bytes([i]) * 16)
        (d / "adapter_config.json").write_text("{}")
        art, _ = register_adapter(store, d, base_id="base-0001", method="lora", run_id=run_id,
                                  dataset_ids=["ds-x"], recipe_hash="f" * 64)
        arts.append(art.id)
        with store.session() as s:
            s.add(EvalReportRecord(id=f"ev-{i}", artifact_id=art.id, baseline="base-0001", suites=["s"],
                                   metrics={}, passed=i != 1, report_blob="x",
                                   gates=[{"gate": "g", "candidate": 1, "threshold": 0.5, "passed": i != 1, "task": True}]))
    promote(store, arts[0], "bot@production")
    promote(store, arts[0], "bot@staging")
    promote(store, arts[2], "alpha@production", force=True, reason="no run vouches for it: test")
    return store


def _cli(monkeypatch, capsys, store, args: list[str], *, fast: bool) -> str:
    """What `tuneops ARGS` prints (in-process), through the fast path or forced onto SQLAlchemy."""
    monkeypatch.setenv("TUNEOPS_HOME", str(store.home))
    if store.db_url.startswith("sqlite"):
        monkeypatch.delenv("TUNEOPS_DB_URL", raising=False)
    else:
        monkeypatch.setenv("TUNEOPS_DB_URL", store.db_url)
    monkeypatch.setattr(render.console, "width", 400)
    with monkeypatch.context() as m:
        if fast:
            if store.db_url.startswith("sqlite"):  # prove the SQLAlchemy store is not opened
                m.setattr(cli_main, "_store", lambda **_: pytest.fail("the fast path opened the Store"))
        else:
            for name in LISTINGS.values():
                m.setattr(fastread, name, lambda *a, **k: None)
        capsys.readouterr()
        code = cli_main.run_cli(args)
        out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.mark.parametrize("command", list(LISTINGS))
def test_each_listing_prints_what_the_sqlalchemy_path_prints(filled, monkeypatch, capsys, command):
    store = filled
    for extra in (["--json"], []):
        fast = _cli(monkeypatch, capsys, store, [command, "list", *extra], fast=True)
        slow = _cli(monkeypatch, capsys, store, [command, "list", *extra], fast=False)
        assert fast == slow
        if extra:
            assert len(json.loads(fast)) >= 2


def test_the_rows_themselves_match_on_sqlite_and_postgresql_falls_back(filled):
    store = filled
    where = {"home": store.home, "db_url": store.db_url}
    rows = {
        "models": fastread.list_bases(cli_main.BASE_FIELDS, **where),
        "data": fastread.list_datasets(cli_main.DS_FIELDS, **where),
        "runs": fastread.list_runs(cli_main.RUN_FIELDS, as_json=True, **where),
        "runs-table": fastread.list_runs(cli_main.RUN_FIELDS, as_json=False, **where),
        "eval": fastread.list_eval_reports(cli_main.EV_FIELDS, **where),
        "registry": fastread.list_artifacts(cli_main.ART_FIELDS, **where),
    }
    if not store.db_url.startswith("sqlite"):
        assert all(v is None for v in rows.values()), rows  # PostgreSQL: the SQLAlchemy path, always
        return
    runs = {r["id"]: r for r in rows["runs"]}
    assert {k for k, r in runs.items() if r["stale"]} == {"run-d-stale-beat", "run-f-stale-pid", "run-g-never-beat"}
    table_states = {r["id"]: r["state"] for r in rows["runs-table"]}
    assert table_states["run-f-stale-pid"] == "running (stale)" and table_states["run-c-alive"] == "running"
    assert [r["id"] for r in rows["runs"]] == [r.id for r in store.all(RunRecord)]  # oldest first
    assert {r["passed"] for r in rows["eval"]} == {True, False}  # bools, not SQLite's 0/1
    names = {r["names"] for r in rows["data"]}
    assert names == {"train, train-copy", "eval"}
    aliases = {r["aliases"] for r in rows["registry"]}
    assert aliases == {"bot@production, bot@staging", "alpha@production", None}
    assert rows["models"][1]["created_at"] == record_dict(store.all(BaseModelRecord)[1], ("created_at",))["created_at"]


def test_wider_field_lists_decode_like_sqlalchemy(filled):
    """JSON, BOOLEAN, DATETIME and nullable columns come back as SQLAlchemy hands them over."""
    store = filled
    if not store.db_url.startswith("sqlite"):
        pytest.skip("the fast path is SQLite-only")
    cases = [
        (fastread.list_bases, BaseModelRecord, ("id", "name", "source", "source_digest", "license", "tree",
                                                 "weights_sha256", "chat_template_sha256", "num_parameters",
                                                 "created_at")),
        (fastread.list_eval_reports, EvalReportRecord, ("id", "artifact_id", "baseline", "suites", "metrics",
                                                         "gates", "passed", "report_blob", "created_at")),
    ]
    for fn, model, fields in cases:
        assert fn(fields, home=store.home) == [record_dict(r, fields) for r in store.all(model)]
    run_fields = ("id", "recipe_name", "recipe_hash", "state", "base_id", "dataset_ids", "artifact_id", "metrics",
                  "error", "created_at", "updated_at", "heartbeat_at", "host", "pid")
    fast = fastread.list_runs(run_fields, as_json=True, home=store.home)
    slow = [{**record_dict(r, run_fields), "stale": pure_liveness.liveness(r) == "stale"} for r in store.all(RunRecord)]
    assert fast == slow
    ds = fastread.list_datasets(("id", "name", "num_rows", "summary", "created_at"), home=store.home)
    assert [{k: v for k, v in r.items() if k != "names"} for r in ds] == \
        [record_dict(r, ("id", "name", "num_rows", "summary", "created_at")) for r in store.all(DatasetRecord)]
    arts = fastread.list_artifacts(("id", "lineage", "created_at"), home=store.home)
    assert [r["lineage"] for r in arts] == [a.lineage for a in store.all(ArtifactRecord)]


def test_postgresql_and_other_urls_fall_back_without_connecting(tmp_path, monkeypatch):
    home = tmp_path / "store"
    home.mkdir()
    (home / "tuneops.db").write_bytes(b"")  # even where a SQLite file sits in the store folder
    for url in ("postgresql+psycopg://u@127.0.0.1:1/tuneops", "postgresql://x", "mysql://x/y", "sqlite://",
                "sqlite:///:memory:", f"sqlite:///file:{home}/tuneops.db?mode=ro&uri=true",
                f"sqlite:///{home}/tuneops.db?timeout=5", f"sqlite+aiosqlite:///{home}/tuneops.db"):
        assert fastread.sqlite_file(home, url) is None, url
        monkeypatch.setenv("TUNEOPS_DB_URL", url)
        assert fastread.sqlite_file(home) is None, url
        assert fastread.list_runs(cli_main.RUN_FIELDS, as_json=True, home=home) is None
    monkeypatch.delenv("TUNEOPS_DB_URL")
    assert fastread.sqlite_file(home) == home / "tuneops.db"
    other = tmp_path / "other.db"
    other.write_bytes(b"")
    assert fastread.sqlite_file(home, f"sqlite:///{other}") == other
    assert fastread.sqlite_file(tmp_path / "absent", f"sqlite:///{other}") is None  # Store.exists says no store


def test_missing_store_falls_back_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNEOPS_DB_URL", raising=False)
    home = tmp_path / "no-store"
    assert fastread.list_bases(cli_main.BASE_FIELDS, home=home) is None
    home.mkdir()  # a folder is not a store
    assert fastread.list_artifacts(cli_main.ART_FIELDS, home=home) is None
    assert list(home.iterdir()) == []
    assert not (tmp_path / "no-store" / "tuneops.db").exists()


def test_an_older_schema_falls_back_and_the_sqlalchemy_path_upgrades_it(sqlite_store, monkeypatch, capsys):
    store = sqlite_store
    ingest_rows(store, _chat_rows(2, "old"), name="old")
    with store.session() as s:
        s.add(RunRecord(id="run-old", recipe_name="r", recipe_yaml="", recipe_hash="0" * 64, state="succeeded",
                        dataset_ids=[], metrics={}))
    store.engine.dispose()
    db = sqlite3.connect(store.home / "tuneops.db")
    db.execute("ALTER TABLE runs DROP COLUMN heartbeat_at")  # as a store from before liveness tracking
    db.execute("DROP TABLE dataset_names")  # as a store from before dataset names
    db.execute("DROP TABLE tuneops_schema_version")  # …and from before schema versions
    db.commit()
    db.close()
    assert fastread.list_runs(cli_main.RUN_FIELDS, as_json=True, home=store.home) is None
    assert fastread.list_datasets(cli_main.DS_FIELDS, home=store.home) is None
    assert fastread.list_bases(cli_main.BASE_FIELDS, home=store.home) == []  # what is there still reads fast
    runs = json.loads(_cli(monkeypatch, capsys, store, ["runs", "list", "--json"], fast=False))
    assert [r["id"] for r in runs] == ["run-old"]
    data = json.loads(_cli(monkeypatch, capsys, store, ["data", "list", "--json"], fast=False))
    assert [r["names"] for r in data] == ["old"]
    assert fastread.list_runs(cli_main.RUN_FIELDS, as_json=True, home=store.home) == runs  # upgraded in place
    assert fastread.list_datasets(cli_main.DS_FIELDS, home=store.home) == data


def test_fast_reads_do_not_write(filled):
    store = filled
    if not store.db_url.startswith("sqlite"):
        pytest.skip("the fast path is SQLite-only")
    store.engine.dispose()
    db = store.home / "tuneops.db"
    before = db.read_bytes()
    assert fastread.list_runs(cli_main.RUN_FIELDS, as_json=False, home=store.home)
    assert db.read_bytes() == before
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("DELETE FROM runs")  # what the fast path opens cannot write
    conn.close()


def test_liveness_is_pure_and_shared():
    """tuneops.store.runs re-exports the pure liveness logic; it works on records, objects and dicts."""
    from types import SimpleNamespace

    from tuneops.store import runs, store as store_module

    assert runs.liveness is pure_liveness.liveness and runs.stale_after is pure_liveness.stale_after
    assert pure_liveness.ACTIVE_STATES == store_module.ACTIVE_STATES
    now = utcnow()
    stale = {"state": "running", "pid": 5, "host": "elsewhere", "heartbeat_at": (now - timedelta(hours=1)).replace(
        tzinfo=None), "updated_at": None, "created_at": None}
    assert pure_liveness.liveness(stale) == "stale" == pure_liveness.liveness(SimpleNamespace(**stale))
    assert pure_liveness.liveness({**stale, "heartbeat_at": now}) == "alive"
    assert pure_liveness.liveness({**stale, "state": "succeeded"}) == "finished"
    assert pure_liveness.liveness({"state": "queued"}) == "alive"


def test_fastread_imports_no_sqlalchemy(filled):
    store = filled
    if not store.db_url.startswith("sqlite"):
        pytest.skip("the fast path is SQLite-only")
    probe = textwrap.dedent("""
        import sys
        from tuneops.store import fastread
        fields = ("id", "created_at")
        for fn in (fastread.list_bases, fastread.list_datasets, fastread.list_eval_reports, fastread.list_artifacts):
            assert fn(fields, home=sys.argv[1]), fn
        assert fastread.list_runs(fields, as_json=True, home=sys.argv[1])
        loaded = [m for m in ("sqlalchemy", "pydantic", "numpy", "torch") if m in sys.modules]
        print("LOADED=" + ",".join(loaded))
    """)
    proc = subprocess.run([sys.executable, "-c", probe, str(store.home)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "LOADED=", proc.stdout
