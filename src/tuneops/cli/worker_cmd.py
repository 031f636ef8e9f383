"""``tuneops worker``: run queued jobs from the store, by priority, each in its own child process.

The queue is the store's ``queued`` runs (``tuneops train RECIPE --queue``); ``tuneops.store.queue``
hands each to exactly one worker, on SQLite and PostgreSQL alike, so any number of workers on any
number of machines may share one store. A worker:

* on start (and every few minutes) reconciles stale runs — their process stopped heartbeating — and
  puts those a worker had taken back in the queue (at most ``MAX_ATTEMPTS`` starts per run), so jobs
  whose worker died are taken again and resume from their newest checkpoint;
* takes the next job whenever it has a free slot (``--concurrency``, default 1: one job at a time)
  and runs it in a child process (``tuneops worker --run RUN_ID``, output to
  ``<store>/runs/RUN_ID/worker.log``), so a job that crashes or is killed for memory ends as
  ``failed`` with the reason and never takes the worker down;
* on SIGTERM or SIGINT stops taking jobs, forwards SIGTERM to its running jobs (they checkpoint and
  mark themselves ``interrupted``), puts them back in the queue, waits for them and exits 0: a restarted
  worker continues them. A second signal forwards SIGTERM again (the jobs stop at once); a third kills them.

Output: one line per event on stderr for people; with ``--json`` one JSON object per line on stdout
(``{"event": "claimed" | "job" | "requeued" | "stopped", …}``) and nothing else there.

Only typer and the standard library are imported at module level (the CLI imports this module at
start-up); the worker itself never loads torch — its children do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import typer

MAX_ATTEMPTS = 3  # starts of one run after which a worker no longer queues it again by itself
RECONCILE_EVERY_S = 120.0
WORKER_ENV = "TUNEOPS_WORKER_NAME"  # tells a child which worker claimed its run


def _store():
    from tuneops.store import Store

    return Store.open(os.environ.get("TUNEOPS_HOME"), create=False)


def _note(*parts) -> None:
    from tuneops.cli.render import say

    say(*parts, err=True)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_exit(code: int) -> str:
    """A child's exit status in words."""
    if code < 0:
        name = _signal_name(-code)
        return f"was killed by {name}" + (" (out of memory? the kernel's OOM killer sends SIGKILL)"
                                          if -code == signal.SIGKILL else "")
    return f"exited with code {code}"


@dataclass
class Job:
    run_id: str
    recipe: str
    priority: int | None
    attempt: int
    proc: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.monotonic)
    signalled: int = 0  # SIGTERMs forwarded by this worker


