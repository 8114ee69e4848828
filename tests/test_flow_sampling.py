"""Sampling flow models: every registered solver under the flow path (Gaussian mean and covariance, measured NFE =
declared), the same samples as diffusers' flow-match schedulers on the same velocity model, noise and σ's, and the
probability-flow likelihood of a flow model against a mixture's exact density.

diffusers' ``FlowMatchEulerDiscreteScheduler.step`` is ``x ← x + (σ_{i+1} − σ_i)·v(x, σ_i)`` with its σ the
interpolant time t (``x_σ = (1 − σ)x₀ + σε``); ``FlowMatchHeunDiscreteScheduler`` is Heun's method in t on the same
velocity, with a final Euler step to σ = 0. In scoresde these are: Euler in σ = t/(1 − t) on x̂ (``euler``; DDIM,
``ddim``, is the same update), which under the flow path is exactly Euler in t on the velocity (the update is
exact for a constant x₀-prediction in both variables), and the probability-flow ODE solved with Heun in t
(``ode`` with torchdiffeq's ``heun2``, whose drift f·x − ½g²∇log p *is* the velocity under the flow SDE) with the
final denoising step x − t·u. (Karras' Heun, ``heun``, is Heun in σ: second order too, but a different method.)

Precision: both schedulers' ``step`` casts the sample to float32 ("upcast to avoid precision issues"), and
``set_timesteps`` stores σ in float32. The test drives them with scoresde's float64 σ's (assigned to the
scheduler after ``set_timesteps``), so what is left is the float32 rounding of the sample inside each step:
measured max abs differences 2.8e-7 / 2.2e-7 (Euler, 10 / 25 steps) and 2.5e-7 / 4.8e-7 (Heun) on a 2-D mixture.
The Euler test also replays diffusers' update in float64 with that one rounding (``x.float().double()``) and
matches it to 1e-12, so the float32 cast is the whole difference.
"""
from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.evaluation.likelihood import ode_log_likelihood
from scoresde.models import convert
from tests.conftest import solver_names

F64 = torch.float64
SLOW_SOLVERS = {"torchsde"}


def flow() -> sd.SDE:
    return sd.get_sde("flow")


# ---- every solver under the flow path ------------------------------------------------------------------

def _gaussian_stats(name: str, steps: int, n: int = 4000):
    tb = sd.get_testbed("gaussian", dim=2, mean=0.7, std=0.5)
    model = tb.model(flow())
    n = 600 if name in SLOW_SOLVERS else n
    solver = sd.get_solver(name)
    grid = sd.make_grid(model.sde, steps, "uniform", denoise=True)
    x = sd.sample(model, solver, grid=grid, shape=(n, 2), seed=None, dtype=F64,
                  generator=torch.Generator().manual_seed(0))
    declared = solver.declared_nfe(grid)
    assert model.nfe == declared or (declared is None and getattr(solver, "adaptive", False)), (model.nfe, declared)
    mean_err = (x.mean(0) - tb.mean()).abs().max().item()
    cov_err = (torch.cov(x.T) - tb.covariance()).abs().max().item()
    return mean_err, cov_err, n


@pytest.mark.parametrize("name", solver_names())
def test_every_solver_recovers_a_gaussian_under_the_flow_path(name):
    """The bar of tests/test_solver_contract.py, under the flow SDE: at 256 uniform steps (the multistep SDE
    solvers' log-SNR step h jumps on the last steps of a uniform grid: at 64, dpmpp_3m_sde's covariance is 0.09 off)
    mean and covariance within 4 standard errors + 0.01, better than at 4 steps; the model's counter equals the
    declared NFE at both."""
    coarse_mean, coarse_cov, n = _gaussian_stats(name, 4)
    fine_mean, fine_cov, n = _gaussian_stats(name, 256)
    mc = 4 * 0.5**2 * math.sqrt(2 / n)
    assert fine_mean < 4 * 0.5 / math.sqrt(n) + 0.01
    assert fine_cov < mc + 0.01
    assert fine_mean + fine_cov < coarse_mean + coarse_cov + mc


@pytest.mark.parametrize("name", solver_names())
@pytest.mark.parametrize("denoise", [False, True])
def test_counted_nfe_equals_declared_for_a_velocity_model(name, denoise):
    sde, ring = flow(), sd.get_testbed("ring")

    def velocity(x, t):
        return convert(ring.score(x, t, sde), "score", "velocity", x, sde.s(t), sde.sigma(t))

    model = sd.ScoreModel(velocity, sde, "velocity")
    solver = sd.get_solver(name)
    grid = sd.make_grid(sde, 7, "uniform", denoise=denoise)
    x = sd.sample(model, solver, grid=grid, shape=(8, 2), seed=0)
    assert torch.isfinite(x).all()
    declared = solver.declared_nfe(grid)
    assert model.nfe == declared or (declared is None and getattr(solver, "adaptive", False))


# ---- against diffusers' flow-match schedulers ---------------------------------------------------------------

MEANS = torch.tensor([[-1.5, 0.5], [1.0, 1.0], [0.25, -1.25]], dtype=F64)
STDS = torch.tensor([0.3, 0.6, 0.1], dtype=F64)
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=F64)


