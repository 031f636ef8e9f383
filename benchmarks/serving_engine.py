"""BatchEngine throughput on the embedded SmolLM2, in process: mixed LoRA adapters in one batch.

    .venv/bin/python benchmarks/serving_engine.py [--repeats 3] [--new-tokens 32] [--home STORE]

Configurations, measured round-robin in the same run (each repeat runs every configuration once,
so a change of machine load hits all of them alike); medians are reported:

- plain_generate_batch8: ``model.generate`` on the bare base, 8 prompts, left-padded (the target's yardstick)
- engine_base: the engine, 8 concurrent requests with no adapter
- engine_1_adapter: 8 concurrent requests for one r=16 adapter (q,k,v,o,gate,up,down)
- engine_8_mixed: 8 concurrent requests, 8 different adapters
- engine_32_mixed: 32 requests for 32 different adapters, at most 8 in flight (max_batch=8)
- peft_1_adapter / peft_8_mixed: PEFT's own generate, one adapter / ``adapter_names=`` with 8

Cold load: an r=16 adapter that is not resident, from submit to its slot being filled (files read on a
loader thread), p50/p95 over ``--cold`` adapters. Writes benchmarks/results/serving_engine.json.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works, step by step.",
    "Describe your ideal weekend in detail.",
    "Write a poem about the autumn forest.",
    "Tell me about the history of the printing press.",
    "Give me ten tips for learning a new language.",
    "Describe the water cycle to a ten year old.",
    "Write a letter to a friend you have not seen in years.",
]


def make_adapters(model_dir: Path, out: Path, count: int, r: int = 16) -> list[Path]:
    """``count`` r=16 LoRA adapters on all attention and MLP projections, with random trained-like weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, lora_dropout=0.0))
    paths = []
    for k in range(count):
        gen = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * (0.02 if "lora_A" in name else 0.01))
        path = out / f"adapter-{k:03d}"
        model.save_pretrained(path)
        paths.append(path)
    return paths


