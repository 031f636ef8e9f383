"""``tuneops traces list|show``: served requests' traces, and one trace's lineage back to the rows that taught
the answer. typer and rich only at import time."""

from __future__ import annotations

import os
from typing import Optional

import typer
from rich.text import Text

from tuneops.cli.render import console, emit, emit_one, print_json, say

JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
LIST_FIELDS = ("id", "at", "tenant", "model", "alias", "artifact_id", "path", "status", "error_code", "prompt_tokens",
               "completion_tokens", "latency_s")


def _store():
    from tuneops.store import Store

    return Store.open(os.environ.get("TUNEOPS_HOME"), create=False)


def _seconds(v) -> str:
    return "—" if v is None else f"{v:.3f}s"


def lineage_text(data: dict) -> str:
    """A trace's lineage as a tree: trace → base and artifact → run, recipe → datasets → rows."""
    from tuneops.release.lineage import _counts, render_tree, short

    t = data["trace"]
    b = data["base"]
    if b is None:
        base = "base      — (the request failed before a model resolved)"
    elif not b.get("in_store"):
        base = f"base      {b['id']}  (not in this store)"
    else:
        rev = f"revision {short(b.get('revision_served'))}"
        if not b.get("revision_matches"):
            rev += f" — DIFFERS from the stored weights {short(b.get('weights_sha256'))}"
        base = f"base      {b['id']}  {b['name']}  ({rev}; licence {b['license']})"
    children: list = [base]
    a = data["artifact"]
    if a is None:
        children.append("adapter   none: the bare base answered" if b is not None else "adapter   —")
    elif a.get("in_store") is False:
        children.append(f"adapter   {a['id']}  (not in this store)")
    else:
        extra = []
        if a.get("tainted_by"):
            extra.append("TAINTED: " + "; ".join(f"{x['erasure']} erased rows of {x['dataset']}"
                                                  for x in a["tainted_by"]))
        if a.get("deprecation"):
            extra.append(f"DEPRECATED (sunset {a['deprecation'].get('sunset', '?')})")
        sig = data.get("signature") or {}
        extra.append(f"signature {sig.get('status', '?')}" + (f" by {sig['key_id']}" if sig.get("key_id") else ""))
        if data.get("aliases_now"):
            extra.append(f"aliases now: {', '.join(data['aliases_now'])}")
        children.append((f"adapter   {a['id']}  {a['kind']} · {a['method']}"
                         + (f"  (via {t['alias']})" if t.get("alias") else ""), extra))
        r = data["recipe"]
        children.append(f"recipe    {r['name']}  sha256 {short(r['sha256'])}  {r['objective']} · "
                        f"{r['method_summary']}" if r else "recipe    none recorded")
        run = data["run"]
        children.append(f"run       {run['id']}  {run.get('state', 'not in this store')}" if run
                        else "run       none (registered by hand)")
        for kind, up in sorted((data.get("upstream") or {}).items()):
            children.append(f"{kind:<9} {up.get('artifact') or up.get('base') or '?'}")
    ds_nodes = []
    for d in data["datasets"]:
        via = f"  (via {d['via']})" if d.get("via") else ""
        if not d.get("in_store"):
            ds_nodes.append(f"{d['role']:<6} {d['id']}  (not in this store){via}")
            continue
        extra = [f"sources: {_counts(d['sources'])}", f"licences: {_counts(d['licenses'])}"]
        if d.get("erased"):
            extra.append(f"ERASED by {d['erased']['erasure']} (clean version {d['erased']['clean_version']})")
        ds_nodes.append((f"{d['role']:<6} {d['id']}  {', '.join(d['names'])}  {d['rows']} rows{via}", extra))
    if a is not None:
        children.append(("datasets", ds_nodes or ["none recorded"]))
        rows = data["rows"]
        children.append((f"rows      {rows['total']} learned from, in {len(rows['dataset_versions'])} "
                         f"dataset version(s)", rows["list"] or ["none recorded"]))
    status = f"{t['status']}" + (f" {t['error_code']}" if t.get("error_code") else "")
    root = (f"{t['id']}  {t['at']}  tenant {t['tenant'] or '—'}  model {t['model'] or '—'}  → {status}  "
            f"latency {_seconds(t['latency_s'])}  ttft {_seconds(t['ttft_s'])}")
    return render_tree(root, children)


