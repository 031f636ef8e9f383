"""The forgetting suite's change with and without each forgetting control, on the quickstart task.

    .venv/bin/python benchmarks/forgetting_controls.py [--arms none kl rank replay early] [--home DIR]

Every arm is the quickstart recipe (SmolLM2-135M-Instruct, LoRA r16 all-linear, 300 bundled rows,
one epoch, lr 2e-4) with one control switched on, trained and evaluated paired against the base on
the same items (json_extraction on the 40 held-out rows, forgetting 8 per category):

- none: the quickstart as shipped;
- kl: objective.kl_to_reference 0.5 (KL from the base's next-token distribution on trained tokens);
  kl1: the same at 1.0; kl0.5_2ep: 0.5 with two epochs (the sweep for a setting that passes both gates);
- rank: method.r 4, alpha 8 (a rank cap);
- early: train.early_stopping on 40 forgetting items disjoint from the measured 40, every 5 steps,
  max_drop 0.05 (the run stops when the check falls more than 0.05 below its step-0 value);
- kl_early: kl 0.5 and early together;
- replay: train.replay ratio 0.3 of a general set — the base's own greedy replies to GSM8K
  questions (../shared/data/gsm8k, MIT), which share no items with the forgetting suite;
  replay_done: the same with only the replies the base finished (up to 320 tokens, 200 questions asked);
  kl_replay_done: that and kl 0.5 together.

Forgetting is measured, not timed, so this may run beside other work. Writes
benchmarks/results/forgetting_controls.json (per arm: forgetting.accuracy base → candidate and its
paired delta with CI, exact match, train seconds).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "benchmarks" / "results"
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k"


def replay_rows(store, base, n: int = 120, *, max_new_tokens: int = 96, finished_only: bool = False) -> list[dict]:
    """The base's own greedy replies to GSM8K questions: what 'general behaviour' means for this model.
    With ``finished_only``, a reply cut at ``max_new_tokens`` is left out: training on it would teach the
    model to end its turn mid-sentence (the chat template closes every assistant turn)."""
    import glob

    from tuneops.eval.generate import generate_chat
    from tuneops.models.base import load_base

    files = sorted(glob.glob(str(GSM8K / "**" / "*.jsonl"), recursive=True)) + \
        sorted(glob.glob(str(GSM8K / "**" / "*.parquet"), recursive=True))
    if not files:
        sys.exit(f"no GSM8K file under {GSM8K}")
    questions = []
    if files[0].endswith(".jsonl"):
        with open(files[0]) as f:
            for line in f:
                questions.append(json.loads(line)["question"])
                if len(questions) >= n:
                    break
    else:
        import pyarrow.parquet as pq

        questions = pq.read_table(files[0], columns=["question"]).column(0).to_pylist()[:n]
    model, tok = load_base(store, base)
    chats = [[{"role": "user", "content": q}] for q in questions]
    outs = generate_chat(model, tok, chats, max_new_tokens=max_new_tokens, batch_size=20)
    rows = [{"messages": [*c, {"role": "assistant", "content": o["text"].strip() or "I am not sure."}],
             "source": "benchmark:gsm8k-base-replies", "license": "MIT"}
            for c, o in zip(chats, outs) if not finished_only or o["finish_reason"] == "stop"]
    print(f"replay: {len(rows)} of {len(chats)} base replies kept (max_new_tokens {max_new_tokens}"
          f"{', finished ones only' if finished_only else ''})", file=sys.stderr)
    return rows


ARMS = {
    "none": {},
    "kl": {"objective": {"kind": "sft", "kl_to_reference": 0.5}},
    # the KL sweep: a stronger term, and the 0.5 term given a second epoch to recover the task gain
    "kl1": {"objective": {"kind": "sft", "kl_to_reference": 1.0}},
    "kl0.5_2ep": {"objective": {"kind": "sft", "kl_to_reference": 0.5}, "train_epochs": 2.0},
    "rank": {"method": {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.05, "target_modules": "all-linear"}},
    "replay": {"train_replay": {"dataset": "general-replay", "ratio": 0.3}},
    # the replay set above keeps replies cut at 96 tokens, each closed by the template's end-of-turn: it
    # teaches stopping mid-answer. These keep only the base's finished replies (up to 320 tokens).
    "replay_done": {"train_replay": {"dataset": "general-replay-finished", "ratio": 0.3}},
    "kl_replay_done": {"objective": {"kind": "sft", "kl_to_reference": 0.5},
                       "train_replay": {"dataset": "general-replay-finished", "ratio": 0.3}},
    # the check watches 40 forgetting items disjoint from the 40 the eval measures (see check_suite)
    "early": {"train_early_stopping": {"suite": "$check_suite", "every": 5, "max_drop": 0.05, "max_items": 40}},
    # two controls together: KL slows the drift, so the check can let training run longer before it stops
    "kl_early": {"objective": {"kind": "sft", "kl_to_reference": 0.5},
                 "train_early_stopping": {"suite": "$check_suite", "every": 5, "max_drop": 0.05, "max_items": 40}},
}


def check_suite(home: Path) -> Path:
    """The built-in forgetting suite without the first 8 items per category (the ones the eval's
    per_tag 8 measures), so early stopping never selects on the items it is judged by."""
    import yaml

    from tuneops.eval.suite import BUILTIN_DIR

    items = [json.loads(line) for line in (BUILTIN_DIR / "forgetting.jsonl").read_text().splitlines() if line.strip()]
    seen: dict[str, int] = {}
    rest = []
    for it in items:
        seen[it["category"]] = seen.get(it["category"], 0) + 1
        if seen[it["category"]] > 8:
            rest.append(it)
    folder = home / "check-suite"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "forgetting_check.jsonl").write_text("".join(json.dumps(it) + "\n" for it in rest))
    spec = yaml.safe_load((BUILTIN_DIR / "forgetting.yaml").read_text())
    spec.update({"name": "forgetting_check", "items": "forgetting_check.jsonl", "per_tag": 8,
                 "description": "forgetting items 9.. of each category (disjoint from the measured ones)"})
    (folder / "forgetting_check.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder / "forgetting_check.yaml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--home", type=Path, default=Path("/tmp/tuneops-forgetting-bench"))
    args = ap.parse_args()

    from tuneops.cli.quickstart import QUICKSTART_RECIPE
    from tuneops.data.bundled import json_extraction_rows
    from tuneops.data.ingest import ingest_rows
    from tuneops.models.base import import_embedded
    from tuneops.pipeline import run_recipe
    from tuneops.store import Store
    from tuneops.train.recipe import parse_recipe

    store = Store(args.home)
    base, _ = import_embedded(store)
    train_rows, held_out = json_extraction_rows(300, 40, seed=0)
    train_ds, _ = ingest_rows(store, train_rows, name="quickstart-train", origin="tuneops:bundled")
    eval_ds, _ = ingest_rows(store, held_out, name="quickstart-eval", origin="tuneops:bundled")
    if "replay" in args.arms:
        try:
            store.resolve_dataset("general-replay")
        except Exception:
            ingest_rows(store, replay_rows(store, base), name="general-replay", origin="benchmark")
    if {"replay_done", "kl_replay_done"} & set(args.arms):
        try:
            store.resolve_dataset("general-replay-finished")
        except Exception:
            ingest_rows(store, replay_rows(store, base, 200, max_new_tokens=320, finished_only=True),
                        name="general-replay-finished", origin="benchmark")
    out_path = RESULTS / "forgetting_controls.json"
    result = json.loads(out_path.read_text()) if out_path.exists() else {"arms": {}}
    for arm in args.arms:
        spec = json.loads(json.dumps(QUICKSTART_RECIPE))
        spec["name"] = f"forgetting-{arm}"
        spec["base"] = base.id
        spec["data"] = {"train": train_ds.id, "eval": eval_ds.id}
        spec.pop("target", None)
        for key, value in ARMS[arm].items():
            if key == "train_replay":
                spec["train"] = {**spec["train"], "replay": value}
            elif key == "train_epochs":
                spec["train"] = {**spec["train"], "epochs": value}
            elif key == "train_early_stopping":
                spec["train"] = {**spec["train"], "early_stopping": {**value, "suite": str(check_suite(args.home))}}
            else:
                spec[key] = value
        t0 = time.perf_counter()
        outcome = run_recipe(store, parse_recipe(spec, source=f"forgetting-controls:{arm}"))
        m = outcome.report.metrics
        f, em = m["forgetting.accuracy"], m["json_extraction.exact_match"]
        result["arms"][arm] = {
            "control": ARMS[arm] or "none (the quickstart as shipped)",
            "forgetting_base": f["base"], "forgetting_candidate": f["candidate"], "forgetting_delta": f["delta"],
            "forgetting_delta_ci95": f.get("ci95_delta"), "forgetting_mcnemar": f.get("mcnemar"),
            "exact_match_base": em["base"], "exact_match_candidate": em["candidate"],
            "train_seconds": outcome.run.metrics.get("train_seconds"), "wall_seconds": round(time.perf_counter() - t0),
            "run": outcome.run.id, "artifact": outcome.artifact.id,
            "steps": outcome.run.metrics.get("train_steps"),
            "stopped_early": outcome.run.metrics.get("stopped_early"),
        }
        print(arm, json.dumps(result["arms"][arm]), flush=True)
        none = result["arms"].get("none")
        if none:
            for name, a in result["arms"].items():
                a["forgetting_change_vs_none"] = round(a["forgetting_candidate"] - none["forgetting_candidate"], 4)
        result.update({
            "task": "quickstart (300 bundled rows, 40 held-out; forgetting 8 per category = 40 items)",
            "machine": {"platform": platform.platform(), "python": platform.python_version()},
            "command": "python benchmarks/forgetting_controls.py --arms " + " ".join(args.arms),
        })
        RESULTS.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
