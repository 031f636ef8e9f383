"""The hash-chained ledger (store/ledger.py): audit log and alias history are chained on every write, and
``verify`` / ``tuneops registry audit --verify`` detect and name an edited, deleted or reordered entry and a
truncated tail — on SQLite and on PostgreSQL (the ``store`` fixture runs both when TUNEOPS_TEST_PG_URL is set)."""

import json
import multiprocessing as mp
import time
from datetime import datetime, timezone

import pytest
from sqlalchemy import insert, select, text

from tests.conftest import PG_URL, _pg_database_url
from tuneops.errors import StateError
from tuneops.store import Store, ledger
from tuneops.store.schema import AliasMove, AuditEvent, LedgerHead, TrustedKey


@pytest.fixture(autouse=True)
def _no_ambient_key(tmp_path, monkeypatch):
    """Writes sign with the writer's key when there is one: tests start with none (a key dir of their own)."""
    monkeypatch.setenv("TUNEOPS_KEY_DIR", str(tmp_path / "keys"))
    monkeypatch.delenv("TUNEOPS_SIGNING_KEY", raising=False)
    monkeypatch.delenv("TUNEOPS_ACTOR", raising=False)


def _audit(store, n, *, start=0):
    for i in range(start, start + n):
        def write(s, i=i):
            store.audit(s, "thing.made", "thing", f"thing-{i}", n=i, nested={"k": [1, 2.5, None]}, word="naïve")
        store.transact(write)


def _move(store, i, name="bot", stage="production"):
    """An alias move and its audit event in one transaction, as the registry writes them."""
    with store.session() as s:
        s.add(AliasMove(name=name, stage=stage, action="promote", to_artifact=f"ad-{i}",
                        from_artifact=f"ad-{i - 1}" if i else None, actor="alice", reason=f"gates passed {i}"))
        store.audit(s, "alias.promote", "alias", f"{name}@{stage}", to=f"ad-{i}")


def _filled(store, audits=6, moves=5):
    _audit(store, audits)
    for i in range(moves):
        _move(store, i)
    return store


def _tamper(store, *stmts):
    """Raw SQL as someone with database access would run it: the audit table's triggers dropped first."""
    with store.engine.begin() as conn:
        if store.engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER IF EXISTS audit_no_update"))
            conn.execute(text("DROP TRIGGER IF EXISTS audit_no_delete"))
        else:
            conn.execute(text("DROP TRIGGER IF EXISTS audit_append_only ON audit"))
        for stmt in stmts:
            conn.execute(text(stmt))


def _seqs(store, chain):
    table = ledger.CHAINS[chain].__table__
    with store.engine.connect() as conn:
        return [r[0] for r in conn.execute(select(table.c.seq).order_by(table.c.seq))]


# -- a clean store -------------------------------------------------------------------------------

def test_clean_store_verifies_and_every_entry_links_to_the_one_before(store):
    _filled(store)
    audit, moves = ledger.verify_all(store)
    assert audit.ok and moves.ok, (audit, moves)
    assert (audit.entries, moves.entries) == (11, 5)
    assert audit.head_seq == _seqs(store, "audit")[-1] and moves.head_seq == _seqs(store, "alias_moves")[-1]
    assert audit.legacy == 0 and audit.signed_by is None
    assert any("not signed" in w for w in audit.warnings)  # unsigned: a warning, not an error
    events = store.audit_log(100)
    assert events[0].prev_hash == ledger.genesis("audit")
    assert all(b.prev_hash == a.entry_hash for a, b in zip(events, events[1:]))
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert events[-1].details == {"to": "ad-4"}


def test_an_empty_store_verifies(store):
    assert all(r.ok and r.entries == 0 and r.head_seq == 0 for r in ledger.verify_all(store))


def test_chained_rows_cannot_be_changed_through_the_orm(store):
    _filled(store, audits=1, moves=1)
    with pytest.raises(StateError, match="append-only"):
        with store.session() as s:
            mv = s.scalars(select(AliasMove)).one()
            mv.to_artifact = "ad-evil"
    with pytest.raises(StateError, match="append-only"):
        with store.session() as s:
            s.delete(s.scalars(select(AliasMove)).one())
    assert ledger.verify(store, "alias_moves").ok


# -- tampering: each kind detected and named, on both chains -----------------------------------------

