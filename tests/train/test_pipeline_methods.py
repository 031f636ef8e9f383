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


def _quick(base_id: str, **overrides):
    spec = dict(target=None, gates=[], eval={"suites": [{"use": "forgetting", "per_tag": 1}], "max_new_tokens": 4,
                                             "batch_size": 8},
                train={"max_steps": 2, "batch_size": 4, "learning_rate": 1e-2, "warmup_ratio": 0.0, "threads": 2})
    return tiny_recipe(base_id, **(spec | overrides))


def test_rlhf_and_distillation_from_registered_artifacts(tiny_env, monkeypatch):
    """The learned-reward path and artifact teachers, through run_recipe: a reward model trained on preference
    pairs scores GRPO's completions (`objective.reward: ad-…`); an adapter artifact and a full fine-tune artifact
    each teach a student (`objective.teacher: ad-…`); the lineage names each. An SFT adapter is refused as a
    reward model before anything loads."""
    import pytest

    import tuneops.pipeline as pipeline
    from tuneops.data.ingest import ingest_rows
    from tuneops.errors import InvalidInput

    store, base = tiny_env
    pairs = [{"prompt": [{"role": "user", "content": f"Is {w} a colour?"}],
              "chosen": [{"role": "assistant", "content": f"Yes, {w} is a colour."}],
              "rejected": [{"role": "assistant", "content": f"No, {w} is a number."}]}
             for w in ["red", "blue", "green", "pink", "grey", "gold", "teal", "navy"]]
    pairs = [p | {"license": "MIT", "source": "tests"} for p in pairs]
    ingest_rows(store, pairs, name="tiny-pairs", kind="preference")
    rm = run_recipe(store, _quick(base.id, objective={"kind": "reward"}, data={"train": "tiny-pairs",
                                                                              "eval": "tiny-eval"})).artifact
    assert rm.lineage["objective"] == "reward"

    scored = []
    real = pipeline.reward_model_fn

    def spy(store_, art):
        fn = real(store_, art)

        def reward(prompts, completions, **kw):
            out = fn(prompts, completions, **kw)
            scored.append(out)
            return out
        return reward

    monkeypatch.setattr(pipeline, "reward_model_fn", spy)
    grpo = run_recipe(store, _quick(base.id, objective={"kind": "grpo", "reward": rm.id, "num_generations": 2,
                                                        "max_completion_length": 4}))
    monkeypatch.setattr(pipeline, "reward_model_fn", real)
    assert grpo.run.state == "succeeded" and grpo.artifact.lineage["objective"] == "grpo"
    # every completion was scored by the reward model: real-valued scores, not a verifier's 0/1
    assert scored and all(len(batch) == 4 for batch in scored)
    assert len({round(x, 6) for batch in scored for x in batch}) > 2
    ev = store.run_events(grpo.run.id, "artifact")[-1].payload
    assert all(e.get("reward") is not None for e in ev.get("losses", [])) or ev["steps"] == 2

    with pytest.raises(InvalidInput, match=r"objective\.reward: .* is not a reward model \(trained with objective"
                                           r"\.kind grpo\)"):
        run_recipe(store, _quick(base.id, objective={"kind": "grpo", "reward": grpo.artifact.id,
                                                     "num_generations": 2}))

    full = run_recipe(store, _quick(base.id, method={"kind": "full"},
                                    train={"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3,
                                           "warmup_ratio": 0.0, "threads": 2})).artifact
    assert full.kind == "model"
    # (logit mode: a random tiny model's greedy replies are often empty, which response mode rightly refuses)
    loaded = []
    import tuneops.train.distill as distill

    real_load = distill.load_teacher

    def spy_load(**kw):
        model, tok = real_load(**kw)
        loaded.append((kw, model, tok))
        return model, tok

    monkeypatch.setattr(distill, "load_teacher", spy_load)
    runs = []
    for teacher in (grpo.artifact, full):
        out = run_recipe(store, _quick(base.id, objective={"kind": "distill", "teacher": teacher.id}))
        assert out.run.state == "succeeded", teacher.kind
        assert out.artifact.lineage["teacher"] == {"ref": teacher.id, "artifact": teacher.id, "base": base.id}
        runs.append(out.run.id)
    # each run recorded an estimate before its first step: the first distillation on this base has no
    # measured throughput to time it, so its own first steps time it (a second, timed estimate); the second
    # run is timed up front from the first (same base, method, objective)
    first, timed = (e.payload for e in store.run_events(runs[0], "estimate"))
    assert first["steps"] == 2 and first["planned_tokens"] > 0 and "train_seconds" not in first
    assert timed["from"] == "steps 2-2 of this run" and timed["seconds_per_step"] > 0
    assert abs(timed["train_seconds"] - timed["seconds_per_step"] * 2) <= 1
    (second,) = (e.payload for e in store.run_events(runs[1], "estimate"))
    assert second["steps"] == 2
    measured = store.run_events(runs[0], "artifact")[-1].payload["tokens_per_s"]
    assert second["from"] == f"run {runs[0]}" and second["tokens_per_s"] == measured
    assert second["train_seconds"] == round(second["planned_tokens"] / measured)
    (adapter_kw, _, _), (full_kw, full_model, full_tok) = loaded
    assert adapter_kw["teacher_adapter"] is not None and full_kw["teacher_adapter"] is None
    assert full_tok is not None  # a full fine-tune's folder holds weights only: the tokenizer is its base's
    from tuneops.release.registry import artifact_dir
    from safetensors.torch import load_file
    import torch

    saved = load_file(str(artifact_dir(store, full) / "model.safetensors"))
    name = next(k for k in saved if k.endswith("layers.0.mlp.down_proj.weight"))
    assert torch.equal(full_model.state_dict()[name], saved[name])  # the teacher is the fine-tuned model


