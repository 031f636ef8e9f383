"""User text is never Rich markup: `[bold]`, `[/x]` in names, paths, reasons and rows print verbatim."""

import json

import pytest
from rich.text import Text

from tests.cli.helpers import tuneops
from tuneops.cli import render

TRICKY = "[bold]loud[/bold] [/x] [red]"


def test_dataset_rows_source_license_and_path_print_verbatim(tmp_path):
    folder = tmp_path / "in[" / "x]"  # the path contains "in[/x]"
    folder.mkdir(parents=True)
    f = folder / "rows.jsonl"
    row = {"messages": [{"role": "user", "content": f"q {TRICKY}"}, {"role": "assistant", "content": "[/x]"}],
           "license": "CC0-1.0"}  # licences are SPDX ids now, so markup cannot reach one
    f.write_text(json.dumps(row) + "\n")
    home = tmp_path / "home"
    tuneops(home, "data", "ingest", f, "--name", "tricky", "--source", f"src {TRICKY}")
    shown = tuneops(home, "data", "show", "tricky").stdout
    assert f"src {TRICKY}" in shown  # sources
    assert "CC0-1.0" in shown  # licenses
    assert str(f) in shown  # origin: the path
    assert f"q {TRICKY}" in shown  # the first row
    as_json = json.loads(tuneops(home, "data", "show", "tricky", "--json").stdout)
    assert as_json["rows"][0]["messages"][0]["content"] == f"q {TRICKY}"


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setattr(render.console, "width", 400)
    monkeypatch.setattr(render.err_console, "width", 400)


def test_tables_titles_and_cells_never_parse_markup(capsys, wide):
    render.emit([{"id": "ds-1", "reason": TRICKY, "path": "/tmp/[/x]/a"}], as_json=False, title=f"title {TRICKY}")
    render.emit_one({"reason": TRICKY, "nested": {"k": "[/x]"}}, as_json=False, title=f"one {TRICKY}")
    render.emit([], as_json=False, title=f"empty {TRICKY}")
    out = capsys.readouterr().out
    assert out.count(TRICKY) == 5 and "/tmp/[/x]/a" in out and '"k": "[/x]"' in out


def test_gate_and_metric_names_status_lines_and_errors_never_parse_markup(capsys, wide):
    render.console.print(render.gates_table([{"gate": f"g {TRICKY}", "base": 0.1, "candidate": 0.2,
                                              "threshold": 0.15, "passed": True}]))
    render.console.print(render.metrics_table({f"m {TRICKY}": {"base": 0.1, "candidate": 0.2, "delta": 0.1,
                                                                "ci95_delta": [0.0, 0.2]}}, f"t {TRICKY}"))
    render.say("run ", ("[/x]", "bold"), f" {TRICKY}")
    render.print_error(f"msg {TRICKY}", f"hint {TRICKY}")
    captured = capsys.readouterr()
    assert captured.out.count(TRICKY) == 4 and "[/x]" in captured.out
    assert captured.err == f"error: msg {TRICKY}\n  fix: hint {TRICKY}\n"


def test_progress_descriptions_are_plain_text(capsys, wide):
    with render.progress() as p:
        p.add_task(f"train {TRICKY}", total=1)
    assert TRICKY in capsys.readouterr().err
    assert isinstance(render.text("[bold]x"), Text) and render.text("[bold]x").plain == "[bold]x"


def test_train_outcome_prints_metrics_gates_and_refusal_verbatim(capsys, wide):
    """`train` without --json: the metrics and gates tables (this used to raise TypeError after training)."""
    from types import SimpleNamespace as NS

    from tuneops.cli.main import _print_outcome

    metrics = {"json_extraction.exact_match": {"base": 0.0, "candidate": 0.5, "delta": 0.5, "ci95_delta": [0.2, 0.8]}}
    gates = [{"gate": "json_extraction.exact_match >= base + 0.2", "base": 0.0, "candidate": 0.5, "threshold": 0.2,
              "passed": True}]
    outcome = NS(run=NS(id="run-1", state="succeeded"), artifact=NS(id="ad-1"),
                 report=NS(id="ev-1", metrics=metrics, gates=gates), promotion=None,
                 promotion_refused=f"refused {TRICKY}", plots={"loss": "/runs/[/x]/loss.png"}, phases={})
    _print_outcome(outcome, as_json=False)
    out = capsys.readouterr().out
    assert "run run-1: succeeded, artifact ad-1" in out and "json_extraction.exact_match" in out
    assert "[+0.200, +0.800]" in out and "PASS" in out
    assert f"not promoted: refused {TRICKY}" in out and "loss plot: /runs/[/x]/loss.png" in out
