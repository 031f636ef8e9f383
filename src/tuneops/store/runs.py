"""Run liveness: heartbeats, stale detection, cancel and reconcile — so no run stays `running` forever.

The process working on a run records its host and pid and refreshes ``heartbeat_at`` from a
background thread. A run in an active state whose heartbeat is older than ``stale_after()``
(or whose process is gone, when it ran on this host) is stale; ``reconcile_runs`` marks such
runs ``interrupted`` and removes their scratch folders. Checkpoints (kept for resume) are not
scratch: the folders removed are listed in ``SCRATCH_DIRS``.
"""

import os
import shutil
import signal
import socket
import threading
import time

from sqlalchemy import select

from tuneops.errors import StateError
from tuneops.store.liveness import (  # noqa: F401  (the pure liveness logic; re-exported from here)
    _aware, _process_alive, heartbeat_every, liveness, stale_after,
)
from tuneops.store.schema import RunRecord, utcnow
from tuneops.store.store import ACTIVE_STATES, Store

SCRATCH_DIRS = ("trainer", "adapter")  # per-run work folders that are useless once the run ended


class Heartbeat:
    """Context manager: claim a run for this process and refresh its heartbeat until exit."""

    def __init__(self, store: Store, run_id: str, every: float | None = None):
        self.store, self.run_id = store, run_id
        self.every = every if every is not None else heartbeat_every()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{run_id}", daemon=True)

    def beat(self, **fields) -> None:
        def touch(s):
            run = s.get(RunRecord, self.run_id)
            if run is not None:
                run.heartbeat_at = utcnow()
                for k, v in fields.items():
                    setattr(run, k, v)
                self.requested = run.control
        self.store.transact(touch)

    requested: str | None = None  # what `tuneops runs pause` asked of this run, seen at the last beat

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.beat()
            except Exception:  # a missed beat is not worth killing the run over; the next one retries
                pass

    def __enter__(self) -> "Heartbeat":
        self.beat(host=socket.gethostname(), pid=os.getpid())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def clean_scratch(store: Store, run_id: str) -> list[str]:
    """Remove a finished run's scratch folders; returns what was removed."""
    removed = []
    root = store.home / "runs" / run_id
    for name in SCRATCH_DIRS:
        path = root / name
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


def _finish(store: Store, run: RunRecord, state: str, reason: str) -> RunRecord:
    done = store.transition_run(run.id, state, expect=(run.state,), error=reason)
    removed = clean_scratch(store, run.id)
    if removed:
        store.add_run_event(run.id, "cleanup", removed=removed)
    return done


def cancel_run(store: Store, run_id: str, reason: str | None = None, *, wait_s: float = 30.0) -> RunRecord:
    """Cancel a run. A live process on this host gets SIGINT and marks the run itself (waited for up
    to ``wait_s``); a run nobody works on any more (stale, or on another host and silent) is marked
    ``cancelled`` here. A live run on another host cannot be signalled from here: StateError."""
    run = store.get_run(run_id)
    why = reason or "cancelled by user"
    if run.state == "queued":  # waiting for a worker: cancelled here unless a worker holds it already
        from tuneops.store.queue import cancel_queued

        done = cancel_queued(store, run_id, why)
        if done is not None:
            return done
        run = store.get_run(run_id)
    if run.state in ("interrupted", "paused"):  # resumable, nobody works on it: just close it
        return _finish(store, run, "cancelled", why)
    if run.state not in ACTIVE_STATES:
        raise StateError(f"run {run_id} already ended ({run.state}); nothing to cancel",
                         hint=f"see `tuneops runs show {run_id}`")
    state = liveness(run)
    if state == "alive":
        if run.host != socket.gethostname() or not run.pid:
            raise StateError(f"run {run_id} is alive on host {run.host} (pid {run.pid}); it can only be "
                             "cancelled there", hint="run `tuneops runs cancel` on that host, or wait until "
                                                     "its heartbeat stops and reconcile")
        def ask(s):  # a training run sees this and stops as cancelled (not interrupted) after its step
            r = s.get(RunRecord, run_id, with_for_update=True)
            r.control = "cancel"
        store.transact(ask)
        store.add_run_event(run_id, "cancel_requested", reason=why, by_pid=os.getpid())
        os.kill(run.pid, signal.SIGINT)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            run = store.get_run(run_id)
            if run.state not in ACTIVE_STATES:
                clean_scratch(store, run_id)
                return run
            time.sleep(0.2)
        raise StateError(f"run {run_id} (pid {run.pid}) did not stop within {wait_s:.0f} s of SIGINT",
                         hint=f"stop it with `kill {run.pid}`; `tuneops runs reconcile` then marks it")
    for _ in range(3):  # the run may move between our read and our write: re-read and retry
        try:
            return _finish(store, run, "cancelled", f"{why} (its process had stopped: {state})")
        except StateError:
            run = store.get_run(run_id)
            if run.state not in ACTIVE_STATES:
                raise StateError(f"run {run_id} ended ({run.state}) while it was being cancelled") from None
    raise StateError(f"run {run_id} kept changing state; try again")