def test_chat_template_override_is_trained_recorded_shipped_and_evaluated(tiny_env, tmp_path):
    """train.chat_template: the override (here: a policy tag on every system turn) is what training renders, its
    sha256 is on the run's preflight and artifact events and in the lineage, it ships inside the artifact, and
    the paired eval prompts with it."""
    import hashlib

    from transformers import AutoTokenizer

    from tuneops.models.base import base_dir
    from tuneops.release.registry import artifact_dir

    store, base = tiny_env
    tok = AutoTokenizer.from_pretrained(base_dir(store, base))
    plain = "message['content'] + '<|im_end|>'"
    assert plain in tok.chat_template
    tpl = tok.chat_template.replace(plain, "(('[policy v2] ' + message['content']) if message['role'] == 'system' "
                                           "else message['content']) + '<|im_end|>'")
    f = tmp_path / "override.jinja"
    f.write_text(tpl)
    sha = hashlib.sha256(tpl.encode()).hexdigest()
    out = run_recipe(store, _quick(base.id, train={"max_steps": 1, "batch_size": 4, "learning_rate": 1e-2,
                                                   "warmup_ratio": 0.0, "threads": 2, "chat_template": str(f)}))
    pf = store.run_events(out.run.id, "preflight")[-1].payload
    assert pf["example"].startswith("<|im_start|>system\n[policy v2] Extract"), pf["example"][:80]
    assert pf["template_sha256"] == sha != hashlib.sha256(tok.chat_template.encode()).hexdigest()
    assert store.run_events(out.run.id, "artifact")[-1].payload["template_sha256"] == sha
    assert out.artifact.lineage["template_sha256"] == sha
    assert (artifact_dir(store, out.artifact) / "chat_template.jinja").read_text() == tpl
    _, eval_tok, _ = load_paired(store, out.artifact, None)
    assert eval_tok.chat_template == tpl
    assert (store.home / "runs" / out.run.id / "loss.png").stat().st_size > 1000  # the loss curve, plotted


def test_early_stopping_allows_a_drop_of_exactly_max_drop(tiny_env, monkeypatch):
    """max_drop 0.05 on a 40-item suite allows losing 2 items (1.0 -> 0.95); in floats 1.0 - 0.95 is
    0.05000000000000004, which used to stop the run. Losing a third item (0.925) still stops it."""
    import tuneops.eval.paired as paired
    from tuneops.pipeline import early_stop_check, plan_training

    scores = iter([1.0, 0.95, 0.925])
    monkeypatch.setattr(paired, "score_model", lambda model, tok, suite, **kw: {
        m: next(scores) for m in suite.metric_names()})
    store, base = tiny_env
    recipe = tiny_recipe(base.id, train={"max_steps": 4, "batch_size": 4, "threads": 2,
                                         "early_stopping": {"suite": "forgetting", "every": 1, "max_drop": 0.05}})
    stop = early_stop_check(store, recipe, plan_training(store, recipe, base))
    assert stop.check(None, 0) is None  # step 0: the reference value
    assert stop.check(None, 1) is None  # 1.0 -> 0.95: exactly max_drop, within bounds
    assert "moved from 1.000 to 0.925" in stop.check(None, 2)
