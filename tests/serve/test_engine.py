"""BatchEngine on the tiny random Llama with real PEFT adapters: mixed batches match each adapter alone."""

import copy
import functools
import hashlib
import threading
import time
from pathlib import Path

import pytest
import torch

from tuneops.errors import IntegrityError
from tuneops.serve.protocol import GenRequest
from tuneops.store.schema import ArtifactRecord

PROMPTS = [
    "Extract the name: Alice lives in Paris.",
    "Hi",
    "Write one word about the sea, please, and nothing more than that word.",
    "2 + 2 =",
]


# -- fixtures and helpers --------------------------------------------------------------------------------

@functools.cache
def _loaded(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, tok


def load_tiny(model_dir: Path):
    """A fresh copy of the tiny base (loaded from disk once per session) and its tokenizer."""
    model, tok = _loaded(model_dir)
    return copy.deepcopy(model), tok


def make_adapter(out: Path, model_dir: Path, seed: int, *, kind: str = "lora", r: int = 4, alpha: int = 8,
                 targets=("q_proj", "v_proj"), **extra) -> Path:
    """A PEFT adapter saved to ``out`` with random (non-zero) weights, so it changes the outputs."""
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model

    base, _ = load_tiny(model_dir)
    if kind == "lora":
        config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets) if targets != "all-linear"
                            else "all-linear", lora_dropout=0.0, **extra)
    elif kind == "prefix":
        config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    elif kind == "prompt":
        config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    elif kind == "ia3":
        config = IA3Config(task_type="CAUSAL_LM", target_modules=["k_proj", "v_proj", "down_proj"],
                           feedforward_modules=["down_proj"])
    model = get_peft_model(base, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                noise = torch.randn(p.shape, generator=gen) * (0.6 if "lora" in name else 1.0)
                p.copy_(noise + (1.0 if kind == "ia3" else 0.0))   # IA3 scales: around 1
    model.save_pretrained(out)
    return out


def artifact_for(path: Path, name: str = "tiny") -> ArtifactRecord:
    """A transient artifact record whose id and tree are the hash of the adapter's files."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(path.iterdir()) if p.is_file())).hexdigest()
    return ArtifactRecord(id=f"ad-{digest[:16]}", kind="adapter", method="lora", tree=digest, base_id="base-tiny",
                          lineage={"name": name})


class Dirs:
    """adapter_dir for tests: the directory registered for an artifact, or the error it raises."""

    def __init__(self):
        self.paths: dict[str, Path] = {}
        self.errors: dict[str, Exception] = {}
        self.calls = 0

    def add(self, path: Path, name: str = "tiny") -> ArtifactRecord:
        art = artifact_for(path, name)
        self.paths[art.id] = path
        return art

    def __call__(self, artifact: ArtifactRecord) -> Path:
        self.calls += 1
        if artifact.id in self.errors:
            raise self.errors[artifact.id]
        return self.paths[artifact.id]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tiny(tiny_model_dir)[1]


@pytest.fixture(scope="module")
def prompts(tok):
    return [tok(p)["input_ids"] for p in PROMPTS]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    """Adapters of several shapes, built once for the module."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        "qv": make_adapter(root / "qv", tiny_model_dir, 1),
        "all": make_adapter(root / "all", tiny_model_dir, 2, r=8, alpha=16, targets="all-linear"),
        "rs": make_adapter(root / "rs", tiny_model_dir, 3, r=2, alpha=4, targets=("o_proj", "up_proj", "q_proj"),
                           use_rslora=True),
        "mlp": make_adapter(root / "mlp", tiny_model_dir, 4, r=4, alpha=4, targets=("gate_proj", "down_proj")),
        "dora": make_adapter(root / "dora", tiny_model_dir, 5, targets=("q_proj", "v_proj"), use_dora=True),
        "prefix": make_adapter(root / "prefix", tiny_model_dir, 6, kind="prefix"),
        "big": make_adapter(root / "big", tiny_model_dir, 7, r=16, alpha=16, targets=("q_proj",)),
        "prompt": make_adapter(root / "prompt", tiny_model_dir, 8, kind="prompt"),
        "ia3": make_adapter(root / "ia3", tiny_model_dir, 9, kind="ia3"),
    }


