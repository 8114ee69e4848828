"""Training losses against exact answers: with the exact score of a Gaussian N(m, c²I) in d dims the
noisy marginal at (s, σ) is N(s·m, s²(c² + σ²)I), and every loss has a closed-form expectation:

* ε-loss (DSM with λ = std², DDPM):  E|std·∇log p_t + ε|² = E|ε_θ − ε|² = d·c²/(c² + σ²)
  (x_t − s·m = s·c·z + std·ε, ∇log p_t = −(x_t − s·m)/(s²(c²+σ²)); the cross terms vanish).
* likelihood weighting λ = g²: g²/std² times that; averaged over t ~ U[t_min, T], using
  g²/std² = d log σ²/dt, it is d/(T − t_min)·[log(σ²/(c² + σ²))] from σ(t_min) to σ(T).
* EDM: E|D − x0|² = d·c²σ²/(c² + σ²), times λ(σ) = (σ² + σ_d²)/(σσ_d)²  (= d for c = σ_d).

Monte-Carlo estimates are compared within 5 standard errors of their own sample.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import scoresde as sd
from scoresde.models import convert
from scoresde.training import DDPMLoss, DSMLoss, EDMLoss, get_loss

C, MEAN, D, N = 0.5, 1.0, 2, 100_000


def gaussian() -> sd.GaussianMixture:
    return sd.get_testbed("gaussian", dim=D, mean=MEAN, std=C)


def draw(tb: sd.GaussianMixture, n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Generator]:
    g = torch.Generator().manual_seed(seed)
    return tb.sample(n, generator=g, dtype=torch.float64), g


def assert_mc(values: torch.Tensor, exact: float, k: float = 5.0) -> None:
    mean, se = values.mean().item(), values.std().item() / math.sqrt(values.numel())
    assert abs(mean - exact) <= k * se + 1e-9 * abs(exact), f"MC {mean:.6g} ± {se:.2g} vs exact {exact:.6g}"


def t64(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


def eps_min(sigma2: float, d: int = D, c: float = C) -> float:
    """Irreducible ε-loss d·c²/(c² + σ²)."""
    return d * c**2 / (c**2 + sigma2)


def times(sde: sd.SDE) -> list[float]:
    return [sde.t_min + f * (sde.T - sde.t_min) for f in (0.01, 0.3, 0.9)]


# ---- exact minimum at a fixed time ---------------------------------------------------------------
@pytest.mark.parametrize("weighting", ["std2", "likelihood"])
@pytest.mark.parametrize("sde_name", ["vp", "ve", "edm", "subvp", "cosine", "flow"])
def test_dsm_fixed_t_matches_closed_form(sde_name, weighting):
    sde, tb = sd.get_sde(sde_name), gaussian()
    model, loss = tb.model(sde), DSMLoss(weighting)
    for t in times(sde):
        x0, g = draw(tb)
        lam = 1.0 if weighting == "std2" else float((sde.g(t64(t)) / sde.std(t64(t))) ** 2)
        assert_mc(loss(model, x0, g, t=t), lam * eps_min(float(sde.sigma(t64(t)) ** 2)))


def test_dsm_image_shaped_data():
    tb = sd.GaussianMixture(torch.zeros(1, 16), C, event_shape=(1, 4, 4))
    sde = sd.VPSDE()
    x0, g = draw(tb, 20_000)
    assert x0.shape == (20_000, 1, 4, 4)
    out = DSMLoss()(tb.model(sde), x0, g, t=0.4)
    assert out.shape == (20_000,)
    assert_mc(out, eps_min(float(sde.sigma(t64(0.4)) ** 2), d=16))
    for loss in (DSMLoss("likelihood", importance_sampling=True), DDPMLoss(), EDMLoss()):
        assert loss(tb.model(sde), x0[:8], g).shape == (8,)


@pytest.mark.parametrize("sde_name", ["vp", "ve", "edm", "subvp", "cosine", "flow"])
def test_likelihood_weighting_expected_over_t(sde_name):
    """Uniform t and importance-sampled t estimate the same closed-form E_t[g²·|score + ε/std|²]."""
    sde, tb = sd.get_sde(sde_name), gaussian()
    a, b = (float(sde.sigma(t64(t))) for t in (sde.t_min, sde.T))
    exact = D / (sde.T - sde.t_min) * (math.log(b**2 / (C**2 + b**2)) - math.log(a**2 / (C**2 + a**2)))
    for importance_sampling in (False, True):
        x0, g = draw(tb, 200_000)
        assert_mc(DSMLoss("likelihood", importance_sampling=importance_sampling)(tb.model(sde), x0, g), exact)


def test_importance_sampling_reduces_variance_under_vp():
    sde, tb = sd.VPSDE(), gaussian()
    x0, g = draw(tb)
    uniform = DSMLoss("likelihood")(tb.model(sde), x0, g)
    x0, g = draw(tb)
    importance = DSMLoss("likelihood", importance_sampling=True)(tb.model(sde), x0, g)
    assert importance.var() < 0.2 * uniform.var()


def test_dsm_std2_expected_over_t():
    sde, tb = sd.VPSDE(), gaussian()
    t = torch.linspace(sde.t_min, sde.T, 4001, dtype=torch.float64)
    exact = float(torch.trapezoid(D * C**2 / (C**2 + sde.sigma(t) ** 2), t)) / (sde.T - sde.t_min)
    x0, g = draw(tb)
    assert_mc(DSMLoss()(tb.model(sde), x0, g), exact)


@pytest.mark.parametrize("sde_name", ["vp", "cosine", "subvp"])
def test_ddpm_fixed_step_matches_closed_form(sde_name):
    """At step i the model sees s(t_i)² = ᾱ_i: the exact ε-loss is d·c²/(c² + σ²) with the SDE's σ(t_i);
    under VP and cosine σ² = (1 − ᾱ_i)/ᾱ_i, Ho et al.'s x = √ᾱ x0 + √(1 − ᾱ) ε."""
    sde, tb = sd.get_sde(sde_name), gaussian()
    _, alpha_bar = sde.ddpm_schedule(1000)
    for step in (1, 300, 1000):
        ab = float(alpha_bar[step - 1])
        if sde_name == "subvp":  # std = 1 − s²
            sigma2 = (1 - ab) ** 2 / ab
        else:
            sigma2 = (1 - ab) / ab
        x0, g = draw(tb)
        assert_mc(DDPMLoss()(tb.model(sde), x0, g, step=step), eps_min(sigma2))


