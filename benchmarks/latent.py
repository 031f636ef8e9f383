"""Benchmark the latent-variable lab: the full AE / VAE / VQ-VAE comparison plus the failure-mode
scenarios on scikit-learn digits, timed on CPU. Writes benchmarks/results/latent.json.

    python benchmarks/latent.py [--seed 0] [--threads N] [--report DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import tuneops.latent  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from tuneops.latent import experiments as E  # noqa: E402
from tuneops.latent.data import load_dataset  # noqa: E402
from tuneops.latent.report import write_report  # noqa: E402

MODEL_KEYS = {
    "ae": ["recon_mse", "prior_sample_confidence", "prior_sample_class_entropy", "prior_sample_frechet", "prior_sample_sharpness", "prior_sample_copy_ratio",
           "gaussian_fit_sample_confidence", "gaussian_fit_sample_class_entropy", "gaussian_fit_sample_frechet", "stability", "train_s"],
    "vae": ["recon_mse", "prior_sample_confidence", "prior_sample_class_entropy", "prior_sample_frechet", "prior_sample_sharpness", "prior_sample_copy_ratio",
            "active_units", "latent_dim", "kl_total", "kl_per_dim", "likelihood_bound_nats", "stability", "train_s"],
    "vqvae": ["recon_mse", "prior_sample_confidence", "prior_sample_class_entropy", "prior_sample_frechet", "prior_sample_sharpness", "prior_sample_copy_ratio",
              "codebook_perplexity", "dead_codes", "codes_used", "codebook_size", "uniform_code_sample_confidence",
              "uniform_code_sample_frechet", "prior_nll_nats_per_code", "prior_nll_uniform_nats_per_code", "stability", "train_s"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=E.default_threads(), help="torch threads (default: 1 on <= 2 cores)")
    ap.add_argument("--quick", action="store_true", help="a short smoke run (not the recorded benchmark)")
    ap.add_argument("--report", type=Path, default=None, help="also write the markdown/HTML/PNG report here")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latent.json")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    budget = E.Budget.quick() if args.quick else E.Budget()
    t0 = time.perf_counter()
    data = load_dataset(seed=args.seed)
    judge = E.make_judge(data, args.seed, budget.classifier)
    timings = {}
    compare, timings["compare"] = timed(E.run_compare, data, args.seed, budget, judge=judge)
    collapse, timings["collapse"] = timed(E.run_collapse, data, args.seed, budget.collapse)
    blur, timings["blur"] = timed(E.run_blur, data, args.seed, budget.blur, judge=judge)
    codebook, timings["codebook"] = timed(E.run_codebook, data, args.seed, budget.codebook)
    total = time.perf_counter() - t0

    cmp_res = compare[0]
    result = {
        "command": "python benchmarks/latent.py" + (" --quick" if args.quick else ""),
        "seed": args.seed,
        "data": cmp_res["data"],
        "budget": cmp_res["budget"],
        "real_test_images": cmp_res["real_test_images"],
        "models": {m: {k: cmp_res["models"][m][k] for k in keys} for m, keys in MODEL_KEYS.items()},
        "ae_not_generative": cmp_res["ae_not_generative"],
        "failure_modes": {
            "posterior_collapse": {"epochs": collapse[0]["epochs"], "summary": collapse[0]["summary"],
                                   "rows": [{k: v for k, v in r.items() if k != "kl_per_dim"} for r in collapse[0]["rows"]]},
            "blur": {"epochs": blur[0]["epochs"], "rows": blur[0]["rows"]},
            "codebook_collapse": {"epochs": codebook[0]["epochs"], "summary": codebook[0]["summary"], "rows": codebook[0]["rows"]},
        },
        "timings_s": {"compare": round(timings["compare"], 2), "collapse": round(timings["collapse"], 2),
                      "blur": round(timings["blur"], 2), "codebook": round(timings["codebook"], 2)},
        "compare_s": round(timings["compare"], 2),
        "total_s": round(total, 2),
        "machine": E.machine_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.report is not None:
        write_report(args.report, compare=compare, collapse=collapse, blur=blur, codebook=codebook)
    m = result["models"]
    print(f"wrote {args.out} in {total:.1f} s (compare {timings['compare']:.1f} s)")
    for name in ("ae", "vae", "vqvae"):
        print(f"  {name:6s} recon_mse={m[name]['recon_mse']:.4f} conf={m[name]['prior_sample_confidence']:.3f} "
              f"H={m[name]['prior_sample_class_entropy']:.2f} FD={m[name]['prior_sample_frechet']:.2f}")
    print(f"  VAE active units {m['vae']['active_units']}/{m['vae']['latent_dim']}; "
          f"VQ perplexity {m['vqvae']['codebook_perplexity']:.1f}, dead codes {m['vqvae']['dead_codes']}")
    print(f"  collapse: {collapse[0]['summary']}")
    print(f"  codebook: {codebook[0]['summary']}")


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


if __name__ == "__main__":
    main()
