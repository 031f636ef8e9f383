"""The whole chain on the tiny model: train -> register -> paired eval -> gates -> promote."""

import pytest

from tests.conftest import tiny_recipe
from tuneops.errors import InvalidInput
from tuneops.pipeline import run_recipe
from tuneops.release.registry import resolve_alias
from tuneops.store.schema import AliasRecord, RunRecord


def test_sft_lowers_loss_registers_with_lineage_and_promotes(tiny_env):
    store, base = tiny_env
    recipe = tiny_recipe(base.id)
    out = run_recipe(store, recipe)
    losses = [e.payload["loss"] for e in store.run_events(out.run.id, "metrics")]
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.05  # training really moved the weights
    assert out.run.state == "succeeded"
    art = out.artifact
    assert art.id.startswith("ad-") and art.base_id == base.id
    assert art.lineage["recipe_sha256"] == recipe.hash() and art.lineage["run"] == out.run.id
    assert art.lineage["datasets"] == [store.resolve_dataset("tiny-train").id, store.resolve_dataset("tiny-eval").id]
    assert set(art.lineage["files"]) == {"adapter_config.json", "adapter_model.safetensors"}
    assert store.blobs.verify_tree(art.tree)
    # Paired: both sides saw the same items.
    m = out.report.metrics
    assert m["json_extraction.exact_match"]["n"] == 6 and m["forgetting.accuracy"]["n"] == 10
    assert out.report.passed and out.promotion is not None
    assert resolve_alias(store, "tiny@production").id == art.id
    states = [e.payload["to"] for e in store.run_events(out.run.id, "state")]
    assert states == ["validating_data", "running", "evaluating", "succeeded"]


def test_failing_gate_refuses_promotion(tiny_env):
    store, base = tiny_env
    # A random tiny model cannot gain 0.5 exact match: the gate must fail and the alias must not move.
    recipe = tiny_recipe(base.id, gates=[{"metric": "json_extraction.exact_match", "min_delta": 0.5}],
                         train={"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "threads": 2})
    out = run_recipe(store, recipe)
    assert out.run.state == "succeeded" and not out.report.passed
    assert out.promotion is None and "failed its gates" in out.promotion_refused
    assert store.all(AliasRecord, order_by=AliasRecord.name) == []
    verdict = out.report.gates[0]
    assert verdict["passed"] is False and verdict["threshold"] == pytest.approx(verdict["base"] + 0.5)


def test_unknown_gate_metric_fails_run_before_training(tiny_env):
    store, base = tiny_env
    recipe = tiny_recipe(base.id, gates=[{"metric": "json_extraction.bleu", "min_value": 0.1}])
    with pytest.raises(InvalidInput, match=r"tiny recipe: gates\[0\]: 'json_extraction.bleu' is not produced"):
        run_recipe(store, recipe)
    (run,) = store.all(RunRecord)
    assert run.state == "failed" and "json_extraction.bleu" in run.error
    assert store.run_events(run.id, "metrics") == []


def test_eval_rows_leaking_into_train_are_refused(tiny_env):
    store, base = tiny_env
    recipe = tiny_recipe(base.id, data={"train": "tiny-train", "eval": "tiny-train"})
    with pytest.raises(InvalidInput, match="also appear in the training set"):
        run_recipe(store, recipe)


def _refused_before_training(store, recipe, match):
    from tuneops.errors import TuneopsError

    with pytest.raises(TuneopsError, match=match):
        run_recipe(store, recipe)
    run = store.all(RunRecord)[-1]
    assert run.state == "failed" and store.run_events(run.id, "metrics") == []  # no compute was spent
    return run


def test_a_promoting_recipe_must_gate_its_own_task(tiny_env):
    store, base = tiny_env
    # No suites at all, then only the forgetting suite gated: either would promote an untested task.
    _refused_before_training(store, tiny_recipe(base.id, eval={"suites": []}, gates=[]),
                             r"tiny recipe: gates: the recipe promotes to tiny@production but no gate judges")
    _refused_before_training(store, tiny_recipe(base.id, gates=[{"metric": "forgetting.accuracy",
                                                                 "max_relative_drop": 0.05}]),
                             r"no gate judges a metric computed on its own eval data")


def test_report_without_a_task_gate_never_passes(tiny_env):
    store, base = tiny_env
    out = run_recipe(store, tiny_recipe(base.id, target=None, eval={"suites": ["forgetting"], "max_new_tokens": 2},
                                        gates=[{"metric": "forgetting.accuracy", "max_relative_drop": 1.0}],
                                        train={"max_steps": 1, "batch_size": 4, "threads": 2}))
    assert out.run.state == "succeeded" and out.report.gates[0]["passed"]
    assert out.report.passed is False  # every gate passed, but none tested the task
    from tuneops.errors import GateFailed
    from tuneops.release.registry import promote

    with pytest.raises(GateFailed, match="no passing gate on its own task"):
        promote(store, out.artifact.id, "tiny@production")


def test_suite_that_cannot_score_the_eval_rows_is_refused_before_training(tiny_env):
    from tuneops.data.ingest import ingest_rows

    store, base = tiny_env
    gsm = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                         {"role": "assistant", "content": f"{i} + {i} = {2 * i}\n#### {2 * i}"}],
            "source": "test", "license": "MIT"} for i in range(3)]
    ingest_rows(store, gsm, name="gsm-eval")
    _refused_before_training(store, tiny_recipe(base.id, data={"train": "tiny-train", "eval": "gsm-eval"}),
                             r"tiny recipe: eval.suites\[0\]: dataset ds-\w+:1: scorer 'json' of builtin:json_extraction "
                             r"cannot score this item: .*must be the reference object")


