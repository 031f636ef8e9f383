"""The whole governance pass, streamed: PII scan + redaction, exact and near-duplicate removal.

    .venv/bin/python benchmarks/governance.py [--sizes 10000 100000 1000000] [--processes 1 2]

The corpus is benchmarks/dedup.py's generator (200-token SFT rows of Zipf-distributed synthetic
words, with planted near copies at 3 % token edits, exact copies and hard negatives), called block
by block (12,000 originals, 14,400 rows, a seed per block; copies land anywhere in their block,
so across batches) and written once to a Parquet file in --corpus-dir; 1 row in 20 also carries
an e-mail, phone or card number in its user turn. A run is a fresh child process that streams
that file's first N rows in Arrow record batches through `tuneops.data.governance.run_pass`
(scrub + signatures in `--processes` workers, the dedupe decision in the child), discarding the
kept batches. Rows/s counts the pass from opening the file to the last kept batch (generation
excluded, reading included). Peak RSS is the child's (the dedupe index lives there) and its
largest worker's; `peak_rss_mb_total` adds processes x worker, an upper bound (fork shares pages).
Near-duplicate recall/precision are scored on the pass's own removals (dedup.py's definitions).
Writes benchmarks/results/governance.json (headline keys from the largest process count, every
run under `runs`). Timings are noisy on a shared 2-core machine: the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"
BLOCK_BASE = 12_000  # originals per generator call; 1.2x as many rows with the planted copies
BATCH = 4096
PII = ("EMAIL", "PHONE", "CREDIT_CARD")


def _load() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def corpus_path(corpus_dir: Path, n: int) -> Path:
    return corpus_dir / f"governance-corpus-{n}.parquet"


def write_corpus(path: Path, n: int) -> None:
    """The first n rows of the block-by-block corpus, as Parquet (messages, family, kind)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import dedup as corpus  # benchmarks/dedup.py

    rng = random.Random(0)
    tmp = path.with_name(path.name + ".tmp")
    writer, done, block = None, 0, 0
    while done < n:
        rows, family, kind, _ = corpus.generate(BLOCK_BASE, seed=block)
        take = min(len(rows), n - done)
        for j in range(0, take):
            i = done + j
            if i % 20 == 0:
                pii = rng.choice([f"mail me at user{i}@example.org", f"call +44 20 7946 {i % 10000:04d}",
                                  "card 4111 1111 1111 1111"])
                msgs = rows[j]["messages"]
                rows[j] = {"messages": [{**msgs[0], "content": msgs[0]["content"] + " " + pii}, *msgs[1:]]}
        table = pa.table({"messages": [r["messages"] for r in rows[:take]],
                          "family": [block * 10_000_000 + f for f in family[:take]], "kind": kind[:take]})
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table, row_group_size=16_384)
        done += take
        block += 1
        print(f"  corpus: {done}/{n} rows", file=sys.stderr, flush=True)
    writer.close()
    tmp.replace(path)


