"""`tuneops tenants`: keys printed once and stored hashed, grants, limits, rotation, clear errors that write nothing."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

from tests.cli.helpers import cli_env
from tuneops.serve import tenants as T
from tuneops.store import Store

# The CLI's own error path (main.run_cli), with `tenants` mounted even before main.py mounts it itself.
RUNNER = """
import sys
from tuneops.cli import main, tenants_cmd
if not any(g.name == "tenants" for g in main.app.registered_groups):
    tenants_cmd.register(main.app)
sys.exit(main.run_cli(sys.argv[1:]))
"""
KEY_RE = re.compile(r"tnk-[A-Za-z0-9_-]{43}")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def tenants(home, *args, check=True):
    """In-process through main.run_cli (the CLI's one error path): a fresh process per command costs seconds
    on a loaded machine; `test_a_real_process` runs one the way a user does."""
    from tuneops.cli import main, tenants_cmd

    groups = list(main.app.registered_groups)
    if not any(g.name == "tenants" for g in groups):
        tenants_cmd.register(main.app)
    from tuneops.cli import render

    out, err = io.StringIO(), io.StringIO()
    saved, width = os.environ.get("TUNEOPS_HOME"), render.console._width
    os.environ["TUNEOPS_HOME"] = str(home)
    render.console.width = 400  # as COLUMNS=400 does for a subprocess: tables unwrapped
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main.run_cli(["tenants", *map(str, args)])
    finally:
        main.app.registered_groups[:] = groups
        render.console._width = width
        if saved is None:
            os.environ.pop("TUNEOPS_HOME", None)
        else:
            os.environ["TUNEOPS_HOME"] = saved
    result = Result(code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"exit {code}\n{result.stdout}\n{result.stderr}")
    return result


def test_a_real_process(tmp_path):
    home = tmp_path / "store"
    Store(home).engine.dispose()
    proc = subprocess.run([sys.executable, "-c", RUNNER, "tenants", "add", "acme", "--grant", "bot"],
                          capture_output=True, text=True, env=cli_env(home), timeout=120)
    assert proc.returncode == 0, proc.stderr
    key = KEY_RE.search(proc.stdout).group(0)
    assert "only time the key is shown" in proc.stderr
    proc = subprocess.run([sys.executable, "-c", RUNNER, "tenants", "add", "acme"], capture_output=True, text=True,
                          env=cli_env(home), timeout=120)
    assert proc.returncode == 2 and "error: tenant 'acme' already exists" in proc.stderr and "fix:" in proc.stderr
    store = Store(home, create=False)
    assert T.TenantDirectory(store).authenticate(key).name == "acme"
    store.engine.dispose()


@pytest.fixture
def home(tmp_path):
    Store(tmp_path / "store").engine.dispose()
    return tmp_path / "store"


def test_add_prints_the_key_once_and_list_never_shows_it(home):
    out = tenants(home, "add", "acme", "--grant", "bot", "--grant", "summarizer@staging", "--rpm", "60",
                  "--tpm", "5000")
    key = KEY_RE.search(out.stdout).group(0)
    assert "only time the key is shown" in out.stderr and "only its hash" in out.stderr
    assert "no alias bot exists yet" in out.stderr  # a grant ahead of its alias is allowed, but said
    listing = tenants(home, "list").stdout
    assert "acme" in listing and key[:12] in listing and key not in listing and "summarizer@staging" in listing
    rows = json.loads(tenants(home, "list", "--json").stdout)
    assert [(r["name"], r["grants"], r["requests_per_min"], r["tokens_per_min"], r["allow_base"]) for r in rows] == \
        [("acme", ["bot", "summarizer@staging"], 60, 5000, False)]
    assert [k["prefix"] for k in rows[0]["keys"]] == [key[:12]] and key not in json.dumps(rows)
    db = (home / "tuneops.db").read_bytes() + b"".join(p.read_bytes() for p in home.glob("tuneops.db-wal"))
    assert key.encode() not in db and key[4:].encode() not in db
    # the key works, for its grants only
    store = Store(home, create=False)
    d = T.TenantDirectory(store)
    p = d.authenticate(key)
    assert d.authorize(p, "bot", base_id="base-x", base_name="tiny").ref == "bot@production"
    with pytest.raises(T.ModelNotFound):
        d.authorize(p, "summarizer", base_id="base-x", base_name="tiny")
    store.engine.dispose()


def test_json_output_is_only_json(home):
    out = tenants(home, "add", "acme", "--allow-base", "--json")
    body = json.loads(out.stdout)
    assert body["name"] == "acme" and KEY_RE.fullmatch(body["key"])
    rot = json.loads(tenants(home, "rotate-key", "acme", "--grace", "60", "--json").stdout)
    assert KEY_RE.fullmatch(rot["key"]) and rot["key"] != body["key"]


def test_grant_revoke_limits_rotate_disable(home):
    key = KEY_RE.search(tenants(home, "add", "acme").stdout).group(0)
    assert "acme may call bot" in tenants(home, "grant", "acme", "bot").stdout
    tenants(home, "grant", "acme", "x@staging")
    tenants(home, "revoke", "acme", "bot")
    assert "30 requests/min, 900 tokens/min" in tenants(home, "limits", "acme", "--rpm", "30", "--tpm", "900").stdout
    tenants(home, "limits", "acme", "--rpm", "0")  # 0 removes a limit
    tenants(home, "route", "acme", "x", "staging")
    tenants(home, "pin", "acme", "x")
    new = KEY_RE.search(tenants(home, "rotate-key", "acme", "--grace", "3600").stdout).group(0)
    [row] = json.loads(tenants(home, "list", "--json").stdout)
    assert row["grants"] == ["x@staging"] and (row["requests_per_min"], row["tokens_per_min"]) == (None, 900)
    assert row["routing"] == {"x": "staging"} and row["pinned"] == ["x"]
    assert len(row["keys"]) == 2 and sum(k["expires_at"] is not None for k in row["keys"]) == 1
    store = Store(home, create=False)
    d = T.TenantDirectory(store, refresh_s=0)
    assert d.authenticate(key).name == d.authenticate(new).name == "acme"  # the old key, in its grace
    assert d.authorize(d.authenticate(new), "x", base_id="base-x", base_name="tiny").ref == "x@staging"
    with pytest.raises(T.ModelNotAllowed):
        d.authorize(d.authenticate(new), "tiny", base_id="base-x", base_name="tiny")
    tenants(home, "allow-base", "acme")
    assert d.authorize(d.authenticate(new), "tiny", base_id="base-x", base_name="tiny").kind == "base"
    tenants(home, "disable", "acme")
    with pytest.raises(T.TenantDisabled):
        d.authenticate(new)
    assert "disabled" in tenants(home, "list").stdout
    tenants(home, "enable", "acme")
    tenants(home, "rotate-key", "acme")  # no grace: every earlier key stops now
    for old in (key, new):
        with pytest.raises(T.InvalidApiKey):
            d.authenticate(old)
    actions = [e.action for e in store.audit_log() if e.record_type == "tenant"]
    assert actions == ["tenant.add", "tenant.grant", "tenant.grant", "tenant.revoke", "tenant.limits",
                       "tenant.limits", "tenant.route", "tenant.pin", "tenant.rotate_key", "tenant.allow_base",
                       "tenant.disable", "tenant.enable", "tenant.rotate_key"]
    store.engine.dispose()


BAD = [
    (("add", "Acme Corp"), "tenant name 'Acme Corp' is not valid"),
    (("add", "acme", "--grant", "bot", "--grant", "Not Valid"), "alias 'Not Valid' is not valid"),
    (("add", "acme", "--rpm", "-5"), "--rpm"),
    (("grant", "ghost", "bot"), "tenant 'ghost' not found"),
    (("rotate-key", "acme", "--grace", "-1"), "--grace"),
    (("route", "ghost", "bot@staging", "staging"), "is not an alias name"),
]


def test_bad_input_names_the_field_exits_2_and_writes_nothing(home):
    for args, says in BAD:
        out = tenants(home, *args, check=False)
        assert out.returncode == 2, (args, out)
        assert says in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr and not KEY_RE.search(out.stdout + out.stderr)
    assert json.loads(tenants(home, "list", "--json").stdout) == []


def test_errors_on_an_existing_tenant(home):
    tenants(home, "add", "acme")
    out = tenants(home, "add", "acme", check=False)
    assert out.returncode == 2 and "already exists" in out.stderr and "rotate-key acme" in out.stderr
    assert not KEY_RE.search(out.stdout + out.stderr)
    out = tenants(home, "revoke", "acme", "bot", check=False)
    assert out.returncode == 2 and "has no grant 'bot'" in out.stderr
    out = tenants(home, "limits", "acme", check=False)
    assert out.returncode == 2 and "--rpm" in out.stderr
    [row] = json.loads(tenants(home, "list", "--json").stdout)
    assert len(row["keys"]) == 1


def test_a_missing_store_is_not_created(tmp_path):
    out = tenants(tmp_path / "nowhere", "add", "acme", check=False)
    assert out.returncode == 2 and "no tuneops store" in out.stderr
    assert not (tmp_path / "nowhere").exists()
