"""Measured convergence orders on the probability-flow ODE with an exact score.

The reference is torchdiffeq's dopri5 at rtol = atol = 1e-11 from the same starting noise; the order
is the fitted slope of log RMSE against log step count, compared with what each solver declares, over the
step range the solver declares asymptotic (``order_steps``). One tolerance, :data:`ORDER_TOL`, for every fit.
Written over the registry: a new deterministic solver is checked with no edit here. Every test runs under the VP,
VE and flow (linear-interpolant) SDEs, with the same solver code: only the step counts differ (:data:`STEP_FACTOR`).
"""
from __future__ import annotations

import pytest
import torch

import scoresde as sd
from scoresde.evaluation import fit_order
from scoresde.solvers.ode import is_adaptive, takes_tolerances, torchdiffeq_methods
from tests.conftest import deterministic_names

ORDER_TOL = 0.25  # |fitted − declared| for every solver; torchdiffeq's declared orders are lower bounds


# The flow path (T = 0.999, t_min = 1e-3: σ from 999 to 1.001e-3) spans log(σ_max/σ_min) = 13.8 in log-SNR λ = −log σ,
# against 9.6 for VP (σ 152 → 0.0105) and 7.6 for VE (σ 20 → 0.01): at the same step count its λ-step h is 1.4–1.8×
# larger, so a solver's declared asymptotic range (set on VP/VE) is reached one doubling later. Measured under flow,
# UniPC's pairwise slopes on the log-SNR grid are 1.74, 2.43, 2.80, 2.94, 2.98, 2.99 (32 → 2048 steps; VP: 2.14,
# 2.67, 2.91, 2.99, …): a fit over its declared 64–256 gives 2.62, over 128–512 2.87. On the uniform-in-t grid of the
# torchdiffeq test the stiffness near t_min, d log σ/dt, is 1/(t(1 − t)) ≈ 1/t for flow (σ ≈ t) against 1/(2t) for VP
# (σ² ≈ β_min·t): twice as stiff, and midpoint's slopes under flow are 1.38, 1.72, 1.85, 1.92 (16 → 256 steps; VP
# 2.64, 2.11, 1.90, …). Hence one doubling of every step count for flow, in both tests; no solver is special-cased.
STEP_FACTOR = {"vp": 1, "ve": 1, "flow": 2}


