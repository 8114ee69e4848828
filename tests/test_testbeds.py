"""The exact-score testbeds checked against closed forms: the Gaussian denoiser and marginal, the score
as the gradient of the exact log-density under every SDE, normalization, exact sampling, and the ideal
denoiser of the digits dataset (Karras et al. 2022, eq. 3 and appendix B.3)."""
from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.testbeds import TESTBEDS

F64 = torch.float64
SDE_NAMES = sorted(sd.SDES)


@pytest.fixture(params=SDE_NAMES)
def sde(request) -> sd.SDE:
    return sd.get_sde(request.param)


@pytest.fixture(scope="module")
def digits() -> sd.GaussianMixture:
    return sd.get_testbed("digits")


def _noisy_points(tb: sd.GaussianMixture, sde: sd.SDE, fractions: list[float], per_t: int, seed: int = 0):
    """Points drawn from p_t at t = fraction·T (so they sit where the density lives), and their times."""
    gen = torch.Generator().manual_seed(seed)
    t = (torch.tensor(fractions, dtype=F64) * sde.T).repeat_interleave(per_t)
    x0 = tb.sample(len(t), generator=gen, dtype=F64)
    xt, _ = sde.perturb(x0, t, noise=torch.randn(x0.shape, generator=gen, dtype=F64))
    return xt, t


# ---- a single Gaussian: closed forms -------------------------------------------------------------------

def test_gaussian_denoiser_closed_form():
    """N(m, c²I): D(x̂; σ) = m + c²/(c²+σ²)(x̂ − m). (m is a dyadic number so that this test does not
    depend on the float32 rounding of the mean checked in test_gaussian_preset_mean_is_float64_exact.)"""
    m, c = 0.75, 0.5
    tb = sd.get_testbed("gaussian", dim=3, mean=m, std=c)
    x_hat = torch.randn(6, 3, dtype=F64) * 3
    sigma = torch.tensor([1e-3, 0.1, 0.5, 1.0, 10.0, 100.0], dtype=F64)
    expected = m + (c**2 / (c**2 + sigma**2))[:, None] * (x_hat - m)
    torch.testing.assert_close(tb.denoiser(x_hat, sigma), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tb.denoiser(x_hat, 0.3), m + c**2 / (c**2 + 0.09) * (x_hat - m))


def test_gaussian_preset_mean_is_float64_exact():
    tb = sd.get_testbed("gaussian", dim=2, mean=0.7, std=0.5)
    torch.testing.assert_close(tb.mean(), torch.full((2,), 0.7, dtype=F64), rtol=1e-15, atol=0)


def test_gaussian_marginal_log_prob_closed_form(sde):
    """Under any SDE, p_t = N(s·m, s²(c² + σ²) I)."""
    m, c = -0.375, 0.8  # dyadic m: see test_gaussian_denoiser_closed_form
    tb = sd.get_testbed("gaussian", dim=3, mean=m, std=c)
    t = torch.tensor([0.01, 0.2, 0.5, 0.9, 1.0], dtype=F64) * sde.T
    s, sigma = sde.s(t)[:, None], sde.sigma(t)[:, None]
    x = s * m + s * torch.sqrt(c**2 + sigma**2) * torch.randn(5, 3, dtype=F64) * 1.5
    expected = torch.distributions.Normal(s * m, s * torch.sqrt(c**2 + sigma**2)).log_prob(x).sum(1)
    torch.testing.assert_close(tb.marginal_log_prob(x, t, sde), expected, rtol=1e-12, atol=1e-10)
    # The data density is the σ = 0 case.
    x0 = torch.randn(4, 3, dtype=F64)
    expected0 = torch.distributions.Normal(torch.tensor(m, dtype=F64), c).log_prob(x0).sum(1)
    torch.testing.assert_close(tb.log_prob(x0), expected0, rtol=1e-12, atol=1e-10)


# ---- score = ∇ log p_t -----------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", [("ring", {}), ("grid", {}), ("high_dim", {"dim": 16})], ids=lambda p: p[0])
def test_score_is_gradient_of_marginal_log_prob(preset, sde):
    name, kwargs = preset
    tb = sd.get_testbed(name, **kwargs)
    x, t = _noisy_points(tb, sde, [0.02, 0.1, 0.3, 0.6, 1.0], per_t=4)
    x = x.requires_grad_(True)
    (grad,) = torch.autograd.grad(tb.marginal_log_prob(x, t, sde).sum(), x)
    torch.testing.assert_close(tb.score(x.detach(), t, sde), grad, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_ring_marginal_density_integrates_to_one(t):
    """∫ p_t = 1 for the ring under VP, by the trapezoid rule on a grid covering ±10 marginal stds."""
    tb, sde = sd.get_testbed("ring"), sd.VPSDE()
    tt = torch.tensor(t, dtype=F64)
    s, sigma = float(sde.s(tt)), float(sde.sigma(tt))
    half_width = s * (2.0 + 10 * math.sqrt(0.1**2 + sigma**2))  # radius 2, component std 0.1
    axis = torch.linspace(-half_width, half_width, 601, dtype=F64)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    density = tb.marginal_log_prob(pts, t, sde).exp().reshape(601, 601)
    total = torch.trapezoid(torch.trapezoid(density, axis, dim=1), axis)
    assert total.item() == pytest.approx(1.0, abs=1e-6)


# ---- exact sampling -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kwargs", [("ring", {}), ("grid", {}), ("high_dim", {"dim": 16}),
                                         ("gaussian", {"dim": 3, "mean": 0.3, "std": 0.7})],
                         ids=["ring", "grid", "high_dim", "gaussian"])
