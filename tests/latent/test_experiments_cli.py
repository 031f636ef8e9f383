"""Scenario-level checks (collapse detection, codebook collapse) and the CLI end to end on tiny budgets."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tuneops.latent import experiments as E
from tuneops.latent.cli import app
from tuneops.latent.data import load_dataset, load_digits_images

runner = CliRunner()


@pytest.fixture(scope="module")
def digits():
    return load_dataset(seed=0)


def test_active_units_detect_large_beta_collapse(digits):
    scenarios = [
        ("healthy", "mlp", 1.0, 0.5, 0.0, "baseline"),
        ("beta=8", "mlp", 8.0, 0.0, 0.0, "failure"),
    ]
    res, art = E.run_collapse(digits, seed=0, epochs=12, latent_dim=8, progress=False, scenarios=scenarios)
    healthy, collapsed = res["rows"]
    assert collapsed["active_units"] <= 1 and healthy["active_units"] >= 6
    assert collapsed["kl_total"] < 0.1 * healthy["kl_total"]
    assert len(art["au_curves"]["healthy"]) == 12


def test_bad_codebook_init_collapses_and_restarts_fix_it(digits):
    scenarios = [
        ("plain VQ, bad init", "far", False, 0.0, "failure"),
        ("EMA + restarts, bad init", "far", True, E.RESTART_THRESHOLD, "fix"),
    ]
    res, _ = E.run_codebook(digits, seed=0, epochs=6, num_codes=32, progress=False, scenarios=scenarios)
    bad, fixed = res["rows"]
    assert bad["dead_codes"] > 16 and fixed["dead_codes"] < bad["dead_codes"]
    assert fixed["codebook_perplexity"] > 2 * bad["codebook_perplexity"]
    assert res["summary"] == {"bad_init_collapses": True, "ema_restarts_fix": True}


def test_budget_scaling_keeps_every_run_positive():
    b = E.Budget.scaled(1)
    assert min(b.ae, b.vae, b.vq, b.prior, b.collapse, b.blur, b.codebook) >= 1
    assert E.Budget().ae == 150 and E.Budget.quick().ae == 40


def test_cli_compare_writes_report_and_json(tmp_path):
    x, _ = load_digits_images()
    np.save(tmp_path / "small.npy", x[:150])
    out = tmp_path / "report"
    result = runner.invoke(app, ["compare", "--data", str(tmp_path / "small.npy"), "--epochs", "2", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    models = payload["compare"]["models"]
    assert set(models) == {"ae", "vae", "vqvae"}
    assert 0 <= models["vae"]["active_units"] <= 16 and models["vqvae"]["dead_codes"] >= 0
    for name in ("report.md", "report.html", "results.json", "reconstructions.png", "prior_samples.png", "interpolations.png"):
        assert (out / name).stat().st_size > 0
    assert "| recon MSE (test) |" in (out / "report.md").read_text()


@pytest.mark.parametrize("bad", ["missing.npy", "flat.npy"])
def test_cli_bad_data_exits_nonzero_with_message(tmp_path, bad):
    np.save(tmp_path / "flat.npy", np.random.rand(30, 10))
    path = tmp_path / bad
    result = runner.invoke(app, ["compare", "--data", str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert bad in result.output and "Fix:" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


def test_cli_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("compare", "collapse", "codebook", "blur", "failures"):
        assert cmd in result.output


def test_cli_codebook_prints_table(tmp_path):
    x, _ = load_digits_images()
    np.save(tmp_path / "small.npy", x[:120])
    result = runner.invoke(app, ["codebook", "--data", str(tmp_path / "small.npy"), "--epochs", "4"])
    assert result.exit_code == 0, result.output
    assert "Codebook collapse" in result.output and "summary: bad_init_collapses=" in result.output


@pytest.mark.slow
def test_strong_decoder_collapse_and_free_bits_fix(digits):
    """The MADE decoder needs ~150+ epochs to shed the latent completely (about 15 s)."""
    scenarios = [
        ("MADE decoder, beta=1", "made", 1.0, 0.0, 0.0, "failure"),
        ("MADE decoder + free bits 0.5", "made", 1.0, 0.5, 0.0, "fix"),
    ]
    res, _ = E.run_collapse(digits, seed=0, epochs=200, progress=False, scenarios=scenarios)
    collapsed, fixed = res["rows"]
    assert collapsed["active_units"] <= 1 and collapsed["kl_total"] < 0.1
    assert fixed["active_units"] >= 8
    # Collapse is what the ELBO prefers here: the collapsed model has the better bound.
    assert collapsed["neg_elbo_nats"] < fixed["neg_elbo_nats"]
