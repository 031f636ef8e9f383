"""Checkpoints that count only when complete, exact resume after SIGKILL, guards, graceful stops and
deterministic mode — at the train layer, on the tiny model (train/control.py)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tuneops.errors import RunStopped
from tuneops.train import control as ctl
from tuneops.train.control import GuardTripped, RunControl
from tuneops.train.recipe import GuardSpec, LoraSpec, TrainSpec
from tuneops.train.sft import train

ROWS = [{"messages": [{"role": "user", "content": f"Extract: {n} is {a}."},
                      {"role": "assistant", "content": f'{{"name": "{n}", "age": {a}}}'}]}
        for n, a in [("Ana", 31), ("Bo", 42), ("Cy", 27), ("Di", 55), ("Ed", 19), ("Flo", 64), ("Gus", 38),
                     ("Hal", 23), ("Ida", 45), ("Jo", 33), ("Kim", 29), ("Lu", 51)]]
METHOD = LoraSpec(r=4, alpha=8, dropout=0.1)  # dropout on: resume must restore the RNG too
SPEC = dict(epochs=3, batch_size=4, learning_rate=1e-2, warmup_ratio=0.0, threads=1)  # 3 steps an epoch, 9 in all


def _weights(out_dir: Path) -> dict:
    return load_file(str(Path(out_dir) / "adapter_model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _run(tiny_model_dir, tmp: Path, name: str, **control_kw):
    records = []
    control = RunControl(checkpoint_dir=tmp / name / "ckpt", every=2, keep=2, on_checkpoint=records.append,
                         guards=GuardSpec(), **control_kw)
    result = train(tiny_model_dir, ROWS, method=METHOD, spec=TrainSpec(**SPEC), out_dir=tmp / name / "adapter",
                   base_id="base-tiny", control=control)
    return result, records, control


_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from tests.train.test_control import _run
    _run(Path({model!r}), Path({tmp!r}), {name!r}, **{kw!r})
""")


def _killed(tiny_model_dir, tmp: Path, name: str, **kw) -> int:
    code = _CHILD.format(root=str(Path(__file__).parents[2]), model=str(tiny_model_dir), tmp=str(tmp), name=name,
                         kw=kw)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    return proc.returncode


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tiny_model_dir, tmp_path):
    full, records, _ = _run(tiny_model_dir, tmp_path, "full")
    assert full.steps == 9
    # saved every 2 steps and at each epoch end (3, 6, 9); the newest 2 complete ones are kept
    assert [r["step"] for r in records] == [2, 3, 4, 6, 8, 9]
    kept = sorted(p.name for p in ctl.local_checkpoints(tmp_path / "full" / "ckpt"))
    assert kept == ["checkpoint-8", "checkpoint-9"]
    assert records[-1]["metrics"]["train_loss"] > 0
    for rec in records[-2:]:
        assert ctl.verify(Path(rec["path"])) is None

    assert _killed(tiny_model_dir, tmp_path, "killed", kill_at_step=5) == -signal.SIGKILL
    root = tmp_path / "killed" / "ckpt"
    resume = ctl.find_resume(root)
    assert resume is not None and resume.name == "checkpoint-4"
    again, _, _ = _run(tiny_model_dir, tmp_path, "killed", resume_from=resume)
    assert again.steps == 9
    assert _max_diff(_weights(tmp_path / "full" / "adapter"), _weights(tmp_path / "killed" / "adapter")) <= 1e-6


