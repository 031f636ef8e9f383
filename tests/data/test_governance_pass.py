"""The governance pass over Arrow batches (scrub_batch, signatures_batch, run_pass): the same rows and
counts as ingest's row-by-row path, the same in one process or two, bounded batches in flight."""

import json
import random

import numpy as np
import pyarrow as pa
import pytest

from tuneops.data.dedup import minhash_batch
from tuneops.data.governance import DEDUPE_ROLES, run_pass, scrub_batch, signatures_batch
from tuneops.data.ingest import ingest_file, load_rows
from tuneops.data.pii import apply_policy
from tuneops.errors import InvalidInput

SYSTEM = "You are the support assistant of Example Ltd. Answer briefly and politely."


def corpus(n_base: int = 40, seed: int = 0) -> list[dict]:
    """Chat rows with a shared system prompt, PII in some, near copies (two words changed in 120),
    exact copies (case and spacing only) and PII inside copies; shuffled, so copies may come first."""
    rng = random.Random(seed)
    vocab = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "po", "ru", "si", "ta")
             for b in ("d", "m", "n", "r", "x", "z")]
    words = [[rng.choice(vocab) for _ in range(120)] for _ in range(n_base)]

    def row(ws: list[str], extra: str = "") -> dict:
        return {"messages": [{"role": "system", "content": SYSTEM},
                             {"role": "user", "content": " ".join(ws[:30]) + extra},
                             {"role": "assistant", "content": " ".join(ws[30:])}]}

    pii = [" mail me at ana.garcia@example.com", " my card is 4111 1111 1111 1111", " call +44 20 7946 0018"]
    rows = [row(ws, pii[i % 3] if i % 4 == 0 else "") for i, ws in enumerate(words)]
    for i in range(0, n_base, 3):  # near copies
        ws = list(words[i])
        ws[10], ws[90] = "changed", "edited"
        rows.append(row(ws, " or mail bo@example.org" if i % 2 else ""))
    for i in range(1, n_base, 5):  # exact copies, up to case and spacing
        r = row(words[i])
        r["messages"][2]["content"] = "  " + r["messages"][2]["content"].upper().replace(" ", "   ")
        rows.append(r)
    rng.shuffle(rows)
    return rows


def as_batches(rows: list[dict], size: int) -> list[pa.RecordBatch]:
    return pa.Table.from_pylist(rows).to_batches(max_chunksize=size)


def messages(rows) -> list:
    return [[{"role": m["role"], "content": m["content"]} for m in r["messages"]] for r in rows]


@pytest.mark.parametrize("policy", ["redact", "block"])
def test_run_pass_gives_ingests_rows_and_counts(sqlite_store, tmp_path, policy):
    rows = corpus()
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds, _ = ingest_file(sqlite_store, f, name="gov", license="MIT", pii=policy, dedupe="near",
                        on_error="quarantine")
    kept, report = run_pass(as_batches(rows, 7), policy=policy, near=True)
    kept = [r for b in kept for r in b.to_pylist()]

    assert messages(kept) == messages(load_rows(sqlite_store, ds))
    assert report.pii == ds.summary["pii"]["found"]  # as ingest: a blocked row's findings are not the version's
    assert bool(report.pii) == (policy == "redact")
    assert report.removed_counts == ds.summary["deduplicated"]["removed"]
    least = 10 if policy == "redact" else 3  # blocking drops the rows with PII before dedupe sees them
    assert report.removed_counts["near"] >= least and report.removed_counts["exact"] >= least // 2
    assert report.rows_in == len(rows) and report.rows_out == len(kept) == ds.num_rows
    if policy == "block":
        assert len(report.blocked) == ds.summary["quarantine"]["rows"] > 0
        assert all("EMAIL" in t or "CREDIT_CARD" in t or "PHONE" in t for _, t in report.blocked)
    else:
        assert report.blocked == [] and "<EMAIL>" in json.dumps(kept) and "example.com" not in json.dumps(kept)
    # every removal names an earlier input row that was kept, with the same text up to the copy's edits
    blocked = {r for r, _ in report.blocked}
    gone = {r.index for r in report.removed} | blocked
    for r in report.removed:
        assert r.duplicate_of < r.index and r.duplicate_of not in gone
        a, b = (rows[i]["messages"][2]["content"].lower().split() for i in (r.index, r.duplicate_of))
        assert sum(x == y for x, y in zip(a, b)) >= 85


