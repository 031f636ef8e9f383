"""`tuneops quickstart`: the whole governed chain on the embedded base and the bundled task."""

import json
import os
import platform
import time
from pathlib import Path

from rich.text import Text

from tuneops.cli.render import console, gates_table, metrics_table, progress, say, status, table
from tuneops.data.bundled import json_extraction_rows
from tuneops.data.ingest import ingest_rows
from tuneops.eval.paired import load_full_report
from tuneops.models.base import EMBEDDED_REF, import_embedded
from tuneops.pipeline import run_recipe
from tuneops.store import Store
from tuneops.train.recipe import parse_recipe

QUICKSTART_RECIPE = {
    "name": "quickstart",
    "base": EMBEDDED_REF,
    "data": {"train": "quickstart-train", "eval": "quickstart-eval"},
    "method": {"kind": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
    "train": {"epochs": 1.0, "batch_size": 8, "learning_rate": 2e-4, "max_length": 256, "seed": 0},
    # forgetting: 8 items from each of its 5 categories, so every slice is measured within the time budget
    "eval": {"suites": ["json_extraction", {"use": "forgetting", "per_tag": 8}], "max_new_tokens": 48,
             "batch_size": 20},
    "gates": [
        "json_extraction.exact_match >= baseline + 0.2",
        "forgetting.accuracy >= baseline * 0.95",
    ],
    "target": {"alias": "quickstart", "stage": "production"},
}


def machine_info() -> dict:
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available()}


def run_quickstart(store: Store, *, rows: int, eval_rows: int, epochs: float, results: Path | None,
                   as_json: bool) -> dict:
    t_start = time.perf_counter()
    phases: dict[str, float] = {}
    err = as_json  # with --json, stdout carries only the JSON summary; these notes go to stderr
    say(("tuneops quickstart", "bold"), f" · store {store.home}", err=err)

    t0 = time.perf_counter()
    with status("importing the embedded base SmolLM2-135M-Instruct (GGUF → float32 safetensors)…"):
        base, created = import_embedded(store)
    phases["import_base"] = time.perf_counter() - t0
    say(f"base {base.id} ({'imported' if created else 'reused'}, {base.num_parameters / 1e6:.1f}M params,"
        f" {base.license})", err=err)

    t0 = time.perf_counter()
    train_rows, held_out = json_extraction_rows(rows, eval_rows, seed=0)
    train_ds, _ = ingest_rows(store, train_rows, name="quickstart-train", origin="tuneops:bundled")
    eval_ds, _ = ingest_rows(store, held_out, name="quickstart-eval", origin="tuneops:bundled")
    spec = dict(QUICKSTART_RECIPE)
    spec["data"] = {"train": train_ds.id, "eval": eval_ds.id}
    spec["train"] = {**QUICKSTART_RECIPE["train"], "epochs": epochs}
    recipe = parse_recipe(spec, source="quickstart recipe")
    recipe_path = store.home / "recipes" / "quickstart.yaml"
    recipe_path.parent.mkdir(parents=True, exist_ok=True)
    recipe_path.write_text(recipe.to_yaml())
    phases["data"] = time.perf_counter() - t0
    say(f"data {train_ds.id} ({train_ds.num_rows} train rows) · {eval_ds.id} ({eval_ds.num_rows} held-out rows,"
        f" unseen templates, names and cities) · recipe {recipe_path}", err=err)

    with progress() as p:
        outcome = run_recipe(store, recipe, progress=p)
    phases.update(outcome.phases)
    total = time.perf_counter() - t_start

    metrics = outcome.report.metrics
    full = load_full_report(store, outcome.report)
    alias = "quickstart@production"
    summary = {
        "total_s": round(total, 1),
        "phases": {k: round(v, 1) for k, v in phases.items()},
        "base_id": base.id,
        "train_dataset": train_ds.id,
        "eval_dataset": eval_ds.id,
        "run_id": outcome.run.id,
        "artifact_id": outcome.artifact.id,
        "eval_report": outcome.report.id,
        "recipe_train": recipe.train.model_dump(mode="json"),  # which settings produced these figures
        "eval_items": {s["name"]: s["items"] for s in full["suites"]},
        # per slice of the held-out set (template family, accented, multi-word, age in words), worst first
        "tuned_exact_match_by_slice": {r["tag"]: {"base": r["base"], "candidate": r["candidate"], "n": r["n"]}
                                       for r in full["slices"].get("json_extraction.exact_match", [])},
        "base_exact_match": metrics["json_extraction.exact_match"]["base"],
        "tuned_exact_match": metrics["json_extraction.exact_match"]["candidate"],
        "base_forgetting_accuracy": metrics["forgetting.accuracy"]["base"],
        "tuned_forgetting_accuracy": metrics["forgetting.accuracy"]["candidate"],
        "metrics": metrics,
        "gates": outcome.report.gates,
        "gates_passed": outcome.report.passed,
        "promoted": outcome.promotion is not None,
        "promotion_note": outcome.promotion_refused,
        "train_steps": outcome.run.metrics.get("train_steps"),
        "final_loss": outcome.run.metrics.get("final_loss"),
        "plots": outcome.plots,
        "machine": machine_info(),
    }
    if results:
        results.parent.mkdir(parents=True, exist_ok=True)
        tmp = results.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(results)
    if as_json:
        print(json.dumps(summary, indent=2))
        return summary

    console.print(metrics_table(metrics, "Base vs candidate on the same held-out items"))
    console.print(gates_table(outcome.report.gates))
    summary_table = table("Summary", show_header=False)
    summary_table.add_column(style="bold")
    summary_table.add_column()
    summary_table.add_row("run", Text(f"{outcome.run.id} ({outcome.run.state})"))
    summary_table.add_row("artifact", Text(outcome.artifact.id))
    summary_table.add_row("lineage", Text(f"base {base.id} · data {train_ds.id} · recipe sha256 {recipe.hash()[:16]}"))
    if outcome.promotion:
        summary_table.add_row("alias", Text(f"{alias} → {outcome.artifact.id}", style="green"))
    else:
        summary_table.add_row("alias", Text.assemble(("not moved", "yellow"), f": {outcome.promotion_refused}"))
    summary_table.add_row("plots", Text(" · ".join(outcome.plots.values())))
    summary_table.add_row("wall time", Text(f"{total:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items())
                                            + ")"))
    console.print(summary_table)
    home = f"--home {store.home} " if store.home != Path(".tuneops").resolve() else ""
    console.print("\nTry it:")
    console.print(f"  tuneops {home}serve --port 8000", soft_wrap=True, highlight=False)
    body = json.dumps({"model": "quickstart", "messages": [
        {"role": "system", "content": held_out[0]["messages"][0]["content"]},
        {"role": "user", "content": "Ravi Shah, 41, moved to Leeds last year."}]})
    console.print("  curl -s localhost:8000/v1/chat/completions -H 'content-type: application/json' -d '"
                  + body.replace("'", "'\\''") + "'",
                  soft_wrap=True, highlight=False, markup=False)
    console.print(f"  tuneops {home}registry history {alias}   ·   tuneops {home}registry rollback {alias}",
                  soft_wrap=True, highlight=False)
    return summary
