"""`tuneops registry canary|shadow|route|route-clear|disable|enable`: start a canary and a shadow, show the route, refuse an
unpromotable canary, clear the route; the history shows each change."""

import json

import pytest
import typer
from typer.testing import CliRunner

from tests.release.test_promotion import _artifact, _base
from tuneops.cli import route_cmd
from tuneops.errors import GateFailed
from tuneops.release.registry import promote, resolve_alias

runner = CliRunner()


def _app() -> typer.Typer:
    """The registry group as main.py mounts it."""
    app = typer.Typer()
    registry_app = typer.Typer()
    app.add_typer(registry_app, name="registry")
    route_cmd.register(registry_app)
    return app


@pytest.fixture
def home(sqlite_store, tmp_path):
    store = sqlite_store
    _base(store)
    arts = [_artifact(store, tmp_path, i) for i in range(3)]
    arts.append(_artifact(store, tmp_path, 3, passed=False))
    promote(store, arts[0].id, "bot@production")
    return store, arts


def _run(store, *args):
    result = runner.invoke(_app(), ["registry", *map(str, args)], env={"TUNEOPS_HOME": str(store.home),
                                                                       "COLUMNS": "300"})
    return result


def test_canary_shadow_route_and_clear(home):
    store, (a0, a1, a2, _) = home
    r = _run(store, "canary", "bot@production", a1.id, "--percent", "10", "--sticky", "tenant",
             "--max-error-rate", "0.02", "--max-p99-ms", "900", "--min-requests", "50", "--reason", "try v2", "--json")
    assert r.exit_code == 0, r.output
    route = json.loads(r.stdout)
    assert route["canary_artifact"] == a1.id and route["canary_percent"] == 10 and route["sticky"] == "tenant"
    assert route["slo_settings"] == {"max_error_rate": 0.02, "max_error_rate_delta": None, "max_p99_ms": 900.0,
                                     "max_latency_ratio": 2.0, "min_requests": 50, "window_s": 600.0}
    r = _run(store, "shadow", "bot@production", a2.id, "--percent", "5", "--reason", "look", "--json")
    assert r.exit_code == 0, r.output
    shown = json.loads(_run(store, "route", "bot@production", "--json").stdout)
    assert (shown["canary_artifact"], shown["shadow_artifact"], shown["shadow_percent"]) == (a1.id, a2.id, 5)
    table = _run(store, "route", "bot@production").stdout
    assert "canary started" not in table and a1.id in table and "errors ≤ 2.0%" in table
    r = _run(store, "route-clear", "bot@production", "--canary", "--reason", "enough", "--json")
    assert r.exit_code == 0, r.output
    assert [(m["action"], m["from_artifact"], m["to_artifact"]) for m in json.loads(r.stdout)] == \
        [("route_clear", a1.id, a0.id)]
    r = _run(store, "route-clear", "bot@production", "--reason", "done")
    assert r.exit_code == 0, r.output
    assert "no active route" in _run(store, "route", "bot@production").output
    assert json.loads(_run(store, "route", "bot@production", "--json").stdout) is None
    every = json.loads(_run(store, "route", "bot@production", "--all", "--json").stdout)
    assert [x["state"] for x in every] == ["replaced", "cleared", "cleared"]
    assert resolve_alias(store, "bot@production").id == a0.id
    assert [m.action for m in store.alias_history("bot", "production")] == \
        ["promote", "canary", "shadow", "route_clear", "route_clear"]


def test_unpromotable_canary_is_refused_naming_the_condition(home):
    store, (_, _, _, failing) = home
    r = _run(store, "canary", "bot@production", failing.id, "--percent", "10", "--reason", "try")
    assert isinstance(r.exception, GateFailed) and "failed its gates" in str(r.exception)
    assert [m.action for m in store.alias_history("bot", "production")] == ["promote"]


def test_arguments_are_checked(home):
    store, (_, a1, _, _) = home
    r = _run(store, "canary", "bot@production", a1.id, "--reason", "x")
    assert r.exit_code != 0 and "--percent" in r.output  # required
    r = _run(store, "canary", "bot@production", a1.id, "--percent", "10")
    assert "needs --reason" in str(r.exception)
    r = _run(store, "route-clear", "bot@production", "--canary", "--shadow", "--reason", "x")
    assert "not both" in str(r.exception)


def test_main_mounts_the_route_commands():
    from tuneops.cli.main import registry_app

    names = {c.name or c.callback.__name__ for c in registry_app.registered_commands}
    assert {"canary", "shadow", "route", "route-clear", "disable", "enable"} <= names


def test_disable_and_enable_are_moves_and_are_checked(home):
    store, (a0, *_) = home
    r = _run(store, "disable", "bot@production")
    assert "needs --reason" in str(r.exception)
    r = _run(store, "disable", "bot@production", "--reason", "bad answers", "--json")
    assert r.exit_code == 0, r.output
    move = json.loads(r.stdout)
    assert (move["action"], move["to_artifact"], move["reason"]) == ("disable", a0.id, "bad answers")
    from tuneops.cli.main import app as main_app

    listed = runner.invoke(main_app, ["registry", "list", "--json"], env={"TUNEOPS_HOME": str(store.home)})
    assert {r["id"]: r["aliases"] for r in json.loads(listed.stdout)}[a0.id] == "bot@production (off)"
    r = _run(store, "disable", "bot@production", "--reason", "again")
    assert "already off" in str(r.exception) and "bad answers" in str(r.exception)
    assert resolve_alias(store, "bot@production").id == a0.id     # the target stays
    r = _run(store, "enable", "bot@production", "--reason", "fixed")
    assert r.exit_code == 0 and "switched on" in r.stdout, r.output
    r = _run(store, "enable", "nobody@production", "--reason", "x")
    assert "does not exist" in str(r.exception)
    assert [m.action for m in store.alias_history("bot", "production")] == ["promote", "disable", "enable"]
