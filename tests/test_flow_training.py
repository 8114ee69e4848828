"""The conditional flow-matching loss against exact answers, and a velocity network trained on the 2-D ring.

With the exact model of a Gaussian N(m, c²I) in d dims, the loss at a fixed noise level is the irreducible
``d·Var(ε − x₀ | x_t)``. With x̂ = x₀ + σε, ``u = ε − x₀ = (1 + σ)ε − x̂``, so it is ``(1 + σ)²`` times the ε-loss
``d·c²/(c² + σ²)``; at interpolant time τ = σ/(1 + σ) that is

    L*(τ) = d·c²/((1 − τ)²c² + τ²)      (the same under every SDE: it depends on σ only),

and its mean over τ ~ U[lo, hi] is ``d·c/(hi − lo)·[arctan((τ − a)/b)]_lo^hi`` with a = c²/(1 + c²),
b = c/(1 + c²) (complete the square: (1 − τ)²c² + τ² = (1 + c²)((τ − a)² + b²)).
Monte-Carlo estimates are compared within 5 standard errors of their own sample.
"""
from __future__ import annotations

import math

import pytest
import torch
from ring_training import ring_sliced_wasserstein

import scoresde as sd
from scoresde.models import MLP, Preconditioned, convert
from scoresde.training import get_loss
from scoresde.training.losses import FlowMatchingLoss

C, MEAN, D, N = 0.5, 1.0, 2, 100_000
F64 = torch.float64


def gaussian() -> sd.GaussianMixture:
    return sd.get_testbed("gaussian", dim=D, mean=MEAN, std=C)


def draw(tb: sd.GaussianMixture, n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Generator]:
    g = torch.Generator().manual_seed(seed)
    return tb.sample(n, generator=g, dtype=F64), g


def assert_mc(values: torch.Tensor, exact: float, k: float = 5.0) -> None:
    mean, se = values.mean().item(), values.std().item() / math.sqrt(values.numel())
    assert abs(mean - exact) <= k * se + 1e-9 * abs(exact), f"MC {mean:.6g} ± {se:.2g} vs exact {exact:.6g}"


def fm_min(tau: float, d: int = D, c: float = C) -> float:
    return d * c**2 / ((1 - tau) ** 2 * c**2 + tau**2)


def fm_mean(lo: float, hi: float, d: int = D, c: float = C) -> float:
    a, b = c**2 / (1 + c**2), c / (1 + c**2)
    return d * c * (math.atan((hi - a) / b) - math.atan((lo - a) / b)) / (hi - lo)


@pytest.mark.parametrize("sde_name", ["flow", "vp", "ve", "edm"])
def test_fixed_time_matches_closed_form(sde_name):
    sde, tb, loss = sd.get_sde(sde_name), gaussian(), FlowMatchingLoss()
    for frac in (0.01, 0.3, 0.9):
        t = sde.t_min + frac * (sde.T - sde.t_min)
        sigma = float(sde.sigma(torch.tensor(t, dtype=F64)))
        x0, g = draw(tb)
        assert_mc(loss(tb.model(sde), x0, g, t=t), fm_min(sigma / (1 + sigma)))


@pytest.mark.parametrize("sde_name", ["flow", "vp", "edm"])
def test_expected_over_uniform_time_matches_closed_form(sde_name):
    sde, tb, loss = sd.get_sde(sde_name), gaussian(), FlowMatchingLoss()
    lo, hi = loss.tau_range(sde)
    if sde_name == "flow":
        assert (lo, hi) == pytest.approx((sde.t_min, sde.T), rel=1e-12)
    x0, g = draw(tb)
    assert_mc(loss(tb.model(sde), x0, g), fm_mean(lo, hi))


def test_exact_velocity_is_the_minimizer():
    """A velocity off by δ in every coordinate costs d·δ² more in expectation (the cross term 2δ·Σ(E[u|x] − u)
    has mean zero), and a shift is never cheaper on average."""
    sde, tb, loss = sd.get_sde("flow"), sd.get_testbed("ring"), FlowMatchingLoss()
    exact = tb.model(sde)
    for delta in (0.1, -0.3):
        shifted = sd.ScoreModel(lambda x, t, delta=delta: exact.velocity(x, t) + delta, sde, "velocity")
        base = loss(exact, draw(tb, 20_000, seed=2)[0], torch.Generator().manual_seed(3), t=0.4)
        more = loss(shifted, draw(tb, 20_000, seed=2)[0], torch.Generator().manual_seed(3), t=0.4)
        assert (more - base).mean() > 0
        assert_mc(more - base, D * delta**2)


