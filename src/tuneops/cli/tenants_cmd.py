"""``tuneops tenants``: who may call the server — add, list, grant, revoke, rotate-key, limits, allow-base, disable,
enable, route, pin. A key is printed once, when it is made (``add``, ``rotate-key``); the store keeps only its sha256.
Changes reach a running server within about a second. typer and rich only at import time."""

from __future__ import annotations

import os
from typing import List, Optional

import typer

from tuneops.cli.render import emit, note, print_json, say

JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
tenants_app = typer.Typer(help="Tenants of the server: API keys, grants, quotas (add, list, grant, revoke, "
                               "rotate-key, limits, allow-base, disable, enable, route, pin).", no_args_is_help=True)


def _store():
    from tuneops.store import Store

    return Store.open(os.environ.get("TUNEOPS_HOME"), create=False)


def _limit(value: Optional[int]) -> Optional[int]:
    return None if not value else value  # 0 means no limit


def _show_key(name: str, key: str, as_json: bool, **extra) -> None:
    if as_json:
        print_json({"name": name, "key": key, **extra})
    else:
        say("API key for ", (name, "bold"), ": ", (key, "bold green"))
    note("this is the only time the key is shown: tuneops stores only its hash. Clients send it as "
         "'Authorization: Bearer <key>'.")


def _warn_unknown_aliases(store, aliases: List[str]) -> None:
    """A grant may come before its alias is promoted; a typo would otherwise grant nothing, silently."""
    from tuneops.release.registry import aliases as all_aliases

    known = all_aliases(store)
    names = {a.name for a in known} | {f"{a.name}@{a.stage}" for a in known}
    for alias in aliases:
        if alias not in names:
            note(f"note: no alias {alias} exists yet; the grant takes effect once one is promoted "
                 "(`tuneops registry list` shows the aliases)")


@tenants_app.command("add")
def add(name: str = typer.Argument(..., help="Tenant name: lowercase letters, digits, '.', '_', '-'."),
        allow_base: bool = typer.Option(False, "--allow-base", help="May also call the bare base model."),
        rpm: int = typer.Option(0, "--rpm", min=0, help="Requests per minute (0: no limit)."),
        tpm: int = typer.Option(0, "--tpm", min=0, help="Tokens per minute, prompt + completion (0: no limit)."),
        grants: List[str] = typer.Option([], "--grant", help="An alias it may call: NAME (every stage) or "
                                                             "NAME@STAGE; repeat for more."),
        as_json: bool = JSON):
    """Create a tenant with one API key, printed once."""
    from tuneops.serve.tenants import add_tenant

    store = _store()
    rec, key = add_tenant(store, name, allow_base=allow_base, requests_per_min=_limit(rpm),
                          tokens_per_min=_limit(tpm), grants=grants)
    _warn_unknown_aliases(store, grants)
    _show_key(rec.name, key, as_json, id=rec.id, grants=list(dict.fromkeys(grants)))


@tenants_app.command("list")
def list_(as_json: bool = JSON):
    """Tenants: key prefixes, grants, limits, routing (never a key)."""
    from tuneops.serve.tenants import list_tenants

    rows = list_tenants(_store())
    if as_json:
        print_json(rows)
        return

    def keys(r):
        return ", ".join(k["prefix"] + "…" + (f" (ends {k['expires_at'][:16].replace('T', ' ')} UTC)"
                                              if k["expires_at"] else "") for k in r["keys"]) or "none"

    table = [{"name": r["name"] + (" (disabled)" if r["disabled"] else ""), "keys": keys(r),
              "grants": ", ".join(r["grants"]) or "none", "base": "yes" if r["allow_base"] else "no",
              "rpm": r["requests_per_min"] or "∞", "tpm": r["tokens_per_min"] or "∞",
              "routing": ", ".join(f"{k}→{v}" for k, v in r["routing"].items()),
              "pinned": ", ".join(r["pinned"])} for r in rows]
    # routing and pinning are rare: their columns appear only when some tenant uses them
    columns = [c for c in ("name", "keys", "grants", "base", "rpm", "tpm", "routing", "pinned")
               if c not in ("routing", "pinned") or any(t[c] for t in table)]
    emit(table, as_json=False, title="tenants", columns=columns)