@pytest.mark.parametrize("chain,column", [("audit", "actor"), ("alias_moves", "to_artifact")])
def test_an_edited_entry_is_named(store, chain, column):
    _filled(store)
    victim = _seqs(store, chain)[2]
    _tamper(store, f"UPDATE {chain} SET {column} = 'mallory' WHERE seq = {victim}")
    report = ledger.verify(store, chain)
    assert not report.ok
    assert (report.problem.seq, report.problem.kind) == (victim, "edited")
    assert report.entries == 2  # the two before it check out


def test_an_edited_timestamp_or_json_field_is_detected(store):
    _filled(store)
    first, second = _seqs(store, "audit")[:2]
    _tamper(store, f"UPDATE audit SET at = (SELECT at FROM audit WHERE seq = {second}) WHERE seq = {first}")
    assert ledger.verify(store, "audit").problem.seq == first
    _tamper(store, f"UPDATE audit SET at = (SELECT at FROM audit WHERE seq = {second}) WHERE seq = {second}",
            f"UPDATE audit SET details = '{{\"n\": 1}}' WHERE seq = {second}")
    assert ledger.verify(store, "audit").problem.seq == first  # the first bad entry, not the last


@pytest.mark.parametrize("chain", ["audit", "alias_moves"])
def test_a_deleted_entry_is_named(store, chain):
    _filled(store)
    seqs = _seqs(store, chain)
    _tamper(store, f"DELETE FROM {chain} WHERE seq = {seqs[2]}")
    report = ledger.verify(store, chain)
    assert (report.problem.seq, report.problem.kind) == (seqs[3], "deleted")
    assert f"between seq {seqs[1]} and seq {seqs[3]}" in report.problem.message


def test_a_deleted_first_entry_is_named(store):
    _filled(store)
    seqs = _seqs(store, "audit")
    _tamper(store, f"DELETE FROM audit WHERE seq = {seqs[0]}")
    report = ledger.verify(store, "audit")
    assert (report.problem.seq, report.problem.kind) == (seqs[1], "deleted")


@pytest.mark.parametrize("chain", ["audit", "alias_moves"])
def test_a_reordered_pair_is_named(store, chain):
    """Two entries' contents swapped (hashes left in place): the first of them is named, with its partner."""
    _filled(store)
    a, b = _seqs(store, chain)[1], _seqs(store, chain)[3]
    cols = ledger.CONTENT[chain]
    sets_a = ", ".join(f"{c} = (SELECT {c} FROM {chain} WHERE seq = {b})" for c in cols)
    sets_b = ", ".join(f"{c} = (SELECT {c} FROM {chain} WHERE seq = -1)" for c in cols)
    _tamper(store,
            f"INSERT INTO {chain} (seq, {', '.join(cols)}) SELECT -1, {', '.join(cols)} FROM {chain} WHERE seq = {a}",
            f"UPDATE {chain} SET {sets_a} WHERE seq = {a}",
            f"UPDATE {chain} SET {sets_b} WHERE seq = {b}",
            f"DELETE FROM {chain} WHERE seq = -1")
    report = ledger.verify(store, chain)
    assert (report.problem.seq, report.problem.kind) == (a, "reordered")
    assert f"chained as seq {b}" in report.problem.message


def test_rows_moved_with_their_hashes_are_named_as_reordered(store):
    """Whole rows swapped (seq numbers exchanged, hashes travelling with them)."""
    _filled(store)
    a, b = _seqs(store, "audit")[1], _seqs(store, "audit")[3]
    _tamper(store, f"UPDATE audit SET seq = -1 WHERE seq = {a}", f"UPDATE audit SET seq = {a} WHERE seq = {b}",
            f"UPDATE audit SET seq = {b} WHERE seq = -1")
    report = ledger.verify(store, "audit")
    assert (report.problem.seq, report.problem.kind) == (a, "reordered")


@pytest.mark.parametrize("chain", ["audit", "alias_moves"])
def test_a_truncated_tail_is_a_head_mismatch(store, chain):
    _filled(store)
    seqs = _seqs(store, chain)
    _tamper(store, f"DELETE FROM {chain} WHERE seq >= {seqs[-2]}")
    report = ledger.verify(store, chain)
    assert report.problem.kind == "truncated" and report.problem.seq is None
    assert f"records seq {seqs[-1]}" in report.problem.message and f"ends at seq {seqs[-3]}" in report.problem.message