class Worker:
    """The scheduling loop of ``tuneops worker`` (one thread; signal handlers only set flags)."""

    def __init__(self, store, *, concurrency: int = 1, once: bool = False, poll: float = 2.0,
                 max_jobs: int | None = None, as_json: bool = False):
        from tuneops.store.queue import worker_name

        self.store, self.concurrency, self.once, self.poll = store, concurrency, once, poll
        self.max_jobs, self.as_json = max_jobs, as_json
        self.name = worker_name()
        self.jobs: dict[str, Job] = {}
        self.results: list[dict] = []
        self.taken = 0
        self.signals = 0  # SIGTERM / SIGINT received
        self.stop_reason: str | None = None
        self._forwarded = 0  # how many of the received signals were already passed on to the jobs

    # -- output --------------------------------------------------------------------------
    def _emit(self, event: str, **fields) -> None:
        if self.as_json:
            print(json.dumps({"event": event, **fields}, default=str), flush=True)

    # -- signals -------------------------------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:
        self.signals += 1
        if self.stop_reason is None:
            self.stop_reason = _signal_name(signum)

    def _forward_signals(self) -> None:
        while self._forwarded < self.signals:
            self._forwarded += 1
            if not self.jobs:
                continue
            hard = self._forwarded >= 3
            sig = signal.SIGKILL if hard else signal.SIGTERM
            if self._forwarded == 1:
                _note(("stopping", "bold"), f" ({self.stop_reason}): no new jobs; asking {len(self.jobs)} running "
                      "job(s) to checkpoint and stop (signal again to stop them at once)")
            else:
                _note(("stopping", "bold"), f": {'killing' if hard else 'stopping'} {len(self.jobs)} job(s) now")
            for job in self.jobs.values():
                if job.proc.poll() is None:
                    try:
                        job.proc.send_signal(sig)
                        job.signalled += 1
                    except ProcessLookupError:
                        pass

    # -- the queue -----------------------------------------------------------------------
    def _stop_asked(self, run_id: str) -> str | None:
        """The type of a ``cancel_requested`` / ``pause_requested`` event since the run was last claimed: a
        person stopped it on purpose, so it must not go back to the queue by itself."""
        last = None
        for e in self.store.run_events(run_id):
            if e.type == "claimed":
                last = None
            elif e.type in ("cancel_requested", "pause_requested"):
                last = e.type
        return last

    def reconcile(self) -> None:
        """Close stale runs; queue again those a worker had taken (their worker or its child died)."""
        from tuneops.errors import TuneopsError
        from tuneops.store.queue import requeue
        from tuneops.store.runs import reconcile_runs

        for run in reconcile_runs(self.store):
            why_not = ("" if run.worker is None else  # not a worker's job (e.g. `tuneops train`): left as it is
                       f"; a {asked.split('_')[0]} was asked for, so it stays interrupted"
                       if (asked := self._stop_asked(run.id)) else
                       f"; not queued again after {run.attempts} attempt(s): `tuneops runs resume {run.id}` does it"
                       if (run.attempts or 0) >= MAX_ATTEMPTS else None)
            again = why_not is None
            if again:
                try:
                    requeue(self.store, run.id, f"its worker {run.worker} stopped ({run.error}); queued again by "
                                                f"{self.name}")
                except TuneopsError as e:
                    again, why_not = False, f"; could not queue it again: {e.message}"
            _note("reconciled ", run.id, f": {run.error}", ("; back in the queue", "bold") if again else why_not)
            self._emit("reconciled", run=run.id, error=run.error, requeued=again)

    def _has_waiting(self) -> bool:
        from sqlalchemy import func, select

        from tuneops.store.schema import RunRecord

        with self.store.session(write=False) as s:
            return bool(s.scalar(select(func.count()).select_from(RunRecord).where(RunRecord.state == "queued")))

    def _claim(self) -> bool:
        """Take one job and start its child; False when nothing could be taken."""
        from tuneops.store.queue import claim_next, hand_over, release_claim

        if not self._has_waiting():
            return False
        run = claim_next(self.store, self.name)
        if run is None:
            return False
        if self.signals:  # told to stop while claiming: give it straight back
            release_claim(self.store, run.id, f"worker {self.name} stopped before starting it", self.name)
            return False
        self.taken += 1
        log = self.store.runs_dir(run.id) / "worker.log"
        env = {**os.environ, "TUNEOPS_HOME": str(self.store.home), WORKER_ENV: self.name, "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as out:
            out.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S %z')} worker {self.name}: attempt {run.attempts} "
                      f"of {run.id}\n".encode())
            out.flush()
            try:
                proc = subprocess.Popen([sys.executable, "-m", "tuneops.cli.main", "worker", "--run", run.id],
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)  # a Ctrl-C at the terminal reaches the worker only
            except OSError as e:
                release_claim(self.store, run.id, f"could not start a process: {e}", self.name)
                raise
        hand_over(self.store, run.id, proc.pid, self.name)  # `runs cancel` now signals the job, not the worker
        job = Job(run.id, run.recipe_name, run.priority, run.attempts or 1, proc, log)
        self.jobs[run.id] = job
        prio = f"priority {run.priority}" if run.priority is not None else "default priority"
        _note(("▶ ", "bold"), run.id, f" ({run.recipe_name}, {prio}, attempt {job.attempt}) · pid {proc.pid}",
              " · log ", str(log))
        self._emit("claimed", run=run.id, recipe=run.recipe_name, priority=run.priority, attempt=job.attempt,
                   pid=proc.pid, log=str(log))
        return True

    def _finished(self, job: Job, code: int) -> None:
        """A child exited: read how its run ended; end it here if the child could not say."""
        from tuneops.errors import TuneopsError
        from tuneops.store.queue import mark_abandoned, release_claim, requeue
        from tuneops.store.runs import clean_scratch
        from tuneops.store.store import ACTIVE_STATES

        seconds = time.monotonic() - job.started
        run = self.store.get_run(job.run_id)
        asked = self._stop_asked(run.id)
        requeued = False
        if run.state == "queued" and job.signalled and not asked and release_claim(
                self.store, run.id, f"worker {self.name} stopped ({self.stop_reason}) before the job started",
                self.name):
            run, requeued = self.store.get_run(job.run_id), True
        elif run.state in ACTIVE_STATES:  # the child died without marking its run
            how = describe_exit(code)
            if asked == "cancel_requested" or code in (130, -signal.SIGINT):
                state, why = "cancelled", f"cancelled: its process {how}"
            elif job.signalled or asked == "pause_requested":
                state, why = "interrupted", f"stopped by worker {self.name} ({self.stop_reason}): its process {how}"
            else:
                state, why = "failed", f"its process (pid {job.proc.pid}) {how}; see {job.log}"
            if mark_abandoned(self.store, run.id, state, why, worker=self.name) is not None:
                clean_scratch(self.store, run.id)
            run = self.store.get_run(job.run_id)
        if run.state == "interrupted" and run.worker == self.name and not asked and (
                job.signalled or (run.attempts or 0) < MAX_ATTEMPTS):
            try:
                requeue(self.store, run.id, f"interrupted while worker {self.name} ran it"
                                            + (f" (worker stopping: {self.stop_reason})" if job.signalled else ""))
                requeued = True
            except TuneopsError:
                pass
        result = {"run": run.id, "recipe": job.recipe, "priority": job.priority, "attempt": job.attempt,
                  "state": run.state, "requeued": requeued,
                  "seconds": round(seconds, 1), "exit_code": code, "artifact": run.artifact_id,
                  "error": run.error if run.state != "succeeded" else None, "log": str(job.log)}
        self.results.append(result)
        self._emit("job", **result)
        self._say_result(result)

    def _say_result(self, r: dict) -> None:
        took = f" in {r['seconds']:.1f} s"
        if r["state"] == "succeeded":
            _note(("✓ ", "green"), r["run"], (" succeeded", "green"), took,
                  *((" · artifact ", r["artifact"]) if r["artifact"] else ()))
        elif r["requeued"] and r["state"] == "queued":
            _note(("⏸ ", "yellow"), r["run"], " stopped before it started; back in the queue")
        elif r["requeued"]:
            _note(("⏸ ", "yellow"), r["run"], " interrupted", took, "; back in the queue (a worker resumes it from "
                  "its newest checkpoint)")
        elif r["state"] in ("cancelled", "paused", "interrupted"):
            _note(("■ ", "yellow"), r["run"], f" {r['state']}", took, *((": ", r["error"]) if r["error"] else ()))
        else:
            _note(("warning:", "bold yellow"), " ", r["run"], f" {r['state']}", took, ": ", r["error"] or
                  describe_exit(r["exit_code"]), " · log ", r["log"])

    # -- the loop ------------------------------------------------------------------------
    def _guarded(self, what: str, fn, *args) -> bool:
        """``fn(*args)``, but a store that is busy or briefly unreachable (a PostgreSQL restart, a lock held
        too long) is a warning, not the end of the worker: it tries again on its next round."""
        from sqlalchemy.exc import DBAPIError

        from tuneops.errors import Contention

        try:
            return bool(fn(*args))
        except (Contention, DBAPIError) as e:
            msg = getattr(e, "message", None) or " ".join(str(getattr(e, "orig", e)).split())[:300]
            _note(("warning:", "bold yellow"), f" {what} failed ({type(e).__name__}: {msg}); trying again")
            return False

    def _reap(self) -> None:
        for run_id, job in list(self.jobs.items()):
            code = job.proc.poll()
            if code is not None:
                del self.jobs[run_id]
                self._guarded(f"recording how {run_id} ended", self._finished, job, code)

    def _can_take(self) -> bool:
        return (not self.signals and len(self.jobs) < self.concurrency
                and (self.max_jobs is None or self.taken < self.max_jobs))

    def run(self) -> int:
        from tuneops.store.liveness import heartbeat_every, stale_after
        from tuneops.store.queue import touch_claims

        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.reconcile()
            mode = ("drains the queue, then exits" if self.once else f"polls every {self.poll:g} s")
            limit = f", at most {self.max_jobs} job(s)" if self.max_jobs is not None else ""
            _note(("worker ", "bold"), self.name, f" · store {self.store.home} · {self.concurrency} at a time{limit}"
                  f" · {mode} (Ctrl-C / SIGTERM stops it; running jobs are checkpointed and queued again)")
            self._emit("started", worker=self.name, store=str(self.store.home), concurrency=self.concurrency)
            beat_every, reconcile_every = heartbeat_every(), max(RECONCILE_EVERY_S, stale_after())
            next_claim = next_beat = time.monotonic()
            next_reconcile = next_claim + reconcile_every
            idle_said = False
            while True:
                self._forward_signals()
                self._reap()
                now = time.monotonic()
                if self.signals:
                    if not self.jobs:
                        break
                elif self._can_take() and now >= next_claim:
                    if self._guarded("taking a job", self._claim):
                        idle_said = False
                        continue  # fill the other free slots at once
                    next_claim = now + self.poll
                    if self.once and not self.jobs:
                        self.stop_reason = "queue empty"
                        break
                    if not self.jobs and not idle_said and not self.once:
                        _note(f"queue empty; waiting for jobs (checking every {self.poll:g} s)")
                        idle_said = True
                elif not self.jobs and self.max_jobs is not None and self.taken >= self.max_jobs:
                    self.stop_reason = f"{self.max_jobs} job(s) done"
                    break
                if self.jobs and now >= next_beat:
                    try:
                        touch_claims(self.store, list(self.jobs), self.name)
                    except Exception:  # a missed beat is retried next time; the children heartbeat themselves
                        pass
                    next_beat = now + beat_every
                if now >= next_reconcile:
                    self._guarded("reconciling stale runs", self.reconcile)
                    next_reconcile = now + reconcile_every
                time.sleep(0.1 if self.jobs else min(0.2, self.poll))
        finally:
            for job in self.jobs.values():  # only on an unexpected error: do not leave jobs behind unwatched
                if job.proc.poll() is None:
                    job.proc.send_signal(signal.SIGTERM)
            for sig, old in handlers.items():
                signal.signal(sig, old)
        self._summary()
        return 0

    def _summary(self) -> None:
        counts: dict[str, int] = {}
        for r in self.results:
            key = "requeued" if r["requeued"] else r["state"]
            counts[key] = counts.get(key, 0) + 1
        tally = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no jobs"
        _note(("worker stopped", "bold"), f" ({self.stop_reason or 'done'}): {len(self.results)} job(s): {tally}")
        self._emit("stopped", worker=self.name, reason=self.stop_reason, jobs=len(self.results), states=counts)


