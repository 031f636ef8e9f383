"""Erasure: rows gone from every version, old versions refused, trained artifacts tainted and unpromotable."""

import json

import pytest

from tuneops.data.erasure import erase, impact, taints_of
from tuneops.data.ingest import ingest_file, load_manifest, load_rows
from tuneops.errors import GateFailed, InvalidInput, StateError
from tuneops.release.registry import promote, register_adapter
from tuneops.store.schema import AuditEvent, BaseModelRecord, EvalReportRecord, RunRecord


def _rows(tmp_path, name="rows.jsonl"):
    f = tmp_path / name
    rows = [{"messages": [{"role": "user", "content": f"ticket {i} from cust-{i % 3}"},
                          {"role": "assistant", "content": f"answer {i}"}],
             "subject": f"cust-{i % 3}", "source": "crm" if i % 2 else "forum"} for i in range(9)]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f


def _artifact(store, tmp_path, ds_id):
    with store.session() as s:
        s.add(BaseModelRecord(id="base-0123", name="b", source="test", source_digest="x", license="MIT",
                              tree="t", weights_sha256="w", num_parameters=1))
        s.add(RunRecord(id="run-0", recipe_name="r", recipe_yaml="", recipe_hash="0" * 64, state="succeeded",
                        dataset_ids=[ds_id], metrics={}))
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_model.safetensors").write_bytes(b"\x01" * 16)
    (d / "adapter_config.json").write_text("{}")
    art, _ = register_adapter(store, d, base_id="base-0123", method="lora", run_id="run-0", dataset_ids=[ds_id],
                              recipe_hash="f" * 64)
    with store.session() as s:
        s.add(EvalReportRecord(id="ev-0", artifact_id=art.id, baseline="base-0123", suites=[], metrics={},
                               gates=[{"gate": "g", "candidate": 1, "threshold": 0.5, "passed": True, "task": True}],
                               passed=True, report_blob="x"))
    return art


def test_erasing_a_subject_cleans_every_version_and_taints_what_learned_from_it(store, tmp_path):
    ds, _ = ingest_file(store, _rows(tmp_path), name="tickets", license="MIT")
    art = _artifact(store, tmp_path, ds.id)
    old_blob = store.blobs.blob_path(ds.rows_blob)
    er = erase(store, subject="cust-1", reason="GDPR request #7")
    info = er.datasets[ds.id]
    assert info["rows_removed"] == 3
    clean = store.resolve_dataset("tickets")  # the name now resolves to the clean version
    assert clean.id == info["replacement"] and clean.num_rows == 6
    assert all("cust-1" not in json.dumps(r) for r in load_rows(store, clean))
    assert not old_blob.exists()  # the erased rows' bytes are gone from the store
    with pytest.raises(StateError, match=rf"dataset {ds.id} had rows erased \({er.id}\)") as e:
        store.resolve_dataset(ds.id)
    assert clean.id in e.value.hint
    assert len(load_manifest(store, ds)["rows"]) == 9  # hashes and provenance only: the ledger stays whole
    assert [t.erasure_id for t in taints_of(store, art.id)] == [er.id]
    with pytest.raises(GateFailed, match=rf"{art.id} is tainted: .* erased \({er.id}\)"):
        promote(store, art.id, "bot@production")
    (row,) = impact(store)
    assert row["artifact"] == art.id and row["clean_dataset"] == clean.id and "tuneops train" in row["retrain"]
    audit = [a for a in store.all(AuditEvent, AuditEvent.seq) if a.action == "data.erase"]
    assert audit[0].details["tainted"] == [art.id] and audit[0].details["reason"] == "GDPR request #7"
    assert "cust-1" not in json.dumps(audit[0].details)  # the log names the hash, never the key


def test_erasing_a_source_and_nothing_to_erase(store, tmp_path):
    ds, _ = ingest_file(store, _rows(tmp_path), name="tickets", license="MIT")
    er = erase(store, source="forum")
    assert er.datasets[ds.id]["rows_removed"] == 5
    assert {r["source"] for r in load_rows(store, store.resolve_dataset("tickets"))} == {"crm"}
    with pytest.raises(InvalidInput, match="no stored row matches source 'forum'"):
        erase(store, source="forum")  # already gone
    with pytest.raises(InvalidInput, match="exactly one of"):
        erase(store)


def test_cli_erase_and_impact(tmp_path):
    from tests.cli.helpers import tuneops

    home = tmp_path / "home"
    f = _rows(tmp_path)
    tuneops(home, "data", "ingest", f, "--name", "tickets", "--license", "MIT")
    out = json.loads(tuneops(home, "data", "erase", "--subject", "cust-2", "--reason", "ticket 9", "--json").stdout)
    assert out["datasets"][0]["rows_removed"] == 3 and out["tainted_artifacts"] == []
    assert json.loads(tuneops(home, "data", "impact", "--json").stdout) == []
    proc = tuneops(home, "data", "erase", "--subject", "nobody", check=False)
    assert proc.returncode == 2 and "nothing was erased" in proc.stderr and "Traceback" not in proc.stderr
