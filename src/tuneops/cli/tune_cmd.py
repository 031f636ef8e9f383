"""``tuneops tune RECIPE --trials N``: hyper-parameter search over the recipe's ``tune:`` space (Optuna TPE,
median pruner), the study kept in the store's database so several workers share it. Heavy imports
(optuna, torch, the pipeline) stay inside the command: the CLI imports this module at start-up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _trial_rows(result) -> list[dict]:
    mine, best = set(result.ran), result.best.number if result.best else None
    rows = []
    for t in result.trials:
        remarks = (["best"] if t.number == best else []) + ([] if t.number in mine else ["other worker"]) \
            + ([t.error] if t.error else [])
        rows.append({"trial": t.number, "state": t.state, result.metric: t.value, "params": _params_text(t.params),
                     "run_id": t.run_id, "artifact_id": t.artifact_id, "note": " · ".join(remarks)})
    return rows


def tune(recipe: Path = typer.Argument(..., help="Recipe YAML with a `tune:` section (the search space)."),
         trials: int = typer.Option(10, "--trials", min=1, help="Trials this process runs (workers add up)."),
         study: Optional[str] = typer.Option(None, "--study", help="Study name (default: <recipe name>-<recipe "
                                                                   "hash>, so workers on one recipe share it)."),
         write_best: Optional[Path] = typer.Option(None, "--write-best", help="Write the best trial's recipe "
                                                                               "(YAML) here."),
         seed: int = typer.Option(0, "--seed", help="Sampler seed (trial k of a study always draws from seed, k)."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables.")):
    """Search hyper-parameters: every trial is a run of the recipe with sampled values (never promoted),
    pruned early when its held-out loss trails the median of earlier trials; prints every trial and the best."""
    from tuneops.cli.render import console, emit, emit_one, note, print_json, progress, say
    from tuneops.errors import InvalidInput, TuneopsError
    from tuneops.train.recipe import load_recipe

    spec = load_recipe(recipe)
    if spec.tune is None:
        raise InvalidInput(f"{recipe}: the recipe has no `tune:` section, so there is nothing to search",
                           hint="add a search space to the recipe, e.g.\n  tune:\n    space:\n"
                                "      train.learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}\n"
                                "      method.r: {choices: [8, 16, 32]}")

    import optuna

    from tuneops.errors import RunStopped
    from tuneops.store import Store
    from tuneops.tune import run_study

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials are reported below, failures included
    store = Store.open(os.environ.get("TUNEOPS_HOME"), create=True)

    def on_trial(t) -> None:  # one line per trial as it ends (stderr, beside the progress bars)
        note(f"trial {t.number} ", (t.state, "green" if t.state == "COMPLETE" else "yellow"),
             "" if t.value is None else f" {t.value:.4g}", f" · {_params_text(t.params)}",
             f" · {t.run_id}" if t.run_id else "", f" · {t.error}" if t.error else "")

    try:
        with progress() as p:
            result = run_study(store, spec, trials=trials, study_name=study, progress=p, seed=seed,
                               on_trial=on_trial)
    except RunStopped as e:  # a trial's run was paused or checkpointed on SIGTERM: the study stops here
        note(f"study stopped: {e.reason}")
        raise typer.Exit(e.exit_code or 1)
    written = result.write_best_recipe(write_best) if write_best is not None and result.best else None

    if as_json:
        print_json({**result.to_dict(), "best_recipe": str(written) if written else None})
    else:
        for line in result.notes:
            note(("note: ", "bold"), line)
        emit(_trial_rows(result), as_json=False, title=f"study {result.study_name} · {result.metric} "
                                                       f"({result.direction}) · {result.storage}",
             columns=["trial", "state", result.metric, "params", "run_id", "artifact_id", "note"])
        if result.best is not None:
            b = result.best
            emit_one({"trial": b.number, result.metric: b.value, **b.params, "run": b.run_id,
                      "artifact": b.artifact_id, "eval report": b.eval_report,
                      "best recipe": str(written) if written else "(not written: pass --write-best PATH)"},
                     as_json=False, title="best trial")
        mine = [t for t in result.trials if t.number in set(result.ran)]
        counts = {s: sum(t.state == s for t in mine) for s in ("COMPLETE", "PRUNED", "FAIL")}
        say(f"this worker ran {len(mine)} trial(s): {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, "
            f"{counts['FAIL']} failed; the study holds {len(result.trials)}")
        console.file.flush()
    if result.best is None:
        raise TuneopsError(f"study {result.study_name} has no completed trial yet"
                           + (", so no best recipe was written" if write_best is not None else ""),
                           hint="see each trial's error above (`tuneops runs show RUN` for its run); fix the "
                                "recipe or the search space and run again")


def register(app: typer.Typer) -> None:
    """Mount this module's commands on the main app."""
    app.command("tune")(tune)