def test_a_kill_while_a_checkpoint_is_written_resumes_from_the_previous_one(tiny_model_dir, tmp_path):
    assert _killed(tiny_model_dir, tmp_path, "torn", kill_during_save=4) == -signal.SIGKILL
    root = tmp_path / "torn" / "ckpt"
    assert (root / "checkpoint-4").is_dir() and ctl.read_marker(root / "checkpoint-4") is None
    skipped = []
    resume = ctl.find_resume(root, on_skip=lambda p, why: skipped.append((p.name, why)))
    assert resume.name == "checkpoint-3"
    assert skipped and skipped[0][0] == "checkpoint-4" and "marker" in skipped[0][1]
    assert (root / "incomplete-checkpoint-4").is_dir()  # kept aside as evidence, never resumed from
    _run(tiny_model_dir, tmp_path, "torn", resume_from=resume)
    full, _, _ = _run(tiny_model_dir, tmp_path, "full")
    assert _max_diff(_weights(tmp_path / "full" / "adapter"), _weights(tmp_path / "torn" / "adapter")) <= 1e-6


def test_a_changed_checkpoint_file_is_not_resumed_from(tiny_model_dir, tmp_path):
    _run(tiny_model_dir, tmp_path, "a")
    root = tmp_path / "a" / "ckpt"
    newest = ctl.local_checkpoints(root)[0]
    with open(newest / "optimizer.pt", "ab") as f:
        f.write(b"x")
    assert "optimizer.pt changed" in ctl.verify(newest)
    assert ctl.find_resume(root).name == "checkpoint-8"


def test_checkpoints_are_copied_to_an_fsspec_location_and_fetched_back(tiny_model_dir, tmp_path):
    url = (tmp_path / "remote").as_uri()
    _, records, _ = _run(tiny_model_dir, tmp_path, "a", location=url)
    assert records[-1]["location"] == f"{url}/checkpoint-9"
    assert (tmp_path / "remote" / "checkpoint-9" / ctl.MARKER).exists()
    fresh = tmp_path / "elsewhere"
    got = ctl.find_resume(fresh, location=url)
    assert got == fresh / "checkpoint-9" and ctl.verify(got) is None


def test_an_injected_nan_batch_is_quarantined_and_the_weights_stay_finite(tiny_model_dir, tmp_path):
    events = []
    result, _, control = _run(tiny_model_dir, tmp_path, "nan", inject_nan_steps=frozenset({3}),
                              on_guard=events.append)
    assert result.steps == 9
    assert [e["kind"] for e in events] == ["non-finite loss"] and events[0]["step"] == 3
    assert control.quarantined == {events[0]["batch"]}
    assert all(bool(t.isfinite().all()) for t in _weights(tmp_path / "nan" / "adapter").values())


def test_rollback_resumes_from_the_last_checkpoint_and_skips_the_bad_batch(tiny_model_dir, tmp_path):
    events = []
    control = RunControl(checkpoint_dir=tmp_path / "rb" / "ckpt", every=2, guards=GuardSpec(on_nan="rollback"),
                         inject_nan_steps=frozenset({5}), on_guard=events.append)
    result = train(tiny_model_dir, ROWS, method=METHOD, spec=TrainSpec(**SPEC), out_dir=tmp_path / "rb" / "adapter",
                   base_id="base-tiny", control=control)
    assert result.steps == 9
    kinds = [e["kind"] for e in events]
    assert kinds[:2] == ["non-finite loss", "rollback"] and events[1]["to_step"] == 4


def test_repeated_strikes_fail_the_run(tiny_model_dir, tmp_path):
    control = RunControl(checkpoint_dir=tmp_path / "ckpt", guards=GuardSpec(max_strikes=2),
                         inject_nan_steps=frozenset({2, 4}))
    with pytest.raises(GuardTripped, match="after 2 bad steps"):
        train(tiny_model_dir, ROWS, method=METHOD, spec=TrainSpec(**SPEC), out_dir=tmp_path / "adapter",
              base_id="base-tiny", control=control)
    assert not (tmp_path / "adapter").exists()  # nothing registered-to-be was written