def test_a_rewritten_last_entry_with_a_recomputed_hash_is_a_head_mismatch(store):
    _filled(store)
    last = store.audit_log(1)[-1]
    values = {**{f: getattr(last, f) for f in ledger.CONTENT["audit"]}, "actor": "mallory"}
    forged = ledger.entry_hash(last.prev_hash, "audit", last.seq, values)
    _tamper(store, f"UPDATE audit SET actor = 'mallory', entry_hash = '{forged}' WHERE seq = {last.seq}")
    report = ledger.verify(store, "audit")
    assert (report.problem.kind, report.problem.seq) == ("head_mismatch", last.seq)


def test_a_row_written_around_the_ledger_is_unchained(store):
    _filled(store)
    with store.engine.begin() as conn:
        conn.execute(insert(AuditEvent).values(actor="mallory", action="alias.promote", record_type="alias",
                                               record_id="bot@production", details={}, at=datetime.now(timezone.utc)))
    report = ledger.verify(store, "audit")
    assert report.problem.kind in ("unchained", "head_mismatch")
    assert report.problem.seq == _seqs(store, "audit")[-1]
    _audit(store, 1)  # the next real entry chains after the head, not after the stray row
    report = ledger.verify(store, "audit")
    assert report.problem.kind == "unchained" and "written around the ledger" in report.problem.message


def test_a_deleted_head_is_recreated_but_reported(store, tmp_path):
    _filled(store)
    seqs = _seqs(store, "audit")
    _tamper(store, f"DELETE FROM audit WHERE seq = {seqs[-1]}", "DELETE FROM ledger_heads WHERE chain = 'audit'")
    reopened = Store(store.home, db_url=store.db_url)  # the next CLI call re-creates the head…
    try:
        _audit(reopened, 2)  # …writes keep working…
        report = ledger.verify(reopened, "audit")
        assert report.problem.kind == "head_recovered"  # …and verify keeps saying the tail may be gone
        assert "re-created" in report.problem.message
    finally:
        reopened.engine.dispose()


# -- signatures -----------------------------------------------------------------------------------

def _trusted_key(store, tmp_path, monkeypatch):
    from tuneops.release.signing import generate_key

    key = generate_key(tmp_path / "keys")
    monkeypatch.setenv("TUNEOPS_KEY_DIR", str(tmp_path / "keys"))
    with store.session() as s:
        s.add(TrustedKey(key_id=key.key_id, public_key=key.public_b64, name="alice", added_by="test"))
    return key


def test_signed_head_detects_a_rewritten_chain(store, tmp_path, monkeypatch):
    key = _trusted_key(store, tmp_path, monkeypatch)
    _filled(store)
    report = ledger.verify(store, "audit", require_signed=True)
    assert report.ok and report.signed_by == key.key_id and not report.warnings
    # Rewrite entry 3 and recompute every hash after it and the head: consistent, but not re-signable.
    events = store.audit_log(100)
    stmts, prev = [], events[1].entry_hash
    for i, e in enumerate(events[2:]):
        values = {f: getattr(e, f) for f in ledger.CONTENT["audit"]}
        if i == 0:
            values["actor"] = "mallory"
        h = ledger.entry_hash(prev, "audit", e.seq, values)
        stmts.append(f"UPDATE audit SET actor = '{values['actor']}', prev_hash = '{prev}', entry_hash = '{h}' "
                     f"WHERE seq = {e.seq}")
        prev = h
    stmts.append(f"UPDATE ledger_heads SET entry_hash = '{prev}' WHERE chain = 'audit'")
    _tamper(store, *stmts)
    report = ledger.verify(store, "audit")
    assert (report.problem.kind, report.problem.seq) == ("signature_invalid", None)
    # Dropping the signature instead only downgrades to "unsigned": a warning, an error when signatures are required.
    _tamper(store, "UPDATE ledger_heads SET signature = NULL WHERE chain = 'audit'")
    assert ledger.verify(store, "audit").ok
    assert ledger.verify(store, "audit", require_signed=True).problem.kind == "signature_missing"


