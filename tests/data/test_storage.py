"""Dataset versions stored as Parquet: byte-exact rows, same ids as before, legacy JSONL still loads,
streaming in bounded batches, erasure on either format."""

import pyarrow.parquet as pq
import pytest

from tuneops.data import ingest
from tuneops.data.erasure import erase
from tuneops.data.ingest import build_manifest, ingest_rows, iter_row_batches, load_manifest, load_rows
from tuneops.store.ids import canonical_json, content_id, sha256_bytes
from tuneops.store.schema import DatasetRecord

# Characters that have broken line-based or JSON-based storage before: line and paragraph
# separators (str.splitlines breaks at them), NEL, file separator, NUL, CRLF, an astral emoji,
# a combining accent, right-to-left text.
NASTY = "a\u2028b\u2029c\x85d\x1ce\x00f\r\ng \U0001F600 e\u0301 \u05e9\u05dc\u05d5\u05dd \\n \"q\""


def sft_rows() -> list[dict]:
    prov = {"source": "crm", "license": "MIT", "purpose": "support", "collected_at": "2026-01-02",
            "retention_until": "2027-01-02", "tier": "gold", "subject": "subj-0123456789abcdef01234567",
            "tags": ["form", "accented \u2028"]}
    return [
        {"messages": [{"role": "system", "content": NASTY}, {"role": "user", "content": "hi " + NASTY},
                      {"role": "assistant", "content": NASTY * 3}], **prov},
        {"messages": [{"role": "user", "content": "what is order 7?"},
                      {"role": "assistant", "content": None,
                       "tool_calls": [{"id": "call_1", "type": "function",
                                       "function": {"name": "lookup", "arguments": "{\"id\": 7, \"q\": \"\u2028\"}"}}]},
                      {"role": "tool", "tool_call_id": "call_1", "name": "lookup", "content": "{\"state\": null}"},
                      {"role": "assistant", "content": "It shipped."}],
         "source": "tools", "license": "Apache-2.0"},
        # None and missing are different rows: a None-valued key must come back as None, not vanish
        {"messages": [{"role": "user", "content": "x", "name": None}, {"role": "assistant", "content": "y"}],
         "source": "forum", "license": "CC-BY-4.0", "purpose": None, "tags": []},
        {"messages": [{"role": "user", "content": "numbers"},
                      {"role": "assistant", "content": "ok", "weight": 0.1, "big": 2 ** 70, "tiny": 1e-300,
                       "nested": {"b": [1, {"z": True, "a": False}], "a": {}}}],
         "source": "synthetic", "license": "MIT", "tier": "synthetic"},
        {"messages": [{"role": "user", "content": "long " * 20_000}, {"role": "assistant", "content": "."}],
         "source": "crm", "license": "MIT"},
    ] + [{"messages": [{"role": "system", "content": NASTY}, {"role": "user", "content": "hi " + NASTY},
                       {"role": "assistant", "content": NASTY * 3}], **prov}]  # an exact duplicate row


def preference_rows() -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"q{i} {NASTY}"}],
             "chosen": [{"role": "assistant", "content": f"good {i}"}],
             "rejected": [{"role": "assistant", "content": None if i == 1 else f"bad {i}\u2029"}],
             "source": "hh", "license": "MIT", "tags": ["pairs"]} for i in range(3)]


# Computed with the JSONL storage before this change: the id is the manifest's hash, and must not move.
PINNED_SFT_ID = "ds-3d34c199eb57d50f"
PINNED_PREFERENCE_ID = "ds-7efa02becff0c80c"


def _lines(rows: list[dict]) -> list[bytes]:
    return [canonical_json(r) for r in rows]


def _legacy_version(store, rows: list[dict], kind: str = "sft") -> DatasetRecord:
    """A version stored the way ingest_rows did before Parquet: canonical JSONL rows."""
    manifest_bytes = canonical_json(build_manifest(rows, kind))
    rec = DatasetRecord(id=content_id("ds", sha256_bytes(manifest_bytes)), name="legacy",
                        manifest_blob=store.blobs.put_bytes(manifest_bytes),
                        rows_blob=store.blobs.put_bytes(b"\n".join(_lines(rows)) + b"\n"),
                        num_rows=len(rows), summary={"origin": "memory"})
    store.insert_once(rec)
    return rec


