"""Hyper-parameter search: ``tuneops tune RECIPE --trials N`` (Optuna TPE sampler + median pruner).

The recipe's ``tune:`` section names the search space (dotted recipe fields), the metric and the
pruner. Every trial is an ordinary run of the recipe with the sampled values applied (``target``
cleared, so a trial never promotes), linked both ways: the Optuna trial carries the run id (user
attribute ``run_id``) and the run carries a ``trial`` event {study, number, params}.

The study lives in the store's own database (Optuna's RDB storage on the same SQLAlchemy URL: on
SQLite the same file, WAL mode, beside tuneops' tables), so workers on several machines that run
``tuneops tune`` on the same recipe and store share one study: each runs ``--trials`` more trials,
and the sampler sees every worker's results.

Like pipeline.py this sits above train/eval/release and the store.
"""

from __future__ import annotations

import math
import time
import typing
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from tuneops.errors import InvalidInput, RunPruned, StateError, TuneopsError
from tuneops.store import Store
from tuneops.train.recipe import LoraSpec, ObjectiveSpec, Recipe, SearchDim, TrainSpec, parse_recipe

if typing.TYPE_CHECKING:  # optuna is imported inside the functions: the CLI imports this module lazily anyway
    import optuna
    from rich.progress import Progress

__all__ = ["StudyResult", "TrialSummary", "run_study", "open_storage", "default_study_name", "trial_recipe",
           "apply_params", "make_trial_hook", "DEFAULT_EVAL_POINTS", "MEDIAN_STARTUP_TRIALS"]

DEFAULT_EVAL_POINTS = 4  # held-out losses per trial when the recipe sets no train.eval_steps
MEDIAN_STARTUP_TRIALS = 2  # finished trials before the median pruner may stop one
HEARTBEAT_S = 60  # Optuna's trial heartbeat: a worker that died leaves no trial RUNNING for ever
_SECTIONS = {"train": TrainSpec, "method": LoraSpec, "objective": ObjectiveSpec}


# -- results ------------------------------------------------------------------------------------
@dataclass
class TrialSummary:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING (Optuna's TrialState names)
    value: float | None
    params: dict[str, Any]
    run_id: str | None = None
    artifact_id: str | None = None
    eval_report: str | None = None
    error: str | None = None  # why it failed, or why it was pruned

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StudyResult:
    study_name: str
    storage: str  # the database URL, password hidden
    metric: str
    direction: str
    trials: list[TrialSummary]  # every trial of the study (every worker's), by number
    ran: list[int]  # the numbers this call ran
    best: TrialSummary | None  # over the whole study; None while no trial has completed
    best_recipe: Recipe | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def best_number(self) -> int | None:
        return self.best.number if self.best else None

    @property
    def best_value(self) -> float | None:
        return self.best.value if self.best else None

    @property
    def best_params(self) -> dict[str, Any] | None:
        return dict(self.best.params) if self.best else None

    @property
    def best_run_id(self) -> str | None:
        return self.best.run_id if self.best else None

    @property
    def best_artifact_id(self) -> str | None:
        return self.best.artifact_id if self.best else None

    def write_best_recipe(self, path: Path | str) -> Path:
        """Write the best trial's recipe as YAML: the recipe that trial ran (every searched field fixed
        at its value, the injected train.eval_steps included) with the original ``target`` restored
        and ``tune`` left out. A header comment names the study, trial, value, run and artifact."""
        if self.best_recipe is None:
            raise StateError(f"study {self.study_name} has no completed trial yet, so there is no best recipe",
                             hint="run more trials (`tuneops tune RECIPE --trials N`); failed and pruned trials "
                                  "have no value")
        path = Path(path)
        b = self.best
        artifact = f", artifact {b.artifact_id}" if b.artifact_id else ""
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in b.params.items())
        header = (f"# Best trial of study {self.study_name!r}: trial {b.number}, {self.metric} = {b.value:.6g} "
                  f"({self.direction})\n# run {b.run_id}{artifact}\n# params: {params}\n")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + self.best_recipe.to_yaml(), encoding="utf-8")
        return path

    def to_dict(self) -> dict:
        return {"study": self.study_name, "storage": self.storage, "metric": self.metric,
                "direction": self.direction, "trials": [t.to_dict() for t in self.trials], "ran": self.ran,
                "best": self.best.to_dict() if self.best else None, "notes": self.notes}


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# -- the search space ---------------------------------------------------------------------------
def _field_is_int(key: str) -> bool:
    section, _, name = key.partition(".")
    ann = _SECTIONS[section].model_fields[name].annotation
    args = typing.get_args(ann) or (ann,)
    return int in args and float not in args