def register(app: typer.Typer) -> None:
    traces_app = typer.Typer(help="Request traces: list, show (with lineage back to the training rows), prune.",
                             no_args_is_help=True)
    app.add_typer(traces_app, name="traces")

    @traces_app.command("list")
    def traces_list(
        tenant: Optional[str] = typer.Option(None, "--tenant", help="Only this tenant's requests."),
        artifact: Optional[str] = typer.Option(None, "--artifact",
                                               help="Only requests this artifact answered ('base': the bare base)."),
        alias: Optional[str] = typer.Option(None, "--alias", help="Only requests resolved through name@stage."),
        since: Optional[str] = typer.Option(None, "--since", help="Only newer ones: 30m, 2h, 7d, or an ISO date."),
        errors: bool = typer.Option(False, "--errors", help="Only requests answered with an error."),
        limit: int = typer.Option(50, "--limit", help="Newest N traces."),
        as_json: bool = JSON,
    ):
        """Served requests, newest first: tenant, model asked for, alias and artifact that answered, status, tokens,
        latency."""
        from tuneops.serve.tracing import trace_dict, traces

        recs = traces(_store(), tenant=tenant, artifact=artifact, alias=alias, since=since, errors=errors,
                      limit=limit)
        rows = [trace_dict(r, content=False) for r in recs]
        if as_json:
            print_json(rows)
        else:
            # A terminal table that fits 80 columns: who, what answered, how it went (--json has every field).
            emit([{"id": r["id"], "tenant": r["tenant"],
                   "model → artifact": f"{r['alias'] or r['model'] or '—'} → {r['artifact_id'] or 'base'}",
                   "status": r["status"] if not r["error_code"] else f"{r['status']} {r['error_code']}",
                   "s": "—" if r["latency_s"] is None else f"{r['latency_s']:.2f}"} for r in rows],
                 as_json=False, title="traces")

    @traces_app.command("prune")
    def traces_prune(
        older_than: Optional[str] = typer.Option(None, "--older-than",
                                                 help="Traces older than this: 30d, 12h, or an ISO date."),
        tenant: Optional[str] = typer.Option(None, "--tenant", help="Only this tenant's traces (a tenant that "
                                                                     "leaves: all of them)."),
        content_only: bool = typer.Option(False, "--content-only",
                                          help="Keep the metadata (who, which artifact, timings); drop the "
                                               "recorded messages and answers."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Only count what would be pruned."),
    ):
        """Retention: delete old traces (or only their content), audited. Run it from cron, e.g. daily with
        --older-than 30d, and --content-only with a shorter window."""
        from tuneops.serve.tracing import prune_traces

        n = prune_traces(_store(), older_than=older_than, tenant=tenant, content_only=content_only,
                         dry_run=dry_run)
        what = "traces' content" if content_only else "traces"
        say(f"{'would prune' if dry_run else 'pruned'} {n} {what}")

    @traces_app.command("show")
    def traces_show(trace_id: str = typer.Argument(..., help="A trace id (tr-…), as the X-Tuneops-Trace header "
                                                             "gave it."),
                    as_json: bool = JSON):
        """One trace and its lineage: base revision, adapter, run, recipe, the dataset versions it learned from and
        how to list their rows."""
        from tuneops.serve.tracing import trace_lineage

        data = trace_lineage(_store(), trace_id)
        if as_json:
            print_json(data)
            return
        t = dict(data["trace"])
        content = t.pop("content", None)
        emit_one(t, as_json=False, title=f"trace {trace_id}")
        if content is not None:
            emit_one(content, as_json=False, title="content (PII-redacted)")
        say("")
        console.print(Text(lineage_text(data)), soft_wrap=True)
