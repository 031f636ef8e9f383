"""`tuneops recipe fields | schema | validate` through the real CLI."""

import json

import yaml

from tests.cli.helpers import tuneops


def test_fields_lists_every_section_with_defaults(tmp_path):
    rows = json.loads(tuneops(tmp_path / "h", "recipe", "fields", "--json").stdout)
    by = {r["field"]: r for r in rows}
    for f in ("method.kind", "method.rslora", "method.loraplus_lr_ratio", "method.modules_to_save",
              "objective.kind", "objective.beta", "train.gradient_accumulation_steps", "train.lr_scheduler",
              "train.weight_decay", "objective.packing", "train.eval_steps", "train.save_steps",
              "train.chat_template", "train.replay.ratio", "train.early_stopping.max_drop"):
        assert f in by and by[f]["description"], f
    assert "qlora" in by["method.kind"]["type"] and "grpo" in by["objective.kind"]["type"]
    assert [r["field"] for r in rows if not r["description"]] == []  # every field documented where declared
    only = json.loads(tuneops(tmp_path / "h", "recipe", "fields", "objective", "--json").stdout)
    assert only and all(r["field"].startswith("objective") for r in only)
    bad = tuneops(tmp_path / "h", "recipe", "fields", "nope", check=False)
    assert bad.returncode == 2 and "no recipe section 'nope'" in bad.stderr


def test_schema_validates_a_recipe_and_rejects_a_typo(tmp_path):
    import jsonschema

    schema = json.loads(tuneops(tmp_path / "h", "recipe", "schema").stdout)
    ok = {"name": "x", "base": "b", "data": {"train": "t", "eval": "e"}, "method": {"kind": "dora", "r": 8}}
    jsonschema.validate(ok, schema)
    try:
        jsonschema.validate({**ok, "method": {"kind": "lora", "rank": 8}}, schema)
    except jsonschema.ValidationError as e:
        assert "rank" in str(e)
    else:
        raise AssertionError("a misspelt key passed the schema")


def _env(tmp_path, tiny_model_dir, rows):
    home = tmp_path / "home"
    tuneops(home, "init")
    base = json.loads(tuneops(home, "models", "import", tiny_model_dir, "--name", "tiny", "--json").stdout)["id"]
    f = tmp_path / "train.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tuneops(home, "data", "ingest", f, "--name", "t", "--license", "MIT")
    e = tmp_path / "eval.jsonl"
    e.write_text(json.dumps({"messages": [{"role": "user", "content": "Q zz?"},
                                          {"role": "assistant", "content": "A zz."}]}) + "\n")
    tuneops(home, "data", "ingest", e, "--name", "e", "--license", "MIT")
    return home, base


def test_validate_reports_steps_tokens_truncation_and_the_masked_example(tmp_path, tiny_model_dir):
    rows = [{"messages": [{"role": "user", "content": f"Question {i}: " + "word " * (5 if i % 4 else 200)},
                          {"role": "assistant", "content": f"Answer {i}."}]} for i in range(12)]
    home, base = _env(tmp_path, tiny_model_dir, rows)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "v", "base": base, "data": {"train": "t", "eval": "e"},
                                      "train": {"batch_size": 4, "max_length": 64, "epochs": 2},
                                      "eval": {"suites": [{"use": "forgetting", "per_tag": 1}]}}))
    out = json.loads(tuneops(home, "recipe", "validate", recipe, "--json").stdout)
    assert out["steps"] == 6 and out["rows"] == 12 and out["objective"] == "sft"
    pf = out["preflight"]
    assert pf["over_max_length"] == 3 and pf["longest"] > 200 and pf["truncated_tokens"] > 0
    assert "[[Answer 0.<|im_end|>]]" in out["example"]
    assert "estimate" not in out  # no run on this base yet, and no probe asked for
    probed = json.loads(tuneops(home, "recipe", "validate", recipe, "--probe", "1", "--json").stdout)
    est = probed["estimate"]
    assert est["from"] == "a 1-step probe now" and est["seconds_per_step"] > 0
    assert est["train_seconds"] == round(est["seconds_per_step"] * 6)
    assert (home / "tmp").is_dir() and not list((home / "tmp").glob("probe-*"))  # the probe's scratch is gone
    text = tuneops(home, "recipe", "validate", recipe).stdout
    assert "rows over max_length" in text and "3 (max_length 64" in text and "[[Answer 0.<|im_end|>]]" in text


def test_validate_refuses_impossible_combinations_before_a_model_loads(tmp_path, tiny_model_dir):
    rows = [{"messages": [{"role": "user", "content": f"Q {i}?"}, {"role": "assistant", "content": f"A {i}."}]}
            for i in range(4)]
    home, base = _env(tmp_path, tiny_model_dir, rows)
    cases = {
        "dpo": ({"objective": {"kind": "dpo"}}, "objective.kind dpo needs preference pairs"),
        "grpo": ({"objective": {"kind": "grpo"}}, "needs a reward"),
        "reward": ({"objective": {"kind": "grpo", "reward": "nosuchmodule:fn"}, "train": {"batch_size": 4}},
                   "reward.yaml: objective.reward: nosuchmodule:fn: no module named 'nosuchmodule'"),
        "full_r": ({"method": {"kind": "full", "r": 8}}, "`r` applies to method.kind lora / dora / qlora"),
        "template": ({"train": {"chat_template": "missing.jinja"}}, "no such template file"),
        "optimizer": ({"train": {"optimizer": "adamw_troch"}},
                      "unknown optimizer 'adamw_troch' (did you mean adamw_torch"),
        "loss_type": ({"objective": {"kind": "dpo", "loss_type": "sigmod"}},
                      "loss_type 'sigmod' is not a DPO loss tuneops can run"),
        "packing": ({"method": {"kind": "prefix"}, "objective": {"kind": "sft", "packing": True}},
                    "objective.packing: method.kind prefix prepends its virtual tokens to every sequence"),
        "teacher": ({"objective": {"kind": "distill", "teacher": "other"}},
                    "objective.teacher: other does not share the student's tokenizer"),
    }
    import torch

    if not torch.cuda.is_available():  # a paged optimizer needs CUDA: refused here, before a model loads
        cases["paged"] = ({"train": {"optimizer": "paged_adamw_8bit"}},
                          "train.optimizer: paged_adamw_8bit is a paged optimizer, which needs CUDA")
    # a teacher on another tokenizer (one token more): refused at validation for logit distillation
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_tokens(["<tuneops-extra-token>"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(tmp_path / "other")
    tok.save_pretrained(tmp_path / "other")
    tuneops(home, "models", "import", tmp_path / "other", "--name", "other")
    for name, (extra, msg) in cases.items():
        spec = {"name": "v", "base": base, "data": {"train": "t", "eval": "e"},
                "eval": {"suites": [{"use": "forgetting", "per_tag": 1}]}}
        for k, v in extra.items():
            spec[k] = {**spec.get(k, {}), **v}
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(yaml.safe_dump(spec))
        proc = tuneops(home, "recipe", "validate", recipe, check=False)
        assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
        assert msg in proc.stderr, (name, proc.stderr)
        assert "Traceback" not in proc.stderr