def reconcile_runs(store: Store) -> list[RunRecord]:
    """Mark every stale active run ``interrupted`` (with the reason) and clean its scratch folders."""
    with store.session(write=False) as s:
        active = list(s.scalars(select(RunRecord).where(RunRecord.state.in_(ACTIVE_STATES))))
        for r in active:
            s.expunge(r)
    done = []
    now = utcnow()
    for run in active:
        if liveness(run, now=now) != "stale":
            continue
        beat = _aware(run.heartbeat_at)
        since = f"no heartbeat since {beat:%Y-%m-%d %H:%M:%S} UTC" if beat else "no heartbeat ever"
        reason = f"{since} (pid {run.pid} on {run.host})"
        try:
            done.append(_finish(store, run, "interrupted", f"stale: {reason}; reconciled"))
        except StateError:  # it moved on its own meanwhile: it was not stale after all
            continue
    return done


def request_pause(store: Store, run_id: str, *, wait_s: float = 60.0) -> RunRecord:
    """Ask the process training ``run_id`` to checkpoint and stop (state ``paused``). Its heartbeat
    thread sees the request within one beat; the current step finishes and is checkpointed first. Waits
    up to ``wait_s`` for the run to reach ``paused`` (0: do not wait)."""
    run = store.get_run(run_id)
    if run.state not in ("validating_data", "running"):
        raise StateError(f"run {run_id} is {run.state}; only a running run can be paused",
                         hint="a queued run can simply be cancelled; an ended one resumed with `tuneops runs resume`")
    if liveness(run) == "stale":
        raise StateError(f"run {run_id} is stale (its process stopped); there is nothing to pause",
                         hint="`tuneops runs reconcile` marks it interrupted; then `tuneops runs resume` continues it")

    def ask(s):
        r = s.get(RunRecord, run_id, with_for_update=True)
        r.control = "pause"
    store.transact(ask)
    store.add_run_event(run_id, "pause_requested", by_pid=os.getpid())
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        run = store.get_run(run_id)
        if run.state not in ACTIVE_STATES:
            return run
        time.sleep(0.2)
    return store.get_run(run_id)


def requeue_for_resume(store: Store, run_id: str) -> RunRecord:
    """Put an interrupted or paused run back in the queue; the process that executes it continues from
    its newest complete checkpoint. A run left ``running`` by a dead process is reconciled first."""
    from tuneops.store.store import RESUMABLE_STATES

    run = store.get_run(run_id)
    if run.state in ACTIVE_STATES and liveness(run) == "stale":
        reconcile_runs(store)
        run = store.get_run(run_id)
    if run.state not in RESUMABLE_STATES:
        alive = " (its process is alive)" if run.state in ACTIVE_STATES else ""
        raise StateError(f"run {run_id} is {run.state}{alive}; only an interrupted or paused run can be resumed",
                         hint="start a new run with `tuneops train RECIPE`" if run.state not in ACTIVE_STATES
                         else f"pause it first: `tuneops runs pause {run_id}`")
    done = store.transition_run(run_id, "queued", expect=RESUMABLE_STATES, control=None, pid=None, host=None,
                                worker=None, error=None, heartbeat_at=None)
    store.add_run_event(run_id, "resume_requested", from_state=run.state)
    return done
