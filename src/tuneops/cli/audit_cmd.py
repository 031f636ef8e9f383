"""``tuneops registry audit``: the append-only audit log, filtered; ``--verify`` checks the hash chains of the
audit log and the alias history (store/ledger.py). typer and rich only at import time."""

from __future__ import annotations

import os
from typing import Optional

import typer

from tuneops.cli.render import emit, print_json, record_dict, say

JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
FIELDS = ("seq", "at", "actor", "action", "record_type", "record_id", "details")


def _store():
    from tuneops.store import Store

    return Store.open(os.environ.get("TUNEOPS_HOME"), create=False)


def _verify(as_json: bool, require_signed: bool) -> None:
    from tuneops.store.ledger import LedgerTampered, verify_all

    store = _store()
    reports = verify_all(store, require_signed=require_signed)
    ok = all(r.ok for r in reports)
    if as_json:
        print_json({"ok": ok, "store": str(store.home), "chains": [r.to_dict() for r in reports]})
    else:
        say("ledger verification · ", (str(store.home), "bold"), f" ({store.engine.dialect.name})")
        width = max(len(r.chain) for r in reports)
        for r in reports:
            if r.ok:
                sig = f"signed by {r.signed_by}" if r.signed_by else "unsigned"
                say("  ", (r.chain.ljust(width), "bold"), "  ", ("ok      ", "green"),
                    f"  {r.entries} entries chained, head seq {r.head_seq} ({sig})")
            else:
                p = r.problem
                where = f"seq {p.seq}" if p.seq is not None else "head"
                say("  ", (r.chain.ljust(width), "bold"), "  ", ("TAMPERED", "bold red"),
                    f"  {where} · {p.kind}: {p.message}")
            for w in r.warnings:
                say("  ", " " * width, "  ", ("warning ", "yellow"), f"  {w}")
        warnings = sum(len(r.warnings) for r in reports)
        if ok:
            say(("verdict: intact", "bold green"),
                " — every entry matches its hash, every link its predecessor, and each chain ends at its head"
                + (f" ({warnings} warning{'s' * (warnings != 1)})" if warnings else ""))
        else:
            bad = [f"{r.chain} {'seq ' + str(r.problem.seq) if r.problem.seq is not None else 'head'}"
                   for r in reports if not r.ok]
            say(("verdict: TAMPERED", "bold red"), f" — first bad entry: {'; '.join(bad)}")
    if not ok:
        bad = next(r for r in reports if not r.ok)
        p = bad.problem
        where = f"{bad.chain} entry seq {p.seq}" if p.seq is not None else f"the {bad.chain} head"
        raise LedgerTampered(f"the ledger was tampered with: {where} is {p.kind.replace('_', ' ')} — {p.message}",
                             hint="treat the store's history as untrusted from that entry on; restore the database "
                                  "from a backup and compare (`tuneops registry audit --verify --json` for details)")


def register(app: typer.Typer, registry_app: typer.Typer) -> None:
    @registry_app.command("audit")
    def registry_audit(
        limit: int = typer.Option(50, help="Newest N events."),
        record: Optional[str] = typer.Option(None, "--record",
                                             help="Only events about this record id (or name@stage)."),
        actor: Optional[str] = typer.Option(None, "--actor", help="Only events by this actor: a name or a key id."),
        action: Optional[str] = typer.Option(None, "--action",
                                             help="Only this action (alias.promote), or a family (alias)."),
        verify: bool = typer.Option(False, "--verify", help="Check the hash chains of the audit log and the alias "
                                                            "history instead of listing; exit 6 when tampered."),
        require_signed: bool = typer.Option(False, "--require-signed",
                                            help="With --verify: an unsigned head is an error, not a warning."),
        as_json: bool = JSON,
    ):
        """The append-only audit log: who did what, when, to which record; --verify proves it is intact."""
        if verify:
            _verify(as_json, require_signed)
            return
        from tuneops.store.ledger import audit_entries

        rows = audit_entries(_store(), limit=limit, record=record, actor=actor, action=action)
        emit([record_dict(e, FIELDS) for e in rows], as_json=as_json, title="audit log")
