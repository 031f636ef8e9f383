"""The job queue: ``queued`` runs in the store, taken by workers by priority, never by two at once.

A run enters the queue in state ``queued`` (``tuneops.pipeline.create_run``, ``tuneops train --queue``).
A worker takes one with :func:`claim_next`: the queued run with the highest ``priority`` (NULL counts
as 0), then the oldest, that nobody holds — its ``pid`` is NULL, or the process that claimed it is gone
(``liveness`` says stale: a dead pid on this host, or a heartbeat older than ``stale_after()``). The
claim sets ``worker`` ("host:pid"), ``host``, ``pid`` and ``heartbeat_at``, counts ``attempts`` and adds
a ``claimed`` run event, all in one transaction, conditioned on what it read:

* PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` — the candidate row is locked by the claiming
  transaction, and a concurrent claimer skips it instead of waiting for it (or taking it twice);
* SQLite: the store's write sessions begin with ``BEGIN IMMEDIATE``, so the whole read-check-write runs
  under the database's write lock: a second claimer waits for the first to commit, then reads the
  claimed row as claimed.

The executing process (``execute_run`` in a worker's child) then heartbeats the run and replaces
``host``/``pid`` with its own; ``worker`` keeps naming the claimer. :func:`requeue` puts an
interrupted or paused run back (clearing the claim) so that any worker continues it from its newest
checkpoint; :func:`mark_abandoned` ends a run whose executing process died without saying how it ended,
but only while the run is still the caller's claim; :func:`cancel_queued` cancels a queued run nobody holds.
"""

import os
import socket
from datetime import timedelta

from sqlalchemy import func, or_, select, update

from tuneops.errors import NotFound, StateError
from tuneops.store.liveness import liveness, stale_after
from tuneops.store.schema import RunEvent, RunRecord, utcnow
from tuneops.store.store import ACTIVE_STATES, RESUMABLE_STATES, RUN_TRANSITIONS, Store

# Claim order: higher priority first (NULL = 0), then first come first served (ulid ids are time-ordered).
CLAIM_ORDER = (func.coalesce(RunRecord.priority, 0).desc(), RunRecord.created_at.asc(), RunRecord.id.asc())


def worker_name(pid: int | None = None) -> str:
    """This process as a claimer: "host:pid"."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def _claimable_filter(now):
    """A cheap SQL pre-filter of runs that may be claimable: unclaimed, or claimed on this host (whether
    that pid is alive is checked in Python), or claimed elsewhere with an old (or no) heartbeat. The
    final word is ``liveness`` on the locked row."""
    cutoff = now - timedelta(seconds=stale_after())
    return or_(RunRecord.pid.is_(None), RunRecord.host == socket.gethostname(), RunRecord.host.is_(None),
               RunRecord.heartbeat_at.is_(None), RunRecord.heartbeat_at < cutoff)


def _take(s, run: RunRecord, worker: str) -> RunRecord:
    now = utcnow()
    run.worker = worker
    run.host = socket.gethostname()
    run.pid = os.getpid()
    run.heartbeat_at = now
    run.updated_at = now
    run.attempts = (run.attempts or 0) + 1
    s.add(RunEvent(run_id=run.id, type="claimed", payload={"worker": worker, "attempt": run.attempts}, at=now))
    s.flush()
    s.expunge(run)
    return run


def claim_next(store: Store, worker: str | None = None, *, max_skips: int = 1000) -> RunRecord | None:
    """Atomically take the next queued run nobody holds (see the module docstring); None when there is none.

    ``worker`` names the claimer (default "host:pid" of this process); ``host`` and ``pid`` are always
    this process's, so liveness can tell whether the claim is still held."""
    worker = worker or worker_name()

    def attempt(s) -> RunRecord | None:
        now = utcnow()
        held: list[str] = []  # queued runs whose claimer is alive: locked by this transaction, passed over
        for _ in range(max_skips):
            q = (select(RunRecord).where(RunRecord.state == "queued", _claimable_filter(now))
                 .order_by(*CLAIM_ORDER).limit(1).with_for_update(skip_locked=True))
            if held:
                q = q.where(RunRecord.id.not_in(held))
            run = s.scalars(q).first()
            if run is None:
                return None
            if run.pid is None or liveness(run, now=now) == "stale":
                return _take(s, run, worker)
            held.append(run.id)
        return None

    return store.transact(attempt)


