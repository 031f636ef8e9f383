"""Benchmark: the whole quickstart in a fresh store; writes benchmarks/results/quickstart.json.

Target (issue 2): total ≤ 300 s on a 2-core CPU machine. Run: `python benchmarks/quickstart.py`
(`--keep DIR` keeps the store, e.g. to serve the result afterwards).
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from tuneops.cli.main import _quiet_hf

_quiet_hf()  # before the HF stack is imported: tqdm reads TQDM_DISABLE on its first import

from tuneops.cli.quickstart import run_quickstart  # noqa: E402
from tuneops.store import Store  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "quickstart.json"
TARGET_S = 300


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", type=Path, help="Use (and keep) this store directory instead of a temp one.")
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--eval-rows", type=int, default=40)
    args = ap.parse_args()
    home = args.keep or Path(tempfile.mkdtemp(prefix="tuneops-bench-"))
    try:
        summary = run_quickstart(Store(home), rows=args.rows, eval_rows=args.eval_rows, epochs=1.0,
                                 results=None, as_json=False)
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    summary["target_total_s"] = TARGET_S
    summary["meets_target"] = summary["total_s"] <= TARGET_S
    summary.pop("plots", None)  # they lived in the temp store
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"total {summary['total_s']} s (target ≤ {TARGET_S} s) · exact match {summary['base_exact_match']} → "
          f"{summary['tuned_exact_match']} · gates passed: {summary['gates_passed']} · wrote {RESULTS}")


if __name__ == "__main__":
    main()