@pytest.mark.parametrize("kind", ["sft", "preference"])
def test_rows_round_trip_byte_exact_through_parquet(sqlite_store, kind):
    rows = sft_rows() if kind == "sft" else preference_rows()
    ds, created = ingest_rows(sqlite_store, rows, name=f"nasty-{kind}", kind=kind)
    assert created
    assert sqlite_store.blobs.get_bytes(ds.rows_blob)[:4] == b"PAR1"
    assert _lines(load_rows(sqlite_store, ds)) == _lines(rows)
    assert _lines([r for batch in iter_row_batches(sqlite_store, ds, batch_size=2) for r in batch]) == _lines(rows)
    # None stays None and is not dropped; an empty list stays an empty list
    back = load_rows(sqlite_store, ds)
    if kind == "sft":
        assert back[2]["messages"][0] == {"role": "user", "content": "x", "name": None}
        assert back[2]["purpose"] is None and back[2]["tags"] == []
        assert back[1]["messages"][1]["tool_calls"][0]["function"]["name"] == "lookup"
        assert "tier" not in back[2]
    else:
        assert back[1]["rejected"][0]["content"] is None


def test_ids_unchanged_by_the_storage_format(sqlite_store):
    sft, _ = ingest_rows(sqlite_store, sft_rows(), name="nasty")
    pref, _ = ingest_rows(sqlite_store, preference_rows(), name="pairs", kind="preference")
    assert (sft.id, pref.id) == (PINNED_SFT_ID, PINNED_PREFERENCE_ID)
    # the manifest is still canonical JSON, and the id is still its hash
    manifest_bytes = sqlite_store.blobs.get_bytes(sft.manifest_blob)
    assert content_id("ds", sha256_bytes(manifest_bytes)) == sft.id
    assert load_manifest(sqlite_store, sft) == build_manifest(sft_rows())


def test_parquet_file_is_plain_parquet_with_provenance_columns(sqlite_store):
    ds, _ = ingest_rows(sqlite_store, sft_rows(), name="nasty")
    pf = pq.ParquetFile(sqlite_store.blobs.blob_file(ds.rows_blob))
    assert pf.metadata.num_rows == ds.num_rows
    assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
    table = pf.read()
    assert table.column("source").to_pylist() == [r["source"] for r in sft_rows()]
    assert table.column("subject").to_pylist()[:2] == ["subj-0123456789abcdef01234567", None]
    assert table.column("tags").to_pylist()[0] == ["form", "accented \u2028"]
    assert [s.encode() for s in table.column("row").to_pylist()] == _lines(sft_rows())


def test_legacy_jsonl_version_still_loads(sqlite_store):
    rows = sft_rows()
    ds = _legacy_version(sqlite_store, rows)
    assert ds.id == PINNED_SFT_ID  # same rows, same id, whichever way they were stored
    assert sqlite_store.blobs.get_bytes(ds.rows_blob)[:4] != b"PAR1"
    assert _lines(load_rows(sqlite_store, ds)) == _lines(rows)
    batches = list(iter_row_batches(sqlite_store, ds, batch_size=4))
    assert [len(b) for b in batches] == [4, 2]
    assert _lines([r for b in batches for r in b]) == _lines(rows)
    # ingesting the same rows again finds the existing version and leaves its JSONL blob alone
    again, created = ingest_rows(sqlite_store, rows, name="legacy")
    assert not created and again.rows_blob == ds.rows_blob


def test_iter_row_batches_streams_in_order_in_bounded_batches(sqlite_store, monkeypatch):
    monkeypatch.setattr(ingest, "ROW_GROUP_ROWS", 7)
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
             "source": "s", "license": "MIT"} for i in range(50)]
    ds, _ = ingest_rows(sqlite_store, rows, name="many")
    pf = pq.ParquetFile(sqlite_store.blobs.blob_file(ds.rows_blob))
    assert pf.num_row_groups == 8 and max(pf.metadata.row_group(i).num_rows for i in range(8)) == 7
    batches = iter_row_batches(sqlite_store, ds, batch_size=5)
    first = next(batches)  # lazy: a batch comes before the rest is read
    assert [r["messages"][0]["content"] for r in first] == ["q0", "q1", "q2", "q3", "q4"]
    rest = list(batches)
    assert all(0 < len(b) <= 5 for b in rest)
    assert _lines(first + [r for b in rest for r in b]) == _lines(rows)
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_row_batches(sqlite_store, ds, batch_size=0))


