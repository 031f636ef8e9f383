"""The CLI's one error path: usage errors, TuneopsError, unexpected errors, signals — each with its
exit code, a message on stderr and never a traceback on the terminal."""

import re
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.cli.helpers import cli_env, tuneops
from tuneops.errors import Interrupted, NotFound


@pytest.mark.parametrize("args, says", [
    (["data", "ingest"], "Missing argument"),
    (["data", "list", "--bogus"], "No such option: --bogus"),
    (["nope"], "No such command 'nope'"),
    (["registry", "promote", "ad-x"], "Missing argument"),
    (["runs", "show", "a", "b"], "unexpected extra argument"),
])
def test_usage_errors_exit_2_with_usage_text_and_no_traceback(tmp_path, args, says):
    proc = tuneops(tmp_path / "home", *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Usage: tuneops" in proc.stderr and says in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("args", [[], ["data"], ["runs"]])
def test_bare_command_prints_help_and_exits_2(tmp_path, args):
    """Click's convention (8.2+): a command line that says nothing to do shows help and exits 2."""
    proc = tuneops(tmp_path / "home", *args, check=False)
    assert proc.returncode == 2
    assert "Usage: tuneops" in proc.stdout + proc.stderr and "Commands" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_exits_0(tmp_path):
    proc = tuneops(tmp_path / "home", "--help")
    assert "Usage: tuneops" in proc.stdout and "latent" in proc.stdout


def test_tuneops_error_prints_error_and_fix_verbatim(tmp_path):
    tuneops(tmp_path / "home", "init")
    proc = tuneops(tmp_path / "home", "registry", "history", "Bad[/x][bold]", check=False)
    assert proc.returncode == 2
    assert proc.stderr == ("error: 'Bad[/x][bold]' is not an alias\n"
                           "  fix: write name@stage, e.g. quickstart@production\n")


def test_error_text_with_brackets_is_not_markup(tmp_path):
    """The alias pattern and a path holding `[/x]` print verbatim (they used to vanish or crash)."""
    folder = tmp_path / "a[" / "x]"
    folder.mkdir(parents=True)
    recipe = folder / "recipe.yaml"
    recipe.write_text("name: x\nbase: embedded:SmolLM2-135M-Instruct\ndata: {train: a, eval: b}\n"
                      "target: {alias: 'Bad Alias'}\n")
    proc = tuneops(tmp_path / "home", "train", recipe, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{recipe}: target.alias" in proc.stderr  # the path contains "a[/x]/recipe.yaml"
    assert "'^[a-z0-9][a-z0-9._-]{0,99}$'" in proc.stderr


def test_ingest_of_a_bad_gzip_row_exits_2_names_it_and_stores_nothing(tmp_path):
    import gzip

    f = tmp_path / "rows.jsonl.gz"
    f.write_bytes(gzip.compress(b'{"messages": []}\n'))
    home = tmp_path / "home"
    proc = tuneops(home, "data", "ingest", f, "--name", "x", "--license", "MIT", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{f}:1: messages" in proc.stderr and "nothing was read" in proc.stderr
    assert tuneops(home, "data", "list", "--json").stdout.strip() == "[]"


# -- in-process: what main() does with each kind of exception --------------------------------
@pytest.fixture
def cli(monkeypatch, tmp_path):
    """run_cli with the store replaced by a function that raises what the test says."""
    from tuneops.cli import main as m

    def run(exc: BaseException, home):
        def boom(**_):
            raise exc
        monkeypatch.setattr(m, "_store", boom)
        monkeypatch.setenv("TUNEOPS_HOME", str(home))
        return m.run_cli(["runs", "list"])
    return run


def test_tuneops_error_exit_code_and_hint(cli, capsys, tmp_path):
    code = cli(NotFound("no such [bold]thing[/x]", hint="try [green]this"), tmp_path / "missing")
    err = capsys.readouterr().err
    assert code == 2 and err == "error: no such [bold]thing[/x]\n  fix: try [green]this\n"


def test_unexpected_error_is_one_line_with_the_traceback_in_the_store_logs(cli, capsys, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    code = cli(RuntimeError("boom [/x]\nsecond line"), home)
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    m = re.fullmatch(r"error: unexpected RuntimeError: boom \[/x\] second line; details in (\S+)\n", err)
    assert m, err
    log = m.group(1)
    assert log.startswith(str(home / "logs"))
    body = open(log).read()
    assert "Traceback (most recent call last)" in body and "RuntimeError: boom [/x]" in body


def test_unexpected_error_without_a_store_logs_to_a_temp_dir_and_creates_no_store(cli, capsys, tmp_path):
    home = tmp_path / "nothing-here"
    code = cli(ValueError("bad"), home)
    err = capsys.readouterr().err
    assert code == 1 and "details in " in err and not home.exists()
    log = err.rsplit("details in ", 1)[1].strip()
    assert "Traceback" in open(log).read()


@pytest.mark.parametrize("exc, code, line", [
    (Interrupted(signal.SIGTERM), 143, "error: interrupted by SIGTERM (exit 143)\n"),
    (KeyboardInterrupt(), 130, "error: interrupted by SIGINT (exit 130)\n"),
])
def test_interrupts_exit_with_their_codes_and_one_line(cli, capsys, tmp_path, exc, code, line):
    assert cli(exc, tmp_path) == code
    assert capsys.readouterr().err == line


SLEEPER = textwrap.dedent("""
    import pathlib, sys, time
    from tuneops.cli import main as m

    @m.app.command("sleepy")
    def sleepy():
        try:
            print("ready", flush=True)
            time.sleep(60)
        finally:
            pathlib.Path(sys.argv[1]).write_text("finally ran")

    m.main(["sleepy"])
""")


@pytest.mark.parametrize("sig, code, line", [
    (signal.SIGTERM, 143, "error: interrupted by SIGTERM (exit 143)"),
    (signal.SIGINT, 130, "error: interrupted by SIGINT (exit 130)"),
])
def test_signals_unwind_the_main_thread_run_finally_and_exit_with_their_code(tmp_path, sig, code, line):
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER, str(marker)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(tmp_path / "home"),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code
    assert marker.read_text() == "finally ran"
    assert err.strip() == line
