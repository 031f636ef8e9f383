"""Output helpers: a rich table for people, JSON for machines."""

import json
from datetime import datetime
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def _plain(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    return v


def record_dict(rec, fields: Sequence[str]) -> dict:
    return {f: _plain(getattr(rec, f)) for f in fields}


def emit(rows: list[dict], *, as_json: bool, title: str | None = None, columns: Sequence[str] | None = None) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    columns = list(columns or (rows[0].keys() if rows else []))
    table = Table(title=title, title_justify="left")
    for c in columns:
        is_id = c == "id" or c.endswith(("_id", "_artifact"))
        table.add_column(c, no_wrap=is_id, overflow="fold", min_width=min(max(len(c), 5), 12))
    for r in rows:
        table.add_row(*[_cell(r.get(c)) for c in columns])
    if not rows:
        console.print(f"[dim]{title or 'nothing'}: none yet[/dim]")
        return
    console.print(table)


def emit_one(obj: dict, *, as_json: bool, title: str | None = None) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
        return
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for k, v in obj.items():
        table.add_row(k, _cell(v, wide=True))
    console.print(table)


def _cell(v: Any, wide: bool = False) -> str:
    v = _plain(v)
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str, indent=1 if wide else None)
    return str(v)


def progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, \
        TimeElapsedColumn, TimeRemainingColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console)


def metrics_table(metrics: dict[str, dict], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for c in ("metric", "base", "candidate", "Δ", "95% CI of Δ"):
        table.add_column(c, justify="right" if c != "metric" else "left")
    for name, m in metrics.items():
        ci = m["ci95_delta"]
        table.add_row(name, f"{m['base']:.3f}", f"{m['candidate']:.3f}", f"{m['delta']:+.3f}",
                      f"[{ci[0]:+.3f}, {ci[1]:+.3f}]")
    return table


def gates_table(verdicts: list[dict]) -> Table:
    table = Table(title="Gates (relative to the base)", title_justify="left")
    for c in ("gate", "base", "candidate", "needed", "verdict"):
        table.add_column(c)
    for v in verdicts:
        table.add_row(v["gate"], f"{v['base']:.3f}", f"{v['candidate']:.3f}", f"≥ {v['threshold']:.3f}",
                      "[green]PASS[/green]" if v["passed"] else "[red]FAIL[/red]")
    return table