def execute_one(run_id: str) -> None:
    """The child side (``tuneops worker --run RUN_ID``): execute one queued run in this process. A run
    claimed by the worker that started us (``$TUNEOPS_WORKER_NAME``) is executed as is; otherwise it is
    claimed here first, which fails unless it is queued and nobody holds it."""
    # A worker started in the background may have SIGINT ignored, and children inherit that: restore
    # Ctrl-C semantics so `tuneops runs cancel` (SIGINT) reaches the job.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from tuneops.cli.render import progress, say
    from tuneops.store.queue import claim_run

    store = _store()
    run = store.get_run(run_id)
    me = os.environ.get(WORKER_ENV)
    if not (me and run.worker == me and run.state == "queued"):
        claim_run(store, run_id)
    from tuneops.pipeline import execute_run

    with progress() as p:  # a pause or a checkpointed SIGTERM ends as RunStopped: main.run_cli reports it
        outcome = execute_run(store, run_id, progress=p)
    say("run ", outcome.run.id, ": ", (outcome.run.state, "bold"),
        *((", artifact ", outcome.artifact.id) if outcome.artifact else ()))
    if outcome.promotion_refused:
        say(f"not promoted: {outcome.promotion_refused}")


def worker(concurrency: int = typer.Option(1, "--concurrency", "-c", min=1, max=64,
                                           help="Jobs run at once, each in its own process (default 1: one at a "
                                                "time)."),
           once: bool = typer.Option(False, "--once", help="Work through the queue and exit when nothing is left "
                                                           "to take, instead of waiting for new jobs (with "
                                                           "--max-jobs 1: a single job)."),
           poll: float = typer.Option(2.0, "--poll", min=0.05, metavar="SECONDS",
                                      help="How often an idle worker looks for new jobs."),
           max_jobs: Optional[int] = typer.Option(None, "--max-jobs", min=1, help="Exit after taking N jobs (once "
                                                                                  "they have ended)."),
           run: Optional[str] = typer.Option(None, "--run", hidden=True, help="Execute this one queued run here "
                                                                              "(what the worker's children do)."),
           as_json: bool = typer.Option(False, "--json", help="One JSON object per event on stdout (JSON Lines).")):
    """Run queued jobs (`tuneops train RECIPE --queue`) by priority, one at a time unless --concurrency;
    each job in its own process. SIGTERM / Ctrl-C: running jobs checkpoint and go back to the queue."""
    if run is not None:
        execute_one(run)
        return
    code = Worker(_store(), concurrency=concurrency, once=once, poll=poll, max_jobs=max_jobs, as_json=as_json).run()
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Mount this module's commands on the main app."""
    app.command("worker")(worker)