def test_a_key_the_store_does_not_trust_leaves_the_head_unsigned(store, tmp_path, monkeypatch):
    from tuneops.release.signing import generate_key

    generate_key(tmp_path / "keys")  # a key, but not one this store trusts
    _filled(store, audits=2, moves=1)
    report = ledger.verify(store, "audit")
    assert report.ok and report.signed_by is None
    with store.engine.connect() as conn:
        assert conn.execute(select(LedgerHead.signature).where(LedgerHead.chain == "audit")).scalar() is None


# -- an older store: rows from before the chain ---------------------------------------------------

def test_legacy_rows_are_sealed_when_the_chain_begins(store):
    with store.engine.begin() as conn:  # rows an older tuneops wrote: no hashes, no heads
        conn.execute(text("DELETE FROM ledger_heads"))
        for i in range(3):
            conn.execute(insert(AuditEvent).values(actor="old", action="run.queued", record_type="run",
                                                   record_id=f"run-{i}", details={"i": i},
                                                   at=datetime(2024, 1, 1, 12, i, tzinfo=timezone.utc)))
    upgraded = Store(store.home, db_url=store.db_url)
    try:
        report = ledger.verify(upgraded, "audit")
        assert report.ok and (report.legacy, report.entries) == (3, 0)
        _audit(upgraded, 2)
        report = ledger.verify(upgraded, "audit")
        assert report.ok and (report.legacy, report.entries) == (3, 2)
        assert any("3 legacy entries before the chain began" in w for w in report.warnings)
        legacy = _seqs(upgraded, "audit")[1]
        _tamper(upgraded, f"UPDATE audit SET actor = 'mallory' WHERE seq = {legacy}")
        report = ledger.verify(upgraded, "audit")
        assert report.problem.kind == "legacy_altered"
    finally:
        upgraded.engine.dispose()


# -- concurrency ----------------------------------------------------------------------------------

def _appender(home, db_url, worker, ops, key_dir, start, out):
    import os
    import random

    os.environ["TUNEOPS_KEY_DIR"] = key_dir
    try:
        from tuneops.store import Store
        from tuneops.store.schema import AliasMove

        start.wait(timeout=120)  # all at once: opening the store (the heads were deleted: each races to create
        store = Store(home, db_url=db_url)  # them) and every write after
        rng = random.Random(worker)
        for i in range(ops):
            if rng.random() < 0.3:
                with store.session() as s:
                    s.add(AliasMove(name=f"bot{worker % 2}", stage="production", action="promote",
                                    to_artifact=f"ad-{worker}-{i}", actor=f"w{worker}"))
                    store.audit(s, "alias.promote", "alias", f"bot{worker % 2}@production", worker=worker, i=i)
            else:
                store.transact(lambda s: store.audit(s, "thing.made", "thing", f"w{worker}-{i}", worker=worker, i=i))
        store.engine.dispose()
        out.put(("ok", worker))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        import traceback

        out.put(("error", f"{worker}: {e!r}\n{traceback.format_exc()}"))


