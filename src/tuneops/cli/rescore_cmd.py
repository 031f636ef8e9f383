"""`tuneops eval rescore`: score a stored report's outputs again (no model), store a new report.

Registered on the eval group by ``tuneops.cli.main`` (``register(eval_app)``). Heavy imports stay
inside the command, as in the rest of the CLI.
"""

import os
from pathlib import Path
from typing import Optional

import typer

EV_FIELDS = ("id", "artifact_id", "baseline", "passed", "created_at")


def register(eval_app: typer.Typer) -> None:
    """Add ``rescore`` to the ``tuneops eval`` group."""

    @eval_app.command("rescore")
    def eval_rescore(
        report: str = typer.Argument(..., help="The stored eval report to re-score (ev-…); it is never changed."),
        suite: Optional[list[str]] = typer.Option(
            None, "--suite", help="Replacement definition (built-in name or YAML path) of a suite of the report, "
                                  "same name and same items, other scorers or parameters; repeat for several. "
                                  "Unnamed suites are re-scored with their stored scorers under today's code."),
        gates: Optional[Path] = typer.Option(None, help="Apply this recipe's gates instead of the report's own."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ):
        """Re-score a stored report from its stored outputs (no model, no generation): metrics, CIs, McNemar,
        slices and gates again; stores a new report with rescored_from. Exit 3 if its gates fail."""
        from tuneops.cli.render import console, emit_one, gates_table, metrics_table, record_dict, slices_table
        from tuneops.errors import GateFailed
        from tuneops.eval.paired import load_full_report
        from tuneops.eval.rescore import rescore_report
        from tuneops.store import Store
        from tuneops.train.recipe import load_recipe

        store = Store.open(os.environ.get("TUNEOPS_HOME"), create=False)
        gate_list = load_recipe(gates).gates if gates is not None else None
        rec = rescore_report(store, report, suites=list(suite) if suite else None, gates=gate_list)
        full = load_full_report(store, rec)
        if as_json:
            emit_one(record_dict(rec, EV_FIELDS + ("metrics", "gates"))
                     | {"slices": full.get("slices", {}), "rescored_from": full["rescored_from"],
                        "verdict": full.get("verdict")}, as_json=True)
        else:
            console.print(metrics_table(rec.metrics, f"Re-scored {full['rescored_from']} → {rec.id}: "
                                                     f"{rec.artifact_id} vs {rec.baseline}"))
            if full.get("slices"):
                console.print(slices_table(full["slices"], "Worst slices"))
            if rec.gates:
                console.print(gates_table(rec.gates))
        if (gates is not None or rec.gates) and not rec.passed:  # gates applied (--gates or the report's): exit 3
            failed = [g["gate"] for g in rec.gates if not g["passed"]] or ["no gate judged the task"]
            raise GateFailed(f"{rec.id}: gates failed: {'; '.join(failed)}", hint=f"see `tuneops eval show {rec.id}`")
