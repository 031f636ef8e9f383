"""Exports of a real SmolLM2 adapter: merged vs unmerged logits, GGUF sizes and read-back agreement.

    .venv/bin/python benchmarks/export.py [--store .tuneops] [--artifact quickstart@production]
        [--old-transformers DIR]

Exports the artifact (default: the quickstart's alias, else the newest artifact in the store) as
peft, merged, gguf f16 and gguf q8_0 through ``tuneops.release.export`` — the same checks as the
CLI, here on 8 held-out chats of the bundled task (system + user turn; the adapter's own job) and
the 4 default prompts, 16 greedy tokens each — and records seconds, sizes and every check.

``--old-transformers DIR``: a folder with transformers 4.x installed by
``pip install --no-deps --target DIR transformers==4.57.6 huggingface-hub==0.36.0 tokenizers==0.22.1``;
the exported base is then run under it twice — as exported, and with the config exactly as
transformers 5 wrote it (no top-level rope_theta) — and compared with transformers 5's logits.

Writes benchmarks/results/export.json (with the machine). Needs `make demo` (or any store with a
SmolLM2 adapter) first; the exports are written under a temporary folder and removed afterwards
(the store keeps their records).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import tuneops  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))

from tuneops.data.bundled import json_extraction_rows  # noqa: E402
from tuneops.release.export import CHECK_PROMPTS, GGUF_BOUNDS, MERGED_MAX_LOGIT_DIFF, export_artifact  # noqa: E402
from tuneops.store import Store  # noqa: E402

OLD_TRANSFORMERS_SNIPPET = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
import transformers
from transformers import AutoConfig, AutoModelForCausalLM
ids = torch.tensor(json.loads(sys.argv[4]))
ref = torch.load(sys.argv[5])
out = {"transformers": transformers.__version__}
for label, path in (("as_exported", sys.argv[2]), ("transformers5_config", sys.argv[3])):
    cfg = AutoConfig.from_pretrained(path)
    m = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        logits = m(ids).logits[0]
        greedy = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)[0, ids.shape[1]:].tolist()
    out[label] = {"rope_theta_read": getattr(cfg, "rope_theta", None),
                  "max_abs_logit_diff_vs_transformers5": (logits - ref["logits"]).abs().max().item(),
                  "top1_agreement": (logits.argmax(-1) == ref["logits"].argmax(-1)).float().mean().item(),
                  "greedy_identical": greedy == ref["greedy"]}
print(json.dumps(out))
"""


def pick_artifact(store: Store, ref: str | None) -> str:
    from tuneops.release.registry import resolve_alias
    from tuneops.store.schema import ArtifactRecord

    if ref:
        return ref if ref.startswith("ad-") else resolve_alias(store, ref).id
    try:
        return resolve_alias(store, "quickstart@production").id
    except Exception:
        arts = store.all(ArtifactRecord)
        if not arts:
            sys.exit(f"no artifact in {store.home}: run `make demo` first, or pass --store/--artifact")
        return max(arts, key=lambda a: a.created_at).id


def check_prompts() -> list:
    _, held_out = json_extraction_rows(2, 8, seed=11)
    chats = [[m for m in row["messages"] if m["role"] != "assistant"] for row in held_out]
    return chats + list(CHECK_PROMPTS)