def _dataset(store, ds_id: str) -> DatasetRecord:
    return store.get(DatasetRecord, ds_id, "dataset", "")


def _subject_rows() -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"ticket {i} \u2028 from cust-{i % 3}"},
                          {"role": "assistant", "content": f"answer {i}"}],
             "subject": ingest.subject_key_hash(f"cust-{i % 3}"), "source": "crm", "license": "MIT"}
            for i in range(9)]


def test_erasure_purges_rows_from_a_parquet_version(sqlite_store):
    store = sqlite_store
    rows = _subject_rows()
    ds, _ = ingest_rows(store, rows, name="tickets")
    old_blob = store.blobs.blob_path(ds.rows_blob)
    assert old_blob.read_bytes()[:4] == b"PAR1"
    er = erase(store, subject="cust-1", reason="request 7")
    assert not old_blob.exists()
    kept = [r for r in rows if r["subject"] != ingest.subject_key_hash("cust-1")]
    clean = _dataset(store, er.datasets[ds.id]["replacement"])
    assert store.blobs.get_bytes(clean.rows_blob)[:4] == b"PAR1"
    assert _lines(load_rows(store, clean)) == _lines(kept)
    # the old version's record now points at the clean rows; no erased row is readable through it
    old = _dataset(store, ds.id)
    assert _lines(load_rows(store, old)) == _lines(kept)
    assert not any("cust-1" in r["messages"][0]["content"] for b in iter_row_batches(store, old) for r in b)


def test_erasure_purges_rows_from_a_legacy_jsonl_version(sqlite_store):
    store = sqlite_store
    rows = _subject_rows()
    ds = _legacy_version(store, rows)
    old_blob = store.blobs.blob_path(ds.rows_blob)
    er = erase(store, subject="cust-2")
    assert not old_blob.exists()
    kept = [r for r in rows if r["subject"] != ingest.subject_key_hash("cust-2")]
    clean = _dataset(store, er.datasets[ds.id]["replacement"])
    assert _lines(load_rows(store, clean)) == _lines(kept)
    assert _lines(load_rows(store, _dataset(store, ds.id))) == _lines(kept)


def test_erasing_every_row_leaves_a_version_with_no_rows(sqlite_store):
    rows = [r for r in _subject_rows() if r["subject"] == ingest.subject_key_hash("cust-0")]
    ds, _ = ingest_rows(sqlite_store, rows, name="only-cust-0")
    er = erase(sqlite_store, subject="cust-0")
    assert er.datasets[ds.id]["replacement"] is None
    old = _dataset(sqlite_store, ds.id)
    assert load_rows(sqlite_store, old) == [] and list(iter_row_batches(sqlite_store, old)) == []


def test_second_erasure_keeps_the_first_erased_version_loadable(sqlite_store):
    # the first erasure points the old version at its replacement's rows; erasing from the replacement
    # deletes those bytes, so the old version must move on to the newest clean rows
    rows = _subject_rows()
    ds, _ = ingest_rows(sqlite_store, rows, name="tickets")
    erase(sqlite_store, subject="cust-1")
    erase(sqlite_store, subject="cust-2")
    kept = [r for r in rows if r["subject"] == ingest.subject_key_hash("cust-0")]
    assert _lines(load_rows(sqlite_store, _dataset(sqlite_store, ds.id))) == _lines(kept)


def test_hugging_face_datasets_reads_a_version(sqlite_store, tmp_path):
    datasets = pytest.importorskip("datasets")
    ds, _ = ingest_rows(sqlite_store, sft_rows(), name="nasty")
    hf = datasets.Dataset.from_parquet(str(sqlite_store.blobs.blob_file(ds.rows_blob)), cache_dir=str(tmp_path / "hf"))
    assert hf.num_rows == ds.num_rows and hf[1]["source"] == "tools"
    assert [s.encode() for s in hf["row"]] == _lines(sft_rows())
