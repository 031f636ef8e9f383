"""`tuneops data ingest` as a pipeline, through the real CLI: dedupe against earlier versions (through
their saved index), quality filters, held-out splits, and refusals of bad option values."""

import json
import random

import pytest

from tests.cli.helpers import tuneops
from tuneops.store import Store
from tuneops.store.schema import DatasetRecord

_rng = random.Random(1234)
VOCAB = sorted({"".join(_rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_rng.randint(3, 8)))
                for _ in range(3000)})


def _words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(VOCAB) for _ in range(n)]


def _row(seed: int, **columns) -> dict:
    """A row no other seed's row resembles: a 9-word question, a 30-word answer."""
    return {"messages": [{"role": "user", "content": "Question: " + " ".join(_words(8, seed)) + "?"},
                         {"role": "assistant", "content": " ".join(_words(30, seed + 10_000)) + "."}], **columns}


def _near_copy(row: dict) -> dict:
    """The row with one word of its answer changed (Jaccard of word 5-gram shingles ~0.75)."""
    words = row["messages"][1]["content"].split()
    words[15] = "zzzzzz"
    return {**row, "messages": [row["messages"][0], {"role": "assistant", "content": " ".join(words)}]}


def _write(path, rows) -> object:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _ingest(home, path, *args, check=True):
    proc = tuneops(home, "data", "ingest", path, "--license", "MIT", *args, "--json", check=check)
    return json.loads(proc.stdout) if check else proc


def _answers(home, ref) -> list[str]:
    shown = json.loads(tuneops(home, "data", "show", ref, "--rows", "1000", "--json").stdout)
    return [r["messages"][-1]["content"] for r in shown["rows"]]


def _versions(home) -> list[DatasetRecord]:
    store = Store(home)
    try:
        return store.all(DatasetRecord)
    finally:
        store.engine.dispose()


# -- dedupe against earlier versions ---------------------------------------------------------------

def test_dedupe_against_an_earlier_version_through_its_saved_index(tmp_path):
    home = tmp_path / "home"
    v1_rows = [_row(i) for i in range(20)]
    v1 = _ingest(home, _write(tmp_path / "v1.jsonl", v1_rows), "--name", "support")
    saved = v1["near_dup_index"]
    assert saved["rows"] == 20 and Store(home).blobs.blob_path(saved["blob"]).is_file()

    shouting = {**v1_rows[1], "messages": [v1_rows[1]["messages"][0],
                                           {"role": "assistant", "content": "  " + v1_rows[1]["messages"][1]["content"]
                                            .upper()}]}
    copies = [v1_rows[0], shouting] + [_near_copy(v1_rows[i]) for i in range(2, 5)]
    new = [_row(100 + i) for i in range(6)]
    v2 = _ingest(home, _write(tmp_path / "v2.jsonl", copies + new), "--name", "support",
                 "--dedupe-against", "support")
    assert v2["num_rows"] == 6 and v2["created"]
    # within-file dedupe stays exact (the default); against earlier versions near-copies go too
    assert v2["deduplicated"]["mode"] == "exact" and v2["deduplicated"]["removed"] == {"against": 5}
    assert v2["deduplicated"]["against_versions"] == [
        {"dataset": v1["id"], "ref": "support", "rows": 20, "index": "saved", "removed": 5}]
    assert _answers(home, "support") == [r["messages"][1]["content"] for r in new]

    # a version without a readable saved index (ingested before there was one) is hashed from its rows
    Store(home).blobs.blob_path(saved["blob"]).unlink()
    v3 = _ingest(home, _write(tmp_path / "v3.jsonl", copies + [_row(200)]), "--name", "support-v3",
                 "--dedupe-against", v1["id"], "--dedupe-against", "support")
    assert v3["num_rows"] == 1 and v3["deduplicated"]["removed"] == {"against": 5}
    assert [(v["dataset"], v["index"], v["removed"]) for v in v3["deduplicated"]["against_versions"]] == [
        (v1["id"], "rebuilt from rows", 5), (v2["id"], "saved", 0)]

    # nothing left to store: refused, and no version is added
    before = len(_versions(home))
    proc = _ingest(home, tmp_path / "v1.jsonl", "--name", "again", "--dedupe-against", "support-v3",
                   "--dedupe-against", v1["id"], check=False)
    assert proc.returncode == 2 and "none of its 20 row(s) is left to store" in proc.stderr
    assert "(20 duplicate rows of the --dedupe-against versions)" in proc.stderr and len(_versions(home)) == before


