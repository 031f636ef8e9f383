import pytest

from tuneops.errors import InvalidInput
from tuneops.train.recipe import load_recipe, parse_recipe

GOOD = {"name": "r", "base": "embedded:SmolLM2-135M-Instruct", "data": {"train": "a", "eval": "b"}}


def test_defaults_filled_and_hash_ignores_key_order():
    a = parse_recipe(dict(GOOD))
    b = parse_recipe({"data": {"eval": "b", "train": "a"}, "base": GOOD["base"], "name": "r"})
    assert a.method.r == 16 and a.train.batch_size == 8
    assert a.hash() == b.hash()
    assert parse_recipe({**GOOD, "method": {"r": 8}}).hash() != a.hash()


def test_errors_name_each_bad_field():
    bad = {**GOOD, "method": {"r": 0, "rank": 4}, "train": {"learning_rate": -1},
           "gates": [{"metric": "x", "min_delta": 0.1, "min_value": 0.5}]}
    with pytest.raises(InvalidInput) as e:
        parse_recipe(bad, source="my.yaml")
    msg = e.value.message
    assert "my.yaml: method.r: Input should be greater than 0 (got 0)" in msg
    assert "my.yaml: method.rank: unknown key" in msg
    assert "my.yaml: train.learning_rate" in msg
    assert "my.yaml: gates.0: Value error, set exactly one of" in msg


def test_missing_required_and_bad_alias():
    with pytest.raises(InvalidInput, match=r"r.yaml: data: Field required"):
        parse_recipe({"name": "r", "base": "b"}, source="r.yaml")
    with pytest.raises(InvalidInput, match=r"target.alias"):
        parse_recipe({**GOOD, "target": {"alias": "Bad Alias!"}}, source="r.yaml")


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "recipe.yaml"
    p.write_text("name: r\nbase: b\ndata: {train: a, eval: b\n")
    with pytest.raises(InvalidInput, match=r"recipe.yaml:\d+: not valid YAML"):
        load_recipe(p)


def test_saved_yaml_round_trips(tmp_path):
    r = parse_recipe({**GOOD, "gates": [{"metric": "forgetting.accuracy", "max_relative_drop": 0.05}]})
    p = tmp_path / "saved.yaml"
    p.write_text(r.to_yaml())
    assert load_recipe(p).hash() == r.hash()


def test_example_recipe_is_valid():
    from pathlib import Path

    r = load_recipe(Path(__file__).parents[2] / "examples" / "json-extraction.yaml")
    assert [g.metric for g in r.gates] == ["json_extraction.exact_match", "forgetting.accuracy"]


def test_planned_steps_count_what_each_objective_trains_on():
    """KTO splits each pair into a desirable and an undesirable row; GRPO/RLOO sample every prompt
    num_generations times and count completions per batch."""
    from tuneops.train.recipe import ObjectiveSpec, TrainSpec
    from tuneops.train.sft import planned_steps

    spec = TrainSpec(batch_size=4, gradient_accumulation_steps=2, epochs=1.5)
    assert planned_steps(16, spec) == 3
    assert planned_steps(16, spec, ObjectiveSpec(kind="dpo")) == 3
    assert planned_steps(16, spec, ObjectiveSpec(kind="kto")) == 6
    assert planned_steps(16, spec, ObjectiveSpec(kind="grpo", reward="gsm8k", num_generations=4)) == 12
    assert planned_steps(16, TrainSpec(max_steps=5), ObjectiveSpec(kind="kto")) == 5


def test_every_example_recipe_parses():
    """The shipped examples stay valid recipes as fields change (the full `recipe validate` of the GSM8K one
    needs the embedded base and the GSM8K split; its output is in docs/training.md)."""
    from pathlib import Path

    from tuneops.train.recipe import load_recipe

    examples = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
    assert {p.name for p in examples} >= {"json-extraction.yaml", "gsm8k-grpo.yaml"}
    for path in examples:
        recipe = load_recipe(path)
        assert recipe.name
    grpo = load_recipe(examples[[p.name for p in examples].index("gsm8k-grpo.yaml")])
    assert grpo.objective.kind == "grpo" and grpo.objective.reward == "gsm8k"
    assert grpo.train.batch_size % grpo.objective.num_generations == 0
