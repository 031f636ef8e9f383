"""``tuneops registry audit``: the append-only audit log. typer and rich only at import time."""

from __future__ import annotations

import os

import typer

from tuneops.cli.render import emit, record_dict

JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


def _store():
    from tuneops.store import Store

    return Store.open(os.environ.get("TUNEOPS_HOME"), create=False)


def register(app: typer.Typer, registry_app: typer.Typer) -> None:
    @registry_app.command("audit")
    def registry_audit(limit: int = typer.Option(50, help="Newest N events."), as_json: bool = JSON):
        """The append-only audit log: who did what, when, to which record."""
        fields = ("seq", "at", "actor", "action", "record_type", "record_id", "details")
        emit([record_dict(e, fields) for e in _store().audit_log(limit)], as_json=as_json, title="audit log")
