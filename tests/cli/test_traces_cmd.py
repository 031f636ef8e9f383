"""`tuneops traces list|show`: the served requests of a store, and one trace's lineage back to the training rows."""

import json
from types import SimpleNamespace

import pytest
import typer
from typer.testing import CliRunner

from tests.cli.helpers import tuneops
from tests.serve.test_tracing import EMAIL, PII_MESSAGE, registered_artifact, serve_one


@pytest.fixture(scope="module")
def traced(tmp_path_factory, tiny_model_dir):
    """A store with a registered adapter and three traces: the adapter (content traced), the base, an error."""
    from tuneops.serve.tracing import Tracer
    from tuneops.store import Store

    home = tmp_path_factory.mktemp("traces-cli") / "store"
    store = Store(home)
    env = registered_artifact(store, tiny_model_dir, tmp_path_factory.mktemp("adapter"))
    tracer = Tracer(store, content=lambda tenant: tenant == "acme", flush_interval=0.05)
    via_alias = serve_one(tracer, tenant="acme", base=env.base, artifact=env.artifact, alias="support@production",
                          model="support", messages=[{"role": "user", "content": PII_MESSAGE}])
    bare = serve_one(tracer, tenant="globex", base=env.base, model="base")
    refused = serve_one(tracer, tenant="globex", model="[bold]nope", status=404, error_code="model_not_found")
    tracer.close()
    store.engine.dispose()
    return SimpleNamespace(home=home, env=env, via_alias=via_alias, bare=bare, refused=refused)


def run(home, *args, columns: int = 400, **kw):
    """The traces commands mounted on a bare app (main.py mounts them on `tuneops`), ``columns`` wide."""
    from tuneops.cli import traces_cmd

    app = typer.Typer()
    traces_cmd.register(app)
    res = CliRunner().invoke(app, [str(a) for a in args], env={"TUNEOPS_HOME": str(home), "COLUMNS": str(columns)},
                             **kw)
    return res


def test_list_filters_and_json(traced):
    res = run(traced.home, "traces", "list", "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["id"] for r in rows] == [traced.refused.id, traced.bare.id, traced.via_alias.id]
    assert all("content" not in r for r in rows)  # listings never carry content
    first = rows[2]
    assert (first["tenant"], first["alias"], first["artifact_id"], first["status"]) == (
        "acme", "support@production", traced.env.artifact.id, 200)
    assert first["base_revision"] == traced.env.base.weights_sha256

    by_tenant = json.loads(run(traced.home, "traces", "list", "--tenant", "globex", "--json").output)
    assert {r["id"] for r in by_tenant} == {traced.bare.id, traced.refused.id}
    by_artifact = json.loads(run(traced.home, "traces", "list", "--artifact", traced.env.artifact.id, "--json").output)
    assert [r["id"] for r in by_artifact] == [traced.via_alias.id]
    assert [r["id"] for r in json.loads(run(traced.home, "traces", "list", "--artifact", "base", "--json").output)] \
        == [traced.bare.id]
    assert len(json.loads(run(traced.home, "traces", "list", "--limit", "1", "--json").output)) == 1
    assert [r["id"] for r in json.loads(run(traced.home, "traces", "list", "--errors", "--json").output)] \
        == [traced.refused.id]

    table = run(traced.home, "traces", "list", columns=80)
    # The table fits an 80-column terminal (long cells fold); --json above carries every field.
    assert table.exit_code == 0 and traced.via_alias.id in table.output and "404" in table.output
    assert all(len(line) <= 80 for line in table.output.splitlines())
    assert "[bold]nope" in table.output  # user text printed verbatim, never as markup


def test_show_reaches_the_training_rows(traced):
    env = traced.env
    res = run(traced.home, "traces", "show", traced.via_alias.id, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["trace"]["artifact_id"] == env.artifact.id
    assert data["rows"] == {"dataset_versions": [env.train.id], "total": 12, "missing": [], "erased": [],
                            "list": [f"tuneops data show {env.train.id} --rows 12"]}
    content = json.dumps(data["trace"]["content"])
    assert "<EMAIL>" in content and EMAIL not in content

    text = run(traced.home, "traces", "show", traced.via_alias.id).output
    for expected in (traced.via_alias.id, env.base.id, env.artifact.id, "via support@production", env.train.id,
                     "support-train", "12 rows", "licences: Apache-2.0 12", f"tuneops data show {env.train.id}",
                     "content (PII-redacted)", "<EMAIL>"):
        assert expected in text, expected
    assert EMAIL not in text

    bare = run(traced.home, "traces", "show", traced.bare.id).output
    assert "the bare base answered" in bare


def test_show_of_an_unknown_trace_fails_with_the_fix(traced):
    res = run(traced.home, "traces", "show", "tr-missing")
    from tuneops.errors import NotFound

    assert isinstance(res.exception, NotFound) and "tuneops traces list" in res.exception.hint


def _mounted() -> bool:
    from tuneops.cli.main import app

    return "traces" in typer.main.get_command(app).commands


@pytest.mark.skipif(not _mounted(), reason="tuneops.cli.main does not mount the traces commands yet")
def test_the_real_cli(traced, tmp_path):
    listed = json.loads(tuneops(traced.home, "traces", "list", "--json").stdout)
    assert len(listed) == 3
    shown = tuneops(traced.home, "traces", "show", traced.via_alias.id)
    assert traced.env.train.id in shown.stdout
    missing = tuneops(traced.home, "traces", "show", "tr-missing", check=False)
    assert missing.returncode == 2 and "not found" in missing.stderr and "fix:" in missing.stderr
    empty = tuneops(tmp_path / "nowhere", "traces", "list", check=False)
    assert empty.returncode == 2 and not (tmp_path / "nowhere").exists()


def test_prune_counts_then_prunes(tmp_path):
    from tuneops.serve.tracing import Tracer
    from tuneops.store import Store

    from tests.serve.test_tracing import serve_one

    store = Store(tmp_path / "store")
    tracer = Tracer(store, flush_interval=0.05)
    serve_one(tracer, tenant="globex")
    serve_one(tracer, tenant="acme")
    tracer.close()
    res = run(store.home, "traces", "prune", "--tenant", "globex", "--dry-run")
    assert res.exit_code == 0 and "would prune 1 traces" in res.output, res.output
    assert run(store.home, "traces", "prune", "--tenant", "globex").exit_code == 0
    assert [r["tenant"] for r in json.loads(run(store.home, "traces", "list", "--json").output)] == ["acme"]
    res = run(store.home, "traces", "prune")
    assert res.exit_code != 0 and "--older-than" in str(res.exception)