class Art:
    """Just what the engine reads off an artifact record: its id and content hash."""

    def __init__(self, path: Path):
        import hashlib

        self.path = path
        self.tree = hashlib.sha256((path / "adapter_model.safetensors").read_bytes()).hexdigest()
        self.id = "ad-" + self.tree[:16]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--cold", type=int, default=20, help="cold loads to time")
    ap.add_argument("--home", type=Path, default=None, help="store holding the imported base (default: a temp one)")
    args = ap.parse_args()

    import torch
    from peft import PeftModel

    from tuneops.eval.generate import encode_chat
    from tuneops.models.base import base_dir, import_embedded, load_base
    from tuneops.serve.engine import BatchEngine
    from tuneops.serve.protocol import GenRequest
    from tuneops.store import Store

    load_start = os.getloadavg()
    store = Store(args.home or Path(tempfile.mkdtemp()) / "store")
    base, _ = import_embedded(store)
    model_dir = base_dir(store, base)
    scratch = Path(tempfile.mkdtemp(prefix="serving-engine-"))
    n_adapters = 32 + args.cold
    t0 = time.perf_counter()
    paths = make_adapters(model_dir, scratch, n_adapters)
    print(f"made {n_adapters} adapters in {time.perf_counter() - t0:.1f}s", flush=True)
    arts = [Art(p) for p in paths]
    hot, cold = arts[:32], arts[32:]

    plain, tok = load_base(store, base)
    prompts = [encode_chat(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
    new = args.new_tokens

    # PEFT's own mixed batches: 8 adapters attached to a second copy of the base.
    peft_base, _ = load_base(store, base)
    peft = PeftModel.from_pretrained(peft_base, hot[0].path, adapter_name="a0")
    for k in range(1, 8):
        peft.load_adapter(hot[k].path, adapter_name=f"a{k}")
    peft.eval()

    engine_model, _ = load_base(store, base)
    engine = BatchEngine(engine_model, tok, lambda a: a.path, max_batch=8, max_resident=64)

    def padded():
        return tok.pad({"input_ids": prompts}, padding=True, padding_side="left", return_tensors="pt")

    def hf_generate(model, **extra) -> int:
        enc = padded()
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=tok.pad_token_id, **extra)
        return (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]

    def engine_run(artifacts) -> int:
        futures = [engine.submit(GenRequest(artifact=a, prompt_ids=prompts[i % 8], max_new_tokens=new))
                   for i, a in enumerate(artifacts)]
        return sum(c.completion_tokens for f in futures for c in f.result(timeout=1800).choices)

    configs = {
        "plain_generate_batch8": lambda: hf_generate(plain),
        "engine_base": lambda: engine_run([None] * 8),
        "engine_1_adapter": lambda: engine_run([hot[0]] * 8),
        "engine_8_mixed": lambda: engine_run(hot[:8]),
        "engine_32_mixed": lambda: engine_run(hot),
        "peft_1_adapter": lambda: (peft.set_adapter("a0"), hf_generate(peft))[1],
        "peft_8_mixed": lambda: hf_generate(peft, adapter_names=[f"a{k}" for k in range(8)]),
    }
    # Warm-up: load every hot adapter into the pool, and touch each path once.
    engine_run(hot)
    for fn in (configs["plain_generate_batch8"], configs["peft_8_mixed"]):
        fn()
    samples: dict[str, list[float]] = {name: [] for name in configs}
    tokens: dict[str, int] = {}
    for rep in range(args.repeats):
        for name, fn in configs.items():
            t0 = time.perf_counter()
            count = fn()
            dt = time.perf_counter() - t0
            samples[name].append(count / dt)
            tokens[name] = count
            print(f"repeat {rep + 1}/{args.repeats} {name}: {count} tokens in {dt:.1f}s = {count / dt:.1f} tok/s "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)

    # Cold loads: one request at a time for an adapter never seen before (not resident).
    cold_ms = []
    for a in cold:
        res = engine.submit(GenRequest(artifact=a, prompt_ids=prompts[0], max_new_tokens=1)).result(timeout=600)
        cold_ms.append(res.cold_load_s * 1000)
    stats = engine.stats()
    engine.close()

    tps = {name: round(statistics.median(v), 2) for name, v in samples.items()}
    cold_sorted = sorted(cold_ms)
    p95 = cold_sorted[min(len(cold_sorted) - 1, round(0.95 * (len(cold_sorted) - 1)))]
    result = {
        "new_tokens": new, "concurrent_requests": 8, "adapter_rank": 16, "adapter_targets": TARGETS,
        "repeats": args.repeats,
        "tokens_per_s": tps,
        "tokens_per_s_samples": {k: [round(x, 2) for x in v] for k, v in samples.items()},
        "completion_tokens_per_run": tokens,
        "single_over_plain_batch8": round(tps["engine_1_adapter"] / tps["plain_generate_batch8"], 3),
        "mixed8_over_single": round(tps["engine_8_mixed"] / tps["engine_1_adapter"], 3),
        "mixed32_over_single": round(tps["engine_32_mixed"] / tps["engine_1_adapter"], 3),
        "base_over_plain_batch8": round(tps["engine_base"] / tps["plain_generate_batch8"], 3),
        "peft_mixed8_over_peft_single": round(tps["peft_8_mixed"] / tps["peft_1_adapter"], 3),
        "engine_mixed8_over_peft_mixed8": round(tps["engine_8_mixed"] / tps["peft_8_mixed"], 3),
        "cold_load_p50_ms": round(statistics.median(cold_ms), 1),
        "cold_load_p95_ms": round(p95, 1),
        "cold_loads": len(cold_ms),
        "targets": {"single_over_plain_batch8 >= 0.8": tps["engine_1_adapter"] / tps["plain_generate_batch8"] >= 0.8,
                    "mixed32_over_single >= 0.85": tps["engine_32_mixed"] / tps["engine_1_adapter"] >= 0.85,
                    "cold_load_p95_ms <= 300": p95 <= 300},
        "engine_stats": {k: stats[k] for k in ("hits", "misses", "evictions", "loads", "resident", "decode_steps",
                                               "mean_rows_per_step", "max_rows", "adapter_bytes")},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "load_avg_at_start": [round(x, 2) for x in load_start],
                    "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
                    "note": "2 shared cores with other agents' test runs: absolute figures are noisy, ratios less so"},
    }
    print(json.dumps(result, indent=2))
    out = ROOT / "benchmarks" / "results" / "serving_engine.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
