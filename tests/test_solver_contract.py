"""Every registered solver, checked against exact answers (parametrized over the registry, so a new
solver is covered with no edit here)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

import scoresde as sd
from scoresde.solvers.base import REVERSE_NOISE, USES
from scoresde.solvers.sigma_term import SigmaSolver
from tests.conftest import configured_grid, solver_names

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "solver"


def test_every_solver_has_a_config_and_every_config_a_solver():
    """Registration is by discovery (a module in scoresde/solvers); configs/solver/ must follow it both ways,
    and each config's options must build its solver."""
    named = {}
    for path in sorted(CONFIGS.glob("*.yaml")):
        for entry in yaml.safe_load(path.read_text()).values():
            assert entry["name"] in sd.SOLVERS, f"{path.name}: {entry['name']!r} is not a registered solver"
            sd.get_solver(entry["name"], **(entry.get("options") or {}))
            named[entry["name"]] = path.name
    missing = sorted(set(sd.SOLVERS) - set(named))
    assert not missing, f"registered solvers without a config in configs/solver/: {missing}"


@pytest.mark.parametrize("name", solver_names())
def test_declarations_are_consistent(name):
    solver = sd.get_solver(name)
    assert solver.uses in USES
    assert (solver.uses == "denoiser") == isinstance(solver, SigmaSolver) or name == "pc"
    if solver.stochastic:
        assert solver.order == solver.strong_order(REVERSE_NOISE)
    else:
        with pytest.raises(ValueError, match="deterministic"):
            solver.strong_order()
        assert solver.order >= 1


def test_a_denoiser_predictor_inside_pc_gets_the_sigma_term(ring):
    model = ring.model(sd.VPSDE())
    x = sd.sample(model, "pc", 6, (8, 2), predictor="heun", corrector_steps=1, denoise=True)
    assert torch.isfinite(x).all() and sd.get_solver("pc", predictor="heun").uses == "denoiser"

SLOW_SOLVERS = {"torchsde"}  # one Brownian interval per sample: keep their batches small


def _gaussian_stats(name: str, steps: int, n: int = 4000):
    """Sample a 2-D Gaussian N(m, c²I) exactly scored under VP on the solver's configured grid (the multistep SDE
    solvers, dpmpp_2m_sde and dpmpp_3m_sde, need ~256 steps on a grid uniform in t: their h jumps to ~1.4 at the
    last VP step); return mean and covariance errors."""
    tb = sd.get_testbed("gaussian", dim=2, mean=0.7, std=0.5)
    model = tb.model(sd.VPSDE())
    n = 600 if name in SLOW_SOLVERS else n
    x = sd.sample(model, name, steps, (n, 2), grid=configured_grid(name), denoise=True, seed=None,
                  dtype=torch.float64,
                  generator=torch.Generator().manual_seed(0))
    mean_err = (x.mean(0) - tb.mean()).abs().max().item()
    cov_err = (torch.cov(x.T) - tb.covariance()).abs().max().item()
    return mean_err, cov_err, n


@pytest.mark.parametrize("name", solver_names())
def test_recovers_gaussian_mean_and_covariance(name):
    """Every solver, given a Gaussian's exact score, recovers its mean and covariance; error shrinks with steps."""
    coarse_mean, coarse_cov, n = _gaussian_stats(name, 4)
    fine_mean, fine_cov, n = _gaussian_stats(name, 64)
    mc = 4 * 0.5**2 * math.sqrt(2 / n)  # 4 standard errors of a variance estimate
    assert fine_mean < 4 * 0.5 / math.sqrt(n) + 0.01
    assert fine_cov < mc + 0.01
    assert fine_mean + fine_cov < coarse_mean + coarse_cov + mc


@pytest.mark.parametrize("name", solver_names())
@pytest.mark.parametrize("denoise", [False, True])
def test_counted_nfe_equals_declared(name, denoise, ring):
    model = ring.model(sd.VPSDE())
    solver = sd.get_solver(name)
    grid = sd.make_grid(model.sde, 7, "uniform", denoise=denoise)
    sd.sample(model, solver, grid=grid, shape=(8, 2), seed=0)
    declared = solver.declared_nfe(grid)
    if declared is None:
        assert getattr(solver, "adaptive", False)
    else:
        assert model.nfe == declared


