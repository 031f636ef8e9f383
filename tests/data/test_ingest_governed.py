"""Ingest with provenance: any format, per-row/per-file licences, tiers, subjects, quarantine."""

import csv
import json
from pathlib import Path

import pytest

from tuneops.data.ingest import ingest_file, load_manifest, load_rows, subject_key_hash
from tuneops.errors import InvalidInput
from tuneops.store.schema import DatasetRecord

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "gsm8k").exists(), reason="../shared/data is not on this machine")
def test_real_gsm8k_and_hh_rlhf(sqlite_store):
    gsm, _ = ingest_file(sqlite_store, SHARED / "gsm8k" / "train.jsonl", name="gsm8k", license="MIT",
                         source="github:openai/grade-school-math", tier="gold")
    assert gsm.num_rows == 7473 and gsm.summary["license"] == "MIT" and gsm.summary["tiers"] == {"gold": 7473}
    first = load_rows(sqlite_store, gsm)[0]
    assert first["messages"][0]["role"] == "user" and first["messages"][-1]["content"].endswith("#### 72")
    hh = SHARED / "hh-rlhf-harmless" / "test.jsonl.gz"
    with pytest.raises(InvalidInput, match=r"test.jsonl.gz:87: chosen\[0\].content: empty"):
        ingest_file(sqlite_store, hh, name="hh", license="MIT")  # atomic: four pairs have an empty chosen reply
    pairs, _ = ingest_file(sqlite_store, hh, name="hh", license="MIT", on_error="quarantine")
    q = pairs.summary["quarantine"]
    assert pairs.num_rows == 2308 and q["rows"] == 4 and pairs.summary["kind"] == "preference"
    bad = [json.loads(line) for line in Path(q["file"]).read_text().split("\n") if line]
    assert [b["where"].rsplit(":", 1)[1] for b in bad] == ["87", "517", "926", "1104"]
    assert load_manifest(sqlite_store, pairs)["format"] == "tuneops.preference/v1"
    assert set(load_rows(sqlite_store, pairs)[0]) >= {"prompt", "chosen", "rejected", "source", "license"}


def test_rows_holding_unicode_line_separators_round_trip(sqlite_store, tmp_path):
    f = tmp_path / "rows.jsonl"
    text = "one\u2028two\u0085three\x1cfour"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]})
                 + "\n")
    ds, _ = ingest_file(sqlite_store, f, name="seps", license="MIT")
    assert load_rows(sqlite_store, ds)[0]["messages"][0]["content"] == text


def test_csv_alpaca_with_per_row_provenance_columns(sqlite_store, tmp_path):
    f = tmp_path / "tickets.csv"
    with f.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["instruction", "input", "output", "license", "subject", "retention_until"])
        w.writerow(["Summarise", "Order 1 arrived broken", "Broken on arrival.", "LicenseRef-proprietary",
                    "cust-42", "2030-01-01"])
        w.writerow(["Translate to French", "hello", "bonjour", "cc-by-4.0", "", ""])
    ds, _ = ingest_file(sqlite_store, f, name="tickets", source="crm", purpose="support-quality", tier="curated")
    rows = load_rows(sqlite_store, ds)
    assert rows[0]["messages"][0]["content"] == "Summarise\n\nOrder 1 arrived broken"
    assert rows[0]["license"] == "LicenseRef-proprietary" and rows[1]["license"] == "CC-BY-4.0"
    assert rows[0]["subject"] == subject_key_hash("cust-42") and "cust-42" not in json.dumps(rows)
    assert "subject" not in rows[1] and rows[0]["retention_until"] == "2030-01-01"
    assert ds.summary["permitted_uses"] == ["commercial", "internal", "research"]
    assert ds.summary["obligations"] == ["attribution"] and ds.summary["purposes"] == {"support-quality": 2}
    manifest = load_manifest(sqlite_store, ds)["rows"]
    assert manifest[0]["subject"] == rows[0]["subject"] and manifest[0]["tier"] == "curated"