def test_sample_moments(name, kwargs):
    """200k samples: mean and covariance agree with mean() and covariance() within 5 Monte-Carlo SEs."""
    tb = sd.get_testbed(name, **kwargs)
    n = 200_000
    x = tb.sample(n, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert x.shape == (n,) + tb.event_shape
    x = x.reshape(n, -1)
    mean, cov = tb.mean().reshape(-1), tb.covariance()
    se_mean = x.std(0) / math.sqrt(n)
    assert bool(((x.mean(0) - mean).abs() <= 5 * se_mean).all())
    centered = x - mean  # centred at the exact mean: each entry of the covariance is a plain average
    products = centered[:, :, None] * centered[:, None, :]
    emp_cov, se_cov = products.mean(0), products.std(0) / math.sqrt(n)
    assert bool(((emp_cov - cov).abs() <= 5 * se_cov + 1e-12).all()), (emp_cov - cov).abs().max()


def test_sample_respects_weights():
    """Unequal weights are honoured: a two-point mixture with weights 1:3 has mean 0.75 μ₂."""
    tb = sd.GaussianMixture(torch.tensor([[0.0], [1.0]]), 0.0, torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(tb.mean(), torch.tensor([0.75], dtype=F64))
    torch.testing.assert_close(tb.covariance(), torch.tensor([[0.1875]], dtype=F64))
    x = tb.sample(100_000, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert x.mean().item() == pytest.approx(0.75, abs=5 * math.sqrt(0.1875 / 100_000))


# ---- digits: the ideal denoiser of a finite dataset --------------------------------------------------------

def test_digits_dataset(digits):
    assert len(digits.weights) == 1797
    assert digits.event_shape == (1, 8, 8)
    x = digits.sample(10, generator=torch.Generator().manual_seed(0))
    assert x.shape == (10, 1, 8, 8)
    assert digits.means.min().item() == -1.0 and digits.means.max().item() == 1.0
    torch.testing.assert_close(digits.weights, torch.full((1797,), 1 / 1797, dtype=F64))


def test_digits_denoiser_tiny_sigma_returns_nearest_image(digits):
    images = digits.means.reshape(-1, 1, 8, 8)
    idx = torch.tensor([0, 5, 100, 1000, 1796])
    gen = torch.Generator().manual_seed(0)
    sigma = 1e-3
    x_hat = images[idx] + sigma * torch.randn(len(idx), 1, 8, 8, generator=gen, dtype=F64)
    nearest = torch.cdist(x_hat.reshape(len(idx), -1), digits.means).argmin(1)
    out = digits.denoiser(x_hat, sigma)
    torch.testing.assert_close(out, images[nearest], rtol=0, atol=1e-9)
    torch.testing.assert_close(out, images[idx], rtol=0, atol=1e-9)  # the nearest is the image itself


def test_digits_denoiser_huge_sigma_returns_mean(digits):
    """As σ → ∞ the posterior over the 1797 images becomes uniform: D(x̂; σ) → the dataset mean."""
    gen = torch.Generator().manual_seed(0)
    x_hat = 1e4 * torch.randn(3, 1, 8, 8, generator=gen, dtype=F64)
    out = digits.denoiser(x_hat, 1e7)
    # responsibilities deviate from uniform by O(|x̂|·|μ|/σ²) ≈ 1e4·8/1e14
    torch.testing.assert_close(out, digits.mean().expand_as(out), rtol=0, atol=1e-6)
    torch.testing.assert_close(digits.mean().reshape(-1), digits.means.mean(0))


# ---- bad input ------------------------------------------------------------------------------------------

def test_get_testbed_unknown_name():
    with pytest.raises(KeyError) as err:
        sd.get_testbed("nope")
    for name in TESTBEDS:
        assert name in str(err.value)


def test_point_mass_log_prob_raises():
    tb = sd.testbeds.dataset(torch.randn(5, 2))
    with pytest.raises(ValueError, match="point-mass"):
        tb.log_prob(torch.zeros(3, 2, dtype=F64))