def reference(model_dir: Path, adapter: Path | None, prompt: list[int], max_new: int, tok) -> tuple[str, int]:
    """(text, completion tokens) of greedy decoding with plain PEFT, one unpadded prompt at a time."""
    return _reference(model_dir, adapter, tuple(prompt), max_new)


@functools.cache
def _reference(model_dir: Path, adapter: Path | None, prompt: tuple[int, ...], max_new: int) -> tuple[str, int]:
    from peft import PeftModel

    model, tok = load_tiny(model_dir)
    prompt = list(prompt)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).eval()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                             do_sample=False, temperature=None, top_p=None, top_k=None,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    new = out[0, len(prompt):].tolist()
    end = new.index(tok.eos_token_id) + 1 if tok.eos_token_id in new else len(new)
    return tok.decode(new[:end], skip_special_tokens=True).strip(), end


@pytest.fixture
def make_engine(tiny_model_dir):
    from tuneops.serve.engine import BatchEngine

    engines = []

    def make(dirs, **kwargs):
        model, tok = load_tiny(tiny_model_dir)
        kwargs.setdefault("batch_window_s", 0.3)
        engine = BatchEngine(model, tok, dirs, **kwargs)
        engines.append(engine)
        return engine

    yield make
    for e in engines:
        e.close()


def run_all(engine, requests, timeout=60):
    futures = [engine.submit(r) for r in requests]
    return [f.result(timeout=timeout) for f in futures]


# -- correctness: mixed batches ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["grouped", "gather"])
def test_mixed_batch_gives_each_adapter_its_own_tokens(make_engine, tiny_model_dir, adapters, prompts, tok, mode):
    dirs = Dirs()
    names = ["qv", "all", "rs", "mlp", None]
    arts = {n: dirs.add(adapters[n]) for n in names if n}
    engine = make_engine(dirs, lora_mode=mode)
    reqs = [GenRequest(artifact=arts.get(n), prompt_ids=prompts[i % len(prompts)], max_new_tokens=8)
            for i, n in enumerate(names)]
    results = run_all(engine, reqs)
    expected = [reference(tiny_model_dir, adapters[n] if n else None, prompts[i % len(prompts)], 8, tok)
                for i, n in enumerate(names)]
    # The adapters really change the answer (else this test could not fail).
    base_alone = [reference(tiny_model_dir, None, prompts[i % len(prompts)], 8, tok) for i in range(len(names))]
    assert sum(e != b for e, b in zip(expected, base_alone)) >= 3
    for res, exp, n in zip(results, expected, names):
        assert (res.choices[0].text, res.choices[0].completion_tokens) == exp, n
        assert res.path == ("base" if n is None else "batched")
        assert res.batch_size == len(names)   # all of them shared the forward passes
    stats = engine.stats()
    assert stats["resident"] == 4 and stats["misses"] == 4


def test_rows_joining_mid_generation_do_not_change_each_other(make_engine, tiny_model_dir, adapters, prompts, tok):
    """Continuous batching: a request that joins a running batch (its own KV, other padding) gets the same tokens."""
    dirs = Dirs()
    qv, all_ = dirs.add(adapters["qv"]), dirs.add(adapters["all"])
    engine = make_engine(dirs, batch_window_s=0.0)
    first_token = threading.Event()
    long = engine.submit(GenRequest(artifact=qv, prompt_ids=prompts[2], max_new_tokens=40,
                                    on_delta=lambda i, d: first_token.set()))
    assert first_token.wait(30)
    late = [engine.submit(GenRequest(artifact=a, prompt_ids=prompts[k], max_new_tokens=6))
            for k, a in ((1, all_), (3, None))]
    results = [f.result(timeout=60) for f in [long] + late]
    assert results[1].batch_size >= 2   # it did join the running batch
    assert (results[0].choices[0].text, results[0].choices[0].completion_tokens) == \
        reference(tiny_model_dir, adapters["qv"], prompts[2], 40, tok)
    assert (results[1].choices[0].text, results[1].choices[0].completion_tokens) == \
        reference(tiny_model_dir, adapters["all"], prompts[1], 6, tok)
    assert (results[2].choices[0].text, results[2].choices[0].completion_tokens) == \
        reference(tiny_model_dir, None, prompts[3], 6, tok)


