"""Measured strong orders of every stochastic solver on one shared Brownian path.

Each solver runs on the ring testbed (a Gaussian mixture: exact, nonlinear score) under VP and under the flow
(linear-interpolant) SDE, on a uniform grid, with a
:class:`~scoresde.solvers.noise.BrownianNoise`: every step draws its increment from the same path, so a coarse
run and a fine run of the same solver are driven by the same Brownian motion. The strong error is the RMS
distance to the solver's own run at :data:`FINE` steps, at the interior grid time t ≈ 0.5 (the samplers' last
step removes the noise on purpose, which is a denoising step, not a step of the SDE). Its fitted slope
against log step count is compared with the declared strong order for the reverse SDE's (additive) noise.
Written over the registry: a new stochastic solver is checked with no edit here.
"""
from __future__ import annotations

import pytest
import torch

import scoresde as sd
from scoresde.evaluation import fit_order
from scoresde.solvers import BrownianNoise
from scoresde.solvers.base import REVERSE_NOISE
from tests.conftest import solver_names

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS, FINE = (16, 32, 64), 512
# Step counts are doubled under flow. Its reverse SDE is stiff at the start: the drift f·x − g²∇log p has rate
# ≈ (2 − t)/(t(1 − t)) ≈ 1000 at T = 0.999 (VP's: ≈ 10), so on a 16-step uniform grid Euler–Maruyama's first step
# has |rate·h| ≈ 62 and the transient is not yet forgotten at t ≈ 0.5: measured pairwise slopes under flow 2.69, 1.41
# (16 → 64 steps, fit 2.05) for Euler–Maruyama and torchsde's euler/milstein, 1.92, 1.10 for Heun with churn; with
# 32 → 128 (fine 1024) 1.14, 1.05 and 1.00, 1.23, and every case within STRONG_TOL. No solver is special-cased.
STEP_FACTOR = {"vp": 1, "flow": 2}
STRONG_TOL = 0.25  # |fitted − declared|
# Stochastic modes of solvers that are deterministic by default (their options, not a second registry).
VARIANTS = {"ddim": [{"eta": 1.0}], "heun": [{"S_churn": 4.0}], "euler": [{"S_churn": 4.0}],
            "torchsde": [{}, {"method": "milstein"}, {"method": "srk"}], "pc": [{}, {"corrector_steps": 0}]}

# Above its declared order on this problem, for a stated reason: held to ``fitted > declared − STRONG_TOL`` only.
EXCEEDS = {("torchsde", "srk"): "with additive noise and the space-time Lévy area, torchsde's SRK integrates "
                                "the noise exactly to its drift's order 2 (measured 2.08); 1.5 is its bound"}


def stochastic_cases() -> list[tuple[str, dict]]:
    cases = []
    for name in solver_names():
        for options in VARIANTS.get(name, [{}]):
            if sd.get_solver(name, **options).stochastic:
                cases.append((name, options))
    return cases


@pytest.fixture(scope="module", params=["vp", "flow"])
def problem(request):
    sde = sd.get_sde(request.param)
    model = sd.get_testbed("ring").model(sde)
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return model, x_T


def path(model, seed: int = 3) -> BrownianNoise:
    """One Brownian path; a torchsde BrownianInterval answers consistently only within one object, so every
    run that should see this path gets this instance."""
    return BrownianNoise(model.sde.T, model.sde.t_min, seed=seed)


class _Midpoint(Exception):
    """Raised by the callback once the midpoint is reached: the second half of the grid is not integrated."""


def state_at_midpoint(model, x_T, solver, steps: int, noise: BrownianNoise) -> torch.Tensor:
    """The state at grid point steps/2 (t = (T + t_min)/2 for every even step count) on the path ``noise``."""
    states = []

    def record(info) -> None:
        states.append(info.x)
        if len(states) == steps // 2:
            raise _Midpoint

    try:
        sd.sample(model, solver, steps, x_T=x_T, grid="uniform", noise=noise, callback=record)
    except _Midpoint:
        pass
    return states[steps // 2 - 1]


def step_counts(model) -> tuple[tuple[int, ...], int]:
    """(coarse step counts, fine step count) for the model's SDE: :data:`STEPS`, :data:`FINE` times its factor."""
    k = STEP_FACTOR[model.sde.name]
    return tuple(k * n for n in STEPS), k * FINE


def strong_order(model, x_T, solver) -> tuple[float, list[float]]:
    noise = path(model)
    steps, fine_steps = step_counts(model)
    fine = state_at_midpoint(model, x_T, solver, fine_steps, noise)
    errors = [(state_at_midpoint(model, x_T, solver, n, noise) - fine).pow(2).mean().sqrt().item() for n in steps]
    return fit_order(steps, errors), errors


@pytest.mark.parametrize("name,options", stochastic_cases(), ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_measured_strong_order_matches_declared(name, options, problem):
    solver = sd.get_solver(name, **options)
    declared = solver.strong_order(REVERSE_NOISE)
    assert solver.order == declared
    order, errors = strong_order(*problem, solver)
    if (name, options.get("method")) in EXCEEDS:
        assert order > declared - STRONG_TOL, f"{name} {options}: fitted strong order {order:.2f}, errors {errors}"
        return
    assert abs(order - declared) < STRONG_TOL, f"{name} {options}: fitted strong order {order:.2f}, errors {errors}"
    if declared > 0:
        assert errors[-1] < 0.1, errors


def test_the_shared_path_is_what_makes_the_error_shrink(problem):
    """Control: with a different path for the fine run, Euler–Maruyama's error does not shrink."""
    model, x_T = problem
    solver = sd.get_solver("euler_maruyama")
    noise = path(model)
    steps, fine_steps = step_counts(model)
    fine = state_at_midpoint(model, x_T, solver, fine_steps, path(model, seed=4))
    errors = [(state_at_midpoint(model, x_T, solver, n, noise) - fine).pow(2).mean().sqrt().item() for n in steps]
    assert min(errors) > 0.1, errors


def test_strong_orders_are_declared_per_noise_type():
    em = sd.get_solver("euler_maruyama")
    assert em.strong_order("additive") == 1.0 and em.strong_order("diagonal") == 0.5
    assert sd.get_solver("torchsde", method="euler").strong_orders == {"additive": 1.0, "diagonal": 0.5,
                                                                       "general": 0.5, "scalar": 0.5}
    assert sd.get_solver("torchsde", method="srk").strong_order() == 1.5
    with pytest.raises(ValueError, match="supports the noise types"):
        sd.get_solver("torchsde", method="milstein").strong_order("general")
    with pytest.raises(ValueError, match="deterministic"):
        sd.get_solver("heun").strong_order()
