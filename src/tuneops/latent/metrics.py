"""Measurements: reconstruction, KL per dimension, active units, codebook usage, and sample scoring by
a classifier trained on real data (confidence, class-distribution entropy, Frechet distance)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tuneops.latent.models import VAE, VQVAE, gaussian_kl

ACTIVE_THRESHOLD = 0.01  # Burda et al. (2016): a unit is active if Var_x(E_q[z_u|x]) > 0.01


def _batches(x: torch.Tensor, size: int = 512):
    for i in range(0, x.shape[0], size):
        yield x[i : i + size]


@torch.no_grad()
def recon_mse(model: nn.Module, x: torch.Tensor) -> float:
    """Mean squared error between images and the decoder mean (VAE: at z = mu, MADE: teacher-forced)."""
    model.eval()
    total = 0.0
    for xb in _batches(x):
        if isinstance(model, VAE):
            mu, _ = model.encode(xb)
            logits = model.decode(mu, xb)
        else:
            logits = model(xb)["logits"]
        total += float(F.mse_loss(torch.sigmoid(logits), xb, reduction="sum"))
    return total / x.numel()


@torch.no_grad()
def vae_posterior(model: VAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and log-variances for every image."""
    model.eval()
    mus, lvs = zip(*(model.encode(xb) for xb in _batches(x)))
    return torch.cat(mus), torch.cat(lvs)


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> np.ndarray:
    """Average KL(q(z_d|x) || N(0,1)) per latent dimension, in nats."""
    return gaussian_kl(mu, logvar).mean(0).numpy()


def unit_activity(mu: torch.Tensor) -> np.ndarray:
    """Var over data of the posterior mean, per latent dimension (collapsed units are ~0)."""
    return mu.var(0).numpy()


def active_units(mu: torch.Tensor, threshold: float = ACTIVE_THRESHOLD) -> int:
    """Number of latent dimensions whose posterior mean varies with x: the posterior-collapse detector."""
    return int((unit_activity(mu) > threshold).sum())


@torch.no_grad()
def vae_stats(model: VAE, x: torch.Tensor) -> dict:
    """KL (total and per dim), active units and reconstruction error for a trained VAE."""
    mu, logvar = vae_posterior(model, x)
    kl_d = kl_per_dim(mu, logvar)
    return {
        "recon_mse": recon_mse(model, x),
        "kl_total": float(kl_d.sum()),
        "kl_per_dim": [round(float(v), 4) for v in kl_d],
        "active_units": active_units(mu),
        "latent_dim": int(mu.shape[1]),
        "unit_activity": [round(float(v), 4) for v in unit_activity(mu)],
    }


@torch.no_grad()
def elbo_nats(model: VAE, x: torch.Tensor, seed: int = 0) -> float:
    """Single-sample negative ELBO per image (Bernoulli likelihood on intensities), in nats."""
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for xb in _batches(x):
        out = model(xb, generator=gen)
        rec = F.binary_cross_entropy_with_logits(out["logits"], xb, reduction="sum")
        total += float(rec + gaussian_kl(out["mu"], out["logvar"]).sum())
    return total / x.shape[0]


@torch.no_grad()
def vq_codes(model: VQVAE, x: torch.Tensor) -> torch.Tensor:
    """Code grids (N, h, w) for every image."""
    model.eval()
    return torch.cat([model.quantizer(model.encode(xb))["indices"] for xb in _batches(x)])


def codebook_usage(indices: torch.Tensor, num_codes: int) -> np.ndarray:
    """How many times each code is used over a data set."""
    return torch.bincount(indices.flatten(), minlength=num_codes).numpy()


def perplexity(counts: np.ndarray) -> float:
    """exp(entropy) of code usage: the effective number of codes in use (max K)."""
    p = counts / max(1, counts.sum())
    p = p[p > 0]
    return float(math.exp(-(p * np.log(p)).sum()))


def dead_codes(counts: np.ndarray) -> int:
    """Codes never selected on the data set."""
    return int((counts == 0).sum())


@torch.no_grad()
def vq_stats(model: VQVAE, x: torch.Tensor) -> dict:
    idx = vq_codes(model, x)
    counts = codebook_usage(idx, model.num_codes)
    return {
        "recon_mse": recon_mse(model, x),
        "codebook_size": model.num_codes,
        "codebook_perplexity": perplexity(counts),
        "codes_used": int((counts > 0).sum()),
        "dead_codes": dead_codes(counts),
        "restarts": int(model.quantizer.restarts),
        "usage": counts.tolist(),
    }


# --------------------------------------------------------------------------- judging samples


