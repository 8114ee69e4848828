"""Bad input gets a clear error that names the problem."""
from __future__ import annotations

import pytest
import torch

import scoresde as sd


@pytest.fixture
def model():
    return sd.get_testbed("ring").model(sd.VPSDE())


def test_unknown_solver_lists_the_registry(model):
    with pytest.raises(KeyError, match="unknown solver 'rk99'.*heun"):
        sd.sample(model, "rk99", 5, (2, 2))


def test_unknown_sde_and_grid(model):
    with pytest.raises(KeyError, match="unknown SDE 'vpp'"):
        sd.get_sde("vpp")
    with pytest.raises(KeyError, match="unknown grid 'cubic'"):
        sd.sample(model, "heun", 5, (2, 2), grid="cubic")
    with pytest.raises(ValueError, match="ddpm grid needs an SDE with a DDPM discretization"):
        sd.make_grid(sd.VESDE(), 5, "ddpm")


@pytest.mark.parametrize("steps", [0, -3, 2.5])
def test_steps_below_one(model, steps):
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        sd.sample(model, "euler", steps, (2, 2))


@pytest.mark.parametrize("kwargs", [dict(t_min=0.0), dict(t_min=-0.1), dict(T=1.5), dict(t_min=0.5, T=0.4)])
def test_times_outside_the_interval(model, kwargs):
    with pytest.raises(ValueError, match=r"t_min|T"):
        sd.sample(model, "euler", 5, (2, 2), **kwargs)


def test_sigma_min_not_below_sigma_max():
    with pytest.raises(ValueError, match="sigma_min"):
        sd.VESDE(sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        sd.EDMSDE(sigma_min=80.0, sigma_max=80.0)


def test_score_of_the_wrong_shape():
    bad = sd.ScoreModel(lambda x, t: x[:, :1], sd.VPSDE(), "score")
    with pytest.raises(ValueError, match=r"shape \(4, 1\), expected \(4, 2\)"):
        sd.sample(bad, "heun", 3, (4, 2))


def test_impossible_solver_options():
    with pytest.raises(ValueError, match="eta must lie in"):
        sd.get_solver("ddim", eta=1.5)
    with pytest.raises(ValueError, match="S_churn"):
        sd.get_solver("heun", S_churn=-1.0)
    with pytest.raises(ValueError, match="unknown torchdiffeq method 'rk45'"):
        sd.get_solver("ode", method="rk45")
    with pytest.raises(ValueError, match="unknown method 'heun'"):
        sd.get_solver("torchsde", method="heun")
    with pytest.raises(TypeError, match="solver 'euler'.*eta"):
        sd.get_solver("euler", eta=0.5)
    with pytest.raises(ValueError, match="corrector_steps"):
        sd.get_solver("pc", corrector_steps=-1)


def test_torchsde_needs_a_uniform_grid(model):
    with pytest.raises(ValueError, match="uniform grid"):
        sd.sample(model, "torchsde", 5, (2, 2), grid="karras")


def test_shape_or_start_required(model):
    with pytest.raises(ValueError, match="shape or x_T"):
        sd.sample(model, "heun", 5)
    with pytest.raises(ValueError, match=r"shape must be \(B, \.\.\.\)"):
        sd.sample(model, "heun", 5, (0, 2))


def test_per_sample_noise_checks_the_batch():
    noise = sd.PerSampleNoise([1, 2, 3])
    with pytest.raises(ValueError, match="3 seeds but the batch has 2"):
        noise(torch.empty(2, 4))
