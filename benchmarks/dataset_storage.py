"""Dataset version storage: Parquet rows blob vs the legacy canonical-JSONL blob, on a synthetic SFT version.

    .venv/bin/python benchmarks/dataset_storage.py [--rows 1000000]

One child process per step, so each peak RSS is that step's alone: ``ingest`` (ingest_rows of the
generated rows into a fresh store; also stores a legacy JSONL copy of the same rows under a side
record, the way versions were stored before Parquet), then ``stream`` (iter_row_batches over the
whole version, holding one batch at a time), ``load`` (load_rows: the whole version as a list),
and ``load_jsonl`` (load_rows of the legacy copy). ``base_rss_mb`` is a step's RSS after its
imports (pyarrow included), before it reads anything; the ingest step's peak is taken before it
builds the legacy copy. Writes benchmarks/results/dataset_storage.json. Timings are
noisy on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "benchmarks" / "results"
WORDS = ("order refund invoice shipping account password delivery parcel late broken replace address "
         "card charge subscription cancel upgrade plan support ticket status week today please thanks").split()
LEGACY_ID = "ds-legacy-jsonl-bench"


def peak_rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def current_rss_mb() -> int:
    with open("/proc/self/statm") as f:
        return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20)


def synthetic_rows(n: int) -> list[dict]:
    """Short two-turn support chats (~30 words) with per-row provenance, a subject on 1 row in 10."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        q = " ".join(rng.choices(WORDS, k=rng.randint(6, 16)))
        a = " ".join(rng.choices(WORDS, k=rng.randint(8, 24)))
        row = {"messages": [{"role": "user", "content": f"#{i} {q}?"}, {"role": "assistant", "content": a}],
               "source": f"crm-{i % 5}", "license": "MIT", "purpose": "support", "tier": "curated",
               "collected_at": "2026-01-0%d" % (1 + i % 9)}
        if i % 10 == 0:
            row["subject"] = f"subj-{i:024x}"
        rows.append(row)
    return rows


def step_ingest(home: Path, n: int) -> dict:
    from pyarrow import compress

    from tuneops.data.ingest import _put_rows_parquet, ingest_rows
    from tuneops.store import Store
    from tuneops.store.ids import canonical_json
    from tuneops.store.schema import DatasetRecord

    store = Store(home)
    rows = synthetic_rows(n)
    base = current_rss_mb()
    t0 = time.perf_counter()
    ds, _ = ingest_rows(store, rows, name="bench")
    seconds = time.perf_counter() - t0
    parquet_bytes = store.blobs.blob_file(ds.rows_blob).stat().st_size
    t0 = time.perf_counter()
    _put_rows_parquet(store, rows)  # the rows blob alone (same bytes: the stored blob is kept)
    parquet_write = time.perf_counter() - t0
    ingest_peak = peak_rss_mb()  # before the legacy JSONL copy below adds its own bytes
    t0 = time.perf_counter()
    jsonl = b"\n".join(canonical_json(r) for r in rows) + b"\n"  # what ingest_rows stored before
    jsonl_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    legacy_blob = store.blobs.put_bytes(jsonl)
    jsonl_write += time.perf_counter() - t0
    legacy = DatasetRecord(id=LEGACY_ID, name="bench-legacy", manifest_blob=ds.manifest_blob,
                           rows_blob=legacy_blob, num_rows=n, summary={})
    store.insert_once(legacy)
    return {"rows": n, "ds_id": ds.id, "seconds": round(seconds, 2), "rows_per_s": round(n / seconds),
            "parquet_write_seconds": round(parquet_write, 2), "jsonl_write_seconds": round(jsonl_write, 2),
            "parquet_bytes": parquet_bytes, "jsonl_bytes": len(jsonl),
            "jsonl_zstd_bytes": len(compress(jsonl, codec="zstd", asbytes=True)),
            "base_rss_mb": base, "peak_rss_mb": ingest_peak}


def step_read(home: Path, ds_id: str, how: str) -> dict:
    from tuneops.data.ingest import iter_row_batches, load_rows
    from tuneops.store import Store
    from tuneops.store.schema import DatasetRecord

    store = Store(home)
    ds = store.get(DatasetRecord, ds_id, "dataset", "")
    imports = current_rss_mb()
    import pyarrow.parquet  # noqa: F401  (loaded lazily by the Parquet reader; counted in base, not in the read)

    base = current_rss_mb()
    t0 = time.perf_counter()
    n = chars = batches = 0
    if how == "stream":
        for batch in iter_row_batches(store, ds):
            batches += 1
            n += len(batch)
            chars += sum(len(m["content"]) for r in batch for m in r["messages"])
    else:
        rows = load_rows(store, ds)
        n = len(rows)
        chars = sum(len(m["content"]) for r in rows for m in r["messages"])
    seconds = time.perf_counter() - t0
    out = {"rows": n, "content_chars": chars, "seconds": round(seconds, 2), "rows_per_s": round(n / seconds),
           "rss_before_pyarrow_mb": imports, "base_rss_mb": base, "peak_rss_mb": peak_rss_mb()}
    if how == "stream":
        out["batches"] = batches
    return out


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        step, home, *rest = args.child
        res = step_ingest(Path(home), args.rows) if step == "ingest" else step_read(Path(home), rest[0], step)
        print(json.dumps(res))
        return
    import pyarrow

    from tuneops.data.ingest import ROW_GROUP_ROWS

    with open("/proc/loadavg") as f:
        load_at_start = f.read().split()[:3]
    tmp = Path(tempfile.mkdtemp(prefix="tuneops-storage-bench-"))
    try:
        home = tmp / "store"
        steps = {"ingest": run_child("ingest", str(home), "--rows", str(args.rows))}
        print("ingest", steps["ingest"], flush=True)
        ds_id = steps["ingest"]["ds_id"]
        for step, target in (("stream", ds_id), ("load", ds_id), ("load_jsonl", LEGACY_ID)):
            steps[step] = run_child("load" if step == "load_jsonl" else step, str(home), target)
            print(step, steps[step], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ing = steps["ingest"]
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    result = {
        "rows": args.rows,
        "row_group_rows": ROW_GROUP_ROWS,
        "parquet_mb": round(ing["parquet_bytes"] / 2 ** 20, 1),
        "jsonl_mb": round(ing["jsonl_bytes"] / 2 ** 20, 1),
        "jsonl_zstd_mb": round(ing["jsonl_zstd_bytes"] / 2 ** 20, 1),
        "parquet_vs_jsonl_size": round(ing["parquet_bytes"] / ing["jsonl_bytes"], 3),
        "stream_peak_rss_mb": steps["stream"]["peak_rss_mb"],
        "load_rows_peak_rss_mb": steps["load"]["peak_rss_mb"],
        "load_rows_jsonl_peak_rss_mb": steps["load_jsonl"]["peak_rss_mb"],
        "stream_rows_per_s": steps["stream"]["rows_per_s"],
        "load_rows_per_s": steps["load"]["rows_per_s"],
        "load_rows_jsonl_per_s": steps["load_jsonl"]["rows_per_s"],
        "ingest_rows_per_s": ing["rows_per_s"],
        "rows_blob_write_seconds": {"parquet": ing["parquet_write_seconds"], "jsonl": ing["jsonl_write_seconds"]},
        "steps": steps,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "pyarrow": pyarrow.__version__, "load_average_at_start": load_at_start,
                    "load_average_at_end": load},
        "command": f".venv/bin/python benchmarks/dataset_storage.py --rows {args.rows}",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dataset_storage.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "steps"}, indent=2))


if __name__ == "__main__":
    main()