def test_dora_and_prefix_take_the_peft_path_and_stay_correct(make_engine, tiny_model_dir, adapters, prompts, tok):
    dirs = Dirs()
    names = ["dora", "prefix", "qv", "big", "prompt", "ia3"]
    arts = [dirs.add(adapters[n]) for n in names]
    dora = arts[0]
    engine = make_engine(dirs, max_lora_rank=8)   # "big" is r=16: over the cap, so PEFT serves it
    reqs = [GenRequest(artifact=a, prompt_ids=prompts[i % len(prompts)], max_new_tokens=6) for i, a in enumerate(arts)]
    results = run_all(engine, reqs)
    assert [r.path for r in results] == ["peft", "peft", "batched", "peft", "peft", "peft"]
    for i, (res, name) in enumerate(zip(results, names)):
        assert (res.choices[0].text, res.choices[0].completion_tokens) == \
            reference(tiny_model_dir, adapters[name], prompts[i % len(prompts)], 6, tok), name
    # Once classified, the same adapter goes straight to the PEFT path (no second read of its files).
    again = engine.submit(GenRequest(artifact=dora, prompt_ids=prompts[0], max_new_tokens=6)).result(60)
    assert again.path == "peft" and again.choices[0].text == results[0].choices[0].text


# -- sampling, stop strings, streaming, interrupts ----------------------------------------------------------

def test_a_seed_gives_the_same_sample_whatever_the_batch(make_engine, adapters, prompts):
    dirs = Dirs()
    qv, all_ = dirs.add(adapters["qv"]), dirs.add(adapters["all"])
    engine = make_engine(dirs)

    def sampled(seed, n=1):
        return GenRequest(artifact=qv, prompt_ids=prompts[0], max_new_tokens=12, temperature=1.0, top_p=0.9,
                          seed=seed, n=n)

    alone = run_all(engine, [sampled(7, n=2)])[0]
    crowd = run_all(engine, [GenRequest(artifact=all_, prompt_ids=prompts[2], max_new_tokens=12, temperature=1.3,
                                        seed=1),
                             sampled(7, n=2),
                             GenRequest(artifact=None, prompt_ids=prompts[1], max_new_tokens=5)])[1]
    assert crowd.batch_size >= 3
    assert [c.text for c in crowd.choices] == [c.text for c in alone.choices]
    assert alone.choices[0].text != alone.choices[1].text          # n choices are different samples
    other = run_all(engine, [sampled(8)])[0]
    assert other.choices[0].text != alone.choices[0].text


def test_stop_strings_cut_the_text_and_streamed_deltas_add_up(make_engine, adapters, prompts):
    dirs = Dirs()
    qv = dirs.add(adapters["qv"])
    engine = make_engine(dirs)
    full = run_all(engine, [GenRequest(artifact=qv, prompt_ids=prompts[0], max_new_tokens=24)])[0].choices[0]
    assert len(full.text) > 12
    stop = full.text[8:11]
    assert stop.strip() and full.text.find(stop) == 8
    deltas: list[tuple[int, str]] = []
    res = run_all(engine, [GenRequest(artifact=qv, prompt_ids=prompts[0], max_new_tokens=24, stop=["zzz", stop],
                                      n=2, on_delta=lambda i, d: deltas.append((i, d)))])[0]
    for choice in res.choices:
        assert choice.text == full.text[:8].strip() and choice.finish_reason == "stop"
        assert choice.completion_tokens < full.completion_tokens
    for index in (0, 1):
        parts = [d for i, d in deltas if i == index]
        assert "".join(parts) == res.choices[index].text
        assert all(stop not in p for p in parts)
    # Without stop strings, streaming still adds up to the stripped final text.
    deltas.clear()
    res = run_all(engine, [GenRequest(artifact=qv, prompt_ids=prompts[0], max_new_tokens=24,
                                      on_delta=lambda i, d: deltas.append((i, d)))])[0]
    assert "".join(d for _, d in deltas) == res.choices[0].text == full.text
    assert len(deltas) > 3   # it streamed, not one final chunk