# -- quality filters --------------------------------------------------------------------------------

def _json_row(seed: int, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": "Give the answer as JSON: " + " ".join(_words(6, seed))},
                         {"role": "assistant", "content": answer}]}


def test_quality_filters_drop_rows_count_them_by_reason_and_quarantine_them(tmp_path):
    good = [_json_row(i, json.dumps({"answer": " ".join(_words(20, 50 + i))})) for i in range(6)]
    bad = [_json_row(10, '{"a": 1}'),  # line 7: 2 words
           _json_row(11, "Sure! Here it is: {answer: 3}"),  # line 8: not JSON
           _json_row(12, " ".join(_words(25, 99))),  # line 9: at the 20-word cap, unfinished (and not JSON)
           _json_row(13, json.dumps({"answer": " ".join(_words(50, 98))}))]  # line 10: over 40 words, but complete
    f = _write(tmp_path / "answers.jsonl", good + bad)
    options = ("--quality", "min-words=3", "--quality", "max-words=40", "--quality", "length-cap=20",
               "--quality", "length-cap-unit=words", "--expect-json")

    home = tmp_path / "home"
    plain = _ingest(home, f, "--name", "answers")
    assert plain["num_rows"] == 10 and "quality" not in plain  # no filter asked for: nothing changes
    ds = _ingest(home, f, "--name", "answers", *options)
    assert ds["num_rows"] == 6 and "quarantine" not in ds
    assert ds["quality"] == {"filters": {"min_words": 3, "max_words": 40, "expect_json": True, "length_cap": 20,
                                         "length_cap_unit": "words", "cap_slack": 0.02},
                             "removed": {"malformed_json": 2, "too_long": 1, "too_short": 1,
                                         "truncated_response": 1},
                             "rows_removed": 4}
    assert _answers(home, ds["id"]) == [r["messages"][1]["content"] for r in good]

    home_q = tmp_path / "home-q"
    q = _ingest(home_q, f, "--name", "answers", *options, "--on-error", "quarantine")
    assert q["id"] == ds["id"] and q["quality"]["quarantined"] and q["quarantine"]["rows"] == 4
    lines = [json.loads(line) for line in open(q["quarantine"]["file"])]
    assert [entry["where"] for entry in lines] == [f"{f}:{n}" for n in (7, 8, 9, 10)]
    assert lines[0]["problems"] == ["quality too_short: messages[1].content: 2 words < 3"]
    assert [p.split(":")[0] for p in lines[2]["problems"]] == ["quality truncated_response", "quality malformed_json"]


# -- held-out splits --------------------------------------------------------------------------------