def test_a_stop_request_checkpoints_the_step_and_raises_run_stopped(tiny_model_dir, tmp_path):
    asked = {"n": 0}

    def stop():
        asked["n"] += 1
        return "paused" if asked["n"] >= 3 else None

    records = []
    control = RunControl(checkpoint_dir=tmp_path / "ckpt", guards=GuardSpec(), stop_requested=stop,
                         on_checkpoint=records.append, epoch_end=False)
    with pytest.raises(RunStopped) as e:
        train(tiny_model_dir, ROWS, method=METHOD, spec=TrainSpec(**SPEC), out_dir=tmp_path / "adapter",
              base_id="base-tiny", control=control)
    assert e.value.state == "paused" and "step 3" in e.value.reason
    assert [r["step"] for r in records] == [3]
    assert ctl.find_resume(tmp_path / "ckpt").name == "checkpoint-3"


def test_sigterm_while_training_finishes_the_step_checkpoints_and_stops(tiny_model_dir, tmp_path):
    code = _CHILD.format(root=str(Path(__file__).parents[2]), model=str(tiny_model_dir), tmp=str(tmp_path),
                         name="term", kw={})
    code = code.replace("_run(Path(", "import os, signal\nfrom tuneops.train import control as c\n"
                                      "orig = c.Guard.check_loss\n"
                                      "def chk(self, loss, inputs):\n"
                                      "    if self.step == 4: os.kill(os.getpid(), signal.SIGTERM)\n"
                                      "    return orig(self, loss, inputs)\n"
                                      "c.Guard.check_loss = chk\n"
                                      "from tuneops.errors import RunStopped\n"
                                      "try:\n    _run(Path(", 1) + "except RunStopped as e:\n    print('STOPPED', e.state)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "STOPPED interrupted" in proc.stdout
    assert ctl.find_resume(tmp_path / "term" / "ckpt").name == "checkpoint-4"


def test_deterministic_mode_gives_bit_identical_adapters(tiny_model_dir, tmp_path):
    spec = TrainSpec(**{**SPEC, "epochs": 1, "deterministic": True})
    outs = []
    for name in ("a", "b"):
        train(tiny_model_dir, ROWS, method=METHOD, spec=spec, out_dir=tmp_path / name, base_id="base-tiny")
        outs.append((tmp_path / name / "adapter_model.safetensors").read_bytes())
    assert outs[0] == outs[1]
    env = ctl.environment()
    assert env["versions"]["torch"] == torch.__version__ and env["threads"] >= 1


def test_select_best_registers_the_checkpoint_with_the_lowest_held_out_loss(tiny_model_dir, tmp_path):
    records = []
    control = RunControl(checkpoint_dir=tmp_path / "ckpt", every=2, keep=1, select="best", guards=GuardSpec(),
                         on_checkpoint=records.append)
    spec = TrainSpec(**{**SPEC, "eval_steps": 2})
    # held-out rows unlike the training rows: the more the model fits the JSON replies, the worse it does here
    other = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
             for q, a in [("Say hello.", "Hello there, my friend!"), ("Name a colour.", "Blue, like the sea."),
                          ("Count to three.", "One, two, three."), ("Greet me.", "Good morning to you!")]]
    result = train(tiny_model_dir, ROWS, method=METHOD, spec=spec, out_dir=tmp_path / "adapter", base_id="base-tiny",
                   eval_rows=other, control=control)
    scored = [(r["metrics"]["eval_loss"], r["step"]) for r in records if "eval_loss" in r["metrics"]]
    assert len(scored) >= 3
    best_loss, best_step = min(scored)
    assert best_step != 9, scored  # the test means something only if an earlier checkpoint wins
    assert control.selected["step"] == best_step and control.selected["eval_loss"] == best_loss
    # the kept set is the newest one plus the best, and the saved artifact holds the best one's weights
    kept = {p.name for p in ctl.local_checkpoints(tmp_path / "ckpt")}
    assert f"checkpoint-{best_step}" in kept
    best_adapter = load_file(str(tmp_path / "ckpt" / f"checkpoint-{best_step}" / "adapter_model.safetensors"))
    assert _max_diff(best_adapter, _weights(tmp_path / "adapter")) == 0.0
    assert result.steps == 9
