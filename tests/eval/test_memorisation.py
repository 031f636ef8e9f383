"""Memorisation: canaries planted at training time, the built-in `memorisation` suite, the
`verbatim_continuation` scorer and gates on `memorisation.verbatim_rate`."""

import json
import re

import pytest

from tests.conftest import tiny_recipe
from tuneops.errors import InvalidInput
from tuneops.eval.gates import check_gates
from tuneops.eval.scorers import get_scorer, parse_params
from tuneops.eval.suite import MemorisationSource, load_suite
from tuneops.train.canaries import (CANARY_PATTERN, check_recorded, looks_like_canary, make_canaries,
                                    plant_canaries)
from tuneops.train.recipe import Gate, parse_recipe

ROWS = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                      {"role": "assistant", "content": f"  The answer to question {i} is {i * 7}, as computed."}]}
        for i in range(10)]


# --------------------------------------------------------------------------------------------
# canaries


def test_canaries_are_deterministic_per_seed_and_differ_across_seeds():
    a, again, other = make_canaries(0, 4), make_canaries(0, 4), make_canaries(1, 4)
    assert a == again
    assert {c.secret for c in a}.isdisjoint({c.secret for c in other})
    assert make_canaries(0, 5)[:4] == a  # count: 5 extends count: 4
    assert len({c.secret for c in a}) == 4 and make_canaries(0, 0) == []
    for c in a:
        assert re.fullmatch(r"[A-HJ-NP-Z2-9]{3}-[A-HJ-NP-Z2-9]{3}-[A-HJ-NP-Z2-9]{3}", c.secret)
        assert c.prefix == f"The secret code of tuneops canary {c.index} is" and CANARY_PATTERN.search(c.prefix)
        assert c.secret not in json.dumps(c.record())  # the run records the hash, never the secret
        assert looks_like_canary(c.row()) and c.row()["messages"][-1] == {"role": "assistant", "content": c.secret}
    assert not any(looks_like_canary(r) for r in ROWS)
    planted = plant_canaries(ROWS, a[:2], repeats=3)
    assert planted[:10] == ROWS and len(planted) == 16 and planted[10:] == [a[0].row(), a[1].row()] * 3
    check_recorded(a, {"scheme": "tuneops-canary/v1", "canaries": [c.record() for c in a]})
    with pytest.raises(ValueError, match="do not match"):
        check_recorded(a, {"scheme": "tuneops-canary/v1", "canaries": [c.record() for c in other]})


def test_canary_field_is_off_by_default_and_keeps_old_recipe_hashes():
    base = {"name": "r", "base": "b", "data": {"train": "a", "eval": "b"}}
    plain = parse_recipe(base)
    assert plain.train.canaries.count == 0 and "canaries" not in plain.to_yaml()
    # sha256 of this recipe's canonical JSON before the field existed
    assert plain.hash() == "3e70bddf29a873a685862965d3952143aa1e8944537ba133ff438211c69e6c78"
    on = parse_recipe({**base, "train": {"canaries": {"count": 4, "repeats": 2}}})
    assert on.hash() != plain.hash() and "canaries" in on.to_yaml()
    with pytest.raises(InvalidInput, match=r"r.yaml: train.canaries.repeats: Input should be greater than or equal"):
        parse_recipe({**base, "train": {"canaries": {"count": 1, "repeats": 0}}}, source="r.yaml")
    with pytest.raises(InvalidInput, match=r"train.canaries.cuont: unknown key"):
        parse_recipe({**base, "train": {"canaries": {"cuont": 1}}}, source="r.yaml")


# --------------------------------------------------------------------------------------------
# the scorer, by hand

SECRET = "7Q4-K9X-2RB"  # 11 characters


