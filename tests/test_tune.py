"""`tuneops tune`: Optuna studies whose trials are runs, kept in the store's own database.

Most tests replace the training inside a run (``pipeline._execute``) with a fake that reports
held-out losses through the trial hook, so the study, the pruning and the run bookkeeping are real
and fast; one test runs a real 3-trial study on the tiny model."""

import json
import math
import subprocess
import sys
import textwrap

import pytest
import yaml

from tests.conftest import tiny_recipe
from tuneops import pipeline
from tuneops.errors import InvalidInput, RunPruned
from tuneops.store.schema import RunRecord
from tuneops.train.recipe import load_recipe

TRAIN = {"max_steps": 8, "batch_size": 4, "learning_rate": 1e-2, "warmup_ratio": 0.0, "threads": 2}
EVAL = {"suites": ["json_extraction"], "max_new_tokens": 4, "batch_size": 8, "max_items": 3}


def _recipe(base_id, tune, **kw):
    kw.setdefault("train", TRAIN)
    kw.setdefault("eval", EVAL)
    kw.setdefault("gates", [{"metric": "json_extraction.field_accuracy", "max_relative_drop": 1.0}])
    return tiny_recipe(base_id, tune=tune, **kw)


def _loss(lr: float, step: int) -> float:
    """A made-up held-out loss: best near lr = 3e-3, falling with the steps."""
    return (math.log10(lr) + 2.5) ** 2 + 1.0 / step


FAKE_EXECUTE = '''
def fake_execute(store, recipe, run_id, work, outcome, progress, *, trial_hook=None, **_):
    """Stands in for training and eval: the run moves through its states and reports held-out losses."""
    import math
    store.transition_run(run_id, "validating_data")
    store.transition_run(run_id, "running")
    if recipe.method.r == 2:
        raise ValueError("rank 2 is not supported by this fake")
    lr, every = recipe.train.learning_rate, recipe.train.eval_steps
    for step in range(every, recipe.train.max_steps + 1, every):
        loss = (math.log10(lr) + 2.5) ** 2 + 1.0 / step
        store.add_run_event(run_id, "metrics", step=step, loss=loss)
        if trial_hook is not None:
            trial_hook(step, loss)
    store.transition_run(run_id, "evaluating")
    outcome.run = store.transition_run(run_id, "succeeded", metrics={})
'''
_ns: dict = {}
exec(FAKE_EXECUTE, _ns)
fake_execute = _ns["fake_execute"]


