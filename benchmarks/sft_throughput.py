"""tuneops SFT against a plain TRL SFTTrainer + PEFT script with default settings, side by side.

    .venv/bin/python benchmarks/sft_throughput.py [--rows 160] [--steps 12] [--seeds 0 1 2]

Same data (the bundled task's training rows, chat form), same model (SmolLM2-135M-Instruct), same
LoRA (r 16, all-linear), batch size, learning rate and number of steps, on this CPU. The baseline is
what a TRL user writes first: conversational prompt/completion rows, ``SFTConfig`` defaults (padded
batches, no length grouping) with bf16 and checkpointing off for CPU. tuneops tokenizes itself
(exact assistant-turn masks) and trains padding-free. Each side runs in its own child process, one
after the other (never both at once); tokens/s counts the tokens the model processed (padding
excluded for both), so the ratio is the speed-up on the same work. The final eval loss of both
adapters is measured by one function on the same held-out rows, with the tuneops mask.

``--seeds`` runs both sides once per seed (data order, LoRA init and dropout follow it on both
sides). The final eval loss moves with the data order, so the loss comparison is of the means over
seeds, next to the baseline's own seed-to-seed spread; tokens/s is the median over every run.
``--loss-only`` writes only those loss fields into the results file and keeps its throughput figures,
for a seed sweep run while the machine was busy (losses do not depend on load; timings do).
``--replay LOG`` summarises the per-run lines a previous invocation printed, without training again.

Writes benchmarks/results/sft_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "benchmarks" / "results"
WORK = Path(os.environ.get("TMPDIR", "/tmp")) / "tuneops-sft-bench"


def base_dir() -> Path:
    """SmolLM2 as a transformers directory: imported once into a scratch store, as `tuneops` does."""
    from tuneops.models.base import base_dir as stored_dir, import_embedded
    from tuneops.store import Store

    store = Store(WORK / "store")
    base, _ = import_embedded(store)
    return stored_dir(store, base)


def data(n: int):
    from tuneops.data.bundled import json_extraction_rows

    train, heldout = json_extraction_rows(n, 40, seed=0)
    return train, heldout


def run_baseline(args) -> dict:
    """The plain TRL + PEFT script (defaults), as a user would write it."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(args.seed)
    train, _ = data(args.rows)
    path = base_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ds = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in train])
    tokens = {"n": 0}

    class Count(TrainerCallback):
        pass

    cfg = SFTConfig(output_dir=str(WORK / "trl-out"), max_steps=args.steps, per_device_train_batch_size=args.batch,
                    learning_rate=2e-4, logging_steps=1, save_strategy="no", report_to="none", bf16=False,
                    gradient_checkpointing=False, use_cpu=True, disable_tqdm=True, seed=args.seed)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok,
                         peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                task_type="CAUSAL_LM"), callbacks=[Count()])
    orig = trainer.compute_loss

    def counting(model, inputs, *a, **kw):
        if model.training:
            tokens["n"] += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else inputs[
                "input_ids"].numel()
        return orig(model, inputs, *a, **kw)

    trainer.compute_loss = counting
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    out = WORK / "trl-adapter"
    trainer.model.save_pretrained(out)
    return {"seconds": seconds, "tokens": tokens["n"], "adapter": str(out),
            "padded_tokens_note": "tokens excludes padding (attention_mask sum)"}


def run_tuneops(args) -> dict:
    from tuneops.train.recipe import LoraSpec, TrainSpec
    from tuneops.train.sft import train

    train_rows, _ = data(args.rows)
    out = WORK / "tuneops-adapter"
    r = train(base_dir(), train_rows, method=LoraSpec(r=16, alpha=32, dropout=0.05),
              spec=TrainSpec(max_steps=args.steps, batch_size=args.batch, learning_rate=2e-4, warmup_ratio=0.0,
                             seed=args.seed, padding_free=False if args.padded else None),  # None: the default (CPU: padded)
              out_dir=out, base_id="base-bench")
    return {"seconds": r.train_seconds, "tokens": r.tokens, "adapter": str(out)}


