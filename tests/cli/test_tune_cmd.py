"""`tuneops tune RECIPE --trials N`: the command's errors, tables and JSON (training faked; the study is real)."""

import json
import re

import pytest
import yaml

from tests.cli.helpers import tuneops
from tests.test_tune import TRAIN, _recipe, fake_execute
from tuneops import pipeline


def test_a_recipe_without_tune_exits_2_naming_the_fix(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "x", "base": "base-nope", "data": {"train": "t", "eval": "e"}}))
    proc = tuneops(tmp_path / "home", "tune", recipe, "--trials", "2", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "has no `tune:` section, so there is nothing to search" in proc.stderr
    assert "fix:" in proc.stderr and "train.learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}" in proc.stderr
    assert not (tmp_path / "home").exists()  # refused before a store was opened or created
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "base": "base-nope", "data": {"train": "t", "eval": "e"},
                                   "tune": {"space": {"train.nope": {"choices": [1]}}}}))
    proc = tuneops(tmp_path / "home", "tune", bad, check=False)
    assert proc.returncode == 2 and "'train.nope' is not a recipe field one can search" in proc.stderr


@pytest.fixture
def cli_home(tiny_env, monkeypatch):
    store, base = tiny_env
    monkeypatch.setenv("TUNEOPS_HOME", str(store.home))
    monkeypatch.delenv("TUNEOPS_DB_URL", raising=False)
    monkeypatch.setattr(pipeline, "_execute", fake_execute)
    return store, base


def test_tune_prints_trials_and_the_best_and_writes_its_recipe(cli_home, tmp_path, capsys):
    from tuneops.cli.main import run_cli
    from tuneops.train.recipe import load_recipe

    store, base = cli_home
    recipe = _recipe(base.id, {"space": {"train.learning_rate": {"low": 1e-4, "high": 1e-1, "log": True},
                                         "method.r": {"choices": [4, 8]}}}, train={**TRAIN, "eval_steps": 4})
    path = tmp_path / "r.yaml"
    path.write_text(recipe.to_yaml())
    best_path = tmp_path / "best.yaml"
    assert run_cli(["tune", str(path), "--trials", "2", "--write-best", str(best_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "eval_loss" and out["direction"] == "minimize" and out["ran"] == [0, 1]
    assert [t["number"] for t in out["trials"]] == [0, 1]
    assert all(store.get_run(t["run_id"]).state == "succeeded" for t in out["trials"])
    assert out["best_recipe"] == str(best_path)
    best = load_recipe(best_path)
    assert best.method.r == out["best"]["params"]["method.r"] and best.tune is None

    # The same recipe again joins the same study; the table shows every trial, the best and a summary.
    assert run_cli(["tune", str(path), "--trials", "1", "--seed", "3"]) == 0
    captured = capsys.readouterr()
    assert f"study {out['study']}" in captured.out and "best trial" in captured.out
    assert "this worker ran 1 trial(s)" in captured.out and "the study holds 3" in captured.out
    assert re.search(r"trial 2 (COMPLETE|PRUNED) \d", captured.err)  # a line per trial as it ends


def test_a_study_whose_trials_all_fail_exits_2(cli_home, tmp_path, capsys):
    from tuneops.cli.main import run_cli

    store, base = cli_home
    recipe = _recipe(base.id, {"space": {"method.r": {"choices": [2]}}}, train={**TRAIN, "eval_steps": 4})
    path = tmp_path / "r.yaml"
    path.write_text(recipe.to_yaml())
    assert run_cli(["tune", str(path), "--trials", "2", "--write-best", str(tmp_path / "b.yaml")]) == 2
    captured = capsys.readouterr()
    assert "has no completed trial yet, so no best recipe was written" in captured.err
    assert captured.err.count("FAIL · method.r=2 · run-") == 2  # a line per trial as it ends, with its error
    assert "ValueError: rank 2 is not supported" in captured.err
    assert "0 complete, 0 pruned, 2 failed" in captured.out
    assert not (tmp_path / "b.yaml").exists()