def claim_run(store: Store, run_id: str, worker: str | None = None) -> RunRecord:
    """Take one named run (for running a queued run by hand): StateError unless it is queued and nobody
    holds it."""
    worker = worker or worker_name()

    def attempt(s) -> RunRecord:
        run = s.scalars(select(RunRecord).where(RunRecord.id == run_id).with_for_update()).first()
        if run is None:
            raise NotFound(f"run {run_id!r} not found", hint="list them with `tuneops runs list`")
        if run.state != "queued":
            raise StateError(f"run {run_id} is {run.state}, not queued; nothing to run",
                             hint=f"`tuneops runs resume {run_id}` queues an interrupted or paused run again"
                             if run.state in RESUMABLE_STATES else None)
        if run.pid is not None and liveness(run) != "stale":
            raise StateError(f"run {run_id} is already taken by {run.worker or f'pid {run.pid} on {run.host}'}",
                             hint="a run is executed by one process at a time; see `tuneops runs show "
                                  f"{run_id}`")
        return _take(s, run, worker)

    return store.transact(attempt)


def hand_over(store: Store, run_id: str, pid: int, worker: str | None = None) -> bool:
    """Record the process that will execute a claimed run (a worker's child) as its pid, so that
    ``tuneops runs cancel`` signals that process and not the worker. Only while the run is still
    queued and ``worker``'s claim; returns whether it was."""
    worker = worker or worker_name()

    def attempt(s) -> bool:
        res = s.execute(update(RunRecord).where(RunRecord.id == run_id, RunRecord.state == "queued",
                                                RunRecord.worker == worker)
                        .values(pid=pid, heartbeat_at=utcnow()))
        return res.rowcount == 1

    return store.transact(attempt)


def release_claim(store: Store, run_id: str, reason: str, worker: str | None = None) -> bool:
    """Give back a claim whose run never started (still ``queued``): the claim is cleared and the attempt
    not counted, so the run is the next worker's as if it had never been taken. Returns whether it was
    still ``worker``'s to give back."""
    worker = worker or worker_name()

    def attempt(s) -> bool:
        run = s.scalars(select(RunRecord).where(RunRecord.id == run_id).with_for_update()).first()
        if run is None or run.state != "queued" or run.worker != worker:
            return False
        run.worker, run.host, run.pid, run.heartbeat_at = None, None, None, None
        run.attempts = max((run.attempts or 1) - 1, 0)
        run.updated_at = utcnow()
        s.add(RunEvent(run_id=run.id, type="released", payload={"worker": worker, "reason": reason}, at=utcnow()))
        return True

    return store.transact(attempt)


def touch_claims(store: Store, run_ids: list[str], worker: str | None = None) -> int:
    """Heartbeat runs this worker claimed whose process has not taken over yet (still ``queued``: the
    child is starting up), so a claimer on another host does not see them as stale meanwhile."""
    if not run_ids:
        return 0
    worker = worker or worker_name()

    def attempt(s) -> int:
        res = s.execute(update(RunRecord).where(RunRecord.id.in_(run_ids), RunRecord.state == "queued",
                                                RunRecord.worker == worker)
                        .values(heartbeat_at=utcnow()))
        return res.rowcount

    return store.transact(attempt)


def _move(s, store: Store, run: RunRecord, new_state: str, reason: str, **fields) -> None:
    if new_state not in RUN_TRANSITIONS[run.state]:
        raise StateError(f"run {run.id} cannot go from {run.state} to {new_state}")
    old, now = run.state, utcnow()
    run.state = new_state
    run.updated_at = now
    for key, value in fields.items():
        setattr(run, key, value)
    s.add(RunEvent(run_id=run.id, type="state", payload={"from": old, "to": new_state, "reason": reason}, at=now))
    store.audit(s, f"run.{new_state}", "run", run.id, reason=reason)


