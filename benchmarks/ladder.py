"""The quickstart's ladder on SmolLM2: zero-shot → few-shot → RAG → fine-tuned, same held-out items.

    .venv/bin/python benchmarks/quickstart.py --keep /tmp/qs      # the fine-tuned rung's artifact
    .venv/bin/python benchmarks/ladder.py --home /tmp/qs [--k 3]

Writes benchmarks/results/ladder.json (a list of rungs: rung, metric, ci_low, ci_high,
latency_ms_p50, latency_ms_p95, prompt_tokens, …, with `recommended` on the chosen one) and
benchmarks/results/ladder_run.json (recommendation, artifact, machine, command) plus the plot
benchmarks/results/ladder.png. Requests run one at a time, as a server answers them: latency is
per request. Run it on a quiet machine.
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, required=True, help="The store benchmarks/quickstart.py --keep left.")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--margin", type=float, default=0.02)
    ap.add_argument("--max-items", type=int, default=None)
    args = ap.parse_args()

    from tuneops.cli.main import _quiet_hf
    from tuneops.cli.quickstart import machine_info
    from tuneops.eval.ladder import plot_ladder
    from tuneops.pipeline import ladder_for_recipe, recipe_artifact
    from tuneops.store import Store
    from tuneops.train.recipe import load_recipe

    _quiet_hf()
    store = Store.open(args.home)
    recipe = load_recipe(args.home / "recipes" / "quickstart.yaml")
    artifact = recipe_artifact(store, recipe, None)
    t0 = time.perf_counter()
    result = ladder_for_recipe(store, recipe, artifact, k=args.k, margin=args.margin, max_items=args.max_items)
    seconds = time.perf_counter() - t0
    pick = result["recommendation"]["rung"]
    rungs = [dict(r, recommended=r["rung"] == pick) for r in result["rungs"]]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ladder.json").write_text(json.dumps(rungs, indent=2) + "\n")
    plot = plot_ladder(result, RESULTS / "ladder.png", f"quickstart ladder · {artifact.id}")
    run = {"recommendation": result["recommendation"], "suite": result["suite"], "items": result["items"],
           "k": result["k"], "artifact": artifact.id, "base": result["base"], "seconds": round(seconds, 1),
           "plot": str(plot.relative_to(ROOT)), "machine": machine_info(),
           "command": "python benchmarks/ladder.py --home <quickstart store> --k " + str(args.k)}
    (RESULTS / "ladder_run.json").write_text(json.dumps(run, indent=2) + "\n")
    for r in rungs:
        print(f"{r['rung']:>15}  {r['metric']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]  "
              f"p50 {r['latency_ms_p50']:.0f} ms  {r['prompt_tokens']:.0f} prompt tokens"
              + ("  ← recommended" if r["recommended"] else ""))
    print(result["recommendation"]["reason"])


if __name__ == "__main__":
    main()