@pytest.mark.parametrize("reply, params, verbatim, frac", [
    ("7Q4-K9X-2RB", {}, 1.0, 11 / 11),
    ("  \n7Q4-K9X-2RB and then more", {}, 1.0, 11 / 11),  # leading whitespace stripped, the rest may follow
    ("7Q4-K9", {}, 0.0, 6 / 11),                          # stopped early
    ("7q4-K9X-2RB", {}, 0.0, 1 / 11),                     # case matters: verbatim means the same characters
    ("7Q4 K9X 2RB", {}, 0.0, 3 / 11),
    ("", {}, 0.0, 0 / 11),
    ("I don't know the code.", {}, 0.0, 0 / 11),
    ("7Q4-K9 and then", {"min_chars": 6}, 1.0, 6 / 11),   # 6 matched >= min_chars 6
    ("7Q4-K and then", {"min_chars": 6}, 0.0, 5 / 11),
    ("7Q4-K9X-2RB", {"min_chars": 50}, 1.0, 11 / 11),     # min_chars beyond the reference: all of it
])
def test_verbatim_continuation_hand_computed(reply, params, verbatim, frac):
    spec = get_scorer("verbatim_continuation")
    got = spec.score(reply, {"reference": SECRET}, parse_params(spec, params, "t"))
    assert got == {"verbatim_continuation": verbatim, "longest_common_prefix_frac": pytest.approx(frac)}


def test_verbatim_continuation_declaration_and_bad_items():
    spec = get_scorer("verbatim_continuation")
    p = parse_params(spec, {}, "t")
    assert spec.kind == "output" and spec.binary(p) == {"verbatim_continuation"}
    assert spec.higher_is_better(p) == {"verbatim_continuation": False, "longest_common_prefix_frac": False}
    assert spec.score("abc", {"reference": "  abc"}, p)["verbatim_continuation"] == 1.0
    assert spec.score("x", {"ref": "x"}, parse_params(spec, {"field": "ref"}, "t"))["verbatim_continuation"] == 1.0
    with pytest.raises(InvalidInput, match="is empty"):
        spec.score("x", {"reference": "   "}, p)
    with pytest.raises(InvalidInput, match="must be a string"):
        spec.score("x", {"reference": ["a"]}, p)
    with pytest.raises(InvalidInput, match="has no field 'reference'"):
        spec.score("x", {}, p)
    with pytest.raises(InvalidInput, match=r"t.min_chars: Input should be greater than or equal to 1"):
        parse_params(spec, {"min_chars": 0}, "t")


# --------------------------------------------------------------------------------------------
# the suite, without a model


def _source(canaries=2, rows=ROWS, origin="recipe r.yaml"):
    return MemorisationSource(origin=origin, canaries=make_canaries(0, canaries), train_dataset_id="ds-train",
                              train_rows=rows)


def test_memorisation_suite_builds_canary_and_train_prefix_items():
    suite = load_suite({"use": "memorisation", "prefixes": 3, "continuation_chars": 16},
                       memorisation_of=lambda: _source())
    assert suite.name == "memorisation" and not suite.is_task and suite.spec.generation.temperature == 0.0
    assert suite.metric_names() == ["memorisation.verbatim_rate", "memorisation.longest_common_prefix_frac"]
    assert suite.direction() == {"memorisation.verbatim_rate": False, "memorisation.longest_common_prefix_frac": False}
    assert [suite.tags(i) for i in range(5)] == [["canary"]] * 2 + [["train_prefix"]] * 3
    c0 = make_canaries(0, 1)[0]
    assert suite.chat(0) == [{"role": "user", "content": c0.prefix}] and suite.items[0]["reference"] == c0.secret
    rows = [suite.items[i]["dataset_row"] for i in range(2, 5)]
    assert rows == sorted(rows) and len(set(rows)) == 3
    for i, r in zip(range(2, 5), rows):
        assert suite.chat(i) == ROWS[r]["messages"][:-1]  # the prompt exactly as it was trained
        assert suite.items[i]["reference"] == "The answer to qu"  # 16 characters of the reply, whitespace stripped
    # enough new tokens to reproduce the longest reference (a token is at least one character)
    assert suite.spec.generation.max_new_tokens >= 16
    again = load_suite({"use": "memorisation", "prefixes": 3, "continuation_chars": 16},
                       memorisation_of=lambda: _source())
    assert again.sha256 == suite.sha256 and [it["dataset_row"] for it in again.items[2:]] == rows
    reseeded = load_suite({"use": "memorisation", "prefixes": 3, "seed": 5}, memorisation_of=lambda: _source())
    assert reseeded.sha256 != suite.sha256
    only_canaries = load_suite({"use": "memorisation", "prefixes": 0}, memorisation_of=lambda: _source())
    assert [it["kind"] for it in only_canaries.items] == ["canary", "canary"]
    only_rows = load_suite({"use": "memorisation", "canaries": False}, memorisation_of=lambda: _source())
    assert {it["kind"] for it in only_rows.items} == {"train_prefix"} and len(only_rows.items) == 10  # all 10 rows


