"""The job queue: claims by priority then age, exclusive under racing worker processes (SQLite and
PostgreSQL), stale claims taken again, attempts counted, requeue / release / abandon."""

import multiprocessing
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta

import pytest

from tuneops.errors import StateError
from tuneops.store.ids import new_run_id
from tuneops.store.queue import (
    cancel_queued, claim_next, claim_run, hand_over, list_queue, mark_abandoned, queue_depth, release_claim, requeue, touch_claims,
    worker_name,
)
from tuneops.store.schema import RunRecord, utcnow


def enqueue(store, priorities, **fields) -> list[str]:
    """Queued runs with these priorities, created in this order (1 ms apart)."""
    ids, t0 = [], utcnow()
    with store.session() as s:
        for i, p in enumerate(priorities):
            rid = new_run_id()
            s.add(RunRecord(id=rid, recipe_name=f"r{i}", recipe_yaml="", recipe_hash="0" * 64, state="queued",
                            dataset_ids=[], metrics={}, priority=p, created_at=t0 + timedelta(milliseconds=i),
                            **fields))
            ids.append(rid)
    return ids


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_claims_take_the_highest_priority_then_the_oldest(store):
    ids = enqueue(store, [None, 5, 1, 5, -2, 0])
    assert [r.id for r in list_queue(store)] == [ids[1], ids[3], ids[2], ids[0], ids[5], ids[4]]
    order = []
    while (run := claim_next(store, "w")) is not None:
        order.append(run.id)
    # 5 (older) 5 (newer) 1; None counts as 0, so the older of the two zeros goes first; -2 last
    assert order == [ids[1], ids[3], ids[2], ids[0], ids[5], ids[4]]
    assert queue_depth(store) == 0 and len(list_queue(store)) == 6  # claimed, still queued until they start


def test_a_claim_records_the_worker_and_an_event(store):
    (rid,) = enqueue(store, [None])
    run = claim_next(store, "box:42")
    assert run.id == rid and run.worker == "box:42" and run.attempts == 1
    assert run.host == socket.gethostname() and run.pid == os.getpid() and run.heartbeat_at is not None
    stored = store.get_run(rid)
    assert (stored.state, stored.worker, stored.attempts, stored.pid) == ("queued", "box:42", 1, os.getpid())
    (ev,) = store.run_events(rid, "claimed")
    assert ev.payload == {"worker": "box:42", "attempt": 1}
    assert claim_next(store, "other") is None  # held by a live process: nobody else takes it
    assert worker_name() == f"{socket.gethostname()}:{os.getpid()}"


def test_a_claim_whose_claimer_died_is_taken_again_and_counted(store):
    (rid,) = enqueue(store, [3])
    claim_next(store, "first")
    with store.session() as s:  # the claimer (same host) is gone; its heartbeat is still fresh
        s.get(RunRecord, rid).pid = dead_pid()
    run = claim_next(store, "second")
    assert run.id == rid and run.worker == "second" and run.attempts == 2 and run.pid == os.getpid()
    assert [e.payload for e in store.run_events(rid, "claimed")] == [
        {"worker": "first", "attempt": 1}, {"worker": "second", "attempt": 2}]


def test_a_claim_on_another_host_counts_until_its_heartbeat_is_stale(store, monkeypatch):
    monkeypatch.setenv("TUNEOPS_STALE_AFTER_S", "30")
    fresh, old = enqueue(store, [9, 1], host="elsewhere", pid=1, worker="elsewhere:1", attempts=1)
    with store.session() as s:
        s.get(RunRecord, fresh).heartbeat_at = utcnow()
        s.get(RunRecord, old).heartbeat_at = utcnow() - timedelta(seconds=120)
    run = claim_next(store, "here")
    assert run.id == old and run.attempts == 2  # the higher-priority one is still held elsewhere
    assert claim_next(store, "here") is None


def test_a_live_claim_on_this_host_with_a_stopped_heartbeat_is_stale(store, monkeypatch):
    monkeypatch.setenv("TUNEOPS_STALE_AFTER_S", "30")
    (rid,) = enqueue(store, [None], host=socket.gethostname(), pid=os.getpid(), worker="hung",
                     heartbeat_at=utcnow() - timedelta(seconds=300))
    assert claim_next(store, "here").id == rid


def test_touch_claims_keeps_a_starting_job_fresh_and_hand_over_records_its_process(store):
    a, b = enqueue(store, [1, 1])
    claim_next(store, "me")
    with store.session() as s:
        s.get(RunRecord, a).heartbeat_at = utcnow() - timedelta(hours=1)
    assert touch_claims(store, [a, b], "me") == 1  # b is not my claim
    assert utcnow() - store.get_run(a).heartbeat_at.replace(tzinfo=utcnow().tzinfo) < timedelta(seconds=60)
    assert hand_over(store, a, 12345, "me") and store.get_run(a).pid == 12345
    assert not hand_over(store, a, 1, "someone else")


