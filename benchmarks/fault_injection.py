"""Runs that cannot be lost, measured (issue 10): runs killed with SIGKILL at random steps and resumed
with `tuneops runs resume` must register the very artifact an uninterrupted run registers; a kill while
a checkpoint is half-written resumes from the previous complete one; an injected NaN batch is
quarantined; deterministic mode repeats the artifact id (and whether it does across thread counts).

Everything goes through the real CLI in fresh processes, on a 2-layer random Llama with SmolLM2's
tokenizer (the mechanism does not depend on the model's size; HF-STACK-NOTES has the same check on
larger models). Writes benchmarks/results/fault_injection.json.

    .venv/bin/python benchmarks/fault_injection.py [--trials 20] [--steps 12]
"""

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CLI = [sys.executable, "-m", "tuneops.cli.main"]


def tiny_model(out: Path) -> Path:
    """The same 2-layer random Llama the serving benchmark builds (one builder for both)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from serve_fuzz import _tiny_model_dir

    return _tiny_model_dir(out)


def cli(home: Path, *args, env=None, check=True) -> subprocess.CompletedProcess:
    e = {**os.environ, "TUNEOPS_HOME": str(home), "TERM": "dumb", **(env or {})}
    e.pop("TUNEOPS_DB_URL", None)
    proc = subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, env=e, timeout=900)
    if check and proc.returncode != 0:
        raise SystemExit(f"tuneops {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def newest_run(store):
    from tuneops.store.schema import RunRecord

    return max(store.all(RunRecord), key=lambda r: r.created_at)


def weights(store, artifact_id: str) -> dict:
    from safetensors.torch import load_file

    from tuneops.release.registry import artifact_dir

    return load_file(str(artifact_dir(store, store.get_artifact(artifact_id)) / "adapter_model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import yaml

    from tuneops.data.bundled import json_extraction_rows
    from tuneops.data.ingest import ingest_rows
    from tuneops.models.base import import_local
    from tuneops.store import Store

    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="tuneops-faults-"))
    home = tmp / "store"
    store = Store(home)
    base, _ = import_local(store, tiny_model(tmp / "tiny"), name="tiny-llama")
    train_rows, eval_rows = json_extraction_rows(32, 8, seed=1)
    ingest_rows(store, train_rows, name="train")
    ingest_rows(store, eval_rows, name="eval")

    def recipe(name: str, **train) -> Path:
        spec = {"name": name, "base": base.id, "data": {"train": "train", "eval": "eval"},
                "method": {"r": 4, "alpha": 8, "dropout": 0.1},  # dropout: resume must restore the RNG too
                "train": {"max_steps": args.steps, "batch_size": 4, "learning_rate": 1e-2, "warmup_ratio": 0.1,
                          "threads": 1, "checkpoints": {"every": 2, "keep": 2}, **train},
                "eval": {"suites": [{"use": "forgetting", "per_tag": 1}], "max_new_tokens": 4, "batch_size": 8}}
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    plain = recipe("plain")
    cli(home, "train", plain)
    ref = newest_run(store)
    ref_w = weights(store, ref.artifact_id)
    print(f"reference run {ref.id}: {ref.artifact_id}", flush=True)

    rng = random.Random(args.seed)
    trials = []
    for i in range(args.trials):
        k = rng.randint(1, args.steps - 1)
        proc = cli(home, "train", plain, env={"TUNEOPS_FAULT_KILL_AT_STEP": str(k)}, check=False)
        killed = newest_run(store)
        resumed_from = None
        cli(home, "runs", "resume", killed.id)
        done = store.get_run(killed.id)
        ev = store.run_events(killed.id, "resume")
        resumed_from = ev[-1].payload["step"] if ev else 0
        diff = max_diff(ref_w, weights(store, done.artifact_id)) if done.artifact_id else None
        trials.append({"kill_at_step": k, "sigkilled": proc.returncode == -signal.SIGKILL,
                       "resumed_from_step": resumed_from, "state": done.state, "artifact": done.artifact_id,
                       "same_id": done.artifact_id == ref.artifact_id, "max_abs_diff": diff})
        print(f"trial {i + 1}/{args.trials}: killed at step {k}, resumed from {resumed_from}, "
              f"{'same id' if done.artifact_id == ref.artifact_id else 'DIFFERENT'} (max |Δw| {diff})", flush=True)

    proc = cli(home, "train", plain, env={"TUNEOPS_FAULT_KILL_DURING_SAVE": "6"}, check=False)
    torn = newest_run(store)
    cli(home, "runs", "resume", torn.id)
    torn_done = store.get_run(torn.id)
    skipped = store.run_events(torn.id, "checkpoint_skipped")
    torn_from = store.run_events(torn.id, "resume")[-1].payload["step"]
    kill_during_save = {"sigkilled": proc.returncode == -signal.SIGKILL, "skipped": [e.payload for e in skipped],
                        "resumed_from_step": torn_from, "same_id": torn_done.artifact_id == ref.artifact_id}
    print("kill during save:", kill_during_save, flush=True)

    cli(home, "train", plain, env={"TUNEOPS_FAULT_NAN_STEPS": "5"})
    nan_run = newest_run(store)
    guards = [e.payload for e in store.run_events(nan_run.id, "guard")]
    nan_w = weights(store, nan_run.artifact_id)
    nan = {"state": nan_run.state, "guard_events": guards,
           "artifact_finite": all(bool(t.isfinite().all()) for t in nan_w.values())}
    print("nan:", nan, flush=True)

    det = recipe("det", deterministic=True)
    ids = []
    for threads in (1, 1, 2):
        path = recipe(f"det-t{threads}", deterministic=True, threads=threads)
        cli(home, "train", path)
        ids.append(newest_run(store).artifact_id)
    del det
    deterministic = {"threads_1_twice": ids[:2], "same_id": ids[0] == ids[1], "threads_2": ids[2],
                     "same_across_thread_counts": ids[0] == ids[2]}
    print("deterministic:", deterministic, flush=True)

    diffs = [t["max_abs_diff"] for t in trials if t["max_abs_diff"] is not None]
    result = {
        "resume_trials": len(trials),
        "resume_equal": sum(t["same_id"] for t in trials),
        "max_abs_diff": max(diffs) if diffs else None,
        "kill_during_save_ok": bool(kill_during_save["sigkilled"] and kill_during_save["same_id"]
                                    and kill_during_save["skipped"]),
        "nan_injected": 1,
        "nan_recovered": bool(nan["state"] == "succeeded" and nan["artifact_finite"] and guards),
        "deterministic_same_id": deterministic["same_id"],
        "deterministic_same_id_across_thread_counts": deterministic["same_across_thread_counts"],
        "trials": trials, "kill_during_save": kill_during_save, "nan": nan, "deterministic": deterministic,
        "setup": {"model": "2-layer random Llama, SmolLM2 tokenizer", "steps": args.steps, "batch_size": 4,
                  "checkpoint_every": 2, "lora": "r4, dropout 0.1", "rows": 32, "seed": args.seed},
        "seconds": round(time.perf_counter() - t_start, 1),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "command": "python benchmarks/fault_injection.py " + " ".join(sys.argv[1:]),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fault_injection.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("trials",)}, indent=2))


if __name__ == "__main__":
    main()
