"""``tuneops eval harness``: an lm-evaluation-harness task (local YAML + local data) on an artifact and its
baseline, stored as an eval report (``tuneops eval list/show``). Registered on the eval group by
``register(eval_app)``; heavy imports stay inside the command."""

import os
from pathlib import Path
from typing import Optional

import typer

EV_FIELDS = ("id", "artifact_id", "baseline", "passed", "created_at")


def _store():
    from tuneops.store import Store

    return Store.open(os.environ.get("TUNEOPS_HOME"), create=False)


def eval_harness(artifact: str = typer.Argument(..., help="Candidate: an artifact id or an alias (name@stage)."),
                 task: Path = typer.Option(..., "--task", help="An lm-eval task YAML over local data files "
                                                              "(e.g. examples/harness/arith_mc.yaml)."),
                 baseline: str = typer.Option("base", help="Compared with: `base` (its own base, adapter off), an "
                                                           "alias or an artifact id on the same base."),
                 limit: Optional[int] = typer.Option(None, min=1, help="Only the first N documents (both sides)."),
                 batch_size: int = typer.Option(8, "--batch-size", min=1, help="lm-eval batch size."),
                 chat_template: bool = typer.Option(False, "--chat-template",
                                                    help="Send prompts through the base's chat template."),
                 as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """Run an lm-evaluation-harness task on the candidate and its baseline; store a paired eval report."""
    from rich.text import Text

    from tuneops.cli.render import console, emit_one, metrics_table, print_json, record_dict, say, status
    from tuneops.pipeline import run_harness

    store = _store()
    with status("lm-eval: checking the task") as spinner:
        rec, result = run_harness(store, artifact, task_yaml=task, baseline=baseline, limit=limit,
                                  batch_size=batch_size, apply_chat_template=chat_template,
                                  on_progress=lambda msg: spinner.update(Text(f"lm-eval: {msg}")))
    (suite,) = result["suites"]
    h = suite["harness"]
    summary = {k: h.get(k) for k in ("task", "output_type", "lm_eval_version", "config_sha256", "yaml_sha256",
                                     "n_samples", "limit", "num_fewshot", "unpaired_metrics")}
    summary["source"] = suite["source"]
    if as_json:
        print_json(record_dict(rec, EV_FIELDS + ("metrics",)) | {"harness": summary})
        return
    console.print(metrics_table(rec.metrics, f"lm-eval {h['task']}: {rec.artifact_id} vs {rec.baseline}"))
    if h.get("unpaired_metrics"):
        emit_one({k: f"base {v.get('base')}, candidate {v.get('candidate')} (no CI: {v.get('why_no_ci')})"
                  for k, v in h["unpaired_metrics"].items()}, as_json=False, title="metrics without a paired CI")
    n = (h.get("n_samples") or {}).get("effective", suite.get("items"))
    say("report ", (rec.id, "bold"), f" · lm-eval {h['lm_eval_version']} · {n} documents · task sha256 "
        f"{h['config_sha256'][:16]} · per-sample outputs: tuneops eval show {rec.id} --items 5")


def register(eval_app: typer.Typer) -> None:
    """Add ``harness`` to the ``tuneops eval`` group."""
    eval_app.command("harness")(eval_harness)