# -- checks before any trial --------------------------------------------------------------------
@pytest.mark.parametrize("space, message", [
    ({"method.r": {"choices": [4, 0]}}, r"tune.space.method.r: choice 0 is not a valid method.r"),
    ({"train.learning_rate": {"low": 1e-4, "high": 2.0, "log": True}}, r"high is not a valid train.learning_rate"),
    ({"method.r": {"low": 2.5, "high": 8}}, r"method.r is an integer field"),
    ({"train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True, "step": 1e-4}}, r"log-scaled range cannot"),
])
def test_a_bad_space_is_refused_before_any_run(sqlite_store, space, message):
    from tuneops.tune import run_study

    recipe = _recipe("base-nope", {"space": space})
    with pytest.raises(InvalidInput, match=message):
        run_study(sqlite_store, recipe, trials=2)
    assert sqlite_store.all(RunRecord) == []


def test_no_tune_section_and_a_metric_of_no_suite_are_refused(tiny_env):
    from tuneops.tune import run_study

    store, base = tiny_env
    with pytest.raises(InvalidInput, match="no `tune:` section"):
        run_study(store, _recipe(base.id, None), trials=1)
    bad = _recipe(base.id, {"space": {"method.r": {"choices": [4, 8]}}, "metric": "forgetting.accuracy"})
    with pytest.raises(InvalidInput, match=r"'forgetting.accuracy' is not from one of the recipe's eval suites "
                                           r"\(json_extraction\)"):
        run_study(store, bad, trials=1)
    typo = _recipe(base.id, {"space": {"method.r": {"choices": [4, 8]}}, "metric": "json_extraction.nope"})
    with pytest.raises(InvalidInput, match=r"'json_extraction.nope' is not produced by the suites"):
        run_study(store, typo, trials=1)
    late = _recipe(base.id, {"space": {"method.r": {"choices": [4, 8]}}}, train={**TRAIN, "eval_steps": 9})
    with pytest.raises(InvalidInput, match=r"train.eval_steps: 9 is more than the 8 steps a trial trains"):
        run_study(store, late, trials=1)
    assert store.all(RunRecord) == []


def test_a_suite_metric_is_maximised_from_the_report_and_never_pruned(tiny_env, monkeypatch):
    from types import SimpleNamespace

    from tuneops.tune import run_study

    store, base = tiny_env

    def with_report(store, recipe, run_id, work, outcome, progress, **kw):
        fake_execute(store, recipe, run_id, work, outcome, progress, **kw)
        score = 1.0 / (1.0 + (math.log10(recipe.train.learning_rate) + 2.5) ** 2)
        outcome.report = SimpleNamespace(id=f"ev-{run_id}", metrics={"json_extraction.field_accuracy": {
            "base": 0.1, "candidate": score, "delta": score - 0.1}})

    monkeypatch.setattr(pipeline, "_execute", with_report)
    recipe = _recipe(base.id, {"space": {"train.learning_rate": {"low": 1e-4, "high": 1e-1, "log": True}},
                               "metric": "json_extraction.field_accuracy"}, train={**TRAIN, "eval_steps": 2})
    result = run_study(store, recipe, trials=4)
    assert result.direction == "maximize" and [t.state for t in result.trials] == ["COMPLETE"] * 4
    assert any("none is pruned" in n for n in result.notes)
    for t in result.trials:
        lr = t.params["train.learning_rate"]
        assert t.value == pytest.approx(1.0 / (1.0 + (math.log10(lr) + 2.5) ** 2))
        assert t.eval_report == f"ev-{t.run_id}"
    assert result.best_value == max(t.value for t in result.trials)
    import optuna

    study = optuna.load_study(study_name=result.study_name, storage=store.db_url)
    assert all(t.intermediate_values == {} for t in study.trials)  # losses were not reported as the metric


def test_integer_and_float_dims_sample_the_right_types(tiny_env, monkeypatch):
    from tuneops.tune import run_study

    store, base = tiny_env
    monkeypatch.setattr(pipeline, "_execute", fake_execute)
    recipe = _recipe(base.id, {"space": {"method.r": {"low": 3, "high": 12, "log": True},
                                         "method.alpha": {"low": 4, "high": 16, "step": 4},
                                         "method.dropout": {"low": 0.0, "high": 0.2},
                                         "train.learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}},
                               "pruner": "none"}, train={**TRAIN, "eval_steps": 4})
    result = run_study(store, recipe, trials=3)
    assert [t.state for t in result.trials] == ["COMPLETE"] * 3
    for t in result.trials:
        p = t.params
        assert isinstance(p["method.r"], int) and 3 <= p["method.r"] <= 12
        assert isinstance(p["method.alpha"], int) and p["method.alpha"] in (4, 8, 12, 16)
        assert isinstance(p["method.dropout"], float) and 0 <= p["method.dropout"] <= 0.2
        run_recipe = yaml.safe_load(store.get_run(t.run_id).recipe_yaml)
        assert run_recipe["method"]["r"] == p["method.r"] and run_recipe["method"]["alpha"] == p["method.alpha"]
    assert result.notes == []  # eval_steps was set: nothing injected


# -- a study with fake runs: links, pruning, failures, the best recipe --------------------------
def test_study_links_trials_and_runs_prunes_fails_and_writes_the_best_recipe(tiny_env, monkeypatch, tmp_path):
    import optuna

    from tuneops.tune import default_study_name, open_storage, run_study

    store, base = tiny_env
    monkeypatch.setattr(pipeline, "_execute", fake_execute)
    recipe = _recipe(base.id, {"space": {"train.learning_rate": {"low": 1e-4, "high": 0.5, "log": True},
                                         "method.r": {"choices": [2, 4, 8]}}})
    name = default_study_name(recipe)
    # Queue the first trials' values, as a user can with optuna: a good one, a hopeless one (pruned at
    # its first report, worse than trial 0 at that step), one whose run fails, another good one.
    queued = optuna.create_study(storage=open_storage(store), study_name=name, direction="minimize")
    for lr, r in ((3e-3, 4), (0.4, 8), (2e-3, 2), (3.1e-3, 8)):
        queued.enqueue_trial({"train.learning_rate": lr, "method.r": r})
    seen = []
    result = run_study(store, recipe, trials=5, pruner=optuna.pruners.MedianPruner(n_startup_trials=1),
                       on_trial=seen.append)

    assert result.study_name == name and result.ran == [0, 1, 2, 3, 4] and [t.number for t in seen] == result.ran
    states = [t.state for t in result.trials]
    assert states[:4] == ["COMPLETE", "PRUNED", "FAIL", "COMPLETE"] and states[4] in ("COMPLETE", "PRUNED", "FAIL")
    # train.eval_steps was not set: 8 planned steps / 4 = every 2 steps, and the result says so.
    assert any("train.eval_steps is not set" in n and "every 2 steps" in n for n in result.notes)
    t0, t1, t2, t3 = result.trials[:4]
    assert t0.value == pytest.approx(_loss(3e-3, 8)) and t3.value == pytest.approx(_loss(3.1e-3, 8))
    # Each trial is a run, linked both ways.
    for t in result.trials:
        run = store.get_run(t.run_id)
        (ev,) = store.run_events(run.id, "trial")
        assert ev.payload == {"study": name, "number": t.number, "params": t.params}
        saved = yaml.safe_load(run.recipe_yaml)
        assert saved["target"] is None and "tune" not in saved and saved["train"]["eval_steps"] == 2
    assert store.get_run(t0.run_id).state == "succeeded"
    pruned = store.get_run(t1.run_id)
    assert pruned.state == "cancelled" and "pruned by study" in pruned.error and "step 2" in pruned.error
    assert "pruned by study" in t1.error and t1.value == pytest.approx(_loss(0.4, 2))
    failed = store.get_run(t2.run_id)
    assert failed.state == "failed" and "rank 2" in failed.error and "ValueError: rank 2" in t2.error
    # The best, over the study; its recipe is the run's with the original target back.
    completed = [t for t in result.trials if t.state == "COMPLETE"]
    best = min(completed, key=lambda t: t.value)
    assert result.best_number == best.number and result.best_value == best.value
    assert result.best_run_id == best.run_id and result.best_params == best.params
    path = result.write_best_recipe(tmp_path / "out" / "best.yaml")
    written = load_recipe(path)
    assert written.train.learning_rate == pytest.approx(best.params["train.learning_rate"])
    assert written.method.r == best.params["method.r"]
    assert written.tune is None and written.target is not None and written.target.alias == "tiny"
    assert path.read_text().startswith(f"# Best trial of study '{name}': trial {best.number}")
    assert result.to_dict()["best"]["number"] == best.number

    # The study lives in the store's database, beside tuneops' tables; a second call joins it.
    again = optuna.load_study(study_name=name, storage=store.db_url)
    assert len(again.trials) == 5 and again.trials[0].user_attrs["run_id"] == t0.run_id
    assert again.user_attrs["metric"] == "eval_loss" and again.user_attrs["recipe_sha256"] == recipe.hash()
    more = run_study(store, recipe, trials=1)
    assert more.ran == [5] and len(more.trials) == 6


def test_trial_seeds_differ_by_number_and_repeat_by_seed(tiny_env, monkeypatch):
    from tuneops.tune import run_study

    store, base = tiny_env
    monkeypatch.setattr(pipeline, "_execute", fake_execute)
    recipe = _recipe(base.id, {"space": {"train.learning_rate": {"low": 1e-4, "high": 1e-1, "log": True}},
                               "pruner": "none"}, train={**TRAIN, "eval_steps": 8})
    a = run_study(store, recipe, trials=3, study_name="a")
    b = run_study(store, recipe, trials=3, study_name="b")
    c = run_study(store, recipe, trials=1, study_name="c", seed=1)
    lrs = [t.params["train.learning_rate"] for t in a.trials]
    assert len(set(lrs)) == 3 and lrs == [t.params["train.learning_rate"] for t in b.trials]
    assert c.trials[0].params != a.trials[0].params


def test_trial_hook_reports_prunes_and_skips_non_finite():
    import optuna

    from tuneops.tune import make_trial_hook

    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    first = study.ask()
    seen: list = []
    hook = make_trial_hook(first, study_name="s", report=True, prune_non_finite=True, seen=seen)
    hook(2, 1.0)
    hook(4, 0.5)
    study.tell(first, 0.5)
    second = study.ask()
    hook2 = make_trial_hook(second, study_name="s", report=True, prune_non_finite=True, seen=seen)
    with pytest.raises(RunPruned, match=r"pruned by study s \(trial 1\): eval_loss 3 at step 2"):
        hook2(2, 3.0)
    assert second.storage.get_trial(second._trial_id).intermediate_values == {2: 3.0}
    third = study.ask()
    with pytest.raises(RunPruned, match="held-out loss is nan"):
        make_trial_hook(third, study_name="s", report=True, prune_non_finite=True, seen=seen)(2, float("nan"))
    # No reporting (a `<suite>.<metric>` study): it only records.
    fourth = study.ask()
    make_trial_hook(fourth, study_name="s", report=False, prune_non_finite=False, seen=seen)(2, 99.0)
    assert seen[-1] == (2, 99.0) and study.trials[3].intermediate_values == {}


# -- two workers, one SQLite file ---------------------------------------------------------------
WORKER = textwrap.dedent('''
    import json, sys
    from tuneops import pipeline
    from tuneops.store import Store
    from tuneops.train.recipe import load_recipe
    from tuneops.tune import run_study
    {fake}
    pipeline._execute = fake_execute
    result = run_study(Store(sys.argv[1]), load_recipe(sys.argv[2]), trials=4, study_name="shared")
    print(json.dumps(result.ran))
''')


def test_two_workers_share_one_study_in_the_store_sqlite_file(tiny_env, tmp_path):
    import optuna

    store, base = tiny_env
    recipe = _recipe(base.id, {"space": {"train.learning_rate": {"low": 1e-4, "high": 1e-1, "log": True}},
                               "pruner": "none"}, train={**TRAIN, "eval_steps": 1})
    path = tmp_path / "r.yaml"
    path.write_text(recipe.to_yaml())
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(fake=FAKE_EXECUTE))
    env = {k: v for k, v in __import__("os").environ.items() if k != "TUNEOPS_DB_URL"}
    procs = [subprocess.Popen([sys.executable, str(script), str(store.home), str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    ran = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sorted(ran[0] + ran[1]) == list(range(8))  # unique trial numbers across the two processes
    study = optuna.load_study(study_name="shared", storage=store.db_url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 8, [t.user_attrs.get("error") for t in study.trials]
    run_ids = {t.user_attrs["run_id"] for t in study.trials}
    assert len(run_ids) == 8 and all(store.get_run(r).state == "succeeded" for r in run_ids)
    assert len({t.params["train.learning_rate"] for t in study.trials}) == 8  # no duplicated start-up points
    for t in study.trials:
        (ev,) = store.run_events(t.user_attrs["run_id"], "trial")
        assert ev.payload["number"] == t.number
    # tuneops' own tables are intact beside optuna's, and the store still opens.
    from sqlalchemy import inspect

    from tuneops.store import Store

    tables = set(inspect(store.engine).get_table_names())
    assert {"runs", "run_events", "audit", "studies", "trials", "trial_values"} <= tables
    assert len(Store(store.home).all(RunRecord)) == 8


# -- a real study on the tiny model -------------------------------------------------------------
def test_three_trial_study_on_the_tiny_model(tiny_env, tmp_path):
    """Real training: trials 0 and 1 run to the end; trial 2 is pruned at its first held-out loss (a pruner
    that always says so from trial 2 on: the real trainer path must stop, and the run be cancelled)."""
    import optuna

    from tuneops.tune import run_study

    class PruneFromTrial2(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return trial.number >= 2

    store, base = tiny_env
    recipe = _recipe(base.id, {"space": {"train.learning_rate": {"low": 1e-3, "high": 5e-2, "log": True},
                                         "method.r": {"choices": [2, 4]}}},
                     train={**TRAIN, "max_steps": 4, "batch_size": 2, "max_length": 96, "eval_steps": 2})
    result = run_study(store, recipe, trials=3, pruner=PruneFromTrial2())
    assert result.ran == [0, 1, 2]
    assert [t.state for t in result.trials] == ["COMPLETE", "COMPLETE", "PRUNED"], [t.error for t in result.trials]
    for t in result.trials[:2]:
        run = store.get_run(t.run_id)
        assert run.state == "succeeded" and store.get_artifact(t.artifact_id).lineage["run"] == run.id
        assert t.eval_report and math.isfinite(t.value) and t.value > 0
        evals = [e.payload["eval_loss"] for e in store.run_events(run.id, "eval")]
        assert t.value == pytest.approx(evals[-1])  # the value is the run's last held-out loss
        assert not store.run_events(run.id, "promotion_refused") and run.state == "succeeded"
    pruned = store.get_run(result.trials[2].run_id)
    assert pruned.state == "cancelled" and "pruned by study" in pruned.error and pruned.artifact_id is None
    assert [e.payload["step"] for e in store.run_events(pruned.id, "eval")] == [2]  # training stopped there
    study = optuna.load_study(study_name=result.study_name, storage=store.db_url)
    assert [t.user_attrs["run_id"] for t in study.trials] == [t.run_id for t in result.trials]
    assert study.trials[0].intermediate_values.keys() == {2, 4} and study.trials[2].intermediate_values.keys() == {2}
    assert study.best_trial.number == result.best_number and study.best_value == pytest.approx(result.best_value)
    best = load_recipe(result.write_best_recipe(tmp_path / "best.yaml"))
    assert best.train.learning_rate == pytest.approx(result.best_params["train.learning_rate"])
    assert best.method.r == result.best_params["method.r"] and best.tune is None
    assert best.target is not None and best.train.eval_steps == 2


# -- PostgreSQL -----------------------------------------------------------------------------------
@pytest.mark.skipif(not __import__("os").environ.get("TUNEOPS_TEST_PG_URL"), reason="no TUNEOPS_TEST_PG_URL")
def test_study_in_a_postgresql_store(tmp_path, tiny_model_dir, monkeypatch):
    """On PostgreSQL the study's tables go in the store's database, reached by the same URL (driver included)."""
    import optuna

    from tests.conftest import _pg_database_url
    from tuneops.data.bundled import json_extraction_rows
    from tuneops.data.ingest import ingest_rows
    from tuneops.models.base import import_local
    from tuneops.store import Store
    from tuneops.tune import run_study

    store = Store(tmp_path / "store", db_url=_pg_database_url())
    try:
        base, _ = import_local(store, tiny_model_dir, name="tiny-llama")
        train_rows, eval_rows = json_extraction_rows(16, 6, seed=1)
        ingest_rows(store, train_rows, name="tiny-train")
        ingest_rows(store, eval_rows, name="tiny-eval")
        monkeypatch.setattr(pipeline, "_execute", fake_execute)
        recipe = _recipe(base.id, {"space": {"train.learning_rate": {"low": 1e-4, "high": 1e-1, "log": True},
                                             "method.r": {"choices": [4, 8]}}}, train={**TRAIN, "eval_steps": 4})
        result = run_study(store, recipe, trials=3)
        assert [t.state for t in result.trials][:2] == ["COMPLETE", "COMPLETE"]
        assert result.storage.startswith("postgresql+psycopg://")
        study = optuna.load_study(study_name=result.study_name, storage=store.db_url)
        assert [t.user_attrs["run_id"] for t in study.trials] == [t.run_id for t in result.trials]
        assert all(store.get_run(t.run_id).state in ("succeeded", "cancelled") for t in result.trials)
        assert result.best_recipe.method.r == result.best_params["method.r"]
        # The store reopens on a database that now also holds optuna's tables.
        assert len(Store(tmp_path / "store", db_url=store.db_url).all(RunRecord)) == 3
    finally:
        store.engine.dispose()
