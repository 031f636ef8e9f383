"""Near-duplicate recall/precision and exact+near dedup throughput on generated 200-token rows.

    .venv/bin/python benchmarks/dedup.py [--processes 2] [--repeats 3] [--full]

The corpus is deterministic: SFT rows (a 40-word user turn, a 160-word answer) of Zipf-distributed
synthetic words in sentences, with planted near-duplicate copies (3 % of tokens edited: equal
parts substitutions, insertions and deletions), exact copies (whitespace and case changed only)
and hard negatives (the same user turn and start of the answer, then another ending: half the
words shared, Jaccard ~0.33; they must be kept).
Rows are shuffled, so a copy may come before its original. A removal is correct when the row
it names as the kept one is from the same family. Throughput counts canonical rows in, exact +
near-dup (no semantic) out, timed after generation (median of ``--repeats`` runs, with the CPU
seconds of this process and its workers); 100k-row runs happen in a fresh process whose peak
RSS is reset after generating the corpus, so it is the corpus plus dedup. ``--full`` adds a
1M-row run. Writes benchmarks/results/dedup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import tuneops.data.dedup  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

from tuneops.data import dedup as D  # noqa: E402

EDIT_RATE = 0.03
THRESHOLDS = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8]


def _vocab(rng: np.random.Generator, size: int = 30000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    lengths = rng.integers(2, 11, size).tolist()
    codes = rng.integers(0, 26, (size, 10)).tolist()
    return sorted({"".join(letters[c] for c in code[:n]) for code, n in zip(codes, lengths)})


def generate(n_base: int, seed: int = 0) -> tuple[list[dict], list[int], list[str], list[int]]:
    """Rows, family id per row (original and its copies share one), kind per row
    ("base" | "near" | "exact" | "hard"), and the base row each row was made from."""
    rng = np.random.default_rng(seed)
    vocab = _vocab(rng)
    p = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    p /= p.sum()
    cdf = np.cumsum(p)
    # Inverse-CDF lookup table: drawing is a gather, not a binary search per token.
    table = np.searchsorted(cdf, (np.arange(1 << 20) + 0.5) / (1 << 20))

    capitalised = [w.capitalize() for w in vocab]

    def draw(k: int) -> list[int]:
        return table[rng.integers(0, 1 << 20, k)].tolist()

    py = random.Random(seed)

    def render(tokens: list[int]) -> str:
        """Sentences of 8-20 words: capitalised, ending with '.' (80 %) or ','."""
        out = list(map(vocab.__getitem__, tokens))
        start, rand = 0, py.random
        while start < len(out):
            end = min(start + 8 + int(13 * rand()), len(out))
            out[start] = capitalised[tokens[start]]
            out[end - 1] += "." if rand() < 0.8 else ","
            start = end
        return " ".join(out)

    def row(tokens: list[int]) -> dict:
        return {"messages": [{"role": "user", "content": render(tokens[:40])},
                             {"role": "assistant", "content": render(tokens[40:])}]}

    def edit(tokens: list[int]) -> list[int]:
        t = list(tokens)
        n_edits = max(1, round(EDIT_RATE * len(t)))
        for k in range(n_edits):
            pos = int(rng.integers(0, len(t)))
            op = k % 3
            if op == 0:
                t[pos] = draw(1)[0]
            elif op == 1:
                t.insert(pos, draw(1)[0])
            else:
                del t[pos]
        return t

    base_tokens = table[rng.integers(0, 1 << 20, (n_base, 200))].tolist()
    rows = [row(t) for t in base_tokens]
    family = list(range(n_base))
    kind = ["base"] * n_base
    source = list(range(n_base))
    pick = rng.permutation(n_base)
    n_near, n_exact, n_hard = n_base // 10, n_base // 20, n_base // 20
    for b in pick[:n_near].tolist():
        rows.append(row(edit(base_tokens[b])))
        family.append(b)
        kind.append("near")
        source.append(b)
    for b in pick[n_near:n_near + n_exact].tolist():
        msgs = rows[b]["messages"]
        rows.append({"messages": [{"role": m["role"], "content": "  " + m["content"].upper().replace(" ", "  \t")}
                                  for m in msgs]})
        family.append(b)
        kind.append("exact")
        source.append(b)
    for j, b in enumerate(pick[n_near + n_exact:n_near + n_exact + n_hard].tolist()):
        rows.append(row(base_tokens[b][:100] + draw(100)))  # same question and start, another ending
        family.append(n_base + j)
        kind.append("hard")
        source.append(b)
    order = rng.permutation(len(rows)).tolist()
    where = {old: new for new, old in enumerate(order)}
    return ([rows[i] for i in order], [family[i] for i in order], [kind[i] for i in order],
            [where[source[i]] for i in order])


def score(result: D.DedupResult, family: list[int], kind: list[str]) -> dict:
    removed_by_family: dict[int, list[D.Removal]] = {}
    correct = 0
    for r in result.removed:
        same = family[r.duplicate_of] == family[r.index]
        correct += same
        if same:
            removed_by_family.setdefault(family[r.index], []).append(r)
    near_families = {family[i] for i, k in enumerate(kind) if k == "near"}
    exact_families = {family[i] for i, k in enumerate(kind) if k == "exact"}
    found_near = sum(1 for f in near_families if any(r.kind == "near" for r in removed_by_family.get(f, ())))
    found_exact = sum(1 for f in exact_families if any(r.kind == "exact" for r in removed_by_family.get(f, ())))
    hard_removed = sum(1 for r in result.removed if kind[r.index] == "hard" or
                       (kind[r.index] == "base" and kind[r.duplicate_of] == "hard"))
    return {"near_dup_recall": round(found_near / len(near_families), 4),
            "near_dup_precision": round(correct / len(result.removed), 4) if result.removed else 1.0,
            "exact_recall": round(found_exact / len(exact_families), 4),
            "removed": result.counts, "wrong_removals": len(result.removed) - correct,
            "hard_negatives_removed": hard_removed, "planted_near_copies": len(near_families)}


def planted_jaccards(rows: list[dict], kind: list[str], source: list[int]) -> dict:
    def jac(k: str) -> list[float]:
        return [D.jaccard(D.row_text(rows[source[i]]), D.row_text(rows[i])) for i, x in enumerate(kind) if x == k]

    near, hard = jac("near"), jac("hard")
    q = [round(float(v), 3) for v in np.percentile(near, [0, 1, 5, 50, 95])]
    return {"near_copies_jaccard": dict(zip(["min", "p1", "p5", "median", "p95"], q)),
            "hard_negatives_jaccard": dict(zip(["median", "max"], [round(float(np.median(hard)), 3),
                                                                   round(float(max(hard)), 3)]))}


def _cpu_s() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def throughput(rows: list[dict], processes: int, repeats: int) -> dict:
    """Wall-clock rows/s (median of runs) and CPU seconds per 1k rows (this process + workers)."""
    D.dedup(rows[:1000])  # one-time set-up (band optimiser, tables) is not throughput
    times, cpus = [], []
    for _ in range(repeats):
        c0, t0 = _cpu_s(), time.perf_counter()
        D.dedup(rows, processes=processes)
        times.append(time.perf_counter() - t0)
        cpus.append(_cpu_s() - c0)
    med = statistics.median(times)
    return {"rows": len(rows), "processes": processes, "repeats": repeats,
            "seconds_median": round(med, 3), "rows_per_s": round(len(rows) / med),
            "rows_per_s_runs": [round(len(rows) / t) for t in times],
            "cpu_s_per_1k_rows": round(1000 * statistics.median(cpus) / len(rows), 4)}


def _vm(field: str) -> float | None:
    """VmRSS / VmHWM of this process in MB (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:  # Linux: "5" resets VmHWM (the peak RSS) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(n_rows: int, processes: int, repeats: int) -> None:
    """Single-process then parallel runs on one corpus, in this fresh process; prints JSON."""
    rows = generate(round(n_rows / 1.2), seed=1)[0]
    corpus_mb = _vm("VmRSS")
    exact_peak = _reset_peak()
    single = throughput(rows, 1, repeats)
    peak = _vm("VmHWM") if exact_peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    single.update(peak_rss_mb=round(peak), corpus_rss_mb=round(corpus_mb or 0))
    parallel = throughput(rows, processes, repeats)
    parallel["workers_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    print(json.dumps({"single": single, "parallel": parallel}))


def run_child(n_rows: int, processes: int, repeats: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(n_rows), "--processes", str(processes),
                          "--repeats", str(repeats)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def datasketch_reference(rows: list[dict], family: list[int], kind: list[str], params: D.MinHashParams) -> dict:
    """datasketch's own MinHash (sha1 per shingle, 128 permutations) + MinHashLSH, same bands,
    same shingles as words, greedy keep-first without Jaccard confirmation: for speed and recall."""
    from datasketch import MinHash, MinHashLSH

    members: dict[int, int] = {}
    for f in family:
        members[f] = members.get(f, 0) + 1
    t0 = time.perf_counter()
    lsh = MinHashLSH(num_perm=params.num_perm, params=(params.bands, params.rows_per_band))
    removed = {}
    for i, r in enumerate(rows):
        w = D.words(D.row_text(r))
        sh = {" ".join(w[j:j + 5]).encode() for j in range(max(1, len(w) - 4))}
        m = MinHash(num_perm=params.num_perm)
        m.update_batch(list(sh))
        hits = lsh.query(m)
        if hits:
            removed[i] = min(hits)
        else:
            lsh.insert(i, m)
    dt = time.perf_counter() - t0
    near_families = {family[i] for i, k in enumerate(kind) if k == "near" and members[family[i]] == 2}
    found = {family[i] for i, j in removed.items() if family[j] == family[i]}
    return {"rows": len(rows), "rows_per_s": round(len(rows) / dt), "near_copies_with_original": len(near_families),
            "near_dup_recall": round(len(found & near_families) / max(len(near_families), 1), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=2, help="worker processes for the parallel runs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="also run 1M rows (minutes, ~3 GB)")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dedup.json")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.processes, args.repeats)
        return

    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    rows, family, kind, source = generate(8400, seed=0)  # 8400 + 10 % near + 5 % exact + 5 % hard = 10,080 rows
    params = D.MinHashParams.create()
    print(f"corpus: {len(rows)} rows, {sum(k == 'near' for k in kind)} near copies "
          f"({EDIT_RATE:.0%} tokens edited), {sum(k == 'exact' for k in kind)} exact copies, "
          f"{sum(k == 'hard' for k in kind)} hard negatives")
    jac = planted_jaccards(rows, kind, source)
    print(f"planted copies' Jaccard: {jac['near_copies_jaccard']}; hard negatives' {jac['hard_negatives_jaccard']}")

    table = []
    for thr in THRESHOLDS:
        p = D.MinHashParams.create(thr)
        s = score(D.dedup(rows, threshold=thr), family, kind)
        table.append({"threshold": thr, "bands": p.bands, "rows_per_band": p.rows_per_band,
                      "near_dup_recall": s["near_dup_recall"], "near_dup_precision": s["near_dup_precision"],
                      "wrong_removals": s["wrong_removals"]})
        print(f"  threshold {thr:.2f} (b={p.bands:2d}, r={p.rows_per_band}): recall {s['near_dup_recall']:.4f} "
              f"precision {s['near_dup_precision']:.4f}")
    default = score(D.dedup(rows), family, kind)
    print(f"default threshold {params.threshold}: {default}")

    tp_10k = throughput(rows, 1, args.repeats)
    tp_10k_par = throughput(rows, args.processes, args.repeats)
    print(f"10k rows: {tp_10k['rows_per_s']} rows/s (1 process), {tp_10k_par['rows_per_s']} rows/s "
          f"({args.processes} processes)")
    runs = run_child(100_000, args.processes, args.repeats)
    tp_100k, tp_100k_par = runs["single"], runs["parallel"]
    print(f"100k rows: {tp_100k['rows_per_s']} rows/s (1 process, peak RSS {tp_100k['peak_rss_mb']} MB with "
          f"the corpus's {tp_100k['corpus_rss_mb']} MB), {tp_100k_par['rows_per_s']} rows/s "
          f"({args.processes} processes)")
    tp_1m = run_child(1_000_000, args.processes, 1) if args.full else None
    if tp_1m:
        print(f"1M rows: {tp_1m['single']['rows_per_s']} rows/s (1 process, peak RSS "
              f"{tp_1m['single']['peak_rss_mb']} MB), {tp_1m['parallel']['rows_per_s']} rows/s "
              f"({args.processes} processes)")
    ref = datasketch_reference(rows[:2000], family[:2000], kind[:2000], params)
    print(f"datasketch MinHash + MinHashLSH reference ({ref['rows']} rows): {ref}")

    result = {
        "command": "python benchmarks/dedup.py" + (" --full" if args.full else "")
                   + (f" --processes {args.processes}" if args.processes != 2 else ""),
        "corpus": {"rows": len(rows), "tokens_per_row": 200, "edit_rate": EDIT_RATE,
                   "planted_near_copies": default["planted_near_copies"],
                   "planted_exact_copies": sum(k == "exact" for k in kind),
                   "hard_negatives": sum(k == "hard" for k in kind), **jac},
        "threshold": params.threshold, "num_perm": params.num_perm, "ngram": params.ngram,
        "bands": params.bands, "rows_per_band": params.rows_per_band,
        "near_dup_recall": default["near_dup_recall"], "near_dup_precision": default["near_dup_precision"],
        "exact_recall": default["exact_recall"], "hard_negatives_removed": default["hard_negatives_removed"],
        "per_threshold": table,
        "rows_per_s_10k": tp_10k["rows_per_s"], "rows_per_s_10k_parallel": tp_10k_par["rows_per_s"],
        "rows_per_s_100k": tp_100k["rows_per_s"], "rows_per_s_100k_parallel": tp_100k_par["rows_per_s"],
        "peak_rss_mb": tp_100k["peak_rss_mb"],
        "throughput": {"10k": tp_10k, "10k_parallel": tp_10k_par, "100k": tp_100k, "100k_parallel": tp_100k_par,
                       **({"1m": tp_1m["single"], "1m_parallel": tp_1m["parallel"]} if tp_1m else {})},
        "datasketch_reference": ref,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "numpy": np.__version__, "load_avg_1m_start": round(load_start, 2),
                    "load_avg_1m_end": round(os.getloadavg()[0], 2)},
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    if tp_1m:
        result.update(rows_per_s_1m=tp_1m["single"]["rows_per_s"], peak_rss_mb_1m=tp_1m["single"]["peak_rss_mb"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} in {result['wall_s']} s")


if __name__ == "__main__":
    main()
