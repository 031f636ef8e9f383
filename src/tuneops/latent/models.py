"""The lab's models: AE, VAE (MLP or autoregressive MADE decoder), VQ-VAE with its codebook, and a
small causal transformer prior over VQ code grids.

Images are (B, H, W) tensors in [0, 1]; decoders return logits of a per-pixel Bernoulli mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- AE


class AE(nn.Module):
    """Deterministic autoencoder: x -> z -> x_hat, trained on reconstruction only."""

    def __init__(self, shape: tuple[int, int], latent_dim: int = 16, hidden: int = 256):
        super().__init__()
        self.shape, self.latent_dim = tuple(shape), latent_dim
        n = shape[0] * shape[1]
        self.encoder = mlp([n, hidden, hidden // 2, latent_dim])
        self.decoder = mlp([latent_dim, hidden // 2, hidden, n])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of the pixel means, shaped like the images."""
        return self.decoder(z).view(-1, *self.shape)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encode(x)
        return {"z": z, "logits": self.decode(z)}


# --------------------------------------------------------------------------- VAE


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I): a sample of N(mu, sigma^2) that is differentiable in mu and sigma."""
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per example and latent dimension, in nats (same shape as mu)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


class MaskedLinear(nn.Linear):
    """Linear layer whose weight is multiplied by a fixed 0/1 mask (MADE)."""

    def __init__(self, n_in: int, n_out: int, mask: torch.Tensor):
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADEDecoder(nn.Module):
    """Autoregressive decoder p(x_i | x_<i, z) over pixels in raster order.

    This is the "strong decoder" of the posterior-collapse story: it can model the data well from the
    previous pixels alone, so the ELBO can be good with z ignored.
    """

    def __init__(self, n_pixels: int, latent_dim: int, hidden: int = 256):
        super().__init__()
        self.n = n_pixels
        # Hidden unit k may see inputs 1..m_k (1-based pixel degree); output i sees hidden units with m_k < i.
        degrees_in = torch.arange(1, n_pixels + 1)
        degrees_h = torch.arange(hidden) % max(1, n_pixels - 1) + 1
        mask_in = (degrees_h[:, None] >= degrees_in[None, :])
        mask_hh = (degrees_h[:, None] >= degrees_h[None, :])
        mask_out = (degrees_in[:, None] > degrees_h[None, :])
        self.l1 = MaskedLinear(n_pixels, hidden, mask_in)
        self.l2 = MaskedLinear(hidden, hidden, mask_hh)
        self.out = MaskedLinear(hidden, n_pixels, mask_out)
        # z is visible to every unit: conditioning on z never breaks the autoregressive order.
        self.z1 = nn.Linear(latent_dim, hidden)
        self.z2 = nn.Linear(latent_dim, hidden)
        self.zo = nn.Linear(latent_dim, n_pixels)

    def forward(self, z: torch.Tensor, x_flat: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits for every pixel given the true previous pixels."""
        h = torch.relu(self.l1(x_flat) + self.z1(z))
        h = torch.relu(self.l2(h) + self.z2(z))
        return self.out(h) + self.zo(z)

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Fill pixels one at a time, feeding back each predicted mean intensity."""
        x = torch.zeros(z.shape[0], self.n, dtype=z.dtype, device=z.device)
        for i in range(self.n):
            x[:, i] = torch.sigmoid(self.forward(z, x)[:, i])
        return torch.logit(x.clamp(1e-4, 1 - 1e-4))


class VAE(nn.Module):
    """Gaussian-encoder VAE; the decoder is an MLP ("mlp") or an autoregressive MADE ("made")."""

    def __init__(self, shape: tuple[int, int], latent_dim: int = 16, hidden: int = 256, decoder: str = "mlp"):
        super().__init__()
        if decoder not in ("mlp", "made"):
            raise ValueError(f"decoder must be 'mlp' or 'made', not {decoder!r}")
        self.shape, self.latent_dim, self.decoder_kind = tuple(shape), latent_dim, decoder
        n = shape[0] * shape[1]
        self.encoder = mlp([n, hidden, hidden // 2, 2 * latent_dim])
        if decoder == "mlp":
            self.decoder = mlp([latent_dim, hidden // 2, hidden, n])
        else:
            self.decoder = MADEDecoder(n, latent_dim, hidden)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x.flatten(1)).chunk(2, dim=1)
        # Clamping keeps exp(logvar) finite in early, unstable steps.
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Pixel logits; the MADE decoder is teacher-forced on `x` when given, else generates."""
        if self.decoder_kind == "mlp":
            return self.decoder(z).view(-1, *self.shape)
        if x is None:
            return self.decoder.generate(z).view(-1, *self.shape)
        return self.decoder(z, x.flatten(1)).view(-1, *self.shape)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, generator)
        return {"mu": mu, "logvar": logvar, "z": z, "logits": self.decode(z, x)}