def test_cancel_and_deadline_end_generation_with_what_was_made(make_engine, adapters, prompts):
    dirs = Dirs()
    qv = dirs.add(adapters["qv"])
    engine = make_engine(dirs, batch_window_s=0.0)
    cancel = threading.Event()
    seen = []

    def on_delta(i, d):
        seen.append(d)
        if len(seen) >= 2:
            cancel.set()

    cancelled = engine.submit(GenRequest(artifact=qv, prompt_ids=prompts[0], max_new_tokens=200, cancel=cancel,
                                         on_delta=on_delta))
    # A slow client callback makes sure the deadline comes long before 300 tokens, even on a fast machine.
    timed = engine.submit(GenRequest(artifact=None, prompt_ids=prompts[1], max_new_tokens=300,
                                     deadline=time.monotonic() + 0.5, on_delta=lambda i, d: time.sleep(0.01)))
    already = engine.submit(GenRequest(artifact=None, prompt_ids=prompts[1], max_new_tokens=20,
                                       deadline=time.monotonic() - 1))
    c, t, a = (f.result(timeout=60).choices[0] for f in (cancelled, timed, already))
    assert (c.finish_reason, c.interrupted) == ("length", "cancelled") and 0 < c.completion_tokens < 200
    assert (t.finish_reason, t.interrupted) == ("length", "time_limit") and t.completion_tokens < 300
    assert (a.interrupted, a.completion_tokens, a.text) == ("time_limit", 0, "")


# -- failures and the adapter pool -------------------------------------------------------------------------