@tenants_app.command("grant")
def grant_(name: str, alias: str = typer.Argument(..., help="NAME (every stage) or NAME@STAGE.")):
    """Let a tenant call an alias."""
    from tuneops.serve.tenants import grant

    store = _store()
    added = grant(store, name, alias)
    _warn_unknown_aliases(store, [alias])
    say(f"{name} may call {alias}" + ("" if added else " (it already could)"))


@tenants_app.command("revoke")
def revoke_(name: str, alias: str = typer.Argument(..., help="The grant exactly as given: NAME or NAME@STAGE.")):
    """Take back a grant; takes effect within a second on a running server."""
    from tuneops.serve.tenants import revoke

    revoke(_store(), name, alias)
    say(f"{name} may no longer call {alias}")


@tenants_app.command("rotate-key")
def rotate_key_(name: str,
                grace: float = typer.Option(0.0, "--grace", min=0.0,
                                            help="Seconds the old key keeps working (0: it stops now)."),
                as_json: bool = JSON):
    """A new API key (printed once); the old ones stop now or after --grace seconds."""
    from tuneops.serve.tenants import rotate_key

    key = rotate_key(_store(), name, grace_s=grace)
    _show_key(name, key, as_json, grace_s=grace)
    note(f"the previous keys keep working for {grace:g} s" if grace else "the previous keys stopped working")


@tenants_app.command("limits")
def limits(name: str,
           rpm: Optional[int] = typer.Option(None, "--rpm", min=0, help="Requests per minute (0: no limit)."),
           tpm: Optional[int] = typer.Option(None, "--tpm", min=0, help="Tokens per minute (0: no limit).")):
    """Change a tenant's quotas; a limit left out stays as it is."""
    from tuneops.serve.tenants import set_limits

    changes = {}
    if rpm is not None:
        changes["requests_per_min"] = _limit(rpm)
    if tpm is not None:
        changes["tokens_per_min"] = _limit(tpm)
    rec = set_limits(_store(), name, **changes)
    say(f"{name}: {rec.requests_per_min or 'no limit on'} requests/min, "
        f"{rec.tokens_per_min or 'no limit on'} tokens/min")


@tenants_app.command("allow-base")
def allow_base_(name: str, off: bool = typer.Option(False, "--off", help="Refuse the base again.")):
    """Let a tenant call the bare base model too (or, with --off, no longer)."""
    from tuneops.serve.tenants import set_allow_base

    set_allow_base(_store(), name, not off)
    say(f"{name} may {'no longer ' if off else ''}call the base model")


@tenants_app.command("disable")
def disable_(name: str):
    """Refuse every key of a tenant (403) until `tuneops tenants enable`."""
    from tuneops.serve.tenants import disable

    disable(_store(), name)
    say(f"{name} is disabled: its keys are refused")


@tenants_app.command("enable")
def enable_(name: str):
    """Accept a disabled tenant's keys again."""
    from tuneops.serve.tenants import enable

    enable(_store(), name)
    say(f"{name} is enabled")


@tenants_app.command("route")
def route(name: str, alias: str = typer.Argument(..., help="An alias name, without @stage."),
          stage: Optional[str] = typer.Argument(None, help="The stage the bare name means for this tenant "
                                                           "(leave out to go back to production).")):
    """For one tenant, make a bare alias name mean NAME@STAGE (e.g. quickstart → staging)."""
    from tuneops.serve.tenants import set_route

    set_route(_store(), name, alias, stage)
    say(f"for {name}, {alias} means {alias}@{stage or 'production'}")


@tenants_app.command("pin")
def pin(name: str, alias: str = typer.Argument(..., help="NAME (as the tenant's routing resolves it) or NAME@STAGE."),
        unpin: bool = typer.Option(False, "--unpin", help="Stop asking for it to stay resident.")):
    """Ask the server's adapter pool to keep a tenant's alias resident."""
    from tuneops.serve.tenants import set_pinned

    set_pinned(_store(), name, alias, not unpin)
    say(f"{alias} is {'no longer ' if unpin else ''}pinned for {name}")


def register(app: typer.Typer) -> None:
    """Mount ``tuneops tenants`` on the main app."""
    app.add_typer(tenants_app, name="tenants")