def child(path: Path, n: int, processes: int, batch_size: int) -> None:
    import pyarrow.parquet as pq

    import dedup as corpus
    from tuneops.data.governance import run_pass

    def batches():
        left = n
        for b in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=["messages", "family", "kind"]):
            if left <= 0:
                return
            yield b if b.num_rows <= left else b.slice(0, left)
            left -= b.num_rows

    load_before = _load()
    cpu0 = os.times()
    t0 = time.perf_counter()
    kept_batches, report = run_pass(batches(), processes=processes, policy="redact", near=True)
    kept = sum(b.num_rows for b in kept_batches)
    seconds = time.perf_counter() - t0
    cpu1 = os.times()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if processes > 1 else 0
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system) + (cpu1.children_user - cpu0.children_user) + \
        (cpu1.children_system - cpu0.children_system)

    labels = pq.read_table(path, columns=["family", "kind"]).slice(0, n)
    family, kind = labels.column("family").to_pylist(), labels.column("kind").to_pylist()
    # a copy whose original lies past the first n rows has nothing to match: not counted as planted
    bases = {f for f, k in zip(family, kind) if k == "base"}
    kind = [k if k not in ("near", "exact") or f in bases else "orphan" for f, k in zip(family, kind)]
    quality = corpus.score(SimpleNamespace(removed=report.removed, counts=report.removed_counts), family, kind)
    rng = random.Random(0)  # replays write_corpus's choices: which type each 20th row got
    planted = {t: 0 for t in PII}
    for _ in range(0, n, 20):
        planted[rng.choice(PII)] += 1
    print(json.dumps({
        "rows": report.rows_in, "kept": kept, "processes": processes, "batch_size": batch_size,
        "seconds": round(seconds, 2), "rows_per_s": round(n / seconds), "cpu_seconds": round(cpu, 1),
        "pii": report.pii, "pii_planted": planted, "removed": report.removed_counts,
        "max_batches_in_flight": report.max_in_flight,
        "near_dup_recall": quality["near_dup_recall"], "near_dup_precision": quality["near_dup_precision"],
        "exact_recall": quality["exact_recall"], "hard_negatives_removed": quality["hard_negatives_removed"],
        "peak_rss_mb": round(peak), "peak_rss_mb_worker": round(worker_peak),
        "peak_rss_mb_total": round(peak + processes * worker_peak) if processes > 1 else round(peak),
        "load_average_before": load_before, "load_average_after": _load()}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=BATCH)
    ap.add_argument("--corpus-dir", type=Path, default=Path("/tmp/tuneops-governance-bench"))
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--corpus", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.corpus:
        write_corpus(Path(args.corpus[0]), int(args.corpus[1]))
        return
    if args.child:
        path, n, procs, bs = args.child
        child(Path(path), int(n), int(procs), int(bs))
        return
    args.corpus_dir.mkdir(parents=True, exist_ok=True)
    biggest = max(args.sizes)
    path = corpus_path(args.corpus_dir, biggest)
    if not path.exists():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--corpus", str(path), str(biggest)], check=True)
        print(f"generated {biggest} rows in {time.perf_counter() - t0:.0f} s: {path}", flush=True)
    runs: dict[str, dict] = {}
    for procs in args.processes:
        for n in args.sizes:
            out = subprocess.run([sys.executable, __file__, "--child", str(path), str(n), str(procs),
                                  str(args.batch_size)], capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"run {n} rows x {procs} processes failed:\n{out.stderr}")
            runs.setdefault(str(procs), {})[str(n)] = json.loads(out.stdout.strip().splitlines()[-1])
            print(procs, n, runs[str(procs)][str(n)], flush=True)
    head = runs[str(max(args.processes))]
    quality_run = head.get("100000") or head[str(max(args.sizes))]
    pii_res = json.loads((RESULTS / "pii.json").read_text()) if (RESULTS / "pii.json").exists() else {}
    result = {
        "rows_per_s": head.get("100000", {}).get("rows_per_s"),
        "rows_per_s_10k": head.get("10000", {}).get("rows_per_s"),
        "rows_per_s_1m": head.get("1000000", {}).get("rows_per_s"),
        "peak_rss_mb_1m": head.get("1000000", {}).get("peak_rss_mb_total"),
        "headline_processes": max(args.processes),
        "rows_per_s_by_processes": {p: {n: r["rows_per_s"] for n, r in by_n.items()} for p, by_n in runs.items()},
        "peak_rss_mb_by_processes": {p: {n: r["peak_rss_mb_total"] for n, r in by_n.items()}
                                     for p, by_n in runs.items()},
        "near_dup_recall": quality_run["near_dup_recall"], "near_dup_precision": quality_run["near_dup_precision"],
        "pii_recall_min": pii_res.get("pii_recall_min"), "pii_precision_min": pii_res.get("pii_precision_min"),
        "runs": runs, "target_rows_per_s": 5000,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_at_end": _load()},
        "command": "python benchmarks/governance.py --sizes " + " ".join(map(str, args.sizes))
                   + " --processes " + " ".join(map(str, args.processes)),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "governance.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