@pytest.mark.parametrize("sde_name", ["flow", "vp"])
def test_every_parametrization_gives_the_same_loss(sde_name):
    sde, tb = sd.get_sde(sde_name), sd.get_testbed("ring")
    exact = tb.model(sde)
    for loss in (FlowMatchingLoss(), FlowMatchingLoss("logit_normal")):
        ref = loss(exact, draw(tb, 512, seed=5)[0], torch.Generator().manual_seed(1))
        for kind in ("eps", "x0", "v", "velocity"):
            def fn(x, t, kind=kind):
                return convert(exact.counter.fn(x, t), "score", kind, x, sde.s(t), sde.sigma(t))
            got = loss(sd.ScoreModel(fn, sde, kind), draw(tb, 512, seed=5)[0], torch.Generator().manual_seed(1))
            torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-9)


def test_logit_normal_time_is_the_truncated_logit_normal():
    """P(τ ≤ q) = (Φ((logit q − loc)/scale) − Φ(z_lo))/(Φ(z_hi) − Φ(z_lo)) on [τ_lo, τ_hi] (Esser et al. 2024)."""
    sde, loc, scale = sd.get_sde("flow"), 0.5, 0.8
    loss = FlowMatchingLoss("logit_normal", loc=loc, scale=scale, t_min=0.2)
    n = 200_000
    tau = loss.sample_tau(sde, torch.zeros(n, 1, dtype=F64), torch.Generator().manual_seed(0))
    lo, hi = loss.tau_range(sde)
    assert lo == pytest.approx(0.2) and hi == pytest.approx(sde.T)
    assert float(tau.min()) >= lo and float(tau.max()) <= hi
    phi = torch.distributions.Normal(0.0, 1.0).cdf

    def cdf(q: float) -> float:
        z = (torch.tensor([lo, q, hi], dtype=F64).logit() - loc) / scale
        p = phi(z)
        return float((p[1] - p[0]) / (p[2] - p[0]))

    for q in (0.3, 0.5, 0.62, 0.8, 0.95):
        p = cdf(q)
        assert abs(float((tau <= q).double().mean()) - p) < 4.5 * math.sqrt(p * (1 - p) / n), q
    uniform = FlowMatchingLoss().sample_tau(sde, torch.zeros(n, 1, dtype=F64), torch.Generator().manual_seed(0))
    assert float(uniform.mean()) == pytest.approx((sde.t_min + sde.T) / 2, abs=4.5 * 0.29 / math.sqrt(n))


def test_registered_and_reproducible_and_bad_input():
    loss = get_loss("flow_matching", time_sampling="logit_normal", loc=0.0, scale=1.0, t_min=None)
    assert isinstance(loss, FlowMatchingLoss)
    sde, tb = sd.get_sde("flow"), gaussian()
    a = loss(tb.model(sde), draw(tb, 64, seed=1)[0], torch.Generator().manual_seed(7))
    b = loss(tb.model(sde), draw(tb, 64, seed=1)[0], torch.Generator().manual_seed(7))
    c = loss(tb.model(sde), draw(tb, 64, seed=1)[0], torch.Generator().manual_seed(8))
    assert a.shape == (64,) and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="time_sampling"):
        FlowMatchingLoss("beta")
    with pytest.raises(ValueError, match="scale"):
        FlowMatchingLoss("logit_normal", scale=0.0)
    with pytest.raises(ValueError, match="t_min"):
        FlowMatchingLoss(t_min=2.0)(tb.model(sde), torch.zeros(4, D))


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_velocity_mlp_on_the_ring_is_within_twice_the_exact_sliced_wasserstein():
    """A velocity MLP trained with flow matching under the flow SDE (1000 steps, one core) samples within 2x the
    sliced Wasserstein distance the exact score reaches with the same solver (Heun, 18 Karras steps, NFE 36) and
    x_T. Measured off-line with this setup, seeds 0-2: SW(net)/SW(exact) = 1.19, 1.08, 0.89 at 1000 steps (1.47,
    1.25, 1.07 at 600; 1.01, 0.96, 0.91 at 1500); SW(exact) ≈ 0.12-0.15 is the 2000-sample floor. Training takes
    ~9-17 s on one (shared) core."""
    sw, nfe, seconds = ring_sliced_wasserstein("flow", "velocity", FlowMatchingLoss(), 1000, seed=0)
    assert seconds < 120
    assert nfe["net"] == nfe["exact"] == 36
    assert sw["net"] < 2 * sw["exact"], sw


def test_takes_a_label_builder_for_class_conditional_training():
    """As the other losses: a builder labels -> ScoreModel (label dropout / guidance), and labels with a plain
    ScoreModel are refused."""
    model = Preconditioned(MLP(2, hidden=16, depth=1, num_classes=2), kind="velocity")
    sde, loss = sd.get_sde("flow"), FlowMatchingLoss("logit_normal")
    x0, y = torch.randn(8, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1] * 4)
    a = loss(lambda labels: model.score_model(sde, labels), x0, torch.Generator().manual_seed(0), class_labels=y)
    b = loss(model.score_model(sde, y), x0, torch.Generator().manual_seed(0))
    assert a.shape == (8,) and torch.equal(a, b)
    with pytest.raises(ValueError, match="builder"):
        loss(model.score_model(sde), x0, class_labels=y)