def test_missing_dataset_error_names_recipe_file_and_field(tiny_env):
    store, base = tiny_env
    _refused_before_training(store, tiny_recipe(base.id, data={"train": "nope", "eval": "tiny-eval"}),
                             r"tiny recipe: data.train: dataset 'nope' not found")


def test_licences_and_retention_gate_the_run_before_training(tiny_env):
    """Non-commercial rows cannot train a commercial model; rows past retention train nothing."""
    from tuneops.data.bundled import json_extraction_rows
    from tuneops.data.ingest import ingest_rows

    store, base = tiny_env
    rows, _ = json_extraction_rows(12, 0, seed=7)
    rows[3] = {**rows[3], "license": "CC-BY-NC-4.0", "source": "forum-dump"}
    ingest_rows(store, rows, name="nc-train")
    recipe = tiny_recipe(base.id, data={"train": "nc-train", "eval": "tiny-eval"})
    _refused_before_training(store, recipe, r"data.use: training data ds-\w+ may not be used for commercial: "
                                            r"1 row\(s\) under CC-BY-NC-4.0 .* from forum-dump")
    research = tiny_recipe(base.id, data={"train": "nc-train", "eval": "tiny-eval", "use": "research"})
    assert research.data.use == "research" and "use" not in tiny_recipe(base.id).model_dump()["data"]
    from tuneops.pipeline import validate_inputs

    validate_inputs(store, research)  # the same rows may train a research model
    rows[5] = {**rows[5], "retention_until": "2020-01-01"}
    ingest_rows(store, rows, name="expired-train")
    expired = tiny_recipe(base.id, data={"train": "expired-train", "eval": "tiny-eval", "use": "research"})
    _refused_before_training(store, expired, r"past retention \(until 2020-01-01\)")


def test_training_rows_that_leak_an_eval_suite_are_refused_unless_waived(tiny_env):
    """A training row holding a forgetting-suite question verbatim (13-word passage or near-duplicate)."""
    from tuneops.data.bundled import json_extraction_rows
    from tuneops.data.ingest import ingest_rows
    from tuneops.pipeline import validate_inputs

    store, base = tiny_env
    rows, _ = json_extraction_rows(12, 0, seed=1)
    q = "Maria has twice as many apples as Tom. Tom has 4 apples. How many apples does Maria have?"
    rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "8"}],
                 "source": "scraped-quiz", "license": "MIT"})
    ingest_rows(store, rows, name="leaky-train")
    suites = [{"use": "forgetting", "per_tag": 40}]
    recipe = tiny_recipe(base.id, data={"train": "leaky-train", "eval": "tiny-eval"},
                         eval={"suites": ["json_extraction", *suites], "max_new_tokens": 6})
    with pytest.raises(InvalidInput, match=r"data.train: 1 training row\(s\) of ds-\w+ leak eval items: "
                                           r"forgetting item \d+ ~ train row 13"):
        validate_inputs(store, recipe)
    waived = tiny_recipe(base.id, data={"train": "leaky-train", "eval": "tiny-eval",
                                        "waive_leakage": "the quiz set is licensed for both"},
                         eval={"suites": ["json_extraction", *suites], "max_new_tokens": 6})
    validate_inputs(store, waived)
