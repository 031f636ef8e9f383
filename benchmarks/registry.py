"""The registry's promises, measured (issue 11): 8 writer processes × 500 mixed writes (ingest, register,
sign, promote, rollback, deprecate, run events and transitions) on SQLite and on PostgreSQL, checked for
lost and corrupted records, alias histories that are not chains, ledger chains that do not verify and
errors that reached a caller; then promote / rollback latency (100 of each, one process, idle store).
Writes benchmarks/results/registry.json.

    .venv/bin/python benchmarks/registry.py              # PostgreSQL from $TUNEOPS_TEST_PG_URL if set
    .venv/bin/python benchmarks/registry.py --writers 4 --ops 50 --latency-n 20 --out /tmp/r.json

The workload and its checker are tests/release/registry_workload.py (the test runs 4 × 40 of it).
Signing uses a key made for this run in a temporary TUNEOPS_KEY_DIR (never the user's own keys), which
each fresh store trusts on first use — as the test suite does. Latency figures are indicative on a
shared machine: the load average before and after each phase is recorded in ``machine``.
"""

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine(pg_url: str | None) -> dict:
    import sqlite3

    info = {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(), "python": platform.python_version(), "torch": _version("torch"),
            "sqlalchemy": _version("sqlalchemy"), "psycopg": _version("psycopg"), "sqlite": sqlite3.sqlite_version,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if pg_url:
        from sqlalchemy import create_engine, text

        engine = create_engine(pg_url)
        with engine.connect() as conn:
            info["postgresql"] = conn.execute(text("SHOW server_version")).scalar()
        engine.dispose()
    return info


def _db_url(backend: str, pg_url: str | None) -> str | None:
    from tests.conftest import _pg_database_url

    return _pg_database_url(pg_url) if backend == "postgresql" else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--ops", type=int, default=500, help="writes per writer process")
    ap.add_argument("--latency-n", type=int, default=100, help="promotions and rollbacks timed per backend")
    ap.add_argument("--backends", default=None, help="comma-separated (default: sqlite, and postgresql when "
                                                     "$TUNEOPS_TEST_PG_URL is set)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "registry.json")
    args = ap.parse_args()

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tests.release.registry_workload import measure_latency, run_workload
    from tuneops.release.signing import generate_key

    pg_url = os.environ.get("TUNEOPS_BENCH_PG_URL") or os.environ.get("TUNEOPS_TEST_PG_URL")
    backends = args.backends.split(",") if args.backends else ["sqlite"] + (["postgresql"] if pg_url else [])
    if "postgresql" in backends and not pg_url:
        ap.error("postgresql needs $TUNEOPS_TEST_PG_URL (or $TUNEOPS_BENCH_PG_URL)")
    console = Console(stderr=True)
    work = Path(tempfile.mkdtemp(prefix="tuneops-registry-bench-"))
    # `tuneops keys init`, in a folder of the benchmark's own; the writer processes inherit the variables.
    os.environ["TUNEOPS_KEY_DIR"] = str(work / "keys")
    os.environ.pop("TUNEOPS_SIGNING_KEY", None)
    key = generate_key(work / "keys")
    console.print(f"signing key {key.key_id} in {work / 'keys'}; stores under {work}")

    result: dict = {"writers": args.writers, "ops_per_writer": args.ops, "ops": {}, "lost": {}, "corrupted": {},
                    "errors": {}, "locked_errors": {}, "inconsistent_moves": {}, "promote_ms_median": {},
                    "promote_ms_p95": {}, "rollback_ms_median": {}, "rollback_ms_p95": {}, "backends": {},
                    "machine": machine(pg_url)}
    loads: dict = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        for backend in backends:
            total = args.writers * args.ops
            task = progress.add_task(f"{backend}: {args.writers} writers × {args.ops}", total=total)
            loads[f"{backend}_race_before"] = [round(x, 2) for x in os.getloadavg()]
            r = run_workload(work / f"race-{backend}", _db_url(backend, pg_url), writers=args.writers, ops=args.ops,
                             on_progress=lambda done, task=task: progress.update(task, completed=done))
            loads[f"{backend}_race_after"] = [round(x, 2) for x in os.getloadavg()]
            task = progress.add_task(f"{backend}: promote/rollback latency", total=args.latency_n)
            lat = measure_latency(work / f"latency-{backend}", _db_url(backend, pg_url), n=args.latency_n,
                                  on_progress=lambda done, task=task: progress.update(task, completed=done))
            loads[f"{backend}_latency_after"] = [round(x, 2) for x in os.getloadavg()]
            errors = r.pop("errors")
            result["ops"][backend] = r["ops"]
            result["lost"][backend] = r["lost"]
            result["corrupted"][backend] = r["corrupted"]
            result["errors"][backend] = len(errors)
            result["locked_errors"][backend] = r["locked_errors"]
            result["inconsistent_moves"][backend] = r["inconsistent_moves"] + lat["inconsistent_moves"]
            for k in ("promote_ms_median", "promote_ms_p95", "rollback_ms_median", "rollback_ms_p95"):
                result[k][backend] = lat[k]
            result["backends"][backend] = {**r, "error_examples": errors[:5], "latency": lat}
            progress.console.print(
                f"{backend}: {r['ops']} writes in {r['seconds']} s, {r['committed_writes']} committed, "
                f"{r['lost']} lost, {r['corrupted']} corrupted, {r['inconsistent_moves']} inconsistent moves "
                f"of {r['alias_moves']}, {len(errors)} errors ({r['locked_errors']} 'locked'); "
                f"promote {lat['promote_ms_median']} ms, rollback {lat['rollback_ms_median']} ms (median of "
                f"{lat['n']})")
    if "postgresql" not in backends:
        console.print("PostgreSQL: not measured (set TUNEOPS_TEST_PG_URL)")
    result["latency_n"] = args.latency_n
    result["latency_note"] = ("one process on an idle store, end to end (checks included: files, signature, "
                              "sunset, taint, licence, gates, then the locked move and its chained audit entry); "
                              "indicative on a shared machine, see machine.load_average")
    export_json = ROOT / "benchmarks" / "results" / "export.json"
    try:
        exported = json.loads(export_json.read_text())
        result["merged_max_logit_diff"] = exported["merged_max_logit_diff"]
        result["merged_max_logit_diff_source"] = {
            "file": "benchmarks/results/export.json (benchmarks/export.py)", "artifact": exported.get("artifact"),
            "base": exported.get("base_name"), "bound": exported.get("bounds", {}).get("merged_max_logit_diff"),
            "measured_at": exported.get("finished_at"),
            "what": "max |logit difference| of the merged export vs the unmerged adapter on the export's check "
                    "prompts (not re-measured here)"}
    except (OSError, KeyError, ValueError) as e:
        result["merged_max_logit_diff"] = None
        result["merged_max_logit_diff_source"] = f"{export_json} unreadable: {e}"
    result["machine"]["load_average_by_phase"] = loads
    result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["command"] = "TUNEOPS_TEST_PG_URL=… .venv/bin/python benchmarks/registry.py " + " ".join(sys.argv[1:])
    result["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(args.out)
    console.print(f"wrote {args.out}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
