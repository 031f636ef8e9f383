"""The bundled task's generator: disjoint train/eval pools, diverse families, tagged slices."""

import json
import re

import pytest

from tuneops.data.bundled import CITIES, FIRST, LAST, TEMPLATES, age_in_words, json_extraction_rows
from tuneops.data.ingest import ingest_jsonl, ingest_rows, load_rows
from tuneops.errors import InvalidInput
from tuneops.eval.suite import chat_rows_to_items


def _answer(row):
    return json.loads(row["messages"][-1]["content"])


def test_train_and_eval_share_no_template_name_or_city():
    for pools in (FIRST, LAST, CITIES):
        assert not set(pools[0]) & set(pools[1])
    for family, (train_t, eval_t) in TEMPLATES.items():
        assert not set(train_t) & set(eval_t), family
    train, held_out = json_extraction_rows(300, 60, seed=0)
    train_names = {_answer(r)["name"] for r in train}
    train_cities = {_answer(r)["city"] for r in train}
    train_texts = {r["messages"][1]["content"] for r in train}
    for r in held_out:
        a = _answer(r)
        assert a["name"] not in train_names and a["city"] not in train_cities
        assert r["messages"][1]["content"] not in train_texts


def test_rows_are_deterministic_and_answers_match_the_text():
    train, held_out = json_extraction_rows(200, 40, seed=0)
    assert json_extraction_rows(200, 40, seed=0) == (train, held_out)
    assert json_extraction_rows(200, 40, seed=1) != (train, held_out)
    for r in train + held_out:
        a, text = _answer(r), r["messages"][1]["content"]
        assert set(a) == {"name", "age", "city"} and isinstance(a["age"], int)
        assert a["name"] in text and a["city"] in text
        assert str(a["age"]) in text or age_in_words(a["age"]) in text
        assert ("age_words" in r["tags"]) == (str(a["age"]) not in re.findall(r"\d+", text))


def test_every_family_and_hard_slice_is_in_the_held_out_set():
    _, held_out = json_extraction_rows(300, 40, seed=0)
    tags = {t for r in held_out for t in r["tags"]}
    assert set(TEMPLATES) <= tags
    assert {"accented", "multiword_name", "multiword_city", "age_words"} <= tags


@pytest.mark.parametrize("n,words", [(18, "eighteen"), (20, "twenty"), (42, "forty-two"), (85, "eighty-five")])
def test_age_in_words(n, words):
    assert age_in_words(n) == words


def test_tags_survive_ingest_and_reach_eval_items(sqlite_store):
    _, held_out = json_extraction_rows(0, 5, seed=0)
    ds, _ = ingest_rows(sqlite_store, held_out, name="ev")
    rows = load_rows(sqlite_store, ds)
    assert [r["tags"] for r in rows] == [r["tags"] for r in held_out]
    assert [it["tags"] for it in chat_rows_to_items(rows)] == [r["tags"] for r in held_out]
    # tags are content: the same messages with other tags are another version
    retagged = [dict(r, tags=["x"]) for r in held_out]
    assert ingest_rows(sqlite_store, retagged, name="ev")[0].id != ds.id


def test_bad_tags_are_refused_naming_the_line(sqlite_store, tmp_path):
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tags": [3, ""]}
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps(row) + "\n")
    with pytest.raises(InvalidInput, match=r"t.jsonl:1: 'tags' must be a list of non-empty strings"):
        ingest_jsonl(sqlite_store, f, name="t", source="s", license="MIT")
