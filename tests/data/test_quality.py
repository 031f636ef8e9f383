import random
from collections import Counter

import pytest

from tuneops.data import dedup as D
from tuneops.data.quality import QualityConfig, check_row, ends_cleanly, filter_rows, length_buckets, split_rows
from tuneops.errors import InvalidInput


def _sft(answer, user="Question?"):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def _codes(row, **config):
    return [(i.code, i.field) for i in check_row(row, QualityConfig(**config))]


# -- filters --------------------------------------------------------------------------------------

def test_empty_and_missing_responses():
    assert _codes(_sft("  \n\t")) == [("empty_response", "messages[1].content")]
    assert _codes({"messages": [{"role": "user", "content": "hi"}]}) == [("no_response", "row")]
    tool_call = {"messages": [{"role": "user", "content": "weather?"},
                              {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
                              {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]}
    assert _codes(tool_call) == []
    pref = {"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "Fine."}],
            "rejected": [{"role": "assistant", "content": ""}]}
    assert _codes(pref) == [("empty_response", "rejected[0].content")]
    assert _codes({"prompt": [{"role": "user", "content": "Q"}], "chosen": [], "rejected": []}) == [
        ("no_response", "row")]


def test_length_bounds_in_characters_and_words():
    row = _sft("One two three.")
    assert _codes(row, min_words=3, max_words=3, min_chars=14, max_chars=14) == []
    assert _codes(row, min_words=4) == [("too_short", "messages[1].content")]
    assert _codes(row, max_chars=10) == [("too_long", "messages[1].content")]
    assert _codes(row, max_words=3, length_scope="row") == [("too_long", "row")]  # "Question?\nOne two three."
    (issue,) = check_row(row, QualityConfig(min_chars=20))
    assert issue.detail == "14 characters < 20"
    assert _codes(_sft(" "), min_chars=5) == [("empty_response", "messages[1].content")]  # not also too_short


def test_truncation_needs_the_cap_and_an_unclean_ending():
    cut = _sft("The first step is to compute the total and then we divide it by the")
    ends = _sft("The first step is to compute the total and then we divide it by two.")
    assert _codes(cut) == []  # no cap known: never called truncated
    assert _codes(cut, length_cap=15, length_cap_unit="words") == [("truncated_response", "messages[1].content")]
    assert _codes(ends, length_cap=15, length_cap_unit="words") == []  # at the cap, but finished
    assert _codes(cut, length_cap=40, length_cap_unit="words") == []  # unfinished-looking, but well below the cap
    assert _codes(_sft("#### 42"), length_cap=2, length_cap_unit="words") == [
        ("truncated_response", "messages[1].content")]
    chars = len(cut["messages"][1]["content"])
    assert _codes(cut, length_cap=chars + 1, length_cap_unit="chars") == [
        ("truncated_response", "messages[1].content")]  # within cap_slack of the cap
    assert _codes(cut, length_cap=16, count_tokens=lambda s: len(s.split()) + 1) != []
    with pytest.raises(InvalidInput, match="count_tokens"):
        QualityConfig(length_cap=100)
    assert not ends_cleanly("Here is the code:\n```python\nprint('hi')")
    assert ends_cleanly("Done.\n```python\nprint('hi')\n```") and ends_cleanly("(see above)")
    assert not ends_cleanly("The steps are:") and not ends_cleanly("first, second,")


def test_malformed_json_when_the_task_expects_json():
    assert _codes(_sft('{"name": "Ana", "age": 31}'), expect_json=True) == []
    assert _codes(_sft('```json\n{"name": "Ana"}\n```'), expect_json=True) == []
    assert _codes(_sft('{"name": "Ana", "age": 31'), expect_json=True) == [("malformed_json", "messages[1].content")]
    assert _codes(_sft("Sure! Here it is."), expect_json=True) == [("malformed_json", "messages[1].content")]
    assert _codes(_sft("Sure! Here it is.")) == []


def test_filter_rows_reports_reason_codes_per_row():
    rows = [_sft("Good answer."), _sft(""), _sft("{bad json"), {"messages": [{"role": "user", "content": "x"}]}]
    result = filter_rows(rows, QualityConfig(expect_json=True))
    assert result.kept == []  # "Good answer." is not JSON either
    assert result.reasons(4) == [["malformed_json"], ["empty_response"], ["malformed_json"], ["no_response"]]
    assert result.counts == {"empty_response": 1, "malformed_json": 2, "no_response": 1}
    plain = filter_rows(rows)
    assert plain.kept == [0, 2] and set(plain.rejected) == {1, 3}
    assert plain.report()["counts"] == {"empty_response": 1, "no_response": 1}


# -- splits ---------------------------------------------------------------------------------------

VOCAB = [f"w{i}" for i in range(3000)]


def _text(seed, n):
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def _rows(n=300):
    rows = []
    for i in range(n):
        r = _sft(_text(i, 20 + (i % 7) * 30), user=f"q{i}")
        r["meta"] = {"category": "a" if i % 3 else "b"}
        rows.append(r)
    return rows


def test_split_is_deterministic_for_a_seed_and_content_not_order():
    rows = _rows()
    a = split_rows(rows, heldout_fraction=0.2, seed=7)
    assert a.heldout == split_rows(rows, heldout_fraction=0.2, seed=7).heldout
    assert len(a.heldout) == 60 and sorted(a.train + a.heldout) == list(range(300))
    assert split_rows(rows, heldout_fraction=0.2, seed=8).heldout != a.heldout
    order = list(range(300))
    random.Random(1).shuffle(order)
    b = split_rows([rows[i] for i in order], heldout_fraction=0.2, seed=7)
    assert sorted(order[i] for i in b.heldout) == a.heldout  # the same rows, wherever they sit


def test_split_stratifies_by_field_and_by_length():
    rows = _rows()
    by_field = split_rows(rows, heldout_fraction=0.2, stratify_by="meta.category")
    assert by_field.strata == {"a": {"rows": 200, "heldout": 40}, "b": {"rows": 100, "heldout": 20}}
    held = Counter(rows[i]["meta"]["category"] for i in by_field.heldout)
    assert held == {"a": 40, "b": 20}
    buckets = length_buckets(rows, 4)
    assert len(set(buckets)) == 4
    by_len = split_rows(rows, heldout_fraction=0.25, stratify_by="length")
    for name, s in by_len.strata.items():
        assert abs(s["heldout"] - 0.25 * s["rows"]) <= 1, name
    missing = split_rows(rows, heldout_fraction=0.2, stratify_by="meta.nope")
    assert list(missing.strata) == ["<missing>"]


def test_split_never_separates_near_duplicates():
    rows = _rows(200)
    planted = []
    for k in range(0, 200, 10):  # a near copy (one word changed) and an exact copy of every 10th row
        words = rows[k]["messages"][1]["content"].split()
        words[-1] = "changed"
        rows.append(_sft(" ".join(words), user=f"q{k}"))
        rows.append(dict(rows[k]))
        planted.append((k, len(rows) - 2, len(rows) - 1))
    labels = D.near_duplicate_clusters(rows)
    for group in planted:
        assert len({labels[i] for i in group}) == 1
    for seed in range(5):
        split = split_rows(rows, heldout_fraction=0.3, seed=seed)
        held = set(split.heldout)
        for group in planted:
            assert len({i in held for i in group}) == 1, (seed, group)
        assert split.clusters == 200 and split.details["largest_cluster"] == 3
    assert abs(len(split.heldout) - 0.3 * len(rows)) <= 2
    free = split_rows(rows, heldout_fraction=0.3, seed=0, near_dup_threshold=None)
    assert free.clusters == len(rows)
    custom = split_rows(rows, heldout_fraction=0.3, clusters=[i // 2 for i in range(len(rows))])
    assert all((2 * i in custom.heldout) == (2 * i + 1 in custom.heldout) for i in range(len(rows) // 2))


def test_split_rejects_bad_arguments():
    with pytest.raises(InvalidInput, match="heldout_fraction"):
        split_rows(_rows(10), heldout_fraction=1.0)
    with pytest.raises(InvalidInput, match="at least 2 rows"):
        split_rows(_rows(1))
    with pytest.raises(InvalidInput, match="one label per row"):
        split_rows(_rows(10), clusters=[0, 1])
