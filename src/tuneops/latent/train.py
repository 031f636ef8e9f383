"""Plain training loops for the lab: one generic mini-batch loop plus a loss function per model."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from tuneops.latent.models import AE, VAE, VQVAE, CodePrior, gaussian_kl, mlp

# Progress goes to stderr so `--json` output on stdout stays machine-readable.
console = Console(stderr=True)

LossFn = Callable[[nn.Module, torch.Tensor, int], tuple[torch.Tensor, dict[str, float]]]


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and numpy; return a generator for data order and sampling."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    return torch.Generator().manual_seed(seed)


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    data: torch.Tensor,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    desc: str = "train",
    progress: bool = True,
    on_epoch: Callable[[nn.Module], dict[str, float]] | None = None,
) -> list[dict[str, float]]:
    """Minimise `loss_fn` with Adam over shuffled mini-batches; return per-epoch means of its stats.

    `on_epoch(model)` (run in eval mode, no grad) adds measurements to each epoch's row. Stops early
    (and marks the history) if the loss becomes NaN/inf, so instability is reported, not hidden.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    n = data.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    history: list[dict[str, float]] = []
    step = 0
    model.train()
    # Bars only on a terminal: in logs and captured output they would just leave blank lines.
    ctx = make_progress() if progress and console.is_terminal else nullcontext()
    with ctx as bar:
        task = bar.add_task(desc, total=epochs, stats="") if bar else None
        for epoch in range(epochs):
            sums: dict[str, float] = {}
            perm = torch.randperm(n, generator=gen)
            for i in range(steps_per_epoch):
                batch = data[perm[i * batch_size : (i + 1) * batch_size]]
                loss, stats = loss_fn(model, batch, step)
                if not torch.isfinite(loss):
                    history.append({"epoch": epoch, "loss": float("nan"), "diverged": 1.0})
                    return history
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                stats = {"loss": float(loss.detach()), **stats}
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
            row = {"epoch": epoch, **{k: v / steps_per_epoch for k, v in sums.items()}}
            if on_epoch is not None:
                model.eval()
                with torch.no_grad():
                    row.update(on_epoch(model))
                model.train()
            history.append(row)
            if bar is not None:
                bar.update(task, advance=1, stats=f"loss {row['loss']:.4f}")
    model.eval()
    return history


def recon_nll(logits: torch.Tensor, x: torch.Tensor, likelihood: str = "bernoulli", sigma: float = 1.0) -> torch.Tensor:
    """Per-image negative log-likelihood of x under the decoder (summed over pixels, mean over batch).

    "bernoulli": cross-entropy on intensities in [0, 1]; "gaussian": N(sigmoid(logits), sigma^2), where a
    large sigma down-weights reconstruction exactly like a larger beta does.
    """
    if likelihood == "bernoulli":
        return F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
    if likelihood == "gaussian":
        se = (torch.sigmoid(logits) - x).pow(2).sum() / x.shape[0]
        n_pix = x[0].numel()
        return se / (2 * sigma**2) + n_pix * math.log(sigma * math.sqrt(2 * math.pi))
    raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', not {likelihood!r}")