def eval_loss(adapter: str, rows) -> float:
    """Mean loss per trained token on held-out rows (assistant turns + EOS), one function for both adapters."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneops.train.template import tokenize_rows

    tok = AutoTokenizer.from_pretrained(base_dir())
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir(), dtype=torch.float32),
                                      adapter).eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for t in tokenize_rows(tok, rows, max_length=512):
            ids = torch.tensor([t.input_ids])
            labels = torch.tensor([t.labels])
            k = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * k
            n += k
    return total / n


def child(which: str, args) -> None:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    res = run_baseline(args) if which == "baseline" else run_tuneops(args)
    _, heldout = data(args.rows)
    res["eval_loss"] = eval_loss(res["adapter"], heldout)
    print("RESULT " + json.dumps(res))


def read_runs(log: Path) -> dict[str, list[dict]]:
    """The per-run results a previous invocation printed (``<side> {…}`` lines), from its saved stdout."""
    import ast

    runs: dict[str, list[dict]] = {"baseline": [], "tuneops": []}
    for line in log.read_text().splitlines():
        side, _, rest = line.partition(" ")
        if side in runs and rest.startswith("{"):
            runs[side].append(ast.literal_eval(rest))
    return runs


def train_runs(args) -> dict[str, list[dict]]:
    """Each seed on both sides, one child process at a time, alternating; prints one line per run."""
    runs: dict[str, list[dict]] = {"baseline": [], "tuneops": []}
    for seed in args.seeds:
        for which in ("baseline", "tuneops"):
            out = subprocess.run([sys.executable, __file__, "--child", which, "--rows", str(args.rows), "--steps",
                                  str(args.steps), "--batch", str(args.batch), "--seed", str(seed)],
                                 capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode or not line:
                sys.exit(f"{which} failed:\n{out.stderr[-4000:]}")
            res = json.loads(line[-1][7:])
            res["tokens_per_s"] = res["tokens"] / res["seconds"]
            res["seed"] = seed
            with open("/proc/loadavg") as f:
                res["load_1min_after"] = float(f.read().split()[0])
            runs[which].append(res)
            print(which, {k: v for k, v in res.items() if k != "adapter"}, flush=True)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=160)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # the child's one seed
    ap.add_argument("--child", choices=["baseline", "tuneops"])
    ap.add_argument("--padded", action="store_true", help="tuneops with padded, length-grouped batches")
    ap.add_argument("--loss-only", action="store_true",
                    help="update only the eval-loss fields of the results file (a seed sweep run beside other "
                         "work, whose timings would not be quiet); the throughput fields are kept")
    ap.add_argument("--replay", type=Path, help="summarise the per-run lines an earlier invocation printed "
                                                 "(its stdout, saved to this file) instead of training again")
    args = ap.parse_args()
    if args.child:
        child(args.child, args)
        return
    if args.replay:  # summarise the "<side> {…}" lines an earlier invocation printed, as usual
        runs = read_runs(args.replay)
        args.seeds = [r["seed"] for r in runs["baseline"]]
    else:
        base_dir()
        runs = train_runs(args)
    b = statistics.median(r["tokens_per_s"] for r in runs["baseline"])
    t = statistics.median(r["tokens_per_s"] for r in runs["tuneops"])
    bls = [r["eval_loss"] for r in runs["baseline"]]
    tls = [r["eval_loss"] for r in runs["tuneops"]]
    bl, tl = statistics.mean(bls), statistics.mean(tls)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    losses = {
        "baseline_eval_loss": round(bl, 4), "tuneops_eval_loss": round(tl, 4),
        "eval_loss_rel_diff": round(abs(tl - bl) / bl, 4),
        "seeds": args.seeds,
        "baseline_eval_loss_per_seed": [round(x, 5) for x in bls],
        "tuneops_eval_loss_per_seed": [round(x, 5) for x in tls],
        # the plain TRL script against itself: how far apart two seeds of the same script land
        "baseline_seed_spread_rel": round((max(bls) - min(bls)) / bl, 4),
        "tuneops_seed_spread_rel": round((max(tls) - min(tls)) / tl, 4),
        "eval_loss_rel_diff_per_seed": [round(abs(t_ - b_) / b_, 4) for b_, t_ in zip(bls, tls)],
    }
    out_path = RESULTS / "sft_throughput.json"
    if args.loss_only:
        result = json.loads(out_path.read_text())
        result.update(losses)
        result["loss_sweep"] = {"command": "python benchmarks/sft_throughput.py " + " ".join(sys.argv[1:]),
                                "load_1min_after_each_run": [r.get("load_1min_after") for w in ("baseline", "tuneops")
                                                             for r in runs[w]],
                                "baseline_tokens_per_s_per_run": [round(r["tokens_per_s"], 1) for r in runs["baseline"]],
                                "tuneops_tokens_per_s_per_run": [round(r["tokens_per_s"], 1) for r in runs["tuneops"]]}
        RESULTS.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
    result = {
        "baseline_tokens_per_s": round(b, 1), "tuneops_tokens_per_s": round(t, 1), "speedup": round(t / b, 3),
        **losses,
        "baseline_tokens_per_s_per_run": [round(r["tokens_per_s"], 1) for r in runs["baseline"]],
        "tuneops_tokens_per_s_per_run": [round(r["tokens_per_s"], 1) for r in runs["tuneops"]],
        "baseline_seconds": [round(r["seconds"], 1) for r in runs["baseline"]],
        "tuneops_seconds": [round(r["seconds"], 1) for r in runs["tuneops"]],
        "baseline_tokens": runs["baseline"][0]["tokens"], "tuneops_tokens": runs["tuneops"][0]["tokens"],
        "setup": {"rows": args.rows, "steps": args.steps, "batch_size": args.batch, "lora": "r16 all-linear",
                  "lr": 2e-4, "model": "SmolLM2-135M-Instruct fp32 CPU"},
        "targets": {"speedup": ">= 1.3", "eval_loss_rel_diff": "<= 0.02"},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_at_end": load},
        "command": "python benchmarks/sft_throughput.py " + " ".join(sys.argv[1:]),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
