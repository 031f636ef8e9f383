import json

import pytest

from tuneops.data.bundled import json_extraction_rows
from tuneops.data.ingest import ingest_jsonl, ingest_rows, load_manifest, load_rows
from tuneops.errors import InvalidInput
from tuneops.store.schema import DatasetRecord


ROWS = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
         "source": "test", "license": "CC0-1.0"} for i in range(3)]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _blob_count(store):
    return sum(1 for p in (store.home / "blobs").rglob("*") if p.is_file())


def test_same_data_same_id_and_provenance_per_row(sqlite_store, tmp_path):
    rows, _ = json_extraction_rows(5, 0)
    rows[0] = {"messages": rows[0]["messages"], "source": "crm-export-2026-10", "license": "LicenseRef-internal-only"}
    for r in rows[1:]:
        del r["source"], r["license"]
    a, created_a = ingest_jsonl(sqlite_store, _write(tmp_path / "a.jsonl", rows), name="x", source="wiki",
                                license="CC-BY-4.0")
    b, created_b = ingest_jsonl(sqlite_store, _write(tmp_path / "b.jsonl", rows), name="y", source="wiki",
                                license="CC-BY-4.0")
    assert a.id == b.id and a.id.startswith("ds-") and created_a and not created_b
    manifest = load_manifest(sqlite_store, a)
    assert manifest["rows"][0]["source"] == "crm-export-2026-10" and manifest["rows"][0]["license"] == "LicenseRef-internal-only"
    assert {r["license"] for r in manifest["rows"][1:]} == {"CC-BY-4.0"}
    assert load_rows(sqlite_store, a)[2]["messages"] == rows[2]["messages"]
    # One changed character -> a different version.
    rows[3]["messages"][1]["content"] += "!"
    c, _ = ingest_jsonl(sqlite_store, _write(tmp_path / "c.jsonl", rows), name="x", source="wiki",
                        license="CC-BY-4.0")
    assert c.id != a.id


def test_malformed_line_rejected_atomically(sqlite_store, tmp_path):
    rows, _ = json_extraction_rows(4, 0)
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines[2] = '{"messages": [{"role": "user", "content": "hi"}'  # truncated JSON on line 3
    lines.append(json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "user", "content": "y"}]}))
    path.write_text("\n".join(lines) + "\n")
    before = _blob_count(sqlite_store)
    with pytest.raises(InvalidInput) as e:
        ingest_jsonl(sqlite_store, path, name="bad")
    msg = e.value.message
    assert f"{path}:3: not valid JSON" in msg
    assert f"{path}:5: messages[0].role: is 'robot'; use one of system, user, assistant, tool" in msg
    assert "nothing was read" in msg
    assert sqlite_store.all(DatasetRecord) == []
    assert _blob_count(sqlite_store) == before


def test_unknown_keys_and_empty_content(sqlite_store, tmp_path):
    path = _write(tmp_path / "k.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                       {"role": "assistant", "content": " "}], "label": 1}])
    with pytest.raises(InvalidInput) as e:
        ingest_jsonl(sqlite_store, path, name="k")
    assert "k.jsonl:1: unknown column(s) 'label'" in e.value.message
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}
    with pytest.raises(InvalidInput, match=r"k2.jsonl:1: messages\[1\].content: empty"):
        ingest_jsonl(sqlite_store, _write(tmp_path / "k2.jsonl", [row]), name="k", license="MIT")


def test_row_without_a_user_turn_is_refused_at_ingest(sqlite_store, tmp_path):
    f = tmp_path / "eval.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]})
                 + "\n")
    with pytest.raises(InvalidInput, match=rf"{f}:1: messages: no user message before the assistant's answer"):
        ingest_jsonl(sqlite_store, f, name="ev")
    assert sqlite_store.all(DatasetRecord) == []


@pytest.mark.parametrize("name", ["", " ", "x" * 5000, "has space", "-lead", "a/b", "名"])
def test_bad_dataset_names_are_refused(sqlite_store, name):
    with pytest.raises(InvalidInput, match="is not allowed"):
        ingest_rows(sqlite_store, ROWS, name=name)
    assert sqlite_store.all(DatasetRecord) == []


def test_same_content_under_a_new_name_gains_that_name(sqlite_store):
    first, created = ingest_rows(sqlite_store, ROWS, name="support-v1")
    again, created_again = ingest_rows(sqlite_store, ROWS, name="support-latest")
    assert created and not created_again and again.id == first.id
    assert sqlite_store.resolve_dataset("support-latest").id == first.id
    assert sqlite_store.resolve_dataset("support-v1").id == first.id
    assert sqlite_store.dataset_names() == {first.id: ["support-v1", "support-latest"]}
    # A newer version under a name it already has: the name now resolves to the newer one.
    newer, _ = ingest_rows(sqlite_store, ROWS[:1], name="support-latest")
    assert sqlite_store.resolve_dataset("support-latest").id == newer.id
    assert sqlite_store.resolve_dataset("support-v1").id == first.id
