import json

import pytest

from tuneops.data.bundled import json_extraction_rows
from tuneops.data.ingest import ingest_jsonl, load_manifest, load_rows
from tuneops.errors import InvalidInput
from tuneops.store.schema import DatasetRecord


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _blob_count(store):
    return sum(1 for p in (store.home / "blobs").rglob("*") if p.is_file())


def test_same_data_same_id_and_provenance_per_row(sqlite_store, tmp_path):
    rows, _ = json_extraction_rows(5, 0)
    rows[0] = {"messages": rows[0]["messages"], "source": "crm-export-2026-10", "license": "internal"}
    for r in rows[1:]:
        del r["source"], r["license"]
    a, created_a = ingest_jsonl(sqlite_store, _write(tmp_path / "a.jsonl", rows), name="x", source="wiki",
                                license="CC-BY-4.0")
    b, created_b = ingest_jsonl(sqlite_store, _write(tmp_path / "b.jsonl", rows), name="y", source="wiki",
                                license="CC-BY-4.0")
    assert a.id == b.id and a.id.startswith("ds-") and created_a and not created_b
    manifest = load_manifest(sqlite_store, a)
    assert manifest["rows"][0]["source"] == "crm-export-2026-10" and manifest["rows"][0]["license"] == "internal"
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
    assert f"{path}:5: messages[0].role is 'robot'" in msg
    assert f"{path}:5: the last message must be the assistant's answer" in msg
    assert "nothing was ingested" in msg
    assert sqlite_store.all(DatasetRecord) == []
    assert _blob_count(sqlite_store) == before


def test_unknown_keys_and_empty_content(sqlite_store, tmp_path):
    path = _write(tmp_path / "k.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                       {"role": "assistant", "content": " "}], "label": 1}])
    with pytest.raises(InvalidInput) as e:
        ingest_jsonl(sqlite_store, path, name="k")
    assert "k.jsonl:1: unknown key(s) ['label']" in e.value.message
    assert "k.jsonl:1: messages[1].content must be a non-empty string" in e.value.message


def test_bundled_eval_uses_unseen_templates():
    train, held_out = json_extraction_rows(200, 40, seed=0)
    from tuneops.data.bundled import EVAL_TEMPLATES, TRAIN_TEMPLATES

    assert not set(EVAL_TEMPLATES) & set(TRAIN_TEMPLATES)
    assert json_extraction_rows(200, 40, seed=0) == (train, held_out)
    assert {json.loads(r["messages"][-1]["content"]).keys() == {"name", "age", "city"} for r in held_out} == {True}