def test_ddpm_expected_over_steps():
    sde, tb = sd.VPSDE(), gaussian()
    _, alpha_bar = sde.ddpm_schedule(1000)
    exact = float((D * C**2 * alpha_bar / (C**2 * alpha_bar + 1 - alpha_bar)).mean())
    x0, g = draw(tb)
    assert_mc(DDPMLoss()(tb.model(sde), x0, g), exact)


@pytest.mark.parametrize("sde_name", ["vp", "ve", "edm", "cosine", "flow"])
def test_edm_fixed_sigma_matches_closed_form(sde_name):
    sde, tb, loss = sd.get_sde(sde_name), gaussian(), EDMLoss(sigma_data=0.7)
    for sigma in (0.05, 0.5, 3.0):
        x0, g = draw(tb)
        lam = (sigma**2 + 0.7**2) / (sigma * 0.7) ** 2
        assert_mc(loss(tb.model(sde), x0, g, sigma=sigma), lam * D * C**2 * sigma**2 / (C**2 + sigma**2))


@pytest.mark.parametrize("sde_name", ["vp", "ve", "edm", "flow"])
def test_edm_expected_over_sigma(sde_name):
    """σ_d = c gives exactly d at every σ; σ_d ≠ c is checked against Gauss–Hermite quadrature over ln σ."""
    sde, tb = sd.get_sde(sde_name), gaussian()
    x0, g = draw(tb)
    assert_mc(EDMLoss(sigma_data=C)(tb.model(sde), x0, g), float(D))
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    sigma = np.exp(-1.2 + 1.2 * nodes)
    per_sigma = (sigma**2 + 0.3**2) / (sigma * 0.3) ** 2 * D * C**2 * sigma**2 / (C**2 + sigma**2)
    exact = float((weights * per_sigma).sum() / weights.sum())
    x0, g = draw(tb)
    assert_mc(EDMLoss(sigma_data=0.3)(tb.model(sde), x0, g), exact)


def test_edm_sigma_clamp():
    sde, x0 = sd.VESDE(), torch.zeros(100_000, 2)
    g = torch.Generator().manual_seed(0)
    free = EDMLoss().sample_sigma(sde, x0, g)
    clamped = EDMLoss(clamp=True).sample_sigma(sde, x0, g)
    lo = float(sde.sigma(t64(sde.t_min)))
    assert float(free.min()) < lo  # the log-normal reaches below VE's σ_min = 0.01 (~0.2 %)
    assert float(clamped.min()) == pytest.approx(lo) and float(clamped.max()) <= sde.sigma_max
    assert EDMLoss(P_mean=6.0, clamp=True).sample_sigma(sde, x0, g).max() == pytest.approx(sde.sigma_max)


# ---- the exact score is the minimizer -----------------------------------------------------------
def shifted(tb: sd.GaussianMixture, sde: sd.SDE, kind: str, delta: float) -> sd.ScoreModel:
    """The exact model as a ``kind`` prediction, plus ``delta`` in every output coordinate."""
    def fn(x, t):
        return convert(tb.score(x, t, sde), "score", kind, x, sde.s(t), sde.sigma(t)) + delta
    return sd.ScoreModel(fn, sde, kind)