def test_requeue_counts_the_next_attempt_and_release_does_not(store):
    (rid,) = enqueue(store, [None])
    claim_next(store, "w1")
    for state in ("validating_data", "running", "interrupted"):
        store.transition_run(rid, state, **({"error": "interrupted by signal 15"} if state == "interrupted" else {}))
    assert claim_next(store, "w2") is None  # not queued
    run = requeue(store, rid, "worker stopped")
    assert (run.state, run.worker, run.pid, run.host, run.error) == ("queued", None, None, None, None)
    assert store.run_events(rid, "requeued")[0].payload == {"reason": "worker stopped"}
    assert claim_next(store, "w2").attempts == 2
    assert release_claim(store, rid, "stopping", "w2")
    assert not release_claim(store, rid, "stopping", "w2")  # nothing left to give back
    run = store.get_run(rid)
    assert (run.worker, run.pid, run.attempts) == (None, None, 1)
    assert claim_next(store, "w3").attempts == 2
    with pytest.raises(StateError, match="only an interrupted or paused run"):
        requeue(store, rid, "again")


def test_mark_abandoned_ends_only_the_callers_active_claim(store):
    a, b = enqueue(store, [2, 1])
    claim_next(store, "me")
    claim_next(store, "other")
    store.transition_run(a, "validating_data")
    assert mark_abandoned(store, b, "failed", "killed", worker="me") is None  # not mine
    run = mark_abandoned(store, a, "failed", "its process was killed by SIGKILL", worker="me")
    assert run.state == "failed" and run.error == "its process was killed by SIGKILL"
    assert store.run_events(a, "error")[0].payload["message"] == "its process was killed by SIGKILL"
    assert mark_abandoned(store, a, "failed", "again", worker="me") is None  # already ended
    assert store.get_run(b).state == "queued"


def test_claim_run_takes_one_named_run_only_if_nobody_holds_it(store):
    a, b = enqueue(store, [1, 1])
    assert claim_run(store, b, "hand").worker == "hand"
    with pytest.raises(StateError, match="already taken by hand"):
        claim_run(store, b, "other")
    store.transition_run(a, "cancelled", error="no")
    with pytest.raises(StateError, match="is cancelled, not queued"):
        claim_run(store, a)


def test_cancel_queued_only_cancels_a_run_nobody_holds(store):
    waiting, held = enqueue(store, [1, 2])
    claim_next(store, "me")  # takes `held` (higher priority)
    assert cancel_queued(store, held, "no") is None and store.get_run(held).state == "queued"
    run = cancel_queued(store, waiting, "not needed after all")
    assert (run.state, run.error) == ("cancelled", "not needed after all")
    assert claim_next(store, "me") is None
    with store.session() as s:  # the claimer died: its claim no longer protects the run
        s.get(RunRecord, held).pid = dead_pid()
    assert cancel_queued(store, held, "stale").state == "cancelled"


# -- two (three) workers racing, each in its own process ------------------------------------------------
def _claim_loop(home, db_url, name, start, done, results):
    from tuneops.store import Store

    store = Store(home, db_url=db_url)
    queue_depth(store)  # connect and warm up before the start line, so that both really race
    taken = []
    start.wait(60)
    while (run := claim_next(store, name)) is not None:
        taken.append((run.id, run.priority or 0, run.attempts))
        time.sleep(0.005)  # a worker does something between claims; SQLite's busy waits would starve the other
    results.put((name, taken))
    done.wait(120)  # stay alive: a claim whose process is gone counts as stale and could be taken again
    store.engine.dispose()


@pytest.mark.parametrize("workers", [2, 3])
def test_racing_workers_never_take_the_same_job(store, workers):
    priorities = [i % 4 for i in range(20)]
    ids = enqueue(store, priorities)
    ctx = multiprocessing.get_context("spawn")
    start, done, results = ctx.Barrier(workers), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claim_loop, args=(str(store.home), store.db_url, f"w{i}", start, done, results))
             for i in range(workers)]
    for p in procs:
        p.start()
    try:
        got = dict(results.get(timeout=120) for _ in procs)
    finally:
        done.set()
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    claimed = [rid for taken in got.values() for rid, _, _ in taken]
    assert sorted(claimed) == sorted(ids), {w: len(t) for w, t in got.items()}  # each exactly once
    for taken in got.values():
        assert all(attempts == 1 for _, _, attempts in taken)
        prios = [p for _, p, _ in taken]
        assert prios == sorted(prios, reverse=True)  # each worker always took the best job left
    for rid in ids:
        (ev,) = store.run_events(rid, "claimed")
        assert ev.payload["worker"] in got