def test_one_process_and_two_agree(tmp_path):
    rows = corpus(60, seed=1)
    one, rep1 = run_pass(as_batches(rows, 9), processes=1)
    two, rep2 = run_pass(as_batches(rows, 9), processes=2)
    assert pa.Table.from_batches(list(one)).equals(pa.Table.from_batches(list(two)))
    assert rep1.to_dict(examples=100) == rep2.to_dict(examples=100) and rep1.removed == rep2.removed
    assert rep1.rows_out < rep1.rows_in


@pytest.mark.parametrize("processes, limit", [(1, None), (2, None), (2, 3)])
def test_batches_in_flight_are_bounded(processes, limit):
    rows = corpus(40, seed=2)
    pulled = []

    def source():
        for b in as_batches(rows, 4):
            pulled.append(b.num_rows)
            yield b

    kept, report = run_pass(source(), processes=processes, max_in_flight=limit)
    bound = limit or 2 * processes
    for _ in kept:  # the source is read lazily: never more than `bound` batches ahead of the decisions
        assert len(pulled) - report.batches <= bound
    assert report.batches == len(pulled) == -(-len(rows) // 4) and 1 <= report.max_in_flight <= bound


def test_scrub_batch_matches_apply_policy_row_by_row():
    rows = corpus(12, seed=3)[:15]
    rows[2]["messages"].insert(2, {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "lookup", "arguments": '{"email": "x.y@example.net"}'}}]})
    rows[2]["messages"].insert(3, {"role": "tool", "content": "found: +44 20 7946 0018", "tool_calls": None})
    plain = [r for i, r in enumerate(rows) if i != 2]
    cases = [(pa.Table.from_pylist(plain).to_batches()[0].slice(3, 9), plain[3:12]),  # column path, a slice
             (pa.Table.from_pylist(rows).to_batches()[0], rows)]  # tool calls: row-by-row path
    pref = [{"prompt": [{"role": "user", "content": f"q{i} ana@example.com"}],
             "chosen": [{"role": "assistant", "content": "ok 4111 1111 1111 1111" if i else "fine"}],
             "rejected": [{"role": "assistant", "content": "no"}]} for i in range(3)]
    cases.append((pa.Table.from_pylist(pref).to_batches()[0], pref))
    for batch, source in cases:
        for policy in ("redact", "allow", {"EMAIL": "block", "*": "redact"}):
            out = scrub_batch(batch, policy)
            want = [apply_policy(r, policy if isinstance(policy, dict) else {"*": policy}) for r in source]
            kept = [w.row for w in want if w.row is not None]
            assert out.batch.to_pylist() == pa.Table.from_pylist(kept, schema=batch.schema).to_pylist()
            assert out.blocked == [(i, w.blocked_types) for i, w in enumerate(want) if w.row is None]
            total: dict = {}
            for w in want:
                if w.row is not None:
                    for k, v in w.counts.items():
                        total[k] = total.get(k, 0) + v
            assert out.counts == dict(sorted(total.items())) and out.batch.schema == batch.schema
    with pytest.raises(InvalidInput, match="unknown PII action"):
        scrub_batch(cases[0][0], "shred")


def test_signatures_batch_matches_minhash_of_the_rows():
    rows = corpus(10, seed=4)
    batch = pa.Table.from_pylist(rows).to_batches()[0].slice(2, 8)
    got, want = signatures_batch(batch), minhash_batch(rows[2:10], roles=DEDUPE_ROLES)
    for field in ("exact", "band_keys", "signatures", "shingles", "shingle_offsets"):
        assert np.array_equal(getattr(got, field), getattr(want, field)), field
    assert not np.array_equal(got.exact, minhash_batch(rows[2:10]).exact)  # the system prompt is left out
