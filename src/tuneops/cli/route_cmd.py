"""Routes of an alias: ``tuneops registry canary|shadow|route|route-clear|disable|enable``.

typer and rich only at import time; the store loads inside the commands. Every change is a move in the
alias's history (``tuneops registry history ALIAS``); the serving front reads the active route.
"""

from __future__ import annotations

import os
from typing import Optional

import typer

from tuneops.cli.render import emit, emit_one, note, record_dict

JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
MOVE_FIELDS = ("seq", "action", "from_artifact", "to_artifact", "actor", "at", "reason")
ROUTE_COLUMNS = ("id", "state", "canary_artifact", "canary_percent", "sticky", "shadow_artifact", "shadow_percent",
                 "created_by", "created_at", "ended_at", "end_reason")


def _store():
    from tuneops.store import Store

    return Store.open(os.environ.get("TUNEOPS_HOME"))


def _artifact_id(store, ref: str) -> str:
    """An artifact id, or the target of an alias (``bot@staging``)."""
    from tuneops.release.registry import resolve_alias

    return store.get_artifact(ref).id if ref.startswith("ad-") else resolve_alias(store, ref).id


def _route_view(route) -> dict:
    d = route.to_dict()
    slo = d.pop("slo")
    if route.canary_artifact:
        d["slo"] = route.slo.describe()
        d["slo_settings"] = slo
    return d


def register(registry_app: typer.Typer) -> None:
    """Mount the route commands on the registry group."""

    @registry_app.command("canary")
    def registry_canary(
            alias: str = typer.Argument(..., help="name@stage whose traffic to split."),
            artifact: str = typer.Argument(..., help="The canary: an artifact id or an alias's target."),
            percent: float = typer.Option(..., "--percent", help="Share of traffic, > 0 and ≤ 100 (0.01 steps)."),
            sticky: str = typer.Option("user", help="Keep each user (or tenant) on one side: user | tenant; the "
                                                    "other is the fallback, neither means random."),
            max_error_rate: float = typer.Option(0.05, help="Roll back above this error rate (0–1)."),
            max_error_rate_delta: Optional[float] = typer.Option(None, help="…or above the primary's error rate "
                                                                            "plus this (0–1)."),
            max_p99_ms: Optional[float] = typer.Option(None, help="…or above this p99 latency (ms)."),
            max_latency_ratio: float = typer.Option(2.0, help="…or above this multiple of the primary's p99 "
                                                              "latency (0: off)."),
            min_requests: int = typer.Option(100, help="Judge only once the canary has this many requests in the "
                                                       "window (and the primary too, for comparisons)."),
            window_s: float = typer.Option(600.0, "--window-s", help="Sliding window, seconds."),
            reason: Optional[str] = typer.Option(None, help="Why (logged in the alias's history; required)."),
            as_json: bool = JSON):
        """Send a sticky share of an alias's traffic to a canary that meets every promotion condition; it is
        rolled back automatically (and logged why) when it breaches its SLO."""
        from tuneops.release.routing import SLO, set_canary

        store = _store()
        slo = SLO(max_error_rate=max_error_rate, max_error_rate_delta=max_error_rate_delta, max_p99_ms=max_p99_ms,
                  max_latency_ratio=max_latency_ratio or None, min_requests=min_requests, window_s=window_s)
        route, mv = set_canary(store, alias, _artifact_id(store, artifact), percent, sticky=sticky, slo=slo,
                               reason=reason)
        emit_one(_route_view(route), as_json=as_json, title=f"{route.alias}: canary started (history seq {mv.seq})")

    @registry_app.command("shadow")
    def registry_shadow(
            alias: str = typer.Argument(..., help="name@stage whose requests to copy."),
            artifact: str = typer.Argument(..., help="The shadow: an artifact id or an alias's target."),
            percent: float = typer.Option(100.0, "--percent", help="Share of requests copied, > 0 and ≤ 100."),
            reason: Optional[str] = typer.Option(None, help="Why (logged in the alias's history; required)."),
            as_json: bool = JSON):
        """Copy a share of an alias's requests to another artifact in the background; its answers are only
        measured, never returned. Every promotion condition but the eval gates applies."""
        from tuneops.release.routing import set_shadow

        store = _store()
        route, mv = set_shadow(store, alias, _artifact_id(store, artifact), percent, reason=reason)
        emit_one(_route_view(route), as_json=as_json, title=f"{route.alias}: shadow started (history seq {mv.seq})")

    @registry_app.command("route")
    def registry_route(alias: str = typer.Argument(..., help="name@stage"),
                       show_all: bool = typer.Option(False, "--all", help="Every route it has had, ended ones too."),
                       as_json: bool = JSON):
        """An alias's active canary / shadow route (or, with --all, every route it has had)."""
        from tuneops.release.registry import parse_alias
        from tuneops.release.routing import get_route, route_history

        name, stage = parse_alias(alias)
        store = _store()
        if show_all:
            rows = [_route_view(r) for r in route_history(store, alias)]
            emit(rows if as_json else [{k: r.get(k) for k in ROUTE_COLUMNS} for r in rows], as_json=as_json,
                 title=f"routes of {name}@{stage}")
            return
        route = get_route(store, alias)
        if route is None:
            if as_json:
                emit_one(None, as_json=True)
            else:
                note(f"{name}@{stage} has no active route: all of its traffic goes to its production target")
            return
        emit_one(_route_view(route), as_json=as_json, title=f"route of {name}@{stage}")

    @registry_app.command("route-clear")
    def registry_route_clear(alias: str = typer.Argument(..., help="name@stage"),
                             canary: bool = typer.Option(False, "--canary", help="End only the canary."),
                             shadow: bool = typer.Option(False, "--shadow", help="End only the shadow."),
                             reason: Optional[str] = typer.Option(None, help="Why (logged; required)."),
                             as_json: bool = JSON):
        """End an alias's canary and/or shadow: all traffic back to its production target (logged)."""
        from tuneops.errors import InvalidInput
        from tuneops.release.routing import clear_route

        if canary and shadow:
            raise InvalidInput("give --canary or --shadow, not both (neither ends the whole route)")
        part = "canary" if canary else "shadow" if shadow else "all"
        moves = clear_route(_store(), alias, reason=reason, part=part)
        emit([record_dict(m, MOVE_FIELDS) for m in moves], as_json=as_json,
             title=f"{moves[0].name}@{moves[0].stage}: route cleared")

    @registry_app.command("disable")
    def registry_disable(alias: str = typer.Argument(..., help="name@stage"),
                         reason: Optional[str] = typer.Option(None, help="Why (logged; required)."),
                         as_json: bool = JSON):
        """Switch an alias off for serving, at once and without a restart: servers answer 503 alias_disabled,
        or the base with a fallback flag under `serve --fallback base`. Target and history stay (logged)."""
        from tuneops.release.registry import set_enabled

        mv = set_enabled(_store(), alias, False, reason=reason)
        emit_one(record_dict(mv, MOVE_FIELDS), as_json=as_json, title=f"{mv.name}@{mv.stage}: switched off")

    @registry_app.command("enable")
    def registry_enable(alias: str = typer.Argument(..., help="name@stage"),
                        reason: Optional[str] = typer.Option(None, help="Why (logged; required)."),
                        as_json: bool = JSON):
        """Switch a disabled alias back on: the next request is served by its target again (logged)."""
        from tuneops.release.registry import set_enabled

        mv = set_enabled(_store(), alias, True, reason=reason)
        emit_one(record_dict(mv, MOVE_FIELDS), as_json=as_json, title=f"{mv.name}@{mv.stage}: switched on")