def test_heldout_split_is_stratified_disjoint_keeps_near_duplicates_together_and_is_seeded(tmp_path):
    base = [_row(i, tier="gold" if i < 28 else "curated") for i in range(40)]
    copies = [_near_copy(base[i]) for i in range(8)]  # kept (--dedupe off): each must share its original's side
    f = _write(tmp_path / "tickets.jsonl", base + copies)
    args = ("--name", "tickets", "--dedupe", "off", "--heldout", "0.25", "--stratify", "tier", "--split-seed", "7")

    home = tmp_path / "home"
    proc = tuneops(home, "data", "ingest", f, "--license", "MIT", *args, "--json")
    train = json.loads(proc.stdout)
    held_id = train["heldout"]["id"]
    assert train["heldout"]["name"] == "tickets-heldout" and train["split"]["heldout"] == held_id
    assert f"as tickets ({train['id']})" in proc.stderr and f"as tickets-heldout ({held_id})" in proc.stderr
    # 0.25 * 48 = 12 held out; each tier gives its share
    assert (train["num_rows"], train["heldout"]["num_rows"]) == (36, 12)
    assert train["split"]["strata"] == {"curated": {"rows": 12, "heldout": 3}, "gold": {"rows": 36, "heldout": 9}}
    assert train["tiers"] == {"gold": 27, "curated": 9}

    train_answers, held_answers = _answers(home, "tickets"), _answers(home, "tickets-heldout")
    assert len(train_answers) == 36 and len(held_answers) == 12 and not set(train_answers) & set(held_answers)
    assert set(train_answers) | set(held_answers) == {r["messages"][1]["content"] for r in base + copies}
    for original, copy in zip(base, copies):
        side = {a: "train" for a in train_answers} | {a: "heldout" for a in held_answers}
        assert side[original["messages"][1]["content"]] == side[copy["messages"][1]["content"]]
    assert train["split"]["clusters"] == 40 and train["split"]["largest_cluster"] == 2
    held = json.loads(tuneops(home, "data", "show", "tickets-heldout", "--rows", "0", "--json").stdout)
    assert held["id"] == held_id and held["split"]["role"] == "heldout" and held["split"]["train_name"] == "tickets"
    assert held["near_dup_index"]["rows"] == 12 and train["near_dup_index"]["rows"] == 36

    # same file, same seed: the same two versions, wherever they are stored
    again = _ingest(tmp_path / "elsewhere", f, *args)
    assert (again["id"], again["heldout"]["id"]) == (train["id"], held_id)
    other = _ingest(home, f, *args[:-1], "8")
    assert other["heldout"]["id"] != held_id and other["heldout"]["num_rows"] == 12


# -- bad option values ----------------------------------------------------------------------------

BAD_OPTIONS = {
    "fraction-zero": (["--heldout", "0"], "--heldout 0.0: the held-out share must be a fraction strictly between"),
    "fraction-one": (["--heldout", "1"], "--heldout 1.0: the held-out share must be a fraction strictly between"),
    "fraction-big": (["--heldout", "1.5"], "fix: e.g. --heldout 0.1 holds out 10% of the rows"),
    "unknown-ref": (["--dedupe-against", "nope"], "--dedupe-against 'nope': no dataset version has that name or id"),
    "unknown-stratify-field": (["--heldout", "0.2", "--stratify", "colour"],
                               "--stratify 'colour': rows have no such field"),
    "stratify-field-no-row-has": (["--heldout", "0.2", "--stratify", "purpose"],
                                  "--stratify purpose: no row of"),
    "stratify-without-heldout": (["--stratify", "length"], "--stratify only applies when a held-out split is stored"),
    "quality-not-a-number": (["--quality", "min-words=many"], "--quality 'min-words=many': min-words must be a whole"),
    "quality-unknown-key": (["--quality", "politeness=3"], "unknown quality filter 'politeness'"),
    "quality-cap-without-unit": (["--quality", "length-cap=100"], "fix: add --quality length-cap-unit=words"),
    "quality-min-above-max": (["--quality", "min-words=9", "--quality", "max-words=3"],
                              "--quality: min-words (9) is above max-words (3)"),
}


@pytest.mark.parametrize("args,message", list(BAD_OPTIONS.values()), ids=list(BAD_OPTIONS))
def test_bad_option_values_exit_2_with_the_option_and_the_fix_and_store_nothing(tmp_path, args, message):
    home = tmp_path / "home"
    f = _write(tmp_path / "rows.jsonl", [_row(i) for i in range(5)])
    proc = _ingest(home, f, "--name", "rows", *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "fix:" in proc.stderr and "Traceback" not in proc.stderr
    assert _versions(home) == []


def test_erasure_purges_the_erased_versions_saved_index(tmp_path):
    """The saved near-duplicate index holds digests and shingle hashes of every row: erasing a subject's rows
    deletes the erased version's index blob too, not only its rows."""
    home = tmp_path / "home"
    rows = [_row(i, subject="alice" if i < 3 else "bob") for i in range(10)]
    v1 = _ingest(home, _write(tmp_path / "v1.jsonl", rows), "--name", "people")
    index_blob = Store(home).blobs.blob_path(v1["near_dup_index"]["blob"])
    assert index_blob.is_file()
    tuneops(home, "data", "erase", "--subject", "alice", "--reason", "GDPR art. 17")
    assert not index_blob.exists()
    erased = next(v for v in _versions(home) if v.id == v1["id"])
    assert "near_dup_index" not in erased.summary