def _integer_dim(key: str, dim: SearchDim) -> bool:
    """A range is sampled as integers when its field is an integer, or when low, high and step are all
    integers; anything else is a float range."""
    if dim.choices is not None:
        return False
    whole = all(float(x).is_integer() for x in (dim.low, dim.high) + ((dim.step,) if dim.step else ()))
    return whole and (_field_is_int(key) or dim.step is not None)


def _suggest(trial: "optuna.Trial", key: str, dim: SearchDim) -> Any:
    if dim.choices is not None:
        return trial.suggest_categorical(key, list(dim.choices))
    if _integer_dim(key, dim):
        return trial.suggest_int(key, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
    return trial.suggest_float(key, float(dim.low), float(dim.high), step=dim.step, log=dim.log)


def apply_params(data: dict, params: dict[str, Any]) -> dict:
    """A copy of the recipe mapping ``data`` with each dotted field (``train.learning_rate``) set."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for key, value in params.items():
        section, _, name = key.partition(".")
        out[section] = dict(out.get(section) or {})
        out[section][name] = value
    return out


def _where(recipe: Recipe, key: str) -> str:
    return f"{recipe.source}: tune.space.{key}"


def _check_space(recipe: Recipe) -> None:
    """Refuse, before any trial, a space Optuna cannot sample or whose bounds / choices are not valid
    values of their field (each value is checked alone against the recipe)."""
    base = recipe.model_dump(mode="json")
    for key, dim in recipe.tune.space.items():
        where = _where(recipe, key)
        if dim.choices is None:
            if _field_is_int(key) and not all(float(x).is_integer() for x in (dim.low, dim.high)):
                raise InvalidInput(f"{where}: {key} is an integer field; low and high must be integers "
                                   f"(got {dim.low:g} and {dim.high:g})", hint="e.g. {low: 4, high: 64}")
            if dim.log and dim.step is not None and not (_integer_dim(key, dim) and dim.step == 1):
                raise InvalidInput(f"{where}: a log-scaled range cannot have a step (Optuna samples it "
                                   "continuously)", hint="drop `step`, or drop `log: true`")
            if dim.step is not None and _field_is_int(key) and not float(dim.step).is_integer():
                raise InvalidInput(f"{where}: {key} is an integer field; its step must be an integer")
            values = [("low", dim.low), ("high", dim.high)]
            if _integer_dim(key, dim):
                values = [(n, int(v)) for n, v in values]
        else:
            values = [(f"choice {v!r}", v) for v in dim.choices]
        for label, value in values:
            try:
                parse_recipe(apply_params(base, {key: value}), source=recipe.source)
            except InvalidInput as e:
                raise InvalidInput(f"{where}: {label} is not a valid {key}:\n{e.message}",
                                   hint=f"narrow the range or fix the choices of {key}") from None


def _planned_steps(store: Store, recipe: Recipe) -> int:
    from tuneops.train.sft import planned_steps

    n_rows = store.resolve_dataset(recipe.data.train).num_rows
    if recipe.train.replay:
        n_rows += round(recipe.train.replay.ratio * n_rows)
    return planned_steps(n_rows, recipe.train, recipe.objective)


def _default_eval_steps(store: Store, recipe: Recipe) -> int:
    """About DEFAULT_EVAL_POINTS held-out losses over the recipe's planned steps (one grid for every
    trial, so the median pruner compares trials at the same steps)."""
    return max(1, _planned_steps(store, recipe) // DEFAULT_EVAL_POINTS)


def trial_recipe(recipe: Recipe, params: dict[str, Any], *, eval_steps: int | None = None) -> Recipe:
    """The recipe one trial runs: ``params`` applied at their dotted fields, ``target`` cleared (a
    trial never promotes), ``tune`` removed (the run records a concrete recipe), and
    ``train.eval_steps`` set to ``eval_steps`` when given and the recipe sets none. Validated again
    (InvalidInput names the field); the source file is kept so relative paths still resolve."""
    data = apply_params(recipe.model_dump(mode="json"), params)
    data["target"] = None
    data.pop("tune", None)
    if eval_steps and not (data.get("train") or {}).get("eval_steps"):
        data["train"] = {**(data.get("train") or {}), "eval_steps": eval_steps}
    return parse_recipe(data, source=recipe.source)


def _best_recipe(store: Store, recipe: Recipe, best: TrialSummary, eval_steps: int | None) -> Recipe:
    """The recipe the best trial's run saved (whichever worker ran it), target restored; rebuilt from
    the params when that run is gone."""
    data = None
    if best.run_id:
        try:
            data = yaml.safe_load(store.get_run(best.run_id).recipe_yaml)
        except TuneopsError:
            data = None
    if data is None:
        data = trial_recipe(recipe, best.params, eval_steps=eval_steps).model_dump(mode="json")
    data.pop("tune", None)
    data["target"] = recipe.target.model_dump(mode="json") if recipe.target else None
    return parse_recipe(data, source=recipe.source)


# -- storage ------------------------------------------------------------------------------------
def storage_url(store: Store) -> str:
    """The store's database URL, which the study shares (an in-memory SQLite database cannot be shared)."""
    url = store.db_url
    if url.startswith("sqlite") and (url.rstrip("/") in ("sqlite:", "sqlite+pysqlite:") or ":memory:" in url):
        raise InvalidInput("the store's database is in memory; a study needs a database other workers can open",
                           hint="use a SQLite file or a PostgreSQL URL (TUNEOPS_DB_URL)")
    return url


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: say nothing of it
        return "(database URL)"