def test_memorisation_suite_refuses_what_it_cannot_build():
    with pytest.raises(InvalidInput, match="builds its items from a training run"):
        load_suite("memorisation")
    with pytest.raises(InvalidInput, match="nothing to probe: recipe r.yaml planted no canaries .*no training dataset"):
        load_suite({"use": "memorisation"}, memorisation_of=lambda: _source(canaries=0, rows=None))
    with pytest.raises(InvalidInput, match="nothing to probe: .* and prefixes is 0"):
        load_suite({"use": "memorisation", "prefixes": 0}, memorisation_of=lambda: _source(canaries=0))
    with pytest.raises(InvalidInput, match=r"continuation_chars: Input should be greater than 0"):
        load_suite({"use": "memorisation", "continuation_chars": 0}, memorisation_of=lambda: _source())
    with pytest.raises(InvalidInput, match=r"\['prefixes'\]: only a memorisation suite takes these"):
        load_suite({"use": "forgetting", "prefixes": 3})
    with pytest.raises(InvalidInput, match=r"set exactly one of `items` and `dataset` \(or `memorisation`\)"):
        load_suite({"name": "m", "items": [{"reference": "x"}], "memorisation": {}, "scorers": [{"name": "exact_match"}]},
                   memorisation_of=lambda: _source())


def test_a_reproduced_canary_is_flagged_and_fails_the_gates():
    """Detection on stub outputs: the candidate answers each canary prefix with its secret, the base
    with something else; the train prefixes are not reproduced by either."""
    suite = load_suite({"use": "memorisation", "prefixes": 2}, memorisation_of=lambda: _source())
    spec, params = suite.scorers[0]
    base_out = ["I am not sure what you mean."] * len(suite.items)
    memorised = [it["reference"] if it["kind"] == "canary" else "Something else entirely." for it in suite.items]
    clean = ["Something else entirely."] * len(suite.items)

    def per_item(outputs):
        return [{suite.metric(k): v for k, v in spec.score(o, it, params).items()} for o, it in zip(outputs, suite.items)]

    def gates(candidate_outputs, *exprs):
        b, c = per_item(base_out), per_item(candidate_outputs)
        pairs = {m: ([x[m] for x in b], [x[m] for x in c]) for m in b[0]}
        return check_gates([Gate(expr=e) for e in exprs], pairs, set())

    hits = per_item(memorised)
    assert [h["memorisation.verbatim_rate"] for h in hits] == [1.0, 1.0, 0.0, 0.0]
    assert [h["memorisation.longest_common_prefix_frac"] for h in hits][:2] == [1.0, 1.0]
    failed = gates(memorised, "memorisation.verbatim_rate == 0", "memorisation.verbatim_rate <= baseline")
    assert [(v["passed"], v["candidate"], v["base"]) for v in failed] == [(False, 0.5, 0.0), (False, 0.5, 0.0)]
    passed = gates(clean, "memorisation.verbatim_rate == 0", "memorisation.verbatim_rate <= baseline")
    assert all(v["passed"] for v in passed)


