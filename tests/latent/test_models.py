"""Model-level checks: reparameterisation, straight-through VQ, loss-term gradients, EMA, restarts, AR prior."""

import math

import pytest
import torch

from tuneops.latent.models import AE, VAE, VQVAE, CodePrior, MADEDecoder, VectorQuantizer, gaussian_kl, reparameterize
from tuneops.latent.train import fit, make_vae_loss, prior_loss, train_vae, vq_loss


def test_reparameterised_sample_has_target_mean_and_variance():
    mu = torch.tensor([1.5, -2.0, 0.0])
    sigma = torch.tensor([0.5, 2.0, 1.0])
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    z = reparameterize(mu.expand(n, 3), (2 * sigma.log()).expand(n, 3), gen)
    # 5 standard errors for the mean; the sample variance has relative SE sqrt(2/n) ~ 0.3%.
    assert torch.allclose(z.mean(0), mu, atol=float(5 * sigma.max() / math.sqrt(n)))
    assert torch.allclose(z.var(0), sigma**2, rtol=0.02)


def test_reparameterisation_gradients_reach_mu_and_sigma():
    mu = torch.tensor([[0.3, -1.0]], requires_grad=True)
    logvar = torch.tensor([[0.2, -0.7]], requires_grad=True)
    z = reparameterize(mu, logvar, torch.Generator().manual_seed(1))
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(1))
    z.sum().backward()
    # dz/dmu = 1 and dz/dlogvar = 0.5 * sigma * eps, exactly.
    assert torch.allclose(mu.grad, torch.ones_like(mu))
    assert torch.allclose(logvar.grad, 0.5 * torch.exp(0.5 * logvar.detach()) * eps)
    assert (logvar.grad.abs() > 0).all()


def test_gaussian_kl_matches_torch_distributions():
    mu, logvar = torch.randn(5, 4), torch.randn(5, 4)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(5, 4), torch.ones(5, 4))
    assert torch.allclose(gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p), atol=1e-5)


def test_vae_loss_free_bits_removes_kl_gradient_below_threshold():
    torch.manual_seed(0)
    model = VAE((8, 8), latent_dim=4)
    x = torch.rand(16, 8, 8)
    # With a huge free-bits floor every dimension sits below it, so only reconstruction drives the encoder's
    # log-variance head -- compare against a run with the KL weight zeroed.
    torch.manual_seed(1)
    loss_fb, _ = make_vae_loss(beta=1.0, free_bits=1e6)(model, x, 0)
    g_fb = torch.autograd.grad(loss_fb, model.encoder[-1].weight)[0]
    torch.manual_seed(1)
    loss_0, _ = make_vae_loss(beta=0.0)(model, x, 0)
    g_0 = torch.autograd.grad(loss_0, model.encoder[-1].weight)[0]
    assert torch.allclose(g_fb, g_0, atol=1e-6)


def _tiny_vq(**kw) -> VQVAE:
    torch.manual_seed(0)
    return VQVAE((8, 8), num_codes=8, code_dim=4, hidden=8, **kw)


def _encoder_grad_norm(model: VQVAE) -> float:
    return sum(float(p.grad.abs().sum()) for p in model.encoder.parameters() if p.grad is not None)


def test_straight_through_passes_reconstruction_gradient_to_encoder():
    model = _tiny_vq(init="normal")
    x = torch.rand(4, 8, 8)
    out = model(x)
    # The forward value is exactly a codebook vector ...
    q = out["z_q"].permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.allclose(q, model.quantizer.embedding[out["indices"].flatten()])
    # ... yet the reconstruction loss alone (no commitment term) trains the encoder.
    torch.nn.functional.binary_cross_entropy_with_logits(out["logits"], x).backward()
    assert _encoder_grad_norm(model) > 0


def test_without_straight_through_encoder_gets_no_gradient():
    """Control for the test above: decoding the raw codebook lookup cuts the encoder off."""
    model = _tiny_vq(init="normal")
    x = torch.rand(4, 8, 8)
    out = model(x)
    z_hard = model.quantizer.embedding[out["indices"]].permute(0, 3, 1, 2)
    torch.nn.functional.binary_cross_entropy_with_logits(model.decode(z_hard), x).backward()
    assert _encoder_grad_norm(model) == 0


def test_codebook_term_moves_codes_and_commitment_moves_encoder():
    model = _tiny_vq(init="normal")
    x = torch.rand(4, 8, 8)
    out = model(x)
    out["codebook_loss"].backward(retain_graph=True)
    assert model.quantizer.embedding.grad is not None and model.quantizer.embedding.grad.abs().sum() > 0
    assert _encoder_grad_norm(model) == 0

    model.zero_grad(set_to_none=True)
    out["commitment_loss"].backward()
    assert model.quantizer.embedding.grad is None or model.quantizer.embedding.grad.abs().sum() == 0
    assert _encoder_grad_norm(model) > 0


def test_only_selected_codes_receive_codebook_gradient():
    model = _tiny_vq(init="normal")
    out = model(torch.rand(2, 8, 8))
    out["codebook_loss"].backward()
    used = torch.zeros(8, dtype=torch.bool)
    used[out["indices"].unique()] = True
    g = model.quantizer.embedding.grad.abs().sum(1)
    assert (g[used] > 0).all() and (g[~used] == 0).all()


def test_ema_codebook_updates_without_gradient():
    model = _tiny_vq(ema=True, init="normal")
    assert not model.quantizer.embedding.requires_grad
    before = model.quantizer.embedding.detach().clone()
    model.train()
    loss, _ = vq_loss(model, torch.rand(8, 8, 8), 0)
    loss.backward()
    assert model.quantizer.embedding.grad is None
    assert not torch.allclose(before, model.quantizer.embedding)