def _problem(sde_name: str):
    sde = sd.get_sde(sde_name) if sde_name != "ve" else sd.VESDE(sigma_max=20.0)
    model = sd.get_testbed("ring").model(sde)
    x_T = sde.prior_sample((128, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = sd.sample(model, "ode", 1, x_T=x_T, method="dopri5", rtol=1e-11, atol=1e-11)
    return model, x_T, reference


@pytest.fixture(scope="module", params=["vp", "ve", "flow"])
def problem(request):
    return _problem(request.param)


def step_range(solver, factor: int = 1) -> tuple[int, ...]:
    """Doublings from the first to the last step count of the solver's declared asymptotic range, times ``factor``."""
    lo, hi = solver.order_steps
    steps = [lo]
    while steps[-1] < hi:
        steps.append(steps[-1] * 2)
    return tuple(factor * n for n in steps)


def measured_order(model, x_T, reference, solver, steps=None, grid="logsnr") -> tuple[float, list[float]]:
    steps = step_range(solver, STEP_FACTOR[model.sde.name]) if steps is None else steps
    errors = [(sd.sample(model, solver, n, x_T=x_T, grid=grid) - reference).pow(2).mean().sqrt().item()
              for n in steps]
    return fit_order(steps, errors), errors


@pytest.mark.parametrize("name", deterministic_names())
def test_measured_order_matches_declared(name, problem):
    solver = sd.get_solver(name)
    if getattr(solver, "adaptive", False):
        pytest.skip("adaptive: checked against its tolerance below")
    order, errors = measured_order(*problem, solver)
    assert abs(order - solver.order) < ORDER_TOL, f"{name}: fitted order {order:.2f}, errors {errors}"
    assert errors[-1] < 1e-2


def test_declared_step_ranges_are_sane():
    for name in deterministic_names():
        lo, hi = sd.get_solver(name).order_steps
        assert 2 <= lo < hi <= 4096 and hi % lo == 0 and (hi // lo) & (hi // lo - 1) == 0, (name, lo, hi)


FIXED_METHODS = [m for m in torchdiffeq_methods() if not is_adaptive(m) and m != "fixed_adams"]  # an alias


# Explicit Adams near VP's stiff end (t_min) is still pre-asymptotic at 512 uniform steps (pairwise 5.7, 2.1, 3.3):
# there the least-squares fit over 64–512 steps (3.68) is held to the looser bound below.
PREASYMPTOTIC = {("vp", "explicit_adams"): ((64, 128, 256, 512), 3.5)}


@pytest.mark.parametrize("method", FIXED_METHODS)
def test_torchdiffeq_fixed_methods_reach_their_order(method, problem, request):
    """torchdiffeq's declared order (read from its classes) is reached on the finest pair of step counts (heun3
    approaches its 3 from below: 2.37, then 2.85), held one-sided: ``fitted > declared − ORDER_TOL``."""
    tight = {"rtol": 1e-10, "atol": 1e-10} if takes_tolerances(method) else {}  # implicit Adams' corrector
    solver = sd.get_solver("ode", method=method, **tight)
    sde_name = request.node.callspec.params["problem"]
    steps = tuple(STEP_FACTOR[sde_name] * n for n in ((16, 32, 64) if solver.order <= 2 else (64, 128, 256)))
    if (sde_name, method) in PREASYMPTOTIC:
        steps, bound = PREASYMPTOTIC[sde_name, method]
        order, errors = measured_order(*problem, solver, steps=steps, grid="uniform")
        assert order > bound, f"{method}: fitted order {order:.2f}, errors {errors}"
        return
    _, errors = measured_order(*problem, solver, steps=steps, grid="uniform")
    order = fit_order(steps[-2:], errors[-2:])
    assert order > solver.order - ORDER_TOL, f"{method}: fitted order {order:.2f}, errors {errors}"


def test_explicit_adams_steps_through_the_grid(problem):
    """A fixed-grid method missing from any table is still fixed-grid: 20 steps are 20 steps (RK4 warm-up,
    then one evaluation per step), and at 4th order it lands far closer to the reference than Euler does."""
    model, x_T, reference = problem
    model.reset_nfe()
    x = sd.sample(model, "ode", 20, x_T=x_T, grid="logsnr", method="explicit_adams")
    solver = sd.get_solver("ode", method="explicit_adams")
    assert not solver.adaptive and solver.order == 4.0
    assert model.nfe == solver.declared_nfe(sd.make_grid(model.sde, 20, "logsnr")) > 20
    euler = sd.sample(model, "ode", 20, x_T=x_T, grid="logsnr", method="euler")
    error, euler_error = ((y - reference).pow(2).mean().sqrt().item() for y in (x, euler))
    assert error < euler_error / 5 and error < 1e-2, (error, euler_error)


@pytest.mark.parametrize("method,options,match", [
    ("rk4", {"rtol": 1e-3}, r"'rk4' steps through the grid and takes no rtol"),
    ("explicit_adams", {"atol": 1e-3}, r"'explicit_adams' .* takes no atol"),
    ("dopri5", {"options": {"step_size": 0.1}}, r"'dopri5' takes no option 'step_size'"),
    ("rk4", {"options": {"first_step": 0.1}}, r"'rk4' takes no option 'first_step'"),
    ("scipy_solver", {}, r"unknown torchdiffeq method"),
])
def test_an_option_the_method_cannot_take_is_an_error(method, options, match):
    with pytest.raises(ValueError, match=match):
        sd.get_solver("ode", method=method, **options)


def test_method_options_pass_through(problem):
    model, x_T, _ = problem
    low = sd.sample(model, "ode", 12, x_T=x_T, method="explicit_adams", options={"max_order": 6})
    assert sd.get_solver("ode", method="explicit_adams", options={"max_order": 6}).order == 5.0
    high = sd.sample(model, "ode", 12, x_T=x_T, method="explicit_adams")
    assert not torch.equal(low, high)
    assert sd.get_solver("ode", method="implicit_adams", rtol=1e-4).options()["rtol"] == 1e-4


def test_adaptive_error_follows_tolerance(problem):
    model, x_T, reference = problem
    errors, nfes = [], []
    for tol in (1e-3, 1e-5, 1e-7):
        model.reset_nfe()
        x = sd.sample(model, "ode", 1, x_T=x_T, method="dopri5", rtol=tol, atol=tol)
        errors.append((x - reference).pow(2).mean().sqrt().item())
        nfes.append(model.nfe)
        assert errors[-1] < 100 * tol
    assert errors[0] > errors[1] > errors[2] and nfes[0] < nfes[1] < nfes[2]


def test_adaptive_ode_on_digits_never_leaves_the_interval():
    """torchdiffeq's dopri5 must not evaluate below t_min (VP's σ(t) is NaN for t < 0) nor fail with
    'underflow in dt'. score_sde's scipy RK45 path needs 164 NFE here at rtol = atol = 1e-5."""
    tb = sd.get_testbed("digits")
    sde = sd.VPSDE()
    seen = []

    def x0(x, t):
        seen.append(t.min().item())
        return tb.denoiser(x / sd.append_dims(sde.s(t), x.ndim), sde.sigma(t))

    model = sd.ScoreModel(x0, sde, "x0")
    x = sd.sample(model, "ode", 1, (8, 1, 8, 8), seed=0, method="dopri5", rtol=1e-5, atol=1e-5)
    assert torch.isfinite(x).all()
    assert min(seen) >= sde.t_min and len(seen) == model.nfe
    assert 100 <= model.nfe <= 300, model.nfe
    # the ideal denoiser's flow ends next to training images
    nearest = torch.cdist(x.reshape(8, -1).double(), tb.means).min(dim=1).values
    assert nearest.max() < 0.5
