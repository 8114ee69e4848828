"""The flow (linear-interpolant) path against exact answers: its closed forms, the probability-flow ODE drift as
the flow-matching velocity E[ε − x₀ | x_t] of a Gaussian mixture (written independently, from the joint Gaussian
of (x₀, ε, x_t) per component), the γ-family of reverse SDEs (same marginals, by simulation), the velocity
parametrization under every SDE, the digits ideal denoiser's score under the flow path, and the velocity head.

(The registry-wide tests of tests/test_sde.py, tests/test_testbeds.py and tests/test_models.py also run over
``flow``: marginals against an Euler–Maruyama simulation, the score against autograd of the exact density,
round-trip conversions.)"""
from __future__ import annotations

import itertools

import pytest
import torch

import scoresde as sd
from scoresde.models import Preconditioned
from scoresde.models.parametrization import PREDICTIONS, convert
from scoresde.models.registry import preconditioning_spec
from scoresde.sde.flow import FlowSDE, InterpolantReverseSDE

F64 = torch.float64


def flow() -> FlowSDE:
    return sd.get_sde("flow")


def test_closed_forms():
    """s = 1 − t, σ = t/(1 − t), std = t, t(σ) = σ/(1 + σ), f = −1/(1 − t), g² = 2t/(1 − t), prior N(0, I)."""
    sde = flow()
    assert isinstance(sde, FlowSDE) and sde.T == 0.999 and sde.t_min == 1e-3 and sde.prior_std() == 1.0
    t = torch.linspace(1e-3, 0.999, 101, dtype=F64)
    torch.testing.assert_close(sde.s(t), 1 - t, rtol=0, atol=0)
    torch.testing.assert_close(sde.std(t), t, rtol=0, atol=0)
    torch.testing.assert_close(sde.sigma(t), t / (1 - t), rtol=1e-15, atol=0)
    torch.testing.assert_close(sde.t_of_sigma(sde.sigma(t)), t, rtol=1e-14, atol=0)
    torch.testing.assert_close(sde.f(t), -1 / (1 - t), rtol=1e-15, atol=0)
    # g² = d(std²)/dt − 2f·std² with std = t
    torch.testing.assert_close(sde.g(t) ** 2, 2 * t - 2 * sde.f(t) * t**2, rtol=1e-13, atol=0)
    assert sde.sigma_max == pytest.approx(999.0, rel=1e-12)
    with pytest.raises(ValueError, match="T < 1"):
        FlowSDE(T=1.0)
    with pytest.raises(ValueError, match="t_min"):
        FlowSDE(t_min=0.0)


# ---- PF-ODE drift = flow-matching velocity ---------------------------------------------------------------------

MIX_MEANS = torch.tensor([[-1.5, 0.5], [1.0, 1.0], [0.25, -1.25]], dtype=F64)
MIX_STDS = torch.tensor([0.3, 0.6, 0.1], dtype=F64)
MIX_WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=F64)


def mixture() -> sd.GaussianMixture:
    return sd.GaussianMixture(MIX_MEANS, MIX_STDS, MIX_WEIGHTS)