def test_a_bad_adapter_fails_only_its_request(make_engine, adapters, prompts, tmp_path):
    import shutil

    dirs = Dirs()
    good = dirs.add(adapters["qv"])
    tampered = dirs.add(adapters["all"], name="tampered")
    dirs.errors[tampered.id] = IntegrityError("artifact files changed")
    broken_dir = tmp_path / "broken"
    shutil.copytree(adapters["mlp"], broken_dir)
    (broken_dir / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    broken = dirs.add(broken_dir)
    engine = make_engine(dirs)
    futures = [engine.submit(GenRequest(artifact=a, prompt_ids=prompts[0], max_new_tokens=4))
               for a in (good, tampered, broken, None)]
    assert futures[0].result(60).choices[0].completion_tokens == 4
    with pytest.raises(IntegrityError, match="changed"):
        futures[1].result(60)
    with pytest.raises(IntegrityError, match="cannot be loaded"):
        futures[2].result(60)
    assert futures[3].result(60).path == "base"
    # ...and the engine keeps serving.
    again = engine.submit(GenRequest(artifact=good, prompt_ids=prompts[1], max_new_tokens=3)).result(60)
    assert again.path == "batched"
    assert engine.stats()["failed"] == 2


def test_lru_pool_evicts_least_recent_keeps_pinned_and_counts(make_engine, tiny_model_dir, adapters, prompts, tok):
    dirs = Dirs()
    a, b, c = (dirs.add(adapters[n]) for n in ("qv", "all", "rs"))
    engine = make_engine(dirs, max_resident=2, pinned=[a], batch_window_s=0.0)

    def ask(art):
        return engine.submit(GenRequest(artifact=art, prompt_ids=prompts[0], max_new_tokens=3)).result(60)

    deadline = time.monotonic() + 30
    while engine.stats()["resident"] < 1:   # the pinned adapter is prefetched
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert ask(a).cold_load_s is None        # resident: a hit
    assert ask(b).cold_load_s is not None    # a miss
    ask(c)                                   # evicts b (a is pinned)
    s = engine.stats()
    assert (s["resident"], s["evictions"], s["pinned"]) == (2, 1, 1)
    ask(b)                                   # b again: a miss, evicts c
    ask(a)
    s = engine.stats()
    assert (s["hits"], s["misses"], s["evictions"], s["loads"]) == (2, 3, 2, 4)
    assert s["load_s_p95"] is not None and s["adapter_bytes"] > 0
    # Reused slots carry no trace of the evicted adapter.
    res = engine.submit(GenRequest(artifact=b, prompt_ids=prompts[2], max_new_tokens=6)).result(60)
    assert (res.choices[0].text, res.choices[0].completion_tokens) == \
        reference(tiny_model_dir, adapters["all"], prompts[2], 6, tok)


def test_memory_budget_bounds_resident_adapters(make_engine, adapters, prompts):
    dirs = Dirs()
    arts = [dirs.add(adapters[n]) for n in ("qv", "mlp", "rs")]
    # The tiny adapters are a few KB each: a budget for about one of them.
    from tuneops.serve.multilora import read_lora_adapter

    engine = make_engine(dirs, batch_window_s=0.0)
    sizes = [read_lora_adapter(adapters[n], engine.wrapped, max_rank=64).nbytes for n in ("qv", "mlp", "rs")]
    engine.close()
    engine = make_engine(dirs, batch_window_s=0.0, memory_budget_bytes=max(sizes) + 1)
    for art in arts:
        engine.submit(GenRequest(artifact=art, prompt_ids=prompts[0], max_new_tokens=2)).result(60)
        assert engine.stats()["resident"] == 1
    assert engine.stats()["evictions"] == 2


def test_cache_is_keyed_by_content_never_by_name(make_engine, tiny_model_dir, adapters, prompts, tok, tmp_path):
    """Two artifacts named alike (an alias moved between them) with different files never share a slot."""
    dirs = Dirs()
    old = dirs.add(adapters["qv"], name="support-bot")
    new = dirs.add(make_adapter(tmp_path / "v2", tiny_model_dir, 99), name="support-bot")
    assert old.tree != new.tree and old.lineage == new.lineage
    engine = make_engine(dirs)
    r_old, r_new = run_all(engine, [GenRequest(artifact=x, prompt_ids=prompts[0], max_new_tokens=8)
                                    for x in (old, new)])
    assert r_old.choices[0].text == reference(tiny_model_dir, adapters["qv"], prompts[0], 8, tok)[0]
    assert r_new.choices[0].text == reference(tiny_model_dir, tmp_path / "v2", prompts[0], 8, tok)[0]
    assert r_old.choices[0].text != r_new.choices[0].text
    assert engine.stats()["resident"] == 2


def test_hot_requests_keep_running_while_a_cold_adapter_loads(make_engine, adapters, prompts, monkeypatch):
    """A cold adapter's files are read on a loader thread: requests for resident adapters do not wait for it."""
    import tuneops.serve.engine as engine_module

    dirs = Dirs()
    hot, cold = dirs.add(adapters["qv"]), dirs.add(adapters["all"])
    release = threading.Event()
    real_read = engine_module.read_lora_adapter

    def slow_read(path, *args, **kwargs):   # the real reader, held back for the cold adapter's directory
        if Path(path) == adapters["all"]:
            assert release.wait(60)
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(engine_module, "read_lora_adapter", slow_read)
    engine = make_engine(dirs, batch_window_s=0.0, max_cold_loads=1)
    engine.submit(GenRequest(artifact=hot, prompt_ids=prompts[0], max_new_tokens=2)).result(60)   # now resident
    waiting = engine.submit(GenRequest(artifact=cold, prompt_ids=prompts[0], max_new_tokens=2))
    hot_results = run_all(engine, [GenRequest(artifact=hot, prompt_ids=prompts[i], max_new_tokens=4) for i in range(3)])
    assert all(r.cold_load_s is None for r in hot_results) and not waiting.done()
    assert engine.stats()["loading"] == 1
    release.set()
    res = waiting.result(60)
    assert res.path == "batched" and res.cold_load_s is not None and res.cold_load_s > 0


# -- merge_hot -----------------------------------------------------------------------------------------------

def _wait_stat(engine, key, value, timeout=30):
    deadline = time.monotonic() + timeout
    while engine.stats()[key] != value:
        assert time.monotonic() < deadline, (key, engine.stats()[key])
        time.sleep(0.02)


def test_merge_hot_serves_a_dominant_adapter_merged_and_switches_back(make_engine, tiny_model_dir, adapters,
                                                                      prompts, tok):
    dirs = Dirs()
    hot, other = dirs.add(adapters["all"]), dirs.add(adapters["qv"])
    engine = make_engine(dirs, batch_window_s=0.0, merge_hot=True, merge_hot_window=6, merge_hot_share=0.8,
                         max_resident=2)

    def ask(art, i=0, n=6):
        return engine.submit(GenRequest(artifact=art, prompt_ids=prompts[i], max_new_tokens=n)).result(60)

    for _ in range(5):
        assert ask(hot).path == "batched"
    assert engine.stats()["merges"] == 0           # the window is not full yet
    ask(hot)
    _wait_stat(engine, "merges", 1)                # built on a loader thread, then switched
    s = engine.stats()
    assert s["merged_tree"] == hot.tree and s["merged_bytes"] > 0
    assert s["last_switch"]["action"] == "merge" and "100%" in s["last_switch"]["why"]
    # Mixed traffic while merged: every row still gets its own adapter's tokens.
    names = [("all", hot), ("qv", other), (None, None), ("all", hot)]
    results = run_all(engine, [GenRequest(artifact=a, prompt_ids=prompts[i], max_new_tokens=8)
                               for i, (_, a) in enumerate(names)])
    for i, ((n, _), res) in enumerate(zip(names, results)):
        assert (res.choices[0].text, res.choices[0].completion_tokens) == \
            reference(tiny_model_dir, adapters[n] if n else None, prompts[i], 8, tok), n
        assert res.path == {"all": "merged", "qv": "batched", None: "base"}[n]
    # The merged adapter is held: a full pool evicts around it.
    ask(dirs.add(adapters["rs"]))
    assert hot.tree in engine.stats()["resident_trees"]
    # Traffic moves to the other adapter: the first merge is dropped, and the new dominant one merged.
    for _ in range(6):
        ask(other)
    _wait_stat(engine, "unmerges", 1)
    _wait_stat(engine, "merges", 2)
    s = engine.stats()
    assert s["merged_tree"] == other.tree and s["last_switch"]["action"] == "merge"
    assert s["path_merged"] >= 2
    assert (ask(hot, 2, 8).choices[0].text, ask(hot, 2, 8).path) == \
        (reference(tiny_model_dir, adapters["all"], prompts[2], 8, tok)[0], "batched")


def test_merge_hot_stays_batched_when_the_merged_copy_does_not_fit(make_engine, adapters, prompts):
    dirs = Dirs()
    hot = dirs.add(adapters["qv"])
    engine = make_engine(dirs, batch_window_s=0.0, merge_hot=True, merge_hot_window=3, merge_hot_max_bytes=16)
    for _ in range(4):
        res = engine.submit(GenRequest(artifact=hot, prompt_ids=prompts[0], max_new_tokens=2)).result(60)
        assert res.path == "batched"
    s = engine.stats()
    assert s["merge_refusals"] == 1 and s["merges"] == 0 and s["merged_tree"] is None


def test_invalidating_the_merged_adapter_unmerges_and_evicts_it(make_engine, adapters, prompts):
    dirs = Dirs()
    hot = dirs.add(adapters["mlp"])
    engine = make_engine(dirs, batch_window_s=0.0, merge_hot=True, merge_hot_window=2)
    for _ in range(2):
        engine.submit(GenRequest(artifact=hot, prompt_ids=prompts[0], max_new_tokens=2)).result(60)
    _wait_stat(engine, "merges", 1)
    engine.evict(hot.tree)
    _wait_stat(engine, "resident", 0)
    s = engine.stats()
    assert s["unmerges"] == 1 and s["merged_tree"] is None and "invalidated" in s["last_switch"]["why"]
