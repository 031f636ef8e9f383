"""``tuneops registry lineage | card | diff``: lineage both ways, model cards, card diffs.

typer and rich only at import time; the store and the release modules load inside the commands.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from tuneops.cli.render import console, emit, emit_one, print_json, say, text

JSON = typer.Option(False, "--json", help="Print JSON instead of a tree or table.")


def _store():
    from tuneops.store import Store

    return Store.open(os.environ.get("TUNEOPS_HOME"), create=False)


def _write_atomic(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, path)


def _print_tree(tree: str) -> None:
    for line in tree.splitlines():
        say(line)


def register(app: typer.Typer, registry_app: typer.Typer) -> None:
    """Mount this module's commands on the main app and the registry group."""

    @registry_app.command("lineage")
    def registry_lineage(
            ref: Optional[str] = typer.Argument(None, help="Artifact id, alias (name@stage) or run id."),
            reverse: Optional[str] = typer.Option(
                None, "--reverse", metavar="REF",
                help="Go the other way: every artifact derived from this dataset (id or name), base (id or name), "
                     "run or artifact (teacher / reward model), with the aliases pointing at each."),
            as_table: bool = typer.Option(False, "--table", help="Tables instead of the tree."),
            as_json: bool = JSON):
        """Lineage both ways: what an artifact came from (base, datasets, recipe, run, evals, aliases, exports,
        signature), or with --reverse which artifacts came from a dataset, base or run."""
        from tuneops.release.lineage import (artifact_lineage, lineage_tree, relation_text, resolve_artifact_ref,
                                             reverse_lineage, reverse_tree)

        if (ref is None) == (reverse is None):
            raise typer.BadParameter("give an artifact (tuneops registry lineage ID) or --reverse REF, not both "
                                     "or neither", param_hint="REF / --reverse")
        store = _store()
        if reverse is not None:
            data = reverse_lineage(store, reverse)
            if as_json:
                print_json(data)
            elif as_table:
                emit([{"artifact": r["id"], "relation": "; ".join(relation_text(x) for x in r["relations"]),
                       "via": r["via"], "learned": r["learned"], "aliases": ", ".join(r["aliases"]) or None,
                       "run_id": r["run_id"], "base_id": r["base_id"], "created_at": r["created_at"],
                       "tainted": r["tainted"]} for r in data["artifacts"]], as_json=False,
                     title=f"artifacts derived from {data['kind']} {', '.join(m['id'] for m in data['matches'])}")
            else:
                _print_tree(reverse_tree(data))
                if data["serving"]:
                    say("aliases serving what learned from it: ", (", ".join(data["serving"]), "bold"))
            return
        art = resolve_artifact_ref(store, ref)
        data = artifact_lineage(store, art)
        if as_json:
            print_json(data)
            return
        if not as_table:
            _print_tree(lineage_tree(data))
            return
        b, r, run, sig = data["base"], data["recipe"] or {}, data["run"] or {}, data["signature"]
        emit_one({"artifact": art.id, "kind": art.kind, "method": art.method, "created_at": art.created_at,
                  "base": f"{b['id']} ({b.get('name', 'not in this store')})", "base_source": b.get("source"),
                  "base_license": b.get("license"), "template_sha256": data["artifact"]["template_sha256"],
                  "recipe": f"{r.get('name')} ({r.get('sha256')})", "objective": r.get("objective"),
                  "method_summary": r.get("method_summary"),
                  "run": f"{run.get('id')} ({run.get('state', 'not in this store')}, {run.get('steps')} steps)"
                  if run else None, "aliases": ", ".join(data["aliases"]) or None,
                  "signature": sig["status"] + (f" by {sig['key_id']}" if sig.get("key_id") else ""),
                  "tainted_by": data["artifact"]["tainted_by"] or None}, as_json=False, title=f"lineage of {art.id}")
        emit([{"role": d["role"], "id": d["id"], "names": ", ".join(d.get("names") or []) or None,
               "rows": d.get("rows"), "sources": d.get("sources"), "licenses": d.get("licenses")}
              for d in data["datasets"]], as_json=False, title="datasets")
        emit([{"id": e["id"], "passed": e["passed"], "baseline": e["baseline"], "created_at": e["created_at"],
               "key_metrics": {m: round(v["candidate"], 4) for m, v in e["key_metrics"].items()}}
              for e in data["eval_reports"]], as_json=False, title="eval reports")
        emit(data["alias_history"], as_json=False, title="alias moves")
        emit(data["exports"], as_json=False, title="exports")

    @registry_app.command("card")
    def registry_card(
            ref: str = typer.Argument(..., help="Artifact id, alias (name@stage) or run id."),
            fmt: str = typer.Option("md", "--format", help="md (Hugging Face model-card markdown with YAML front "
                                                           "matter) or html."),
            out: Optional[Path] = typer.Option(None, "--out", help="Write the card to this file (default: print "
                                                                    "it)."),
            as_json: bool = typer.Option(False, "--json", help="Print the card's data, its sha256 and (with --out) "
                                                               "its path as JSON.")):
        """A model card for an artifact: base, data (sources, licences, PII), method and hyper-parameters, compute,
        eval results with 95 % CIs, gates, known limitations, intended use. Same store, same bytes."""
        from tuneops.errors import InvalidInput
        from tuneops.release.card import CARD_FORMATS, card_data, card_sha256, render_card
        from tuneops.release.lineage import resolve_artifact_ref

        if fmt not in CARD_FORMATS:
            raise InvalidInput(f"--format {fmt!r}: choose md or html", hint="e.g. --format html --out card.html")
        store = _store()
        art = resolve_artifact_ref(store, ref)
        data = card_data(store, art)
        content = render_card(data, fmt)
        digest = card_sha256(content)
        if out is not None:
            if out.is_dir():
                raise InvalidInput(f"--out {out}: is a directory", hint=f"name a file, e.g. {out / ('README.' + fmt)}")
            _write_atomic(out, content)
        if as_json:
            print_json({"artifact": art.id, "format": fmt, "sha256": digest, "path": str(out) if out else None,
                        "card": data})
        elif out is not None:
            say(f"wrote {out} ", (f"(sha256 {digest[:16]})", "dim"))
        else:
            sys.stdout.write(content)
            sys.stdout.flush()

    @registry_app.command("diff")
    def registry_diff(a: str = typer.Argument(..., help="The earlier artifact (id, alias or run id)."),
                      b: str = typer.Argument(..., help="The later artifact (id, alias or run id)."),
                      context: int = typer.Option(3, min=0, help="Lines of context in the unified diff."),
                      as_json: bool = JSON):
        """What changed between two artifacts' model cards: a unified diff of the markdown and a structured diff
        (hyper-parameters, data, metrics with their change, gates, compute, limitations)."""
        from tuneops.release.card import card_diff, diff_rows
        from tuneops.release.lineage import resolve_artifact_ref

        store = _store()
        art_a, art_b = resolve_artifact_ref(store, a), resolve_artifact_ref(store, b)
        diff = card_diff(store, art_a, art_b, context=context)
        if as_json:
            print_json(diff)
            return
        if diff["identical"]:
            say(f"the cards of {art_a.id} and {art_b.id} are identical (sha256 {diff['a_sha256'][:16]})")
            return
        styles = (("+++", "bold"), ("---", "bold"), ("@@", "cyan"), ("+", "green"), ("-", "red"))
        for line in diff["unified_diff"].splitlines():
            style = next((st for prefix, st in styles if line.startswith(prefix)), "")
            console.print(text((line, style) if style else line), soft_wrap=True)
        say("")
        emit(diff_rows(diff), as_json=False, title=f"what changed from {art_a.id} (A) to {art_b.id} (B)",
             columns=("what", "a", "b", "change"))