def assert_excess(loss, tb, sde, kind, excess_per_delta2, **fixed):
    """loss(exact + δ) − loss(exact) on the same noise has mean exactly excess·δ² (the cross term has mean 0
    because the exact prediction is a conditional expectation), for δ of either sign."""
    for delta in (0.2, -0.2):
        x0, g = draw(tb, 50_000, seed=3)
        base = loss(shifted(tb, sde, kind, 0.0), x0, g, **fixed)
        x0, g = draw(tb, 50_000, seed=3)
        diff = loss(shifted(tb, sde, kind, delta), x0, g, **fixed) - base
        assert diff.mean() > 0
        assert_mc(diff, excess_per_delta2 * delta**2)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_exact_score_minimizes_every_loss(sde_name):
    sde, tb, t = sd.get_sde(sde_name), sd.get_testbed("ring"), 0.3
    std, g2 = float(sde.std(t64(t))), float(sde.g(t64(t)) ** 2)
    assert_excess(DSMLoss(), tb, sde, "score", D * std**2, t=t)
    assert_excess(DSMLoss("likelihood"), tb, sde, "score", D * g2, t=t)
    sigma, lam = 0.4, (0.4**2 + 0.25) / (0.4 * 0.5) ** 2
    assert_excess(EDMLoss(), tb, sde, "x0", D * lam, sigma=sigma)
    if sde_name == "vp":
        assert_excess(DDPMLoss(), tb, sde, "eps", float(D), step=200)


# ---- parametrization independence ----------------------------------------------------------------
@pytest.mark.parametrize("sde_name", ["vp", "ve", "edm", "cosine", "flow"])
def test_all_parametrizations_give_the_same_loss(sde_name):
    sde, tb = sd.get_sde(sde_name), sd.get_testbed("ring")
    losses = [DSMLoss(), DSMLoss("likelihood", importance_sampling=True), EDMLoss()]
    if hasattr(sde, "ddpm_schedule"):
        losses.append(DDPMLoss())
    for loss in losses:
        x0, g = draw(tb, 512, seed=5)
        ref = loss(tb.model(sde), x0, g)
        for kind in ("eps", "x0", "v"):
            x0, g = draw(tb, 512, seed=5)
            torch.testing.assert_close(loss(shifted(tb, sde, kind, 0.0), x0, g), ref, rtol=1e-7, atol=1e-10)


def test_generator_makes_the_loss_reproducible():
    sde, tb = sd.VPSDE(), gaussian()
    for loss in (DSMLoss(), DDPMLoss(), EDMLoss()):
        a = loss(tb.model(sde), draw(tb, 64, seed=1)[0], torch.Generator().manual_seed(7))
        b = loss(tb.model(sde), draw(tb, 64, seed=1)[0], torch.Generator().manual_seed(7))
        c = loss(tb.model(sde), draw(tb, 64, seed=1)[0], torch.Generator().manual_seed(8))
        assert torch.equal(a, b) and not torch.equal(a, c)


# ---- a tiny network trained with DSMLoss ---------------------------------------------------------
def test_tiny_mlp_learns_the_gaussian():
    torch.manual_seed(0)
    sde, tb = sd.VPSDE(), gaussian()
    net = nn.Sequential(nn.Linear(D + 1, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, D))
    model = sd.ScoreModel(lambda x, t: net(torch.cat([x, t.unsqueeze(1)], 1)), sde, "eps")
    loss_fn, opt = DSMLoss(), torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 300)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        loss = loss_fn(model, tb.sample(1024, generator=g), g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    t = torch.linspace(sde.t_min, sde.T, 4001, dtype=torch.float64)
    minimum = float(torch.trapezoid(D * C**2 / (C**2 + sde.sigma(t) ** 2), t)) / (sde.T - sde.t_min)
    with torch.no_grad():
        final = loss_fn(model, tb.sample(20_000, generator=g), g)
        assert minimum - 5 * final.std() / math.sqrt(20_000) < final.mean() < 1.15 * minimum
        x = sd.sample(model, "heun", 20, (2000, D), grid="karras", denoise=True)
    assert torch.allclose(x.mean(0), torch.full((D,), MEAN), atol=0.1)
    assert torch.allclose(x.var(0), torch.full((D,), C**2), rtol=0.2)


# ---- bad input --------------------------------------------------------------------------------------
def test_bad_input():
    tb, x0 = gaussian(), torch.zeros(4, D)
    with pytest.raises(ValueError, match="bogus"):
        DSMLoss("bogus")
    with pytest.raises(ValueError, match="importance_sampling"):
        DSMLoss("std2", importance_sampling=True)
    with pytest.raises(ValueError, match="t_min"):
        DSMLoss(t_min=2.0)(tb.model(sd.VPSDE()), x0)
    for sde in (sd.VESDE(), sd.EDMSDE()):
        with pytest.raises(ValueError, match=f"{sde.name} SDE .* no discrete DDPM chain"):
            DDPMLoss()(tb.model(sde), x0)
    with pytest.raises(ValueError, match="step"):
        DDPMLoss(10)(tb.model(sd.VPSDE()), x0, step=11)
    with pytest.raises(ValueError, match="P_std"):
        EDMLoss(P_std=0.0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        EDMLoss()(tb.model(sd.VESDE()), x0, sigma=0.0)
    with pytest.raises(ValueError, match="class_labels"):
        DSMLoss()(tb.model(sd.VPSDE()), x0, class_labels=torch.zeros(4))
    with pytest.raises(KeyError, match="nope"):
        get_loss("nope")
    assert isinstance(get_loss("dsm", weighting="likelihood"), DSMLoss)