@torch.no_grad()
def classifier_features(clf: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate-layer activations of the judge classifier (input to the Frechet distance)."""
    clf.eval()
    return torch.cat([clf[:-1](xb) for xb in _batches(x)])


@torch.no_grad()
def predict_proba(clf: nn.Module, x: torch.Tensor) -> torch.Tensor:
    clf.eval()
    return torch.cat([torch.softmax(clf(xb), dim=1) for xb in _batches(x)])


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (the FID formula, small features)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1))), which stays symmetric and numerically real.
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(root1 @ s2 @ root1)
    tr_cov = float(np.sqrt(np.clip(eig, 0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_cov)


def sharpness(images: torch.Tensor | np.ndarray) -> float:
    """Mean absolute finite-difference gradient: blurry images score low."""
    x = torch.as_tensor(images, dtype=torch.float32)
    gx = (x[:, :, 1:] - x[:, :, :-1]).abs().mean()
    gy = (x[:, 1:, :] - x[:, :-1, :]).abs().mean()
    return float((gx + gy) / 2)


def score_samples(clf: nn.Module, samples: torch.Tensor, reference_feats: torch.Tensor | None = None) -> dict:
    """Judge samples: mean max class probability (quality), entropy of the predicted class histogram in
    bits (diversity, log2(C) is uniform), Frechet distance to real images' features, and sharpness."""
    probs = predict_proba(clf, samples)
    n_classes = probs.shape[1]
    hist = torch.bincount(probs.argmax(1), minlength=n_classes).float()
    p = hist / hist.sum()
    nz = p[p > 0]
    out = {
        "confidence": float(probs.max(1).values.mean()),
        "class_entropy_bits": max(0.0, float(-(nz * torch.log2(nz)).sum())),  # no "-0.0" for a single class
        "max_class_entropy_bits": math.log2(n_classes),
        "class_histogram": hist.int().tolist(),
        "sharpness": sharpness(samples),
    }
    if reference_feats is not None:
        feats = classifier_features(clf, samples)
        out["frechet_distance"] = frechet_distance(feats.numpy().astype(np.float64), reference_feats.numpy().astype(np.float64))
    return out


def nearest_distance_ratio(queries: torch.Tensor, codes: torch.Tensor) -> float:
    """Median distance from query points to their nearest training code, divided by the median
    nearest-neighbour distance among training codes. ~1 means the queries land where the data are;
    >>1 means they fall in the gaps of the latent space."""
    d_q = torch.cdist(queries, codes).min(1).values
    d_cc = torch.cdist(codes, codes)
    d_cc.fill_diagonal_(float("inf"))
    d_c = d_cc.min(1).values
    return float(d_q.median() / d_c.median().clamp_min(1e-12))


def copy_ratio(samples: torch.Tensor, train: torch.Tensor, test: torch.Tensor) -> float:
    """Median pixel distance from samples to their nearest training image, divided by the same for real
    held-out images. ~1: samples are as novel as new data; << 1: the generator is copying training images."""
    d_s = torch.cdist(samples.flatten(1), train.flatten(1)).min(1).values
    d_t = torch.cdist(test.flatten(1), train.flatten(1)).min(1).values
    return float(d_s.median() / d_t.median().clamp_min(1e-12))


@torch.no_grad()
def interpolate(decode, z_a: torch.Tensor, z_b: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """Decode the straight lines between code pairs: images (pairs, steps, H, W) in [0, 1]."""
    t = torch.linspace(0, 1, steps)
    a, b = z_a.flatten(1), z_b.flatten(1)
    zs = a[:, None] * (1 - t[None, :, None]) + b[:, None] * t[None, :, None]
    imgs = torch.sigmoid(decode(zs.reshape(-1, *z_a.shape[1:])))
    return imgs.view(z_a.shape[0], steps, *imgs.shape[1:])


def interpolation_metrics(clf: nn.Module, paths: torch.Tensor) -> dict:
    """Judge interpolation paths (pairs, steps, H, W): mean confidence on interior points (low = the
    path crosses holes) and the largest frame-to-frame jump relative to an even pace (1 = smooth)."""
    p, s = paths.shape[:2]
    probs = predict_proba(clf, paths.reshape(p * s, *paths.shape[2:])).view(p, s, -1)
    steps = (paths[:, 1:] - paths[:, :-1]).flatten(2).norm(dim=2)
    jump = steps.max(1).values / steps.mean(1).clamp_min(1e-12)
    return {"interior_confidence": float(probs[:, 1:-1].max(-1).values.mean()), "max_jump_ratio": float(jump.mean())}


def loss_stability(history: list[dict], key: str = "loss") -> dict:
    """Training-stability summary: diverged?, coefficient of variation over the last quarter of epochs,
    and how many epochs the loss went up by more than 5%."""
    vals = np.array([h.get(key, float("nan")) for h in history], dtype=float)
    diverged = bool(any(h.get("diverged") for h in history)) or not np.all(np.isfinite(vals))
    tail = vals[-max(2, len(vals) // 4) :]
    cv = float(np.std(tail) / max(1e-12, abs(np.mean(tail)))) if np.all(np.isfinite(tail)) else float("nan")
    rel = np.diff(vals) / np.maximum(1e-12, np.abs(vals[:-1]))
    spikes = int((rel > 0.05).sum()) if len(vals) > 1 else 0
    return {"diverged": diverged, "tail_cv": cv, "loss_spikes": spikes}