def open_storage(store: Store) -> "optuna.storages.RDBStorage":
    """Optuna's RDB storage on the store's own database.

    SQLite: the same file (already in WAL mode, set by the store, and WAL is a property of the file),
    a 60 s busy timeout like the store's, so Optuna's short writes queue behind a tuneops write
    instead of failing after the driver's default 5 s. Optuna's sessions use the driver's deferred
    transactions: each write transaction starts with its first INSERT/UPDATE, so it takes the write
    lock before it reads (no stale-snapshot upgrade), and trial numbers stay unique across processes.
    PostgreSQL: the same URL (driver included), with pre-ping so idle pooled connections survive
    server restarts. Optuna creates its tables (studies, trials, trial_params, trial_values,
    trial_intermediate_values, trial_heartbeats, version_info, alembic_version, …) beside tuneops'
    own; no name is shared. Two workers creating them at the same moment race on CREATE TABLE, so
    construction is retried."""
    import optuna
    from optuna.exceptions import ExperimentalWarning, StorageInternalError
    from sqlalchemy.exc import DBAPIError

    url = storage_url(store)
    kwargs: dict[str, Any] = ({"connect_args": {"timeout": 60}} if url.startswith("sqlite")
                              else {"pool_pre_ping": True})
    last: Exception | None = None
    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeat_interval
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S,
                                                  grace_period=3 * HEARTBEAT_S)
        except (DBAPIError, StorageInternalError) as e:
            last = e
            time.sleep(0.2 * (attempt + 1))
        except RuntimeError as e:
            if "no longer compatible" in str(e):
                raise StateError(f"the study tables in {_redacted(url)} were made by another Optuna version: {e}",
                                 hint=f"optuna storage upgrade --storage '{_redacted(url)}'") from None
            raise
    raise StateError(f"could not open Optuna's tables in {_redacted(url)}: {last}",
                     hint="retry; if it persists, look for a process holding the database lock")


def default_study_name(recipe: Recipe) -> str:
    """``<recipe name>-<first 8 hex of the recipe hash>``: every worker started on the same recipe joins
    the same study, and a changed recipe (or search space) starts a new one."""
    return f"{recipe.name}-{recipe.hash()[:8]}"


