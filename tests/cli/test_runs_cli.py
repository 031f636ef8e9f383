"""`train` and `runs` through the CLI: --json keeps stdout JSON-only, signals end a run with the
right state and exit code, events carry timestamps, stale runs are marked, cancelled, reconciled."""

import json
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta

import pytest

from tests.cli.helpers import start, tuneops
from tests.conftest import tiny_recipe
from tuneops.store.ids import new_run_id
from tuneops.store.schema import RunRecord, utcnow

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


def _recipe_file(tmp_path, base_id, **overrides):
    path = tmp_path / "recipe.yaml"
    path.write_text(tiny_recipe(base_id, target=None, **overrides).to_yaml())  # train and eval, no promotion
    return path


def test_train_json_stdout_is_only_json_and_events_have_timestamps(tiny_env, tmp_path):
    store, base = tiny_env
    quick = {"train": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "threads": 2}, "gates": [],
             "eval": {"suites": ["json_extraction"], "max_new_tokens": 4, "batch_size": 8, "max_items": 2}}
    proc = tuneops(store.home, "train", _recipe_file(tmp_path, base.id, **quick), "--json")
    out = json.loads(proc.stdout)  # nothing but the JSON document on stdout
    assert out["state"] == "succeeded" and out["artifact"].startswith("ad-")
    assert "train sft · lora r=4" in proc.stderr  # the progress bars went to stderr
    # before step one: a rendered training row with its trained part marked, and the run's estimate
    assert "one training row as the model sees it" in proc.stderr and "<|im_end|>]]" in proc.stderr
    assert "estimate: 2 steps, ~" in proc.stderr and "tokens" in proc.stderr

    shown = json.loads(tuneops(store.home, "runs", "show", out["run"], "--json").stdout)
    assert shown["events"] and all(TIMESTAMP.match(e["at"]) for e in shown["events"])
    assert [e["to"] for e in shown["events"] if e["type"] == "state"][-1] == "succeeded"
    assert all(TIMESTAMP.match(p["at"]) for p in shown["loss_curve"])
    table = tuneops(store.home, "runs", "show", out["run"]).stdout
    assert re.search(r"┃ seq\s+┃ at\s+┃ type", table) and shown["events"][0]["at"] in table

    listed = json.loads(tuneops(store.home, "runs", "list", "--json").stdout)
    assert [(r["id"], r["state"], r["stale"]) for r in listed] == [(out["run"], "succeeded", False)]


def _wait_for_training(store, timeout=240.0) -> RunRecord:
    """The run, once the trainer has logged its first step (so the signal lands inside training)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = store.all(RunRecord)
        if runs and store.run_events(runs[0].id, "metrics"):
            return runs[0]
        time.sleep(0.3)
    raise AssertionError("training never started")


LONG = {"max_steps": 100000, "batch_size": 4, "learning_rate": 1e-3, "threads": 1}


@pytest.mark.parametrize("sig, code, state", [  # both finish the step, checkpoint and stop resumable (issue 10)
    (signal.SIGINT, 130, "interrupted"),
    (signal.SIGTERM, 143, "interrupted"),
])
def test_signal_during_train_marks_the_run_and_exits_with_its_code(tiny_env, tmp_path, sig, code, state):
    store, base = tiny_env
    proc = start(store.home, "train", _recipe_file(tmp_path, base.id, train=LONG), "--json")
    try:
        run = _wait_for_training(store)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, err[-2000:]
    assert f"error: interrupted by {signal.Signals(sig).name}; checkpointed at step" in err and "Traceback" not in err
    assert out == ""  # --json: no partial output
    assert store.get_run(run.id).state == state


def test_runs_cancel_stops_a_live_train(tiny_env, tmp_path):
    store, base = tiny_env
    proc = start(store.home, "train", _recipe_file(tmp_path, base.id, train=LONG))
    try:
        run = _wait_for_training(store)
        cancelled = json.loads(tuneops(store.home, "runs", "cancel", run.id, "--reason", "[bold]enough[/x]",
                                       "--json").stdout)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert cancelled["id"] == run.id and cancelled["state"] == "cancelled"
    assert proc.returncode == 130, err[-2000:]
    events = json.loads(tuneops(store.home, "runs", "show", run.id, "--json").stdout)["events"]
    assert any(e["type"] == "cancel_requested" and e["reason"] == "[bold]enough[/x]" for e in events)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _stale_run(store, name="stale") -> str:
    run_id = new_run_id()
    with store.session() as s:
        s.add(RunRecord(id=run_id, recipe_name=name, recipe_yaml="", recipe_hash="0" * 64, state="running",
                        dataset_ids=[], metrics={}, heartbeat_at=utcnow() - timedelta(hours=1),
                        host=socket.gethostname(), pid=_dead_pid()))
    (store.home / "runs" / run_id / "trainer").mkdir(parents=True)
    return run_id


def test_stale_run_is_marked_in_runs_list_and_reconciled(sqlite_store):
    store = sqlite_store
    run_id = _stale_run(store)
    listed = json.loads(tuneops(store.home, "runs", "list", "--json").stdout)
    assert [(r["id"], r["state"], r["stale"]) for r in listed] == [(run_id, "running", True)]
    assert "running (stale)" in tuneops(store.home, "runs", "list").stdout

    done = json.loads(tuneops(store.home, "runs", "reconcile", "--json").stdout)
    assert [(r["id"], r["state"]) for r in done] == [(run_id, "interrupted")] and "stale" in done[0]["error"]
    assert not (store.home / "runs" / run_id / "trainer").exists()
    listed = json.loads(tuneops(store.home, "runs", "list", "--json").stdout)
    assert [(r["state"], r["stale"]) for r in listed] == [("interrupted", False)]
    assert json.loads(tuneops(store.home, "runs", "reconcile", "--json").stdout) == []
    assert "reconciled runs: none yet" in tuneops(store.home, "runs", "reconcile").stdout


def test_cancel_a_stale_run_and_refuse_a_finished_one(sqlite_store):
    store = sqlite_store
    run_id = _stale_run(store)
    out = json.loads(tuneops(store.home, "runs", "cancel", run_id, "--reason", "[/x] gone", "--json").stdout)
    assert out["state"] == "cancelled" and "[/x] gone" in out["error"]
    again = tuneops(store.home, "runs", "cancel", run_id, check=False)
    assert again.returncode == 2 and again.stderr.startswith(f"error: run {run_id} already ended (cancelled)")
    missing = tuneops(store.home, "runs", "cancel", "run-nope", check=False)
    assert missing.returncode == 2 and "run 'run-nope' not found" in missing.stderr