def exact_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[ε − x₀ | x_t = x] for x_t = (1 − t)x₀ + tε with x₀ ~ Σ w_k N(μ_k, c_k² I), from first principles:
    per component, x_t ~ N((1 − t)μ_k, v_k I) with v_k = (1 − t)²c_k² + t², and by Gaussian conditioning
    E[x₀ | x, k] = μ_k + (1 − t)c_k²/v_k·(x − (1 − t)μ_k), E[ε | x, k] = t/v_k·(x − (1 − t)μ_k)."""
    s, t = (1 - t)[:, None, None], t[:, None, None]  # (B, 1, 1) against (B, K, d)
    mu, c2 = MIX_MEANS[None], MIX_STDS[None, :, None] ** 2
    v = s**2 * c2 + t**2  # (B, K, 1)
    r = x[:, None, :] - s * mu
    log_resp = torch.log(MIX_WEIGHTS)[None] - 0.5 * (r**2).sum(-1) / v[..., 0] - x.shape[1] / 2 * torch.log(v[..., 0])
    resp = torch.softmax(log_resp, dim=1)[..., None]
    u_k = t / v * r - (mu + s * c2 / v * r)
    return (resp * u_k).sum(1)


def test_pf_ode_drift_is_the_flow_matching_velocity_of_a_mixture():
    """f·x − ½g²∇log p_t = E[ε − x₀ | x_t] under the flow SDE (Song et al. 2021, eq. 13; Lipman et al. 2023)."""
    sde, tb = flow(), mixture()
    gen = torch.Generator().manual_seed(0)
    t = torch.tensor([0.001, 0.05, 0.3, 0.5, 0.8, 0.99, 0.999], dtype=F64).repeat_interleave(8)
    x, _ = sde.perturb(tb.sample(len(t), generator=gen, dtype=F64), t,
                       noise=torch.randn(len(t), 2, generator=gen, dtype=F64))
    drift = sd.ProbabilityFlowODE(sde, lambda x, t: tb.score(x, t, sde)).drift(x, t)
    torch.testing.assert_close(drift, exact_velocity(x, t), rtol=1e-9, atol=1e-9)
    # ... and it is the model's velocity prediction, for an exact model of any parametrization
    torch.testing.assert_close(tb.model(sde).velocity(x, t), exact_velocity(x, t), rtol=1e-9, atol=1e-9)


def test_pf_ode_drift_is_the_velocity_of_any_score_under_flow():
    """An algebraic identity: for any score function, f·x − ½g²·score = convert(score → velocity) under flow."""
    sde = flow()
    x = torch.randn(6, 3, 2, dtype=F64)
    t = torch.linspace(0.01, 0.99, 6, dtype=F64)
    score = torch.sin(3 * x) - x
    drift = sd.ProbabilityFlowODE(sde, lambda x, t: score).drift(x, t)
    torch.testing.assert_close(drift, convert(score, "score", "velocity", x, sde.s(t), sde.sigma(t)),
                               rtol=1e-12, atol=1e-12)


# ---- the reverse-SDE family ------------------------------------------------------------------------------------

def test_interpolant_reverse_family_members():
    sde, score = flow(), (lambda x, t: -x * (1 + t[:, None]))
    x, t = torch.randn(5, 2, dtype=F64), torch.linspace(0.1, 0.9, 5, dtype=F64)
    one, zero = InterpolantReverseSDE(sde, score, 1.0), InterpolantReverseSDE(sde, score, 0.0)
    torch.testing.assert_close(one.drift(x, t), sd.ReverseSDE(sde, score).drift(x, t), rtol=1e-14, atol=0)
    torch.testing.assert_close(one.diffusion(x, t), sd.ReverseSDE(sde, score).diffusion(x, t), rtol=1e-14, atol=0)
    torch.testing.assert_close(zero.drift(x, t), sd.ProbabilityFlowODE(sde, score).drift(x, t), rtol=1e-14, atol=0)
    assert bool((zero.diffusion(x, t) == 0).all())
    with pytest.raises(ValueError, match="gamma"):
        InterpolantReverseSDE(sde, score, -1.0)


def _em_moments(drift, diffusion, m: float, c: float, steps: int, t0: float = 0.9, t1: float = 0.2):
    """Exact mean and variance after ``steps`` Euler–Maruyama steps of a reverse SDE from the exact marginal
    q_{t0} of N(m, c²) (1-D): its drift is affine in x for Gaussian data, so EM's moments follow exactly from
    m ← m − dt(a·m + b), v ← (1 − dt·a)²v + dt·γg² with a, b read off the drift at x = 0 and x = 1."""
    mean, var = (1 - t0) * m, (1 - t0) ** 2 * c**2 + t0**2
    dt = (t0 - t1) / steps
    zero, one = torch.zeros(1, 1, dtype=F64), torch.ones(1, 1, dtype=F64)
    for k in range(steps):
        t = torch.full((1,), t0 - k * dt, dtype=F64)
        b = float(drift(zero, t))
        a = float(drift(one, t)) - b
        mean, var = mean - dt * (a * mean + b), (1 - dt * a) ** 2 * var + dt * float(diffusion(zero, t)) ** 2
    return mean, var


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_every_gamma_keeps_the_marginals(gamma):
    """The γ-reverse SDE carries q_{0.9} to q_{0.2} = N((1 − t)m, (1 − t)²c² + t²) on a Gaussian N(m, c²): the exact
    moments of its Euler–Maruyama discretization converge to those of q_{0.2} at rate dt (weak order 1). A wrong
    member (γ-noise with the γ = 1 drift) converges to something else, so the test can fail."""
    sde, m, c, t1 = flow(), 0.75, 0.5, 0.2
    tb = sd.get_testbed("gaussian", dim=1, mean=m, std=c)

    def score(x, t):
        return tb.score(x, t, sde)

    rev = InterpolantReverseSDE(sde, score, gamma)
    exact = torch.tensor([(1 - t1) * m, (1 - t1) ** 2 * c**2 + t1**2], dtype=F64)
    err = {n: (torch.tensor(_em_moments(rev.drift, rev.diffusion, m, c, n), dtype=F64) - exact).abs().max().item()
           for n in (250, 1000)}
    assert err[1000] < 2e-3 and err[1000] < 0.4 * err[250], err
    if gamma != 1.0:
        wrong = _em_moments(sd.ReverseSDE(sde, score).drift, rev.diffusion, m, c, 1000)
        assert abs(wrong[1] - exact[1].item()) > 0.05


# ---- velocity under every SDE ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(sd.SDES))
def test_velocity_round_trips_and_targets_under_every_sde(name):
    """x = s·x₀ + s·σ·ε with known x₀, ε: every kind converts to u = ε − x₀ and back, exactly."""
    sde = sd.get_sde(name)
    gen = torch.Generator().manual_seed(3)
    t = torch.tensor([0.01, 0.2, 0.5, 0.8, 1.0], dtype=F64) * sde.T
    x0, eps = torch.randn(5, 1, 3, 3, generator=gen, dtype=F64), torch.randn(5, 1, 3, 3, generator=gen, dtype=F64)
    s, sigma = sde.s(t), sde.sigma(t)
    x = sd.append_dims(s, 4) * (x0 + sd.append_dims(sigma, 4) * eps)
    for kind in PREDICTIONS:
        target = convert(x0, "x0", kind, x, s, sigma)
        torch.testing.assert_close(convert(target, kind, "velocity", x, s, sigma), eps - x0, rtol=1e-9, atol=1e-9)
    out = torch.randn(x.shape, generator=gen, dtype=F64)  # any output, not only a consistent one
    for kind in PREDICTIONS:
        for a, b in itertools.permutations(("velocity", kind), 2):
            torch.testing.assert_close(convert(convert(out, a, b, x, s, sigma), b, a, x, s, sigma), out,
                                       rtol=1e-9, atol=1e-9)


def test_flow_velocity_gives_x0_as_x_minus_t_u():
    sde = flow()
    x, u = torch.randn(4, 2, dtype=F64), torch.randn(4, 2, dtype=F64)
    t = torch.tensor([0.1, 0.4, 0.7, 0.99], dtype=F64)
    x0 = convert(u, "velocity", "x0", x, sde.s(t), sde.sigma(t))
    torch.testing.assert_close(x0, x - t[:, None] * u, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["vp", "edm"])
def test_velocity_under_another_sde_is_the_flow_velocity_at_the_same_sigma(name):
    """Under VP/EDM the velocity of x is the flow SDE's velocity at τ = σ/(1+σ), state x̂/(1+σ) (same data)."""
    sde, fl, tb = sd.get_sde(name), flow(), mixture()
    t = torch.tensor([0.05, 0.2, 0.5, 0.9], dtype=F64) * sde.T
    x, _ = sde.perturb(tb.sample(4, generator=torch.Generator().manual_seed(0), dtype=F64), t)
    sigma = sde.sigma(t)
    tau, x_flow = sigma / (1 + sigma), x / sd.append_dims(sde.s(t) * (1 + sigma), 2)
    torch.testing.assert_close(tb.model(sde).velocity(x, t), exact_velocity(x_flow, tau), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(tb.model(fl).velocity(x_flow, tau), exact_velocity(x_flow, tau), rtol=1e-9, atol=1e-9)


# ---- the digits ideal denoiser under the flow path -----------------------------------------------------------

def test_digits_score_under_flow_is_the_gradient_of_the_exact_density():
    sde, tb = flow(), sd.get_testbed("digits", limit=200)
    gen = torch.Generator().manual_seed(0)
    t = torch.tensor([0.05, 0.3, 0.7, 0.99], dtype=F64)
    x, _ = sde.perturb(tb.sample(4, generator=gen, dtype=F64), t,
                       noise=torch.randn(4, *tb.event_shape, generator=gen, dtype=F64))
    x = x.requires_grad_(True)
    (grad,) = torch.autograd.grad(tb.marginal_log_prob(x, t, sde).sum(), x)
    torch.testing.assert_close(tb.score(x.detach(), t, sde), grad, rtol=1e-8, atol=1e-8)


# ---- the velocity head ------------------------------------------------------------------------------------------

class Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, c_noise, class_labels=None):
        self.seen.append((x, c_noise))
        return torch.zeros_like(x)


def test_velocity_head_sees_the_flow_state_and_time():
    """kind='velocity', normalize_input, c_noise='flow': the network gets x/(s(1+σ)) and τ = σ/(1+σ), which under
    the flow SDE are x and t themselves, and under VP the flow state at the same σ."""
    net = Recorder()
    model = Preconditioned(net, kind="velocity", c_noise="flow", normalize_input=True)
    assert model.prediction == "velocity"
    x, t = torch.randn(3, 2, dtype=F64), torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    model.score_model(flow()).velocity(x, t)
    torch.testing.assert_close(net.seen[-1][0], x, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(net.seen[-1][1], t, rtol=1e-14, atol=0)
    vp = sd.VPSDE()
    model.score_model(vp).velocity(x, t)
    sigma = vp.sigma(t)
    torch.testing.assert_close(net.seen[-1][0], x / (vp.s(t) * (1 + sigma))[:, None], rtol=1e-14, atol=0)
    torch.testing.assert_close(net.seen[-1][1], sigma / (1 + sigma), rtol=1e-14, atol=0)
    spec = preconditioning_spec({"kind": "velocity", "c_noise": "flow"})
    assert spec["kind"] == "velocity" and spec["c_noise"] == "flow"