def ae_loss(model: AE, x: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """AE objective: reconstruction only -- nothing shapes where the codes lie."""
    out = model(x)
    rec = recon_nll(out["logits"], x)
    mse = F.mse_loss(torch.sigmoid(out["logits"]), x)
    return rec, {"recon": float(rec.detach()), "mse": float(mse.detach())}


def beta_at(step: int, beta: float, warmup_steps: int) -> float:
    """Linear KL annealing: beta ramps from 0 to its target over `warmup_steps`."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)


def make_vae_loss(
    beta: float = 1.0,
    warmup_steps: int = 0,
    free_bits: float = 0.0,
    likelihood: str = "bernoulli",
    sigma: float = 1.0,
) -> LossFn:
    """ELBO loss: reconstruction + beta * KL, with optional KL annealing and free bits.

    Free bits (Kingma et al. 2016) replace each dimension's batch-mean KL by max(KL_d, lambda), so a unit
    may carry up to lambda nats without being pushed back to the prior.
    """

    def loss_fn(model: VAE, x: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(x)
        rec = recon_nll(out["logits"], x, likelihood, sigma)
        kl_dims = gaussian_kl(out["mu"], out["logvar"]).mean(0)
        kl = kl_dims.sum()
        kl_term = torch.clamp(kl_dims, min=free_bits).sum() if free_bits > 0 else kl
        b = beta_at(step, beta, warmup_steps)
        loss = rec + b * kl_term
        mse = F.mse_loss(torch.sigmoid(out["logits"]), x)
        return loss, {"recon": float(rec.detach()), "kl": float(kl.detach()), "beta": b, "mse": float(mse.detach())}

    return loss_fn


def vq_loss(model: VQVAE, x: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """VQ-VAE objective: reconstruction + codebook + beta * commitment."""
    out = model(x)
    rec = recon_nll(out["logits"], x)
    # The VQ terms are per-element means; scaling by the latent size keeps them comparable to the summed NLL.
    n_latent = out["z_e"][0].numel()
    loss = rec + n_latent * (out["codebook_loss"] + model.beta * out["commitment_loss"])
    mse = F.mse_loss(torch.sigmoid(out["logits"]), x)
    return loss, {
        "recon": float(rec.detach()),
        "codebook": float(out["codebook_loss"].detach()),
        "commitment": float(out["commitment_loss"].detach()),
        "perplexity": float(out["perplexity"]),
        "mse": float(mse.detach()),
    }


def prior_loss(model: CodePrior, codes: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
    loss = model.loss(codes)
    return loss, {"nll": float(loss.detach())}


# --------------------------------------------------------------------------- convenience wrappers


def train_ae(x: torch.Tensor, epochs: int, latent_dim: int = 16, seed: int = 0, lr: float = 1e-3, progress: bool = True):
    """Build and train an AE; return (model, history)."""
    seed_everything(seed)
    model = AE(tuple(x.shape[1:]), latent_dim)
    return model, fit(model, ae_loss, x, epochs, lr=lr, seed=seed, desc="AE", progress=progress)


def train_vae(
    x: torch.Tensor,
    epochs: int,
    latent_dim: int = 16,
    beta: float = 1.0,
    warmup_epochs: int = 0,
    free_bits: float = 0.0,
    decoder: str = "mlp",
    likelihood: str = "bernoulli",
    sigma: float = 1.0,
    seed: int = 0,
    lr: float = 1e-3,
    batch_size: int = 128,
    desc: str = "VAE",
    progress: bool = True,
    on_epoch=None,
):
    """Build and train a VAE; return (model, history)."""
    seed_everything(seed)
    model = VAE(tuple(x.shape[1:]), latent_dim, decoder=decoder)
    warmup_steps = warmup_epochs * math.ceil(x.shape[0] / batch_size)
    loss_fn = make_vae_loss(beta, warmup_steps, free_bits, likelihood, sigma)
    history = fit(model, loss_fn, x, epochs, lr=lr, batch_size=batch_size, seed=seed, desc=desc, progress=progress, on_epoch=on_epoch)
    return model, history


def train_vqvae(
    x: torch.Tensor,
    epochs: int,
    num_codes: int = 64,
    code_dim: int = 16,
    beta: float = 0.25,
    ema: bool = False,
    restart_threshold: float = 0.0,
    init: str = "uniform",
    seed: int = 0,
    lr: float = 1e-3,
    desc: str = "VQ-VAE",
    progress: bool = True,
):
    """Build and train a VQ-VAE; return (model, history)."""
    seed_everything(seed)
    model = VQVAE(tuple(x.shape[1:]), num_codes, code_dim, beta=beta, ema=ema, restart_threshold=restart_threshold, init=init)
    return model, fit(model, vq_loss, x, epochs, lr=lr, seed=seed, desc=desc, progress=progress)


def train_prior(
    codes: torch.Tensor, num_codes: int, epochs: int, seed: int = 0, lr: float = 1e-3, batch_size: int = 64,
    val_fraction: float = 0.1, progress: bool = True,
):
    """Fit the autoregressive transformer prior on (N, h, w) code grids; return (model, history).

    A few thousand short sequences are easy to memorise, so a held-out slice picks the epoch with the
    best validation NLL and that state is returned (early stopping without cutting the run short).
    """
    gen = seed_everything(seed)
    perm = torch.randperm(codes.shape[0], generator=gen)
    n_val = max(1, int(round(codes.shape[0] * val_fraction)))
    val, tr = codes[perm[:n_val]], codes[perm[n_val:]]
    model = CodePrior(num_codes, tuple(codes.shape[1:]))
    best = {"nll": float("inf"), "state": None, "epoch": -1}
    history_box: list[float] = []

    def track(m: nn.Module) -> dict[str, float]:
        nll = float(m.loss(val))
        if nll < best["nll"]:
            best.update(nll=nll, state={k: v.clone() for k, v in m.state_dict().items()}, epoch=len(history_box))
        history_box.append(nll)
        return {"val_nll": nll}

    history = fit(model, prior_loss, tr, epochs, lr=lr, batch_size=batch_size, seed=seed, desc="AR prior", progress=progress, on_epoch=track)
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    for row in history:
        row["best_epoch"] = float(best["epoch"])
    return model, history


def train_classifier(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, epochs: int = 40, seed: int = 0, progress: bool = False
) -> nn.Module:
    """The judge: an MLP classifier on real images, used to score samples (confidence, class spread, FD)."""
    seed_everything(seed)
    n = x[0].numel()
    model = nn.Sequential(nn.Flatten(), mlp([n, 256, 128]), nn.ReLU(), nn.Linear(128, n_classes))
    data = torch.cat([x.flatten(1), y[:, None].float()], dim=1)

    def loss_fn(m: nn.Module, batch: torch.Tensor, step: int):
        xb, yb = batch[:, :-1], batch[:, -1].long()
        # Light pixel noise makes the judge less trusting of off-manifold images.
        xb = (xb + 0.05 * torch.randn_like(xb)).clamp(0, 1)
        loss = F.cross_entropy(m(xb), yb)
        return loss, {}

    fit(model, loss_fn, data, epochs, lr=1e-3, seed=seed, desc="classifier", progress=progress)
    return model


def timed(fn, *args, **kwargs):
    """Call fn and return (result, seconds)."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
