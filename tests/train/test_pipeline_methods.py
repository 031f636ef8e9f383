"""Methods and controls through the whole chain (train -> register -> paired eval) on the tiny model."""

from tests.conftest import tiny_recipe
from tuneops.pipeline import load_paired, run_recipe


def test_full_fine_tune_registers_a_model_artifact_and_evaluates_paired(tiny_env):
    """A full fine-tune is a whole model: registered as kind `model`, and the paired eval swaps its weights in
    and the base's back on one model, so base and candidate really differ."""
    import torch

    store, base = tiny_env
    recipe = tiny_recipe(base.id, method={"kind": "full"}, target=None, gates=[],
                         train={"max_steps": 3, "batch_size": 4, "learning_rate": 1e-3, "warmup_ratio": 0.0,
                                "threads": 2})
    out = run_recipe(store, recipe)
    art = out.artifact
    assert out.run.state == "succeeded" and art.kind == "model" and art.method == "full"
    assert set(art.lineage["files"]) == {"config.json", "generation_config.json", "model.safetensors"}
    assert art.lineage["objective"] == "sft" and len(art.lineage["template_sha256"]) == 64
    ev = store.run_events(out.run.id, "artifact")[-1].payload
    assert ev["trainable_parameters"] == ev["total_parameters"] > 0 and ev["tokens_per_s"] > 0
    assert ev["peak_memory_mb"] > 0 and ev["artifact_bytes"] > 0
    pf = store.run_events(out.run.id, "preflight")[-1].payload
    assert pf["rows"] == 16 and "[[" in pf["example"]
    model, tok, sides = load_paired(store, art, None)
    ids = torch.tensor([tok.encode("hello there")])
    with torch.no_grad():
        with sides["base"]():
            a = model(input_ids=ids).logits
        with sides["candidate"]():
            b = model(input_ids=ids).logits
        with sides["base"]():
            c = model(input_ids=ids).logits
    assert not torch.allclose(a, b) and torch.equal(a, c)


def _key(name: str) -> str:
    """A trainable parameter's name as PEFT saves it (no adapter name, DoRA's magnitude without .weight)."""
    return name.replace(".default", "").removesuffix(".weight")


def test_dora_with_replay_and_early_stopping(tiny_env, monkeypatch):
    """Forgetting controls reach training: replay rows are mixed in (and recorded in lineage), and the off-domain
    suite, scored at step 0 and every step, stops the run once it falls more than max_drop. (A random tiny model
    scores 0 on every suite, so the score is scripted here: 1.0 at step 0, then 0.1 lower per check.)"""
    import tuneops.eval.paired as paired

    calls = []

    def scripted(model, tokenizer, suite, **kw):
        assert not model.training and suite.name == "forgetting" and len(suite.items) == 4
        calls.append({_key(n): p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        return {m: 1.0 - 0.1 * (len(calls) - 1) for m in suite.metric_names()}

    monkeypatch.setattr(paired, "score_model", scripted)
    store, base = tiny_env
    recipe = tiny_recipe(base.id, method={"kind": "dora", "r": 4}, target=None, gates=[],
                         train={"max_steps": 6, "batch_size": 4, "learning_rate": 0.3, "warmup_ratio": 0.0,
                                "threads": 2, "replay": {"dataset": "tiny-eval", "ratio": 0.5},
                                "early_stopping": {"suite": "forgetting", "every": 1, "max_drop": 0.15,
                                                   "max_items": 4}})
    out = run_recipe(store, recipe)
    assert out.run.state == "succeeded" and out.artifact.method == "dora"
    assert out.artifact.lineage["replay_dataset"] == store.resolve_dataset("tiny-eval").id
    ev = store.run_events(out.run.id, "artifact")[-1].payload
    steps = ev["steps"]
    # step 0: 1.0; step 1: 0.9 (drop 0.1, fine); step 2: 0.8 (drop 0.2 > 0.15): stop
    assert steps == 2 and ev["stopped_early"].startswith("early stop at step 2: forgetting."), ev
    assert len(calls) == 3
    # restore_best (the default): the artifact holds the weights of step 1, the last check within max_drop.
    assert ev["stopped_early"].endswith("weights restored to step 1, the last check within bounds")
    import torch
    from safetensors.torch import load_file

    saved = {_key(k): v for k, v in
             load_file(str(store.blobs.tree_path(out.artifact.tree) / "adapter_model.safetensors")).items()}
    assert saved and set(saved) <= set(calls[1])
    step1, step2 = calls[1], calls[2]
    assert all(torch.equal(saved[k], step1[k]) for k in saved)
    assert any(not torch.equal(saved[k], step2[k]) for k in saved)   # step 2 had moved on