def test_bad_provenance_names_the_row_and_field_and_stores_nothing(sqlite_store, tmp_path):
    f = tmp_path / "rows.jsonl"
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    f.write_text("\n".join(json.dumps(r) for r in [good, {**good, "license": "GPL"},
                                                   {**good, "license": "MIT", "retention_until": "soon"},
                                                   {**good, "license": "MIT", "tier": "platinum"}]) + "\n")
    with pytest.raises(InvalidInput) as e:
        ingest_file(sqlite_store, f, name="x")
    msg = e.value.message
    assert f"{f}:1: license: the row has none" in msg
    assert f"{f}:2: license: 'GPL' is not a licence" in msg
    assert f"{f}:3: retention_until: 'soon' is not a date" in msg
    assert f"{f}:4: tier: 'platinum' is not one of gold, curated, synthetic, scraped" in msg
    assert sqlite_store.all(DatasetRecord) == []
    ds, _ = ingest_file(sqlite_store, f, name="x", license="MIT", on_error="quarantine")
    assert ds.num_rows == 1 and ds.summary["quarantine"]["rows"] == 3


def test_ingest_scrubs_pii_and_drops_duplicates(sqlite_store, tmp_path):
    f = tmp_path / "support.jsonl"
    rows = [{"messages": [{"role": "user", "content": "My card is 4111 1111 1111 1111, mail me at ana@example.com"},
                          {"role": "assistant", "content": "Thanks, noted."}]},
            {"messages": [{"role": "user", "content": "Reset my password please"},
                          {"role": "assistant", "content": "Done."}]},
            {"messages": [{"role": "user", "content": "reset   my PASSWORD please"},
                          {"role": "assistant", "content": "done."}]}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds, _ = ingest_file(sqlite_store, f, name="support", license="MIT")
    stored = json.dumps(load_rows(sqlite_store, ds))
    assert "4111" not in stored and "ana@example.com" not in stored and "<CREDIT_CARD>" in stored
    assert ds.summary["pii"] == {"policy": "redact", "found": {"CREDIT_CARD": 1, "EMAIL": 1}}
    assert ds.num_rows == 2 and ds.summary["deduplicated"] == {"mode": "exact", "removed": {"exact": 1}}
    with pytest.raises(InvalidInput, match=r"support.jsonl:1: PII: holds CREDIT_CARD, EMAIL and --pii block"):
        ingest_file(sqlite_store, f, name="support2", license="MIT", pii="block")
    kept, _ = ingest_file(sqlite_store, f, name="support3", license="MIT", pii="allow", dedupe="off")
    assert kept.num_rows == 3 and "4111 1111 1111 1111" in json.dumps(load_rows(sqlite_store, kept))


def test_data_card_shows_sources_licences_pii_duplicates_and_lengths(sqlite_store, tmp_path):
    from tuneops.data.card import card_data, write_card

    f = tmp_path / "support.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Order {i}: mail me at a{i}@example.com"},
                          {"role": "assistant", "content": "Sure, " + "word " * i}],
             "license": "CC-BY-NC-4.0" if i == 0 else "MIT", "source": "forum" if i == 0 else "crm",
             "tier": "gold"} for i in range(5)]
    rows.append(rows[1])
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds, _ = ingest_file(sqlite_store, f, name="support")
    data = card_data(sqlite_store, ds)
    assert data["sources"] == {"crm": 4, "forum": 1} and data["licenses"] == {"MIT": 4, "CC-BY-NC-4.0": 1}
    assert data["license"] == "CC-BY-NC-4.0" and data["permitted_uses"] == ["research"]
    assert data["pii"]["found"] == {"EMAIL": 6} and data["deduplicated"]["removed"] == {"exact": 1}
    assert data["lengths"]["response_words"]["max"] == 5 and data["tiers"] == {"gold": 5}
    md = write_card(sqlite_store, ds, tmp_path / "card", "md").read_text()
    assert "| CC-BY-NC-4.0 | 1 | research |" in md and "| EMAIL | 6 |" in md and "![lengths](lengths.png)" in md
    page = write_card(sqlite_store, ds, tmp_path / "card", "html").read_text()
    assert "<td>forum</td>" in page and (tmp_path / "card" / "lengths.png").stat().st_size > 1000
    assert "a1@example.com" not in md + page  # redacted at ingest, so never on the card