def old_transformers_check(base_folder: Path, old_dir: Path, scratch: Path) -> dict:
    """Run the exported base under transformers 4.x: as exported, and with transformers 5's config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_folder)
    text = tok.apply_chat_template([{"role": "user", "content": "Describe the ocean in three sentences, please."}],
                                   tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt").input_ids
    model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = {"logits": model(ids).logits[0],
               "greedy": model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                                        do_sample=False)[0, ids.shape[1]:].tolist()}
    torch.save(ref, scratch / "ref.pt")
    v5 = scratch / "transformers5-config"
    v5.mkdir()
    for p in base_folder.iterdir():
        os.symlink(p.resolve(), v5 / p.name) if p.name != "config.json" else None
    cfg = json.loads((base_folder / "config.json").read_text())
    cfg.pop("rope_theta", None)
    (v5 / "config.json").write_text(json.dumps(cfg, indent=2))
    proc = subprocess.run([sys.executable, "-c", OLD_TRANSFORMERS_SNIPPET, str(old_dir), str(base_folder), str(v5),
                           json.dumps(ids.tolist()), str(scratch / "ref.pt")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""})
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=os.environ.get("TUNEOPS_HOME", ".tuneops"))
    ap.add_argument("--artifact", default=None)
    ap.add_argument("--old-transformers", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export.json")
    args = ap.parse_args()

    store = Store.open(args.store, create=False)
    art_id = pick_artifact(store, args.artifact)
    art = store.get_artifact(art_id)
    base = store.get_base(art.base_id)
    prompts = check_prompts()
    print(f"artifact {art_id} ({art.method}) on {base.id} ({base.name}); {len(prompts)} check prompts")
    results: dict = {"artifact": art_id, "method": art.method, "base": base.id, "base_name": base.name,
                     "check_prompts": len(prompts), "bounds": {"merged_max_logit_diff": MERGED_MAX_LOGIT_DIFF,
                                                               "gguf": GGUF_BOUNDS}, "exports": {}}
    scratch = Path(tempfile.mkdtemp(prefix="tuneops-export-bench-"))
    try:
        for label, fmt, kw in (("peft", "peft", {}), ("merged", "merged", {}),
                               ("gguf_f16", "gguf", {"gguf_type": "f16"}), ("gguf_q8_0", "gguf", {"gguf_type": "q8_0"})):
            t0 = time.perf_counter()
            rec = export_artifact(store, art_id, fmt, scratch / label, prompts=prompts,
                                  on_step=lambda m: print(f"  [{label}] {m}", flush=True), **kw)
            secs = time.perf_counter() - t0
            d = rec.details
            checks = {name: {k: v for k, v in c.items() if k not in ("bounds",)} for name, c in d["checks"].items()}
            entry = {"export_id": rec.id, "seconds": round(secs, 1), "digest": rec.digest,
                     "bytes": {name: f["bytes"] for name, f in d["files"].items()}, "checks": checks}
            if fmt == "gguf":
                entry["convert_seconds"] = d["convert_seconds"]
                entry["gguf_bytes"] = d["files"][d["gguf_file"]]["bytes"]
            results["exports"][label] = entry
            summary = "; ".join(f"{n}: max|Δlogit| {c['max_abs_logit_diff']:.3g}, top-1 {c['top1_agreement']:.4f}, "
                                f"mean KL {c['mean_kl']:.2g}, greedy {c['greedy_identical']}" for n, c in checks.items())
            size = f", {entry['gguf_bytes'] / 1e6:.1f} MB" if fmt == "gguf" else ""
            print(f"{label}: {secs:.1f} s{size} · {summary}", flush=True)
            if label == "peft" and args.old_transformers:
                old = old_transformers_check(scratch / "peft" / "base", args.old_transformers, scratch)
                results["old_transformers"] = old
                print(f"transformers 4.x on the exported base: {json.dumps(old)}", flush=True)
            if label != "peft":
                shutil.rmtree(scratch / label, ignore_errors=True)
        merged = results["exports"]["merged"]["checks"]["merge"]
        results["merged_max_logit_diff"] = merged["max_abs_logit_diff"]
        results["gguf_sizes_mb"] = {t: round(results["exports"][f"gguf_{t}"]["gguf_bytes"] / 1e6, 1)
                                    for t in ("f16", "q8_0")}
        results["gguf_readback"] = {t: {k: results["exports"][f"gguf_{t}"]["checks"]["gguf_readback"][k]
                                        for k in ("max_abs_logit_diff", "top1_agreement", "mean_kl", "greedy_identical")}
                                    for t in ("f16", "q8_0")}
        results["machine"] = {"platform": platform.platform(), "python": platform.python_version(),
                              "cpus": os.cpu_count(), "load_average": os.getloadavg()}
        results["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"merged max |Δlogit| {results['merged_max_logit_diff']:.3g}; GGUF sizes {results['gguf_sizes_mb']} MB; "
          f"read-back {json.dumps(results['gguf_readback'])}; wrote {args.out}")


if __name__ == "__main__":
    main()