def test_ema_with_zero_decay_sets_codes_to_cluster_means():
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=4, code_dim=2, ema=True, decay=0.0, init="normal")
    z = torch.randn(3, 2, 5, 5)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    idx = vq.lookup(flat)
    vq.train()
    vq(z)
    for k in idx.unique():
        assert torch.allclose(vq.embedding[k], flat[idx == k].mean(0), atol=1e-3)


def test_eval_mode_does_not_touch_the_codebook():
    model = _tiny_vq(ema=True, restart_threshold=0.5, init="far")
    before = model.quantizer.embedding.detach().clone()
    model.eval()
    model(torch.rand(4, 8, 8))
    assert torch.equal(before, model.quantizer.embedding)


def test_dead_code_restart_reseeds_unused_codes_on_encoder_outputs():
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=16, code_dim=3, ema=False, decay=0.5, restart_threshold=0.4, init="far")
    z = torch.randn(2, 3, 4, 4)  # far from the codes at ~4.0, so a few codes win every lookup
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    used = torch.zeros(16, dtype=torch.bool)
    used[vq.lookup(flat).unique()] = True
    vq.train()
    vq(z)
    assert vq.restarts == int((~used).sum()) >= 8
    # Every code that lost all lookups now sits next to an encoder output instead of in the far cluster.
    dist = torch.cdist(vq.embedding.detach(), flat).min(1).values
    assert (dist[~used] < 0.1).all() and (dist[used] > 1.0).all()


def test_made_decoder_is_autoregressive():
    torch.manual_seed(0)
    dec = MADEDecoder(n_pixels=10, latent_dim=2, hidden=32)
    z, x = torch.randn(1, 2), torch.rand(1, 10)
    base = dec(z, x)
    for j in range(10):
        x2 = x.clone()
        x2[0, j] += 1.0
        changed = (dec(z, x2) - base).abs()[0] > 1e-7
        # Output i may depend on pixel j only if j < i.
        assert not changed[: j + 1].any()


def test_ar_prior_is_causal_and_samples_valid_grids():
    torch.manual_seed(0)
    prior = CodePrior(num_codes=7, grid=(3, 4), d_model=16, n_layers=1, n_heads=2).eval()
    codes = torch.randint(0, 7, (2, 3, 4))
    logits = prior(codes)
    assert logits.shape == (2, 12, 7)
    changed = codes.clone().view(2, 12)
    changed[:, 6:] = (changed[:, 6:] + 1) % 7
    # Positions 0..6 only see codes 0..5, which are unchanged.
    assert torch.allclose(prior(changed.view(2, 3, 4))[:, :7], logits[:, :7], atol=1e-5)
    s = prior.sample(5, generator=torch.Generator().manual_seed(0))
    assert s.shape == (5, 3, 4) and s.dtype == torch.long
    assert int(s.min()) >= 0 and int(s.max()) < 7


def test_ar_prior_learns_the_code_distribution():
    torch.manual_seed(0)
    a = torch.arange(8).view(2, 4) % 5
    b = (torch.arange(8).view(2, 4) * 3 + 1) % 5
    data = torch.stack([a, b] * 64)
    prior = CodePrior(num_codes=5, grid=(2, 4), d_model=32, n_layers=1, n_heads=2, dropout=0.0)
    fit(prior, prior_loss, data, epochs=40, lr=3e-3, batch_size=32, progress=False)
    s = prior.sample(50, generator=torch.Generator().manual_seed(0))
    match = [(g == a).all() or (g == b).all() for g in s]
    assert sum(bool(m) for m in match) >= 45


def test_models_shapes_and_odd_sized_images():
    x = torch.rand(3, 7, 9)
    assert AE((7, 9), 4)(x)["logits"].shape == x.shape
    assert VAE((7, 9), 4)(x)["logits"].shape == x.shape
    assert VAE((7, 9), 4, decoder="made")(x)["logits"].shape == x.shape
    vq = VQVAE((7, 9), num_codes=8, code_dim=4, hidden=8)
    out = vq(x)
    assert out["logits"].shape == x.shape and out["indices"].shape == (3, *vq.grid) == (3, 4, 5)
    assert vq.decode_indices(out["indices"]).shape == x.shape


def test_training_is_deterministic_for_a_seed():
    x = torch.rand(64, 8, 8)
    _, h1 = train_vae(x, 3, latent_dim=4, seed=3, progress=False)
    _, h2 = train_vae(x, 3, latent_dim=4, seed=3, progress=False)
    _, h3 = train_vae(x, 3, latent_dim=4, seed=4, progress=False)
    assert [r["loss"] for r in h1] == [r["loss"] for r in h2]
    assert [r["loss"] for r in h1] != [r["loss"] for r in h3]


def test_fit_reports_divergence_instead_of_hiding_it():
    model = AE((4, 4), 2)

    def bad_loss(m, x, step):
        return m(x)["logits"].sum() * float("nan"), {}

    hist = fit(model, bad_loss, torch.rand(8, 4, 4), epochs=3, progress=False)
    assert hist[-1].get("diverged") == 1.0


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_vae_loss_runs_for_each_likelihood(likelihood):
    torch.manual_seed(0)
    loss, stats = make_vae_loss(likelihood=likelihood, sigma=0.2)(VAE((8, 8), 4), torch.rand(4, 8, 8), 0)
    assert torch.isfinite(loss) and stats["kl"] >= 0