def requeue(store: Store, run_id: str, reason: str) -> RunRecord:
    """Put an interrupted or paused run back in the queue (claim cleared: any worker may take it and
    continue from its newest complete checkpoint). StateError if it is in another state."""
    def attempt(s) -> RunRecord:
        run = s.scalars(select(RunRecord).where(RunRecord.id == run_id).with_for_update()).first()
        if run is None:
            raise NotFound(f"run {run_id!r} not found", hint="list them with `tuneops runs list`")
        if run.state not in RESUMABLE_STATES:
            raise StateError(f"run {run_id} is {run.state}; only an interrupted or paused run can be queued again")
        pending = {"control": None} if hasattr(RunRecord, "control") else {}  # a pause request is spent
        _move(s, store, run, "queued", reason, error=None, pid=None, host=None, worker=None, heartbeat_at=None,
              **pending)
        s.add(RunEvent(run_id=run.id, type="requeued", payload={"reason": reason}, at=utcnow()))
        s.flush()
        s.expunge(run)
        return run

    return store.transact(attempt)


def mark_abandoned(store: Store, run_id: str, new_state: str, reason: str, *,
                   worker: str | None = None) -> RunRecord | None:
    """End a run whose executing process exited without marking it (killed, out of memory, crashed before
    it started): ``new_state`` with ``reason``, in one transaction conditioned on the run still being
    active and still ``worker``'s claim. Returns the run, or None when it had moved on meanwhile (ended
    by itself, or taken by another worker after its process died)."""
    worker = worker or worker_name()

    def attempt(s) -> RunRecord | None:
        run = s.scalars(select(RunRecord).where(RunRecord.id == run_id).with_for_update()).first()
        if run is None or run.state not in ACTIVE_STATES or run.worker != worker:
            return None
        _move(s, store, run, new_state, reason, error=reason)
        if new_state == "failed":
            s.add(RunEvent(run_id=run.id, type="error", payload={"type": "WorkerChildDied", "message": reason},
                           at=utcnow()))
        s.flush()
        s.expunge(run)
        return run

    return store.transact(attempt)


def cancel_queued(store: Store, run_id: str, reason: str) -> RunRecord | None:
    """Cancel a queued run that no live process holds (nobody claimed it, or its claimer is gone), in one
    transaction conditioned on exactly that; None when it is not such a run (a worker has it: signal its
    process instead, as ``cancel_run`` does for a live run)."""
    def attempt(s) -> RunRecord | None:
        run = s.scalars(select(RunRecord).where(RunRecord.id == run_id).with_for_update()).first()
        if run is None:
            raise NotFound(f"run {run_id!r} not found", hint="list them with `tuneops runs list`")
        if run.state != "queued" or (run.pid is not None and liveness(run) != "stale"):
            return None
        _move(s, store, run, "cancelled", reason, error=reason)
        s.flush()
        s.expunge(run)
        return run

    return store.transact(attempt)


def list_queue(store: Store, *, include_claimed: bool = True) -> list[RunRecord]:
    """Queued runs in the order workers take them (claimed ones too unless ``include_claimed=False``)."""
    with store.session(write=False) as s:
        rows = list(s.scalars(select(RunRecord).where(RunRecord.state == "queued").order_by(*CLAIM_ORDER)))
        for r in rows:
            s.expunge(r)
    if not include_claimed:
        now = utcnow()
        rows = [r for r in rows if r.pid is None or liveness(r, now=now) == "stale"]
    return rows


def queue_depth(store: Store) -> int:
    """How many queued runs are waiting for a worker (not held by a live claimer)."""
    return len(list_queue(store, include_claimed=False))


__all__ = ["CLAIM_ORDER", "cancel_queued", "claim_next", "claim_run", "hand_over", "list_queue", "mark_abandoned", "queue_depth",
           "release_claim", "requeue", "touch_claims", "worker_name"]