def test_heun_costs_2n_minus_1_and_pc_costs_n_times_m_plus_1(ring):
    model = ring.model(sd.EDMSDE())
    for n in (1, 5, 18):
        model.reset_nfe()
        sd.sample(model, "heun", n, (4, 2), grid="karras", denoise=True)
        assert model.nfe == 2 * n - 1
    model = ring.model(sd.VPSDE())
    for n, m in ((5, 1), (6, 3), (4, 0)):
        model.reset_nfe()
        sd.sample(model, "pc", n, (4, 2), corrector_steps=m)
        assert model.nfe == n * (m + 1)


BATCH_INDEPENDENT = {"pc": {"norm": "sample"}}  # pc's default SNR rule averages norms over the batch


@pytest.mark.parametrize("name", solver_names())
def test_same_seed_same_samples_whatever_the_batch(name, ring):
    model = ring.model(sd.VESDE(sigma_max=10.0))
    opts = BATCH_INDEPENDENT.get(name, {})
    small = sd.sample(model, name, 6, (3, 2), seed=11, grid="uniform", denoise=True, **opts)
    large = sd.sample(model, name, 6, (9, 2), seed=11, grid="uniform", denoise=True, **opts)
    again = sd.sample(model, name, 6, (3, 2), seed=11, grid="uniform", denoise=True, **opts)
    # an adaptive ODE solver picks its steps from the error of the whole batch: equal to its tolerance
    tol = 1e-3 if getattr(sd.get_solver(name), "adaptive", False) else 1e-6
    torch.testing.assert_close(small, large[:3], rtol=tol, atol=tol)
    assert torch.equal(small, again)
    other = sd.sample(model, name, 6, (3, 2), seed=12, grid="uniform", denoise=True, **opts)
    assert not torch.equal(small, other)


@pytest.mark.parametrize("name", solver_names())
@pytest.mark.parametrize("prediction", ["x0", "eps", "v"])
def test_every_solver_drives_every_parametrization(name, prediction, ring):
    """The same exact model exposed as x0, eps or v gives the samples of its score form."""
    sde = sd.VPSDE()
    score_model = ring.model(sde)
    assert score_model.prediction == "score"

    def as_kind(x, t):
        return sd.models.convert(score_model.counter.fn(x, t), "score", prediction, x, sde.s(t), sde.sigma(t))

    other = sd.ScoreModel(as_kind, sde, prediction)
    kwargs = dict(steps=5, shape=(16, 2), seed=3, dtype=torch.float64, denoise=True)
    torch.testing.assert_close(sd.sample(other, name, **kwargs), sd.sample(score_model, name, **kwargs),
                               rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("name", solver_names())
def test_images_and_points_alike(name):
    """Solvers take any sample shape: the digits testbed gives image-shaped exact scores."""
    tb = sd.get_testbed("digits", limit=200)
    model = tb.model(sd.VPSDE())
    x = sd.sample(model, name, 4, (2, 1, 8, 8), seed=0, denoise=True)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


@pytest.mark.parametrize("name", solver_names())
def test_nan_names_the_step_and_time(name):
    """A model that breaks below t = 0.5 makes every solver raise, naming the step and t."""
    sde = sd.VPSDE()
    ring = sd.get_testbed("ring")

    def broken(x, t):
        out = ring.denoiser(x / sd.append_dims(sde.s(t), x.ndim), sde.sigma(t))
        return torch.where(sd.append_dims(t, x.ndim) < 0.5, torch.full_like(out, float("nan")), out)

    model = sd.ScoreModel(broken, sde, "x0")
    with pytest.raises(FloatingPointError, match=r"t="):
        sd.sample(model, name, 10, (4, 2), seed=0, grid="uniform")


def test_nan_message_names_the_first_bad_step():
    sde = sd.VPSDE()

    def broken(x, t):
        return torch.where(sd.append_dims(t, x.ndim) < 0.45, torch.full_like(x, float("nan")), -x)

    model = sd.ScoreModel(broken, sde, "score")
    grid = sd.make_grid(sde, 10, "uniform", t_min=0.1)
    first_bad = int((grid.t[:-1] < 0.45).nonzero()[0])  # the step evaluated at the first t below 0.45
    with pytest.raises(FloatingPointError, match=rf"step {first_bad} of 10"):
        sd.sample(model, "euler_maruyama", grid=grid, shape=(4, 2))


def test_cuda_matches_cpu(ring):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    for name in solver_names():
        model = ring.model(sd.VPSDE())
        cpu = sd.sample(model, name, 8, (16, 2), seed=0, dtype=torch.float64, denoise=True)
        gpu = sd.sample(model, name, 8, (16, 2), seed=0, dtype=torch.float64, denoise=True, device="cuda")
        assert gpu.device.type == "cuda"
        if not sd.get_solver(name).stochastic:
            torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-6)