def velocity_model(sde: sd.SDE) -> tuple[sd.ScoreModel, callable]:
    """The exact velocity of a 2-D mixture under the flow SDE, as a counted model and as a plain function."""
    tb = sd.GaussianMixture(MEANS, STDS, WEIGHTS)

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return convert(tb.score(x, t, sde), "score", "velocity", x, sde.s(t), sde.sigma(t))

    return sd.ScoreModel(v, sde, "velocity"), v


def _drive(scheduler, sigmas: torch.Tensor, timesteps: torch.Tensor, v, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """diffusers' own loop: ``x = scheduler.step(v(x, σ_i), timestep_i, x).prev_sample`` over its timesteps,
    with the σ's given in float64; the model sees σ_i (the interpolant time) itself. Returns (x, evaluations)."""
    scheduler.sigmas, scheduler.timesteps = sigmas, timesteps
    scheduler.set_begin_index(0)
    for i, ts in enumerate(scheduler.timesteps):
        x = scheduler.step(v(x, torch.full((x.shape[0],), float(sigmas[i]), dtype=F64)), ts, x).prev_sample
    return x, len(scheduler.timesteps)


@pytest.mark.parametrize("steps", [10, 25])
def test_same_samples_as_diffusers_flow_match_euler(steps):
    diffusers = pytest.importorskip("diffusers")
    sde = flow()
    model, v = velocity_model(sde)
    grid = sd.make_grid(sde, steps, "uniform", denoise=True)  # T … t_min, then the data (σ = 0)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(steps), dtype=F64)
    sched = diffusers.FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(sigmas=grid.t[:-1].tolist())  # explicit σ's; diffusers keeps them in float32
    sigmas = torch.cat([grid.t[:-1], torch.zeros(1, dtype=F64)])
    assert (sched.sigmas.double() - sigmas).abs().max() < 1e-7  # the same σ's, up to float32
    ref, evals = _drive(sched, sigmas, sigmas[:-1] * 1000, v, x_T.clone())
    for name, opts in (("euler", {}), ("ddim", {}), ("ode", {"method": "euler"})):
        model.reset_nfe()
        x = sd.sample(model, sd.get_solver(name, **opts), grid=grid, x_T=x_T.clone())
        assert x.dtype == F64 and model.nfe == evals == steps
        assert (x - ref).abs().max().item() < 1e-6, name
    replay = x_T.clone()  # diffusers' update with its float32 rounding of the sample, and nothing else
    for i in range(steps):
        u = v(replay, torch.full((64,), float(sigmas[i]), dtype=F64))
        replay = replay.float().double() + (sigmas[i + 1] - sigmas[i]) * u
    assert (replay - ref).abs().max().item() < 1e-12


@pytest.mark.parametrize("steps", [10, 25])
def test_same_samples_as_diffusers_flow_match_heun(steps):
    diffusers = pytest.importorskip("diffusers")
    if not hasattr(diffusers, "FlowMatchHeunDiscreteScheduler"):
        pytest.skip("this diffusers has no FlowMatchHeunDiscreteScheduler")
    sde = flow()
    model, v = velocity_model(sde)
    grid = sd.make_grid(sde, steps, "uniform", denoise=True)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(steps), dtype=F64)
    sched = diffusers.FlowMatchHeunDiscreteScheduler()
    sched.set_timesteps(steps)  # no explicit σ's here: its layout [σ₀, σ₁, σ₁, …, σ_{N−1}, σ_{N−1}, 0], ours in it
    body = grid.t[:-1]
    sigmas = torch.cat([body[:1], body[1:].repeat_interleave(2), torch.zeros(1, dtype=F64)])
    assert sigmas.shape == sched.sigmas.shape
    ref, evals = _drive(sched, sigmas, sigmas[:-1] * 1000, v, x_T.clone())
    x = sd.sample(model, sd.get_solver("ode", method="heun2"), grid=grid, x_T=x_T.clone())
    assert model.nfe == evals == 2 * steps - 1
    assert (x - ref).abs().max().item() < 1e-6


# ---- likelihood ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_ode_log_likelihood_of_a_flow_model_is_the_mixture_density(divergence):
    """log p_{t_min}(x) of the exact velocity model through the PF-ODE matches the mixture's exact marginal density.
    With the exact q_T in place of the N(0, I) prior the match is to the ODE tolerance; with the prior it is off by
    log N(x_T; 0, I) − log q_T(x_T) = O(1 − T) (here ≈ 1e-3). Hutchinson: within 5 of its own standard errors."""
    sde = flow()
    model, _ = velocity_model(sde)
    tb = sd.GaussianMixture(MEANS, STDS, WEIGHTS)
    x = tb.sample(12, generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = tb.marginal_log_prob(x, sde.t_min, sde)
    kw = dict(rtol=1e-8, atol=1e-8) if divergence == "exact" else dict(rtol=1e-5, atol=1e-5, probes=16)
    r = ode_log_likelihood(model, x, divergence=divergence, generator=torch.Generator().manual_seed(1), **kw)
    with_q_T = r.delta_logp + tb.marginal_log_prob(r.x_T, sde.T, sde)
    if divergence == "exact":
        assert (with_q_T - exact).abs().max().item() < 1e-5
        assert (r.log_likelihood - exact).abs().max().item() < 1e-2
        assert r.nfe == model.nfe > 10
    else:
        assert torch.all((with_q_T - exact).abs() < 5 * r.std_error + 1e-5), (with_q_T - exact, r.std_error)
