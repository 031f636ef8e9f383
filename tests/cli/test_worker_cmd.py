"""`tuneops worker`: queued runs by priority on the tiny model, each in its own process; a failing or
killed job is reported and the worker goes on; SIGTERM / SIGINT stop it cleanly (running jobs go back
to the queue)."""

import json
import os
import queue
import signal
import socket
import threading
import time

import pytest

from tests.cli.helpers import start, tuneops
from tests.conftest import tiny_recipe
from tests.store.test_queue import dead_pid
from tuneops.cli.worker_cmd import MAX_ATTEMPTS
from tuneops.pipeline import create_run
from tuneops.store import Store
from tuneops.store.queue import list_queue
from tuneops.store.schema import RunRecord, utcnow


class Lines:
    """Collect a process's stderr lines in the background, so a test can wait for one."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            self._q.put(line)
        self._q.put(None)

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} not seen on stderr:\n{''.join(self.lines)[-3000:]}")

    def rest(self) -> str:
        while (line := self._q.get(timeout=30)) is not None:
            self.lines.append(line)
        return "".join(self.lines)


# Small and quick: 2 steps, 2 eval items, no gates or promotion (the pipeline's own tests cover those).
QUICK = {"target": None, "gates": [], "train": {"max_steps": 2, "batch_size": 4, "threads": 2},
         "eval": {"suites": ["json_extraction"], "max_new_tokens": 4, "max_items": 2}}


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _wait_training(store, run_id, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = store.get_run(run_id)
        if run.state == "running" and store.run_events(run_id, "metrics"):
            return run
        assert run.state in ("queued", "validating_data", "running"), (run.state, run.error)
        time.sleep(0.2)
    raise AssertionError(f"{run_id} never started training")


def test_worker_runs_queued_jobs_by_priority(tiny_env):
    store, base = tiny_env
    low = create_run(store, tiny_recipe(base.id, name="low", **QUICK), priority=1)  # queued first, runs last
    high = create_run(store, tiny_recipe(base.id, name="high", **QUICK), priority=5)
    proc = tuneops(store.home, "worker", "--once", "--json", timeout=600)
    events = _json_lines(proc.stdout)  # stdout is JSON Lines only
    me = events[0]["worker"]
    assert events[0]["event"] == "started" and events[-1] == {
        "event": "stopped", "worker": me, "reason": "queue empty", "jobs": 2, "states": {"succeeded": 2}}
    # one at a time, the higher priority first
    assert [(e["event"], e["run"]) for e in events[1:-1]] == [("claimed", high), ("job", high), ("claimed", low),
                                                              ("job", low)]
    for e in events[1:-1]:
        if e["event"] == "job":
            assert e["state"] == "succeeded" and e["exit_code"] == 0 and e["artifact"].startswith("ad-")
    for rid in (high, low):
        run = store.get_run(rid)
        assert (run.state, run.attempts, run.worker) == ("succeeded", 1, me) and run.artifact_id
        assert [e.payload for e in store.run_events(rid, "claimed")] == [{"worker": me, "attempt": 1}]
    assert store.run_events(high, "claimed")[0].at < store.run_events(low, "claimed")[0].at
    assert f"✓ {high} succeeded" in proc.stderr and "Traceback" not in proc.stderr
    assert "succeeded" in (store.home / "runs" / low / "worker.log").read_text()


def test_failing_jobs_are_warned_about_and_concurrency_runs_them_side_by_side(tiny_env):
    store, base = tiny_env
    ids = [create_run(store, tiny_recipe(base.id, name=f"bad{i}", data={"train": "no-such-data", "eval": "tiny-eval"}))
           for i in range(2)]
    proc = tuneops(store.home, "worker", "--once", "--concurrency", "2", "--json", timeout=300)
    events = _json_lines(proc.stdout)
    kinds = [(e["event"], e.get("run")) for e in events if e["event"] in ("claimed", "job")]
    # both taken before either ended: two processes at once
    assert [k for k, _ in kinds] == ["claimed", "claimed", "job", "job"] and {r for _, r in kinds} == set(ids)
    for e in events:
        if e["event"] == "job":
            assert e["state"] == "failed" and e["exit_code"] == 2 and "no-such-data" in e["error"]
    assert events[-1]["states"] == {"failed": 2}
    assert proc.returncode == 0  # the worker did its job; the jobs' failures are theirs
    for rid in ids:
        assert store.get_run(rid).state == "failed"
        assert f"warning: {rid} failed" in proc.stderr
        log = (store.home / "runs" / rid / "worker.log").read_text()
        assert "error:" in log and "no-such-data" in log and "Traceback" not in log
    assert "Traceback" not in proc.stderr


def test_max_jobs_takes_that_many_and_leaves_the_rest_queued(tiny_env):
    store, base = tiny_env
    ids = [create_run(store, tiny_recipe(base.id, name=f"bad{i}", data={"train": "nope", "eval": "tiny-eval"}))
           for i in range(2)]
    proc = tuneops(store.home, "worker", "--max-jobs", "1", "--json", timeout=300)
    (stopped,) = [e for e in _json_lines(proc.stdout) if e["event"] == "stopped"]
    assert stopped["jobs"] == 1 and stopped["reason"] == "1 job(s) done"
    assert store.get_run(ids[0]).state == "failed" and store.get_run(ids[1]).state == "queued"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_an_idle_worker_exits_cleanly(tmp_path, sig):
    home = tmp_path / "store"
    tuneops(home, "init")
    proc = start(home, "worker", "--poll", "0.2")
    try:
        err = Lines(proc.stderr)
        err.wait_for("queue empty; waiting for jobs")
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
        text = err.rest()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert f"worker stopped ({sig.name}): 0 job(s): no jobs" in text and "Traceback" not in text
    assert proc.stdout.read() == ""


def test_a_killed_job_fails_without_the_worker_and_sigterm_puts_the_running_one_back(tiny_env):
    store, base = tiny_env
    endless = {"max_steps": 100000, "batch_size": 4, "threads": 1}
    doomed = create_run(store, tiny_recipe(base.id, name="doomed", train=endless), priority=2)
    later = create_run(store, tiny_recipe(base.id, name="later", train=endless), priority=1)
    proc = start(store.home, "worker", "--json", TUNEOPS_HEARTBEAT_S="0.5")
    try:
        err = Lines(proc.stderr)
        run = _wait_training(store, doomed)
        assert run.pid != proc.pid  # the job runs in a child process
        os.kill(run.pid, signal.SIGKILL)  # what the OOM killer does
        err.wait_for(f"{doomed} failed")
        _wait_training(store, later)  # the worker lived on and took the next job
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        out = proc.stdout.read()  # (stderr belongs to the Lines reader)
        text = err.rest()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, text[-3000:]
    jobs = {e["run"]: e for e in _json_lines(out) if e["event"] == "job"}
    run = store.get_run(doomed)
    assert run.state == "failed" and "killed by SIGKILL" in run.error and jobs[doomed]["exit_code"] == -9
    assert store.run_events(doomed, "error")[-1].payload["type"] == "WorkerChildDied"
    run = store.get_run(later)  # interrupted by the forwarded SIGTERM, then queued again for the next worker
    assert jobs[later]["state"] == "interrupted" and jobs[later]["requeued"]
    assert (run.state, run.attempts, run.pid, run.worker) == ("queued", 1, None, None)
    assert [r.id for r in list_queue(store, include_claimed=False)] == [later]
    states = [e.payload["to"] for e in store.run_events(later, "state")]
    assert states[-2:] == ["interrupted", "queued"]
    assert "stopping (SIGTERM)" in text and "back in the queue" in text and "Traceback" not in text


def _bad_run(store, **fields) -> str:
    """A queued run that fails fast (its base does not exist): cheap to execute."""
    rid = create_run(store, tiny_recipe("base-0123456789abcdef"))
    if fields:
        with store.session() as s:
            run = s.get(RunRecord, rid)
            for k, v in fields.items():
                setattr(run, k, v)
    return rid


def test_a_job_stopped_before_it_started_goes_back_unclaimed(tmp_path):
    store = Store(tmp_path / "store")
    rid = _bad_run(store)
    proc = start(store.home, "worker", "--json")
    try:
        err = Lines(proc.stderr)
        err.wait_for(f"▶ {rid}")
        proc.send_signal(signal.SIGTERM)  # the child is still importing: it has not touched the run yet
        proc.wait(timeout=60)
        out = proc.stdout.read()  # (stderr belongs to the Lines reader)
        text = err.rest()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, text
    (job,) = [e for e in _json_lines(out) if e["event"] == "job"]
    assert job["state"] == "queued" and job["requeued"]
    run = store.get_run(rid)
    assert (run.state, run.worker, run.pid, run.attempts) == ("queued", None, None, 0)
    assert store.run_events(rid, "released")[0].payload["reason"].endswith("before the job started")
    assert "stopped before it started; back in the queue" in text and "Traceback" not in text


def test_on_start_a_worker_reconciles_runs_whose_worker_died_and_takes_them_again(tmp_path):
    store = Store(tmp_path / "store")
    gone = dict(host=socket.gethostname(), pid=dead_pid(), heartbeat_at=utcnow())
    again = _bad_run(store, state="running", worker="elsewhere:1", attempts=1, **gone)
    spent = _bad_run(store, state="running", worker="elsewhere:1", attempts=MAX_ATTEMPTS, **gone)
    manual = _bad_run(store, state="running", **gone)  # a `tuneops train` process, not a worker's job
    proc = tuneops(store.home, "worker", "--once", "--json", timeout=120)
    events = _json_lines(proc.stdout)
    reconciled = {e["run"]: e["requeued"] for e in events if e["event"] == "reconciled"}
    assert reconciled == {again: True, spent: False, manual: False}
    assert [(e["event"], e["run"]) for e in events if e["event"] in ("claimed", "job")] == [
        ("claimed", again), ("job", again)]
    run = store.get_run(again)
    assert run.state == "failed" and run.attempts == 2  # taken again (and failed: its base is not there)
    assert [e.payload["to"] for e in store.run_events(again, "state")][:2] == ["interrupted", "queued"]
    assert store.get_run(spent).state == store.get_run(manual).state == "interrupted"
    assert f"`tuneops runs resume {spent}`" in proc.stderr