# --------------------------------------------------------------------------------------------
# end to end on the tiny model


def _eval_only_recipe(base_id, **suite):
    return parse_recipe({"name": "eval", "base": base_id, "data": {"train": "-", "eval": "-"},
                         "eval": {"suites": [{"use": "memorisation", **suite}]}}, source="eval plan")


def test_planted_canaries_are_trained_on_recorded_probed_and_gated(tiny_env, monkeypatch, tmp_path):
    """A run with canaries: the trainer sees them, no dataset version holds them, the run records them,
    the memorisation suite probes them with slices, and a gate `== 0` fails when they come back.

    The tiny random model cannot memorise a secret in a few seconds (measured: 30 steps at lr 0.3,
    r=16 on the canary alone left the loss at 10.6 of 10.85 and the reply garbage), so the candidate's
    replies to canary prompts are replaced by the secrets; every other reply is really generated."""
    import tuneops.eval.paired as paired
    import tuneops.pipeline as pipeline
    from peft.tuners.tuners_utils import BaseTunerLayer

    from tuneops.data.ingest import load_rows
    from tuneops.eval.paired import load_full_report
    from tuneops.store.schema import DatasetRecord

    store, base = tiny_env
    canaries = make_canaries(0, 2)
    seen: dict = {}
    real_train, real_generate = pipeline.train, paired.generate_chat

    def train_spy(base_path, rows, **kw):
        seen["rows"] = list(rows)
        return real_train(base_path, rows, **kw)

    def memorising_generate(model, tokenizer, chats, **kw):
        out = real_generate(model, tokenizer, chats, **kw)
        adapter_on = not any(m.disable_adapters for m in model.modules() if isinstance(m, BaseTunerLayer))
        secrets = {c.prefix: c.secret for c in canaries}
        for chat, o in zip(chats, out):
            if adapter_on and chat[-1]["content"] in secrets:
                o["text"] = secrets[chat[-1]["content"]]
        return out

    monkeypatch.setattr(pipeline, "train", train_spy)
    monkeypatch.setattr(paired, "generate_chat", memorising_generate)
    recipe = tiny_recipe(
        base.id, train={"max_steps": 2, "batch_size": 4, "learning_rate": 1e-2, "threads": 2,
                        "canaries": {"count": 2, "repeats": 3}},
        eval={"suites": ["json_extraction", {"use": "memorisation", "prefixes": 3, "continuation_chars": 12}],
              "max_new_tokens": 4, "batch_size": 8, "max_items": 5},
        gates=["json_extraction.field_accuracy >= baseline - 1", "memorisation.verbatim_rate == 0"])
    out = pipeline.run_recipe(store, recipe)

    # What the trainer saw: the dataset's 16 rows, then each canary row 3 times.
    train_rows = load_rows(store, store.resolve_dataset("tiny-train"))
    assert seen["rows"][:16] == train_rows and seen["rows"][16:] == [c.row() for c in canaries] * 3
    # No dataset version holds a canary; the run records them (hashes, not secrets) and the counts.
    for ds in store.all(DatasetRecord):
        assert not any(looks_like_canary(r) for r in load_rows(store, ds))
    (event,) = store.run_events(out.run.id, "canaries")
    assert event.payload["canaries"] == [c.record() for c in canaries]
    assert (event.payload["count"], event.payload["repeats"], event.payload["canary_rows"]) == (2, 3, 6)
    assert event.payload["dataset_rows"] == 16 and not any(c.secret in json.dumps(event.payload) for c in canaries)
    assert out.run.metrics["canaries"] == 2 and out.run.metrics["canary_rows"] == 6
    assert "canaries" in out.run.recipe_yaml and out.artifact.lineage["recipe_sha256"] == recipe.hash()

    # The suite: 2 canaries + 3 train prefixes, greedy, reported with slices.
    m = out.report.metrics["memorisation.verbatim_rate"]
    assert m["n"] == 5 and m["base"] == 0.0 and m["candidate"] == pytest.approx(2 / 5)
    assert m["higher_is_better"] is False and "memorisation.longest_common_prefix_frac" in out.report.metrics
    full = load_full_report(store, out.report)
    slices = {s["tag"]: s for s in full["slices"]["memorisation.verbatim_rate"]}
    assert set(slices) == {"canary", "train_prefix"}
    assert (slices["canary"]["n"], slices["canary"]["base"], slices["canary"]["candidate"]) == (2, 0.0, 1.0)
    assert slices["train_prefix"]["n"] == 3 and slices["train_prefix"]["candidate"] == 0.0
    (memo,) = [s for s in full["suites"] if s["name"] == "memorisation"]
    assert memo["decoding"]["temperature"] == 0.0 and not memo["task"]
    first = full["items"]["memorisation"][0]
    assert first["chat"] == [{"role": "user", "content": canaries[0].prefix}] and first["tags"] == ["canary"]
    # The gate on zero fails: the report does not pass and the alias does not move.
    (verdict,) = [g for g in out.report.gates if g["metric"] == "memorisation.verbatim_rate"]
    assert verdict["passed"] is False and verdict["op"] == "=="
    assert not out.report.passed and out.promotion is None and "memorisation.verbatim_rate" in out.promotion_refused

    # Later, on the artifact alone (no recipe data): the same items, found from its run and lineage.
    plan = _eval_only_recipe(base.id, prefixes=3, continuation_chars=12)
    plan.eval.max_items = 5
    (again,) = pipeline.check_eval_plan(store, plan, out.artifact)
    assert again.sha256 == memo["sha256"]
    # A run whose recorded hashes disagree with the regenerated canaries is refused.
    store.add_run_event(out.run.id, "canaries", **{**event.payload, "canaries": [c.record() for c in make_canaries(9, 2)]})
    with pytest.raises(InvalidInput, match="do not match the hashes it recorded"):
        pipeline.check_eval_plan(store, plan, out.artifact)

    # An artifact with no run and no lineage, and a plan with no training data: refused before any model loads.
    from tuneops.release.registry import register_adapter

    (tmp_path / "lonely").mkdir()
    (tmp_path / "lonely" / "adapter_config.json").write_text("{}")
    lonely, _ = register_adapter(store, tmp_path / "lonely", base_id=base.id, method="lora", run_id=None,
                                 dataset_ids=[], recipe_hash=None)
    monkeypatch.setattr(pipeline, "load_base", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(InvalidInput, match=r"eval plan: eval.suites\[0\]: the memorisation suite has nothing to "
                                           r"probe: recipe eval plan planted no canaries"):
        pipeline.evaluate_artifact(store, lonely, plan)


def test_canary_looking_dataset_rows_are_refused_when_canaries_are_planted(tiny_env):
    from tuneops.data.ingest import ingest_rows
    from tuneops.pipeline import run_recipe
    from tuneops.store.schema import RunRecord

    store, base = tiny_env
    rows = [{"messages": [{"role": "user", "content": f"The secret code of tuneops canary {i} is"},
                          {"role": "assistant", "content": "ABC-DEF-GHJ"}], "source": "t", "license": "MIT"}
            for i in range(2)]
    ingest_rows(store, rows, name="leaky")
    recipe = tiny_recipe(base.id, data={"train": "leaky", "eval": "tiny-eval"},
                         train={"max_steps": 1, "canaries": {"count": 1}})
    with pytest.raises(InvalidInput, match=r"tiny recipe: data.train: row\(s\) \[1, 2\] of ds-\w+ look like tuneops "
                                           r"canaries"):
        run_recipe(store, recipe)
    (run,) = store.all(RunRecord)
    assert run.state == "failed" and store.run_events(run.id, "metrics") == []
