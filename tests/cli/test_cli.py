"""The CLI as a user runs it: a subprocess, exit codes, tables and --json."""

import json
import os
import subprocess
import sys

import pytest


def tuneops(home, *args, check=True):
    env = {**os.environ, "TUNEOPS_HOME": str(home), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "tuneops.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_ingest_list_show_json(tmp_path):
    from tuneops.data.bundled import json_extraction_rows

    rows, _ = json_extraction_rows(3, 0)
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows))
    home = tmp_path / "home"
    out = tuneops(home, "data", "ingest", str(f), "--name", "demo", "--license", "CC0-1.0", "--json")
    ds = json.loads(out.stdout)
    assert ds["id"].startswith("ds-") and ds["num_rows"] == 3 and ds["licenses"] == {"CC0-1.0": 3}
    listed = json.loads(tuneops(home, "data", "list", "--json").stdout)
    assert [d["id"] for d in listed] == [ds["id"]]
    table = tuneops(home, "data", "list").stdout
    assert ds["id"] in table and "demo" in table
    shown = json.loads(tuneops(home, "data", "show", "demo", "--rows", "1", "--json").stdout)
    assert shown["rows"][0]["messages"] == rows[0]["messages"]


def test_bad_input_exits_2_with_file_and_line(tmp_path):
    f = tmp_path / "broken.jsonl"
    f.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n{oops\n')
    home = tmp_path / "home"
    proc = tuneops(home, "data", "ingest", str(f), "--name", "x", "--license", "MIT", check=False)
    assert proc.returncode == 2
    assert f"{f}:2: not valid JSON" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads(tuneops(home, "data", "list", "--json").stdout) == []


def test_recipe_error_names_field(tmp_path):
    r = tmp_path / "recipe.yaml"
    r.write_text("name: x\nbase: embedded:SmolLM2-135M-Instruct\ndata: {train: a, eval: b}\nmethod: {r: -1}\n")
    proc = tuneops(tmp_path / "home", "train", str(r), check=False)
    assert proc.returncode == 2 and f"{r}: method.r: Input should be greater than 0 (got -1)" in proc.stderr


def test_rollback_without_history_is_a_clear_error(tmp_path):
    tuneops(tmp_path / "home", "init")
    proc = tuneops(tmp_path / "home", "registry", "rollback", "nothing@production", check=False)
    assert proc.returncode == 2 and "no earlier target to roll back to" in proc.stderr


@pytest.mark.parametrize("group", ["models", "data", "eval", "runs", "registry"])
def test_listings_print_json(tmp_path, group):
    tuneops(tmp_path / "home", "init")
    assert json.loads(tuneops(tmp_path / "home", group, "list", "--json").stdout) == []


def test_registry_show_of_a_tampered_artifact_lists_the_file_and_exits_2(tmp_path):
    from tuneops.release.registry import register_adapter
    from tuneops.store import Store
    from tuneops.store.schema import BaseModelRecord

    home = tmp_path / "home"
    store = Store(home)
    with store.session() as s:
        s.add(BaseModelRecord(id="base-0123", name="b", source="test", source_digest="x", license="MIT",
                              tree="t", weights_sha256="w", num_parameters=1))
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_model.safetensors").write_bytes(b"\x00" * 32)
    (d / "adapter_config.json").write_text("{}")
    art, _ = register_adapter(store, d, base_id="base-0123", method="lora", run_id=None, dataset_ids=[],
                              recipe_hash=None)
    ok = json.loads(tuneops(home, "registry", "show", art.id, "--json").stdout)
    assert ok["integrity_ok"] is True and ok["integrity_problems"] == []
    (store.blobs.tree_path(art.tree) / "adapter_model.safetensors").write_bytes(b"\x01" * 32)
    proc = tuneops(home, "registry", "show", art.id, "--json", check=False)
    assert proc.returncode == 2
    shown = json.loads(proc.stdout)
    assert shown["integrity_ok"] is False and "adapter_model.safetensors: sha256 differs" in shown["integrity_problems"][0]
    assert "failed its integrity check" in proc.stderr


def test_a_row_without_a_licence_is_refused_unless_unknown_is_said(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
                 + "\n")
    home = tmp_path / "home"
    proc = tuneops(home, "data", "ingest", str(f), "--name", "x", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{f}:1: license: the row has none" in proc.stderr and "--license unknown" in proc.stderr
    proc = tuneops(home, "data", "ingest", str(f), "--name", "x", "--license", "CC-BY-NC", check=False)
    assert proc.returncode == 2 and "'CC-BY-NC' is not a licence" in proc.stderr and "CC-BY-NC-4.0" in proc.stderr
    shown = json.loads(tuneops(home, "data", "ingest", str(f), "--name", "x", "--license", "unknown", "--json").stdout)
    assert shown["license"] == "unknown" and shown["permitted_uses"] == ["research"]


def test_data_list_shows_every_name_of_a_version(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
                 + "\n")
    home = tmp_path / "home"
    first = json.loads(tuneops(home, "data", "ingest", str(f), "--name", "v1", "--license", "MIT", "--json").stdout)
    again = json.loads(tuneops(home, "data", "ingest", str(f), "--name", "latest", "--license", "MIT", "--json").stdout)
    assert again["id"] == first["id"] and again["created"] is False
    (listed,) = json.loads(tuneops(home, "data", "list", "--json").stdout)
    assert listed["names"] == "v1, latest"
    assert json.loads(tuneops(home, "data", "show", "latest", "--json").stdout)["id"] == first["id"]