def _trial_seeded_tpe(seed: int) -> "optuna.samplers.BaseSampler":
    """TPE whose randomness is seeded by (seed, trial number): a study is reproducible on one worker,
    and workers that start together on one study still draw different start-up points (they never
    share a trial number). A thin BaseSampler (public API only) that hands each trial to a fresh
    TPESampler seeded for it; TPE keeps no other state between trials."""
    import numpy as np
    import optuna

    class TrialSeededTPE(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self._for: int | None = None
            self._tpe: optuna.samplers.TPESampler | None = None

        def _sampler(self, trial) -> optuna.samplers.TPESampler:
            if self._for != trial.number or self._tpe is None:
                s = int(np.random.SeedSequence([seed & 0xFFFFFFFF, trial.number]).generate_state(1)[0])
                self._tpe, self._for = optuna.samplers.TPESampler(seed=s), trial.number
            return self._tpe

        def infer_relative_search_space(self, study, trial):
            return self._sampler(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._sampler(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._sampler(trial).sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial):
            self._sampler(trial).before_trial(study, trial)

        def after_trial(self, study, trial, state, values):
            self._sampler(trial).after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self._tpe = None

    return TrialSeededTPE()


def _make_pruner(recipe: Recipe):
    import optuna

    if recipe.tune.pruner == "none" or recipe.tune.metric != "eval_loss":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=0)


# -- one trial ----------------------------------------------------------------------------------
def make_trial_hook(trial: "optuna.Trial", *, study_name: str, report: bool, prune_non_finite: bool,
                    seen: list[tuple[int, float]]) -> Callable[[int, float], None]:
    """``trial_hook(step, eval_loss)`` for :func:`tuneops.pipeline.execute_run`: records the loss in
    ``seen``; with ``report`` it reports it to Optuna and raises RunPruned (the run is marked
    cancelled with the reason) when the pruner says the trial is worse than the median of earlier
    trials at this step. A non-finite loss prunes at once when ``prune_non_finite``."""

    def hook(step: int, eval_loss: float) -> None:
        eval_loss = float(eval_loss)
        seen.append((int(step), eval_loss))
        if not math.isfinite(eval_loss):
            if prune_non_finite:
                raise RunPruned(f"pruned by study {study_name} (trial {trial.number}): held-out loss is "
                                f"{eval_loss} at step {step}")
            return
        if not report:
            return
        trial.report(eval_loss, int(step))
        if trial.should_prune():
            raise RunPruned(f"pruned by study {study_name} (trial {trial.number}): eval_loss {eval_loss:.4g} at "
                            f"step {step} is worse than the median of earlier trials at that step")

    return hook


def _last_eval_loss(store: Store, run_id: str, seen: list[tuple[int, float]]) -> float:
    """The run's last held-out loss: from the hook, else from any run event that recorded one."""
    if seen:
        return seen[-1][1]
    for ev in reversed(store.run_events(run_id)):
        if isinstance(ev.payload, dict) and ev.payload.get("eval_loss") is not None:
            return float(ev.payload["eval_loss"])
    raise TuneopsError(f"run {run_id} reported no held-out loss, so the trial has no eval_loss",
                       hint="set train.eval_steps to at most the run's steps, or tune on a `<suite>.<metric>`")


def _summary(t: "optuna.trial.FrozenTrial") -> TrialSummary:
    value = t.value if t.values else None
    if value is None and t.state.name == "PRUNED" and t.intermediate_values:
        value = t.intermediate_values[max(t.intermediate_values)]
    ua = t.user_attrs
    return TrialSummary(number=t.number, state=t.state.name, value=value, params=dict(t.params),
                        run_id=ua.get("run_id"), artifact_id=ua.get("artifact_id"),
                        eval_report=ua.get("eval_report"), error=ua.get("error") or ua.get("pruned"))


# -- the study ----------------------------------------------------------------------------------
def run_study(store: Store, recipe: Recipe, *, trials: int, study_name: str | None = None,
              progress: "Progress | None" = None, seed: int = 0, pruner: "optuna.pruners.BasePruner | None" = None,
              on_trial: Callable[[TrialSummary], None] | None = None) -> StudyResult:
    """Run ``trials`` more trials of the recipe's search space in the study ``study_name`` (default
    :func:`default_study_name`), created in the store's database or joined if it exists.

    Before any trial: the space is checked (each bound / choice must be a valid value of its field),
    and the recipe's inputs are validated once (base, datasets, licences, leakage, suites, and that
    a `<suite>.<metric>` metric is produced), so a broken set-up fails here and not N times. A trial
    whose parameters or run fail is a FAIL trial (its ``error`` says why) and the study goes on;
    SIGTERM / Ctrl-C fail the current trial and stop. ``pruner`` overrides the recipe's (tests).
    ``on_trial`` is called with each finished trial of this call."""
    import optuna

    from tuneops import pipeline
    from tuneops.store.queue import claim_run

    if trials < 1:
        raise InvalidInput(f"--trials must be at least 1 (got {trials})")
    spec = recipe.tune
    if spec is None:
        raise InvalidInput(f"{recipe.source}: the recipe has no `tune:` section, so there is nothing to search",
                           hint="add one, e.g. tune: {space: {train.learning_rate: {low: 1e-5, high: 1e-3, "
                                "log: true}, method.r: {choices: [8, 16, 32]}}}")
    if not spec.space:
        raise InvalidInput(f"{recipe.source}: tune.space is empty", hint="name at least one field to search")
    metric = spec.metric
    if metric != "eval_loss" and "." not in metric:
        raise InvalidInput(f"{recipe.source}: tune.metric: {metric!r} is neither eval_loss nor `<suite>.<metric>`",
                           hint="e.g. metric: json_extraction.exact_match")
    direction = spec.direction or ("minimize" if metric == "eval_loss" else "maximize")
    _check_space(recipe)

    notes: list[str] = []
    eval_steps = None
    if metric == "eval_loss" and recipe.train.eval_steps is None and "train.eval_steps" not in spec.space:
        eval_steps = _default_eval_steps(store, recipe)
        notes.append(f"train.eval_steps is not set: each trial computes its held-out loss every {eval_steps} "
                     f"steps (about {DEFAULT_EVAL_POINTS} times a run) to be scored and pruned; set "
                     "train.eval_steps to choose")
    elif metric == "eval_loss" and recipe.train.eval_steps and "train.eval_steps" not in spec.space and not any(
            k in spec.space for k in ("train.max_steps", "train.epochs", "train.batch_size",
                                      "train.gradient_accumulation_steps")):
        steps = _planned_steps(store, recipe)
        if recipe.train.eval_steps > steps:
            raise InvalidInput(f"{recipe.source}: train.eval_steps: {recipe.train.eval_steps} is more than the "
                               f"{steps} steps a trial trains, so no held-out loss would score it",
                               hint=f"set train.eval_steps to at most {steps} (or remove it to get a default)")
    if metric != "eval_loss" and spec.pruner == "median" and pruner is None:
        notes.append(f"trials are scored on {metric}, known only after the run's eval, so none is pruned "
                     "(the median pruner works on eval_loss)")
    # Everything that does not depend on the sampled values, once, before spending compute.
    first = trial_recipe(recipe, {}, eval_steps=eval_steps)
    _, _, _, suites = pipeline.validate_inputs(store, first)
    if metric != "eval_loss":
        names = [s.name for s in suites]
        if metric.split(".", 1)[0] not in names:
            raise InvalidInput(f"{recipe.source}: tune.metric: {metric!r} is not from one of the recipe's eval "
                               f"suites ({', '.join(names)})", hint="name a metric as `<suite>.<metric>` of a suite "
                                                                    "in eval.suites, or use eval_loss")
        measurable = sorted({m for s in suites for m in s.metric_names()})
        if metric not in measurable:
            raise InvalidInput(f"{recipe.source}: tune.metric: {metric!r} is not produced by the suites {names}",
                               hint=f"use one of {measurable}, or eval_loss")

    name = study_name or default_study_name(recipe)
    storage = open_storage(store)
    study = optuna.create_study(storage=storage, study_name=name, direction=direction, load_if_exists=True,
                                sampler=_trial_seeded_tpe(seed), pruner=pruner or _make_pruner(recipe))
    if study.direction.name.lower() != direction:
        raise InvalidInput(f"study {name} {study.direction.name.lower()}s its objective, this recipe would "
                           f"{direction} it", hint="give another --study name, or the same tune.direction")
    attrs = study.user_attrs
    if attrs.get("metric") not in (None, metric):
        raise InvalidInput(f"study {name} scores trials on {attrs['metric']}, this recipe on {metric}",
                           hint="give another --study name, or the same tune.metric")
    if not attrs:
        study.set_user_attr("metric", metric)
        study.set_user_attr("recipe", recipe.name)
        study.set_user_attr("recipe_sha256", recipe.hash())
        study.set_user_attr("source", str(recipe.source))
    elif attrs.get("recipe_sha256") != recipe.hash():
        notes.append(f"study {name} was started from another version of the recipe (sha256 "
                     f"{str(attrs.get('recipe_sha256'))[:12]}…); its trials are compared with this one's")

    ran: list[int] = []
    current: dict[str, Any] = {}
    study_task = progress.add_task(f"study {name}", total=trials) if progress is not None else None

    def objective(trial: optuna.Trial) -> float:
        current["trial"] = trial
        ran.append(trial.number)
        before = set(progress.task_ids) if progress is not None else set()
        try:
            return _one_trial(trial)
        except optuna.TrialPruned:
            raise
        except Exception as e:  # a FAIL trial (the study goes on): say why on the trial
            trial.set_user_attr("error", f"{type(e).__name__}: {getattr(e, 'message', e)}"[:2000])
            raise
        finally:
            if progress is not None:  # keep the display to the study bar and the running trial
                for task_id in set(progress.task_ids) - before:
                    progress.remove_task(task_id)

    def _one_trial(trial: optuna.Trial) -> float:
        params = {key: _suggest(trial, key, dim) for key, dim in spec.space.items()}
        trial_spec = trial_recipe(recipe, params, eval_steps=eval_steps)  # InvalidInput: a FAIL trial, no run
        run_id = pipeline.create_run(store, trial_spec)
        try:  # hold it at once: a `tuneops worker` on this store takes unclaimed queued runs
            claim_run(store, run_id)
        finally:
            trial.set_user_attr("run_id", run_id)
        store.add_run_event(run_id, "trial", study=name, number=trial.number, params=params)
        seen: list[tuple[int, float]] = []
        hook = make_trial_hook(trial, study_name=name, report=metric == "eval_loss",
                               prune_non_finite=metric == "eval_loss" and spec.pruner == "median", seen=seen)
        try:
            outcome = pipeline.execute_run(store, run_id, recipe=trial_spec, progress=progress, trial_hook=hook)
        except RunPruned as e:
            trial.set_user_attr("pruned", e.reason)
            raise optuna.TrialPruned(e.reason) from None
        if outcome.artifact is not None:
            trial.set_user_attr("artifact_id", outcome.artifact.id)
        if outcome.report is not None:
            trial.set_user_attr("eval_report", outcome.report.id)
        if metric == "eval_loss":
            value = _last_eval_loss(store, run_id, seen)
        else:
            metrics = outcome.report.metrics if outcome.report is not None else {}
            if metric not in metrics:
                raise TuneopsError(f"run {run_id}'s eval has no metric {metric!r} (it has "
                                   f"{', '.join(sorted(metrics)) or 'none'})", hint="fix tune.metric")
            value = float(metrics[metric]["candidate"])
        if not math.isfinite(value):
            raise TuneopsError(f"run {run_id}: {metric} is {value}")
        return value

    def after(study_: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        current.pop("trial", None)
        if progress is not None:
            progress.advance(study_task)
            try:
                best = study_.best_value
                progress.update(study_task, description=f"study {name} · best {metric} {best:.4g}")
            except ValueError:
                pass
        if on_trial is not None:
            on_trial(_summary(frozen))

    try:
        study.optimize(objective, n_trials=trials, catch=(Exception,), callbacks=[after], gc_after_trial=True)
    except BaseException as e:  # Ctrl-C, SIGTERM, a paused run: this worker's trial must not stay RUNNING
        trial = current.get("trial")
        if trial is not None:
            try:
                trial.set_user_attr("error", f"{type(e).__name__}: {getattr(e, 'reason', None) or e}"[:2000])
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            except Exception:
                pass
        raise
    finally:
        if progress is not None and study_task is not None:
            progress.remove_task(study_task)

    all_trials = [_summary(t) for t in study.get_trials(deepcopy=False)]
    completed = [t for t in all_trials if t.state == "COMPLETE" and t.value is not None]
    best = None
    if completed:
        best = (min if direction == "minimize" else max)(completed, key=lambda t: t.value)
    result = StudyResult(study_name=name, storage=_redacted(storage.url), metric=metric, direction=direction,
                         trials=all_trials, ran=ran, best=best, notes=notes)
    if best is not None:
        result.best_recipe = _best_recipe(store, recipe, best, eval_steps)
    storage.engine.dispose()
    return result