# --------------------------------------------------------------------------- VQ-VAE


class VectorQuantizer(nn.Module):
    """Codebook of K vectors with nearest-neighbour lookup and a straight-through gradient.

    Loss terms (van den Oord et al. 2017): codebook ||sg[z_e] - e||^2 moves codes only, commitment
    ||z_e - sg[e]||^2 moves the encoder only. With `ema=True` the codes are instead running means of
    the encoder outputs assigned to them (no gradient). `restart_threshold > 0` re-seeds codes whose
    usage fell below it with random encoder outputs (dead-code restarts).
    """

    def __init__(
        self,
        num_codes: int = 64,
        code_dim: int = 16,
        ema: bool = False,
        decay: float = 0.95,
        restart_threshold: float = 0.0,
        init: str = "uniform",
        eps: float = 1e-5,
    ):
        super().__init__()
        self.num_codes, self.code_dim, self.ema = num_codes, code_dim, ema
        self.decay, self.restart_threshold, self.eps = decay, restart_threshold, eps
        weight = init_codebook(num_codes, code_dim, init)
        self.embedding = nn.Parameter(weight, requires_grad=not ema)
        self.register_buffer("ema_size", torch.ones(num_codes))
        self.register_buffer("ema_sum", weight.clone())
        # Usage (exponentially averaged assignments per step) drives the restarts. Starting at zero lets the
        # first training step already re-seed codes that no encoder output chose.
        self.register_buffer("usage", torch.zeros(num_codes))
        self.restarts = 0

    def lookup(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (squared L2) for each row of `flat` (N, D)."""
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embedding.t() + self.embedding.pow(2).sum(1)[None, :]
        return d.argmin(1)

    def forward(self, z_e: torch.Tensor) -> dict[str, torch.Tensor]:
        """Quantise channels-first features (B, D, h, w)."""
        b, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)
        idx = self.lookup(flat.detach())
        e = self.embedding[idx]
        commitment = F.mse_loss(flat, e.detach())
        codebook = F.mse_loss(e, flat.detach()) if not self.ema else flat.new_zeros(())
        if self.training:
            self._update(flat.detach(), idx)
        # Straight-through: the forward pass uses e, the backward pass copies dL/dz_q onto z_e.
        q = flat + (e - flat).detach()
        counts = torch.bincount(idx, minlength=self.num_codes).float()
        p = counts / counts.sum()
        perplexity = torch.exp(-(p * torch.log(p + 1e-10)).sum())
        return {
            "z_q": q.view(b, h, w, d).permute(0, 3, 1, 2),
            "indices": idx.view(b, h, w),
            "codebook_loss": codebook,
            "commitment_loss": commitment,
            "perplexity": perplexity,
        }

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        onehot = F.one_hot(idx, self.num_codes).type(flat.dtype)
        counts = onehot.sum(0)
        self.usage.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if self.ema:
            self.ema_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
            # Laplace smoothing stops a code with zero assignments from dividing by zero.
            n = self.ema_size.sum()
            size = (self.ema_size + self.eps) / (n + self.num_codes * self.eps) * n
            self.embedding.data.copy_(self.ema_sum / size[:, None])
        if self.restart_threshold > 0:
            dead = self.usage < self.restart_threshold
            n_dead = int(dead.sum())
            if n_dead:
                # Re-seed dead codes on live encoder outputs so they start winning assignments again.
                pick = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
                fresh = flat[pick] + 0.01 * torch.randn(n_dead, flat.shape[1], device=flat.device)
                self.embedding.data[dead] = fresh
                self.ema_sum[dead] = fresh
                self.ema_size[dead] = 1.0
                # A little credit, so a re-seeded code that still wins nothing is re-seeded again soon.
                self.usage[dead] = 2 * self.restart_threshold
                self.restarts += n_dead


def init_codebook(num_codes: int, code_dim: int, init: str) -> torch.Tensor:
    """Initial codes: "uniform" (the usual +-1/K), "normal", or "far" (a tight cluster far from the
    encoder outputs, the bad initialisation that reproduces codebook collapse)."""
    if init == "uniform":
        return torch.empty(num_codes, code_dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
    if init == "normal":
        return torch.randn(num_codes, code_dim)
    if init == "far":
        return 4.0 + 0.1 * torch.randn(num_codes, code_dim)
    raise ValueError(f"unknown codebook init {init!r}; use 'uniform', 'normal' or 'far'")


class VQVAE(nn.Module):
    """Convolutional VQ-VAE: images -> (D, H/2, W/2) features -> codes -> images."""

    def __init__(
        self,
        shape: tuple[int, int],
        num_codes: int = 64,
        code_dim: int = 16,
        hidden: int = 64,
        beta: float = 0.25,
        ema: bool = False,
        decay: float = 0.95,
        restart_threshold: float = 0.0,
        init: str = "uniform",
    ):
        super().__init__()
        self.shape, self.beta = tuple(shape), beta
        # Odd sides are zero-padded to even so the stride-2 down/up-sampling round-trips exactly.
        self.padded = (shape[0] + shape[0] % 2, shape[1] + shape[1] % 2)
        self.grid = (self.padded[0] // 2, self.padded[1] // 2)
        # Downsample first: every other layer runs on the small (H/2, W/2) grid, which keeps CPU training fast.
        self.encoder = nn.Sequential(
            nn.Conv2d(1, hidden // 2, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(hidden // 2, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, code_dim, 1),
        )
        self.quantizer = VectorQuantizer(num_codes, code_dim, ema, decay, restart_threshold, init)
        self.decoder = nn.Sequential(
            nn.Conv2d(code_dim, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(hidden, hidden // 2, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(hidden // 2, 1, 3, padding=1),
        )

    @property
    def num_codes(self) -> int:
        return self.quantizer.num_codes

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous encoder output z_e (B, D, h, w)."""
        x = x[:, None]
        pad_h, pad_w = self.padded[0] - self.shape[0], self.padded[1] - self.shape[1]
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.encoder(x)

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(z_q)[:, 0, : self.shape[0], : self.shape[1]]

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Logits for a (B, h, w) grid of code indices."""
        z_q = self.quantizer.embedding[indices].permute(0, 3, 1, 2)
        return self.decode(z_q)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z_e = self.encode(x)
        out = self.quantizer(z_e)
        out["z_e"] = z_e
        out["logits"] = self.decode(out["z_q"])
        return out


# --------------------------------------------------------------------------- AR prior


class CodePrior(nn.Module):
    """Causal transformer p(c_t | c_<t) over a raster-ordered grid of VQ codes (a tiny GPT)."""

    def __init__(self, num_codes: int, grid: tuple[int, int], d_model: int = 64, n_layers: int = 2, n_heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.num_codes, self.grid = num_codes, tuple(grid)
        self.length = grid[0] * grid[1]
        self.bos = num_codes  # an extra start token so the first code also has a context
        self.tok = nn.Embedding(num_codes + 1, d_model)
        self.pos = nn.Embedding(self.length, d_model)
        # Dropout matters: ~1.4k code grids are few enough for a transformer to memorise.
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout=dropout, batch_first=True, norm_first=True)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_codes)
        mask = torch.triu(torch.full((self.length, self.length), float("-inf")), diagonal=1)
        self.register_buffer("causal_mask", mask)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, K) for position t given codes before t; `codes` is (B, h, w) or (B, T)."""
        seq = codes.reshape(codes.shape[0], -1)
        t = seq.shape[1]
        inp = torch.cat([torch.full_like(seq[:, :1], self.bos), seq[:, :-1]], dim=1)
        h = self.drop(self.tok(inp) + self.pos(torch.arange(t, device=seq.device))[None])
        h = self.blocks(h, mask=self.causal_mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))

    def loss(self, codes: torch.Tensor) -> torch.Tensor:
        logits = self.forward(codes)
        return F.cross_entropy(logits.reshape(-1, self.num_codes), codes.reshape(-1))

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw `n` code grids (n, h, w) of ints in [0, K), one position at a time."""
        seq = torch.zeros(n, self.length, dtype=torch.long)
        for t in range(self.length):
            logits = self.forward(seq[:, : t + 1])[:, t] / max(temperature, 1e-6)
            probs = torch.softmax(logits, dim=-1)
            seq[:, t] = torch.multinomial(probs, 1, generator=generator)[:, 0]
        return seq.view(n, *self.grid)
