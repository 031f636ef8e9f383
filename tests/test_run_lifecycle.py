"""No orphaned runs: a training process killed with SIGKILL leaves a stale run that reconcile closes."""

import os
import signal
import subprocess
import sys
import textwrap
import time

from tuneops.store.runs import liveness, reconcile_runs


def test_sigkill_during_training_leaves_a_stale_run_that_reconcile_marks_interrupted(tiny_env, tmp_path):
    store, base = tiny_env
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        from tests.conftest import tiny_recipe
        from tuneops.pipeline import run_recipe
        from tuneops.store import Store
        store = Store({str(store.home)!r})
        run_recipe(store, tiny_recipe({base.id!r}, train={{"max_steps": 100000, "batch_size": 4, "threads": 1}}))
    """))
    env = {**os.environ, "TUNEOPS_HEARTBEAT_S": "0.5", "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while True:
            runs = [r for r in store.all(__import__("tuneops.store.schema", fromlist=["RunRecord"]).RunRecord)]
            if runs and runs[-1].state == "running" and store.run_events(runs[-1].id, "metrics"):
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "training never started"
            time.sleep(0.2)
        run = runs[-1]
        assert liveness(run) == "alive"
        assert (store.home / "runs" / run.id / "recipe.yaml").exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    run = store.get_run(run.id)
    assert run.state == "running" and liveness(run) == "stale"  # nothing could mark it: the process is gone
    (done,) = reconcile_runs(store)
    assert done.id == run.id and done.state == "interrupted" and "stale: no heartbeat since" in done.error
    assert not (store.home / "runs" / run.id / "adapter").exists()  # scratch goes; checkpoints stay for resume
    assert reconcile_runs(store) == []  # idempotent
    (last,) = [e for e in store.run_events(run.id, "state")][-1:]
    assert last.payload["to"] == "interrupted" and last.at is not None
