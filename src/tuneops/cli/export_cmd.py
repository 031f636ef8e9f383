"""``tuneops registry export`` and ``registry exports``: write an artifact as a PEFT folder (with its
base), a merged safetensors model or GGUF, checked against the artifact before it is recorded; list
what was exported. typer and rich only at import time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from tuneops.cli.render import emit, emit_one, say, status

JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


def _store():
    from tuneops.store import Store

    return Store.open(os.environ.get("TUNEOPS_HOME"), create=False)


def register(app: typer.Typer, registry_app: typer.Typer) -> None:
    """Mount this module's commands on the main app and the registry group."""

    @registry_app.command("export")
    def registry_export(
        ref: str = typer.Argument(..., metavar="ID", help="Artifact id (ad-…) or alias (name@stage)."),
        dest: Path = typer.Argument(..., metavar="DIR", help="Folder to write (new or empty; --force replaces it)."),
        fmt: str = typer.Option(..., "--format", help="peft: the adapter folder PEFT / vLLM load, with its base as "
                                                      "a standard HF folder; merged: one safetensors model "
                                                      "(merge_and_unload); gguf: the merged model for llama.cpp."),
        gguf_type: str = typer.Option("f16", "--gguf-type", help="GGUF tensor type: f16 or q8_0."),
        base_ref: Optional[str] = typer.Option(None, "--base-ref", help="peft: name the base (e.g. a hub id) in "
                                                                        "adapter_config.json instead of exporting "
                                                                        "it to DIR/base."),
        max_logit_diff: Optional[float] = typer.Option(None, "--max-logit-diff",
                                                       help="Bound on max |logit difference| merged vs unmerged "
                                                            "(default 1e-3); above it nothing is written."),
        force: bool = typer.Option(False, "--force", help="Replace DIR if it is not empty."),
        as_json: bool = JSON,
    ):
        """Export an artifact (peft | merged | gguf), checked against the artifact, recorded with its digest."""
        from tuneops.release.export import export_artifact, export_summary

        store = _store()
        with status(f"exporting {ref} as {fmt}…") as spinner:
            rec = export_artifact(store, ref, fmt, dest, gguf_type=gguf_type, base_ref=base_ref, force=force,
                                  max_logit_diff=max_logit_diff,
                                  on_step=lambda msg: spinner.update(f"{ref} → {fmt}: {msg}"))
        out = export_summary(rec)
        if as_json:
            emit_one(out, as_json=True)
            return
        checks = out.pop("checks")
        load = out.pop("load") or []
        emit_one({k: v for k, v in out.items() if v is not None}, as_json=False, title=f"export {rec.id}")
        for name, c in checks.items():
            bound = c.get("bounds", {}).get("max_abs_logit_diff")
            kl = c.get("bounds", {}).get("max_mean_kl")
            say(f"check {name}: {'passed' if c.get('passed') else 'FAILED'} · max |Δlogit| "
                f"{c['max_abs_logit_diff']:.3g} (bound {bound:g}) · top-1 agreement {c['top1_agreement']:.4f} · "
                + (f"mean KL {c['mean_kl']:.2g} (bound {kl:g}) · " if kl is not None else "")
                + f"greedy identical {c['greedy_identical']}")
        for line in load:
            say("load with: ", line)
        say("see ", str(Path(rec.path) / "EXPORT.md"), " for versions and notes")

    @registry_app.command("exports")
    def registry_exports(artifact: Optional[str] = typer.Argument(None, help="Only this artifact's exports."),
                         as_json: bool = JSON):
        """Recorded exports: where, what format, the digest of the written files, who."""
        from tuneops.release.export import export_summary, list_exports

        recs = list_exports(_store(), artifact)
        if as_json:
            emit([{**export_summary(r), "created_at": r.created_at} for r in recs], as_json=True)
            return
        rows = []
        for rec in recs:
            s = export_summary(rec)
            rows.append({"id": rec.id, "artifact": rec.artifact_id,
                         "format": f"{rec.format} {s['gguf_type']}" if s["gguf_type"] else rec.format,
                         "path": rec.path, "digest": rec.digest[:16], "MB": round(s["bytes"] / 1e6, 1),
                         "checks": ", ".join(f"{k} {'passed' if v.get('passed') else 'FAILED'}"
                                             for k, v in s["checks"].items()),
                         "actor": rec.actor, "created_at": rec.created_at})
        emit(rows, as_json=False, title="exports")