@pytest.mark.parametrize("backend", ["sqlite"] + (["postgresql"] if PG_URL else []))
def test_four_concurrent_appenders_leave_one_consistent_chain(tmp_path, backend):
    db_url = _pg_database_url() if backend == "postgresql" else None
    home = tmp_path / "store"
    first = Store(home, db_url=db_url)
    with first.engine.begin() as conn:
        conn.execute(text("DELETE FROM ledger_heads"))
    first.engine.dispose()
    ctx = mp.get_context("spawn")
    out, start = ctx.Queue(), ctx.Barrier(4)
    ops = 30
    procs = [ctx.Process(target=_appender, args=(str(home), db_url, w, ops, str(tmp_path / "keys"), start, out))
             for w in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [r for r in results if r[0] != "ok"] == []
    store = Store(home, db_url=db_url)
    try:
        audit, moves = ledger.verify_all(store)
        assert audit.ok and moves.ok, (audit.problem, moves.problem)
        assert audit.entries == 4 * ops and moves.entries > 0
        events = store.audit_log(1000)
        assert sorted({(e.details["worker"], e.details["i"]) for e in events}) == \
            sorted((w, i) for w in range(4) for i in range(ops))
        with store.engine.connect() as conn:  # one chain: no entry has two successors
            prevs = [r[0] for r in conn.execute(text("SELECT prev_hash FROM audit"))]
        assert len(prevs) == len(set(prevs))
    finally:
        store.engine.dispose()


# -- the CLI ------------------------------------------------------------------------------------

def _cli(store, monkeypatch, capsys, *args):
    from tuneops.cli.main import run_cli

    monkeypatch.setenv("TUNEOPS_HOME", str(store.home))
    if store.engine.dialect.name == "postgresql":
        monkeypatch.setenv("TUNEOPS_DB_URL", store.db_url)
    else:
        monkeypatch.delenv("TUNEOPS_DB_URL", raising=False)
    code = run_cli(["registry", "audit", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_verify_says_intact_then_names_the_tampered_entry(store, monkeypatch, capsys):
    _filled(store)
    code, out, err = _cli(store, monkeypatch, capsys, "--verify")
    assert code == 0, err
    assert "verdict: intact" in out and "audit" in out and "alias_moves" in out and "head is not signed" in out
    code, out, _ = _cli(store, monkeypatch, capsys, "--verify", "--require-signed")
    assert code == 6
    victim = _seqs(store, "audit")[3]
    _tamper(store, f"UPDATE audit SET record_id = 'run-other' WHERE seq = {victim}")
    code, out, err = _cli(store, monkeypatch, capsys, "--verify")
    assert code == ledger.LedgerTampered.exit_code == 6
    assert "TAMPERED" in out and f"seq {victim}" in out
    assert f"error: the ledger was tampered with: audit entry seq {victim} is edited" in err
    code, out, err = _cli(store, monkeypatch, capsys, "--verify", "--json")
    assert code == 6
    doc = json.loads(out)
    assert doc["ok"] is False
    bad = {c["chain"]: c for c in doc["chains"]}
    assert bad["audit"]["problem"] == {"seq": victim, "kind": "edited", "message": bad["audit"]["problem"]["message"]}
    assert bad["alias_moves"]["ok"] is True


def test_cli_filters(store, monkeypatch, capsys):
    _filled(store, audits=3, moves=2)
    with store.session() as s:
        s.add(AuditEvent(actor="bob (key-0123abcd)", action="artifact.sign", record_type="artifact", record_id="ad-9",
                         details={}))

    def rows(*args):
        code, out, err = _cli(store, monkeypatch, capsys, "--json", *args)
        assert code == 0, err
        return json.loads(out)

    assert len(rows()) == 6
    assert [r["record_id"] for r in rows("--record", "bot@production")] == ["bot@production"] * 2
    assert [r["action"] for r in rows("--action", "alias")] == ["alias.promote"] * 2
    assert rows("--action", "alia") == []
    assert [r["record_id"] for r in rows("--actor", "bob")] == ["ad-9"]
    assert [r["record_id"] for r in rows("--actor", "key-0123abcd")] == ["ad-9"]
    assert rows("--actor", "bo") == []
    assert [r["record_id"] for r in rows("--limit", "2")] == ["bot@production", "ad-9"]
    assert rows("--actor", "bob", "--action", "alias") == []


def test_cli_exit_code_in_a_real_process(sqlite_store):
    from tests.cli.helpers import tuneops

    _filled(sqlite_store, audits=2, moves=1)
    assert "verdict: intact" in tuneops(sqlite_store.home, "registry", "audit", "--verify").stdout
    seq = _seqs(sqlite_store, "alias_moves")[0]
    _tamper(sqlite_store, f"DELETE FROM alias_moves WHERE seq = {seq}")
    proc = tuneops(sqlite_store.home, "registry", "audit", "--verify", check=False)
    assert proc.returncode == 6
    assert "alias_moves" in proc.stderr and "truncated" in proc.stderr


def test_overhead_of_chaining_stays_small(sqlite_store, monkeypatch):
    """Not a benchmark (see the report): chaining must not make an audited write several times slower."""
    def median_write(store, n=40):
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            store.transact(lambda s: store.audit(s, "thing.made", "thing", f"t{i}"))
            times.append(time.perf_counter() - t0)
        return sorted(times)[n // 2]

    chained = median_write(sqlite_store)
    monkeypatch.setattr(ledger, "install", lambda store: None)
    plain_store = Store(sqlite_store.home.parent / "plain")
    plain = median_write(plain_store)
    assert chained < plain * 3 + 0.005
