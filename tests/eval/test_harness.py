"""The lm-evaluation-harness bridge on the tiny random Llama: a local task YAML, both sides, a stored report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuneops.errors import InvalidInput
from tuneops.pipeline import run_harness
from tuneops.eval.paired import load_full_report
from tuneops.store.ids import sha256_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "harness"
MC_TASK = EXAMPLES / "arith_mc.yaml"
GEN_TASK = EXAMPLES / "arith_gen.yaml"


def _adapter(tiny_model_dir, out: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) A and B, so it really changes the model's answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    peft.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def env(tiny_model_dir, tmp_path_factory):
    """A store (also a CLI home) with the tiny base and two adapters registered on it."""
    from tuneops.models.base import import_local
    from tuneops.release.registry import register_adapter
    from tuneops.store import Store

    root = tmp_path_factory.mktemp("harness")
    store = Store(root / "home")
    base, _ = import_local(store, tiny_model_dir, name="tiny-llama")
    arts = []
    for seed in (1, 2):
        d = _adapter(tiny_model_dir, root / f"adapter{seed}", seed)
        art, _ = register_adapter(store, d, base_id=base.id, method="lora", run_id=None, dataset_ids=[],
                                  recipe_hash=None)
        arts.append(art)
    yield store, base, arts[0], arts[1]
    store.engine.dispose()


def test_example_task_runs_on_both_sides_and_is_stored_as_a_report(env):
    import lm_eval

    store, base, art, _ = env
    rec, result = run_harness(store, art.id, task_yaml=MC_TASK, batch_size=16)  # baseline None: its own base
    assert rec.id.startswith("ev-") and rec.artifact_id == art.id and rec.baseline == base.id
    assert rec.suites == ["harness:tuneops_arith_mc"] and not rec.passed  # no gates: a report never passes alone
    assert set(rec.metrics) == {"tuneops_arith_mc.acc", "tuneops_arith_mc.acc_norm"}
    acc = rec.metrics["tuneops_arith_mc.acc"]
    assert acc["n"] == 20 and acc["aggregation"] == "mean" and "mcnemar" in acc and len(acc["ci95_delta"]) == 2
    # tuneops' paired means agree with lm-eval's own aggregate on each side
    assert acc["base"] == pytest.approx(acc["lm_eval"]["base"], abs=1e-4)
    assert acc["candidate"] == pytest.approx(acc["lm_eval"]["candidate"], abs=1e-4)
    assert acc["delta"] == pytest.approx(acc["candidate"] - acc["base"], abs=1e-3)
    assert result["per_item"]["tuneops_arith_mc.acc"][0] and len(result["per_item"]["tuneops_arith_mc.acc"][1]) == 20

    full = load_full_report(store, store.get_eval_report(rec.id))
    (suite,) = full["suites"]
    h = suite["harness"]
    assert h["lm_eval_version"] == lm_eval.__version__ and len(h["config_sha256"]) == 64 == len(suite["sha256"])
    assert h["data_files"] == [{"split": "test", "path": str((EXAMPLES / "arith.jsonl").resolve()),
                                "sha256": sha256_file(EXAMPLES / "arith.jsonl")}]
    assert h["yaml_sha256"] == sha256_file(MC_TASK) and h["prompts_identical"] and h["unmatched_samples"] == 0
    assert h["sides"] == {"base": base.id, "candidate": art.id}
    assert "cache_dir" not in h["task_config"]["dataset_kwargs"]
    items = full["items"]["tuneops_arith_mc"]
    assert len(items) == 20 and [it["index"] for it in items] == list(range(20))
    first = items[0]
    assert first["prompt"] == "Question: What is 12 + 4?\nAnswer:" and first["target"] == 3
    assert first["base"] in first["doc"]["choices"] and first["candidate"] in first["doc"]["choices"]
    assert set(first["candidate_scores"]) == {"tuneops_arith_mc.acc", "tuneops_arith_mc.acc_norm"}
    assert len(first["base_filtered"]) == 4 and len(first["candidate_filtered"][0]) == 2  # (loglik, greedy) per choice
    # the adapter is really on for one side and off for the other
    assert any(it["base_filtered"] != it["candidate_filtered"] for it in items)


def test_generate_until_task_against_another_artifact(env):
    store, _, art, other = env
    rec, _ = run_harness(store, art.id, task_yaml=GEN_TASK, baseline=other.id, limit=2)
    assert rec.baseline == other.id
    m = rec.metrics["tuneops_arith_gen.exact_match.first-number"]
    assert m["n"] == 2 and m["higher_is_better"] is True
    full = load_full_report(store, store.get_eval_report(rec.id))
    assert full["suites"][0]["decoding"]["max_new_tokens"] == 8 and full["suites"][0]["harness"]["limit"] == 2
    items = full["items"]["tuneops_arith_gen"]
    assert len(items) == 2 and all(it["filter"] == "first-number" for it in items)
    assert isinstance(items[0]["candidate_resps"][0][0], str)  # the raw generation is kept
    assert items[0]["target"] == "16"


BAD_TASKS = {
    "yaml": ("task: t\ndataset_path: json\n  oops: [\n", ":3: not valid YAML"),
    "no_task": ("dataset_path: json\ndataset_kwargs: {data_files: {test: arith.jsonl}}\n", "no `task:` name"),
    "hub": ("task: t\ndataset_path: openai/gsm8k\ntest_split: test\n", "Hugging Face hub dataset"),
    "missing_data": ("task: t\ndataset_path: json\ndataset_kwargs: {data_files: {test: nope.jsonl}}\ntest_split: test\n",
                     "nope.jsonl: no such file"),
    "bad_field": ("task: t\ndataset_path: json\ndataset_kwargs: {data_files: {test: arith.jsonl}}\ntest_split: test\n"
                  "doc_to_text: '{{quesstion}}'\ndoc_to_target: answer_text\n", "names a field the documents lack: 'quesstion'"),
    "hub_metric": ("task: t\ndataset_path: json\ndataset_kwargs: {data_files: {test: arith.jsonl}}\ntest_split: test\n"
                   "doc_to_text: '{{question}}'\ndoc_to_target: answer_text\nmetric_list: [{metric: squad_v2}]\n",
                   "'squad_v2' is not an lm-eval metric"),
    "unknown_key": ("task: t\ndataset_path: json\ndataset_kwargs: {data_files: {test: arith.jsonl}}\ntest_split: test\n"
                    "doc_to_text: '{{question}}'\ndoc_to_target: answer_text\nnum_fewshots: 2\n",
                    "unknown key 'num_fewshots'"),
    "group": ("group: g\ntask: [a, b]\n", "defines a group"),
}


@pytest.mark.parametrize("case", sorted(BAD_TASKS))
def test_a_bad_task_file_is_invalid_input_naming_the_file_before_any_model_loads(env, tmp_path, monkeypatch, case):
    import shutil

    import tuneops.models.base

    store, _, art, _ = env
    text, expected = BAD_TASKS[case]
    shutil.copy(EXAMPLES / "arith.jsonl", tmp_path / "arith.jsonl")
    task = tmp_path / f"{case}.yaml"
    task.write_text(text)
    monkeypatch.setattr(tuneops.models.base, "load_base", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(InvalidInput) as e:
        run_harness(store, art.id, task_yaml=task)
    assert str(task) in e.value.message and expected in e.value.message and e.value.hint
    assert "\n" not in e.value.message


def test_a_task_name_instead_of_a_file_says_local_yaml_only(env):
    store, _, art, _ = env
    with pytest.raises(InvalidInput, match="hellaswag: no such task file; tuneops runs lm-eval tasks from local YAML"):
        run_harness(store, art.id, task_yaml="hellaswag")


def test_cli_runs_the_task_and_prints_the_report_id(env, monkeypatch, capsys):
    from tuneops.cli.main import run_cli

    store, _, art, _ = env
    monkeypatch.setenv("TUNEOPS_HOME", str(store.home))
    from tuneops.cli import render

    monkeypatch.setattr(render.console, "width", 400)  # COLUMNS is ignored when TERM=dumb (CI)
    assert run_cli(["eval", "harness", art.id, "--task", str(MC_TASK), "--limit", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["id"].startswith("ev-") and out["baseline"] == art.base_id and out["metrics"]["tuneops_arith_mc.acc"]["n"] == 3
    assert out["harness"]["lm_eval_version"] and out["harness"]["config_sha256"]
    assert run_cli(["eval", "harness", art.id, "--task", str(MC_TASK), "--limit", "3"]) == 0  # same run: same report
    table = capsys.readouterr().out
    assert f"report {out['id']}" in table and "tuneops_arith_mc.acc" in table
    assert run_cli(["eval", "list", "--json"]) == 0
    assert out["id"] in {r["id"] for r in json.loads(capsys.readouterr().out)}
    assert run_cli(["eval", "show", out["id"], "--items", "2"]) == 0
    assert "What is 12 + 4?" in capsys.readouterr().out


def test_cli_bad_task_exits_2_with_one_error_line(env, tmp_path):
    store, _, art, _ = env
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: t\ndataset_path: gsm8k\n")
    proc = subprocess.run([sys.executable, "-m", "tuneops.cli.main", "eval", "harness", art.id, "--task", str(bad)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TUNEOPS_HOME": str(store.home), "COLUMNS": "300"})
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith(f"error: {bad}: dataset_path: gsm8k is a Hugging Face hub dataset")
    assert len(lines) == 2 and lines[1].startswith("  fix:")
