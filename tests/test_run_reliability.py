"""Runs that cannot be lost, end to end through the CLI on the tiny model: SIGKILL then `runs resume`
gives the very artifact an uninterrupted run gives (same content-addressed id), checkpoints are listed
and registrable, SIGTERM and `runs pause` checkpoint and stop, an injected NaN is quarantined, repeated
strikes fail the run and keep its evidence, and deterministic mode repeats the artifact id."""

import json
import signal
import time

import pytest

from tests.cli.helpers import start, tuneops
from tests.conftest import tiny_recipe
from tuneops.store.schema import RunRecord

TRAIN = {"max_steps": 9, "batch_size": 4, "learning_rate": 1e-2, "warmup_ratio": 0.0, "threads": 1,
         "checkpoints": {"every": 2, "keep": 2}}
EVAL = {"suites": [{"use": "forgetting", "per_tag": 1}], "max_new_tokens": 4, "batch_size": 8}


def _recipe_file(tmp_path, base_id, name="r.yaml", **train):
    recipe = tiny_recipe(base_id, train={**TRAIN, **train}, eval=EVAL, gates=[], target=None)
    path = tmp_path / name
    path.write_text(recipe.to_yaml())
    return path


def _runs(store):
    return sorted(store.all(RunRecord), key=lambda r: r.created_at)


def _artifact(store, run_id):
    return store.get_run(run_id).artifact_id


def test_sigkill_then_resume_registers_the_same_artifact_as_an_uninterrupted_run(tiny_env, tmp_path):
    store, base = tiny_env
    recipe = _recipe_file(tmp_path, base.id)
    tuneops(store.home, "train", recipe, "--json")
    (full,) = _runs(store)
    assert full.state == "succeeded"

    proc = tuneops(store.home, "train", recipe, check=False, TUNEOPS_FAULT_KILL_AT_STEP="5")
    assert proc.returncode == -signal.SIGKILL
    killed = _runs(store)[-1]
    assert killed.state == "running"  # nobody could mark it
    listed = json.loads(tuneops(store.home, "runs", "checkpoints", killed.id, "--json").stdout)
    assert [c["step"] for c in listed] == [2, 4] and all(c["train_loss"] > 0 for c in listed)

    out = tuneops(store.home, "runs", "resume", killed.id, "--json")
    done = store.get_run(killed.id)
    assert done.state == "succeeded", out.stdout + out.stderr
    assert [e.payload["step"] for e in store.run_events(killed.id, "resume")] == [4]
    # exact resume: the same weights, so the same content-addressed artifact
    assert _artifact(store, killed.id) == _artifact(store, full.id)

    reg = json.loads(tuneops(store.home, "runs", "checkpoints", killed.id, "--register", "8", "--json").stdout)
    art = store.get_artifact(reg["artifact"])
    assert art.lineage["checkpoint_step"] == 8 and art.run_id == killed.id
    logs = tuneops(store.home, "runs", "logs", killed.id).stdout
    assert "state running → interrupted" in logs and "resume " in logs and "checkpoint step=8" in logs


def test_a_kill_during_a_checkpoint_write_resumes_from_the_previous_one(tiny_env, tmp_path):
    store, base = tiny_env
    recipe = _recipe_file(tmp_path, base.id)
    proc = tuneops(store.home, "train", recipe, check=False, TUNEOPS_FAULT_KILL_DURING_SAVE="4")
    assert proc.returncode == -signal.SIGKILL
    run = _runs(store)[-1]
    tuneops(store.home, "runs", "resume", run.id)
    assert store.get_run(run.id).state == "succeeded"
    (skipped,) = store.run_events(run.id, "checkpoint_skipped")
    assert "marker" in skipped.payload["reason"]
    assert [e.payload["step"] for e in store.run_events(run.id, "resume")] == [2]


