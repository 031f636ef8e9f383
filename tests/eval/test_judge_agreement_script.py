"""benchmarks/judge_agreement.py: the shipped labelled sample is what its builder makes, and the script
runs end to end (a tiny random model as judge, a handful of items; the real run uses SmolLM2)."""

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tuneops.eval.scorers import get_scorer, parse_params

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "judge_agreement.py"
DATA = ROOT / "benchmarks" / "data" / "judge_labelled.jsonl"


def _script():
    spec = importlib.util.spec_from_file_location("judge_agreement", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_labelled_sample_is_balanced_and_labelled_by_construction():
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    assert rows == _script().build_labelled()  # the shipped file is exactly what --build-data writes
    assert len(rows) == 60 and Counter(r["label"] for r in rows) == {"pass": 30, "fail": 30}
    assert Counter(r["category"] for r in rows) == {c: 12 for c in _script().CATEGORIES}
    assert all(Counter(r["label"] for r in rows if r["category"] == c) == {"pass": 6, "fail": 6}
               for c in _script().CATEGORIES)
    assert len({r["question"] for r in rows}) == 60
    forgetting = {json.loads(line)["question"]: json.loads(line) for line in
                  (ROOT / "src/tuneops/eval/builtin/forgetting.jsonl").read_text(encoding="utf-8").splitlines()}
    spec = get_scorer("contains")
    params = parse_params(spec, {"field": "answers", "whole_word": True}, "forgetting")
    for r in rows:
        item = forgetting[r["question"]]
        assert r["reference"] == " or ".join(item["answers"])
        # the forgetting suite's own scorer agrees with every label
        assert spec.score(r["reply"], item, params)["contains"] == float(r["label"] == "pass"), r
    assert [r["label"] for r in rows[:4]] == ["pass", "fail", "pass", "fail"]  # --limit 4 sees both


def test_the_script_runs_with_a_tiny_judge(tiny_model_dir, tmp_path):
    out = tmp_path / "agreement.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--judge-model", str(tiny_model_dir), "--limit", "4",
                           "--threads", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    assert got["n"] == 4 and 0 <= got["parsed"] <= 4 and got["parse_rate"] == round(got["parsed"] / 4, 4)
    assert got["human_positive_rate"] in (None, 0.5) or 0 <= got["human_positive_rate"] <= 1
    assert 0 <= got["agreement_unparsed_as_fail"] <= 1 and got["label_positive_rate_all"] == 0.5
    assert got["judge_positive_rate_all"] == round(sum(i["verdict"] == "pass" for i in got["items"]) / 4, 4)
    if got["parsed"]:
        assert 0 <= got["agreement"] <= 1
    else:  # a random model rarely says PASS or FAIL: nothing to agree on
        assert got["agreement"] is None and got["kappa"] is None
    assert got["judge"]["model"] == str(tiny_model_dir) and got["judge"]["base_id"].startswith("base-")
    assert got["scale"] == "pass_fail" and got["rubric"]
    assert len(got["items"]) == 4 and all(isinstance(i["judge_reply"], str) for i in got["items"])
    assert sum(got["confusion"].values()) == 4 and set(got["per_category"]) <= set(_script().CATEGORIES)
    assert {"platform", "cpus", "torch", "threads"} <= set(got["machine"]) and got["machine"]["threads"] == 1
    assert got["command"].startswith("python benchmarks/judge_agreement.py --judge-model ")
    assert "--limit 4" in got["command"]