def test_sigterm_checkpoints_marks_interrupted_and_resume_finishes(tiny_env, tmp_path):
    store, base = tiny_env
    recipe = _recipe_file(tmp_path, base.id, max_steps=400, checkpoints={"every": 1000, "keep": 1, "epoch_end": False})
    proc = start(store.home, "train", recipe, TUNEOPS_HEARTBEAT_S="0.3")
    try:
        deadline = time.time() + 120
        while not (_runs(store) and store.run_events(_runs(store)[-1].id, "metrics")):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    run = store.get_run(_runs(store)[-1].id)
    assert run.state == "interrupted" and "SIGTERM" in run.error and "checkpointed at step" in run.error
    (ckpt,) = store.run_events(run.id, "checkpoint")
    assert 0 < ckpt.payload["step"] < 400
    assert proc.returncode != 0 and "Traceback" not in proc.stderr


def test_pause_then_resume(tiny_env, tmp_path):
    store, base = tiny_env
    # Long enough to be running when the pause arrives; the resumed rest trains in-process, so not longer.
    recipe = _recipe_file(tmp_path, base.id, max_steps=120, checkpoints={"every": 1000, "keep": 1, "epoch_end": False})
    proc = start(store.home, "train", recipe, TUNEOPS_HEARTBEAT_S="0.2")
    try:
        deadline = time.time() + 120
        while not (_runs(store) and store.run_events(_runs(store)[-1].id, "metrics")):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.1)
        run_id = _runs(store)[-1].id
        paused = json.loads(tuneops(store.home, "runs", "pause", run_id, "--json").stdout)
        assert paused["state"] == "paused", paused
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, proc.stderr[-2000:]
    step = store.run_events(run_id, "checkpoint")[-1].payload["step"]
    with pytest.raises(AssertionError, match="only a running run can be paused"):
        tuneops(store.home, "runs", "pause", run_id)  # not running any more
    tuneops(store.home, "runs", "resume", run_id, "--queue")
    assert store.get_run(run_id).state == "queued"
    tuneops(store.home, "runs", "resume", run_id, check=False)  # queued already: refused, exit 2
    from tuneops.pipeline import execute_run

    execute_run(store, run_id)
    assert store.get_run(run_id).state == "succeeded"
    assert store.run_events(run_id, "resume")[-1].payload["step"] == step


def test_an_injected_nan_is_quarantined_and_repeated_strikes_fail_with_evidence_kept(tiny_env, tmp_path):
    store, base = tiny_env
    recipe = _recipe_file(tmp_path, base.id)
    tuneops(store.home, "train", recipe, TUNEOPS_FAULT_NAN_STEPS="3")
    run = _runs(store)[-1]
    assert run.state == "succeeded"
    (guard,) = store.run_events(run.id, "guard")
    assert guard.payload["kind"] == "non-finite loss" and guard.payload["step"] == 3 and guard.payload["batch"]

    proc = tuneops(store.home, "train", recipe, check=False, TUNEOPS_FAULT_NAN_STEPS="2,3,5")
    assert proc.returncode == 4, proc.stderr
    assert "after 3 bad steps" in proc.stderr and "Traceback" not in proc.stderr
    failed = _runs(store)[-1]
    assert failed.state == "failed" and failed.artifact_id is None
    assert len(store.run_events(failed.id, "guard")) == 3
    assert [e.payload["step"] for e in store.run_events(failed.id, "checkpoint")] == [2, 4]
    assert (store.home / "runs" / failed.id / "checkpoints" / "checkpoint-4").is_dir()  # evidence kept
    found = json.loads(tuneops(store.home, "runs", "list", "--state", "failed", "--where", "train.learning_rate=0.01",
                               "--json").stdout)
    assert [r["id"] for r in found] == [failed.id]
    none = json.loads(tuneops(store.home, "runs", "list", "--state", "failed", "--where", "method.r=64",
                              "--json").stdout)
    assert none == []


def test_deterministic_mode_gives_the_same_artifact_id_twice(tiny_env, tmp_path):
    store, base = tiny_env
    recipe = _recipe_file(tmp_path, base.id, deterministic=True, max_steps=4)
    tuneops(store.home, "train", recipe)
    tuneops(store.home, "train", recipe)
    a, b = _runs(store)[-2:]
    assert a.artifact_id and a.artifact_id == b.artifact_id
    env = store.run_events(a.id, "environment")[0].payload
    assert env["deterministic"] is True and env["threads"] == 1 and env["versions"]["transformers"]
