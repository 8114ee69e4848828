"""The shared σ-space term, and iPNDM written on it (Zhang & Chen 2023)."""
from __future__ import annotations

import pytest
import torch

import scoresde as sd
from scoresde.solvers import SigmaTerm, grid_from_times
from scoresde.solvers.base import batch_times
from scoresde.solvers.ipndm import adams_bashforth_weights
from tests.test_convergence import ORDER_TOL, _problem, measured_order

pytestmark = pytest.mark.usefixtures("single_thread")


def test_term_maps_x_to_x_hat_and_back_and_evaluates_d_and_eps(ring):
    sde = sd.VPSDE()
    model = ring.model(sde)
    grid = sd.make_grid(sde, 6, "karras", denoise=True)
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    term = SigmaTerm(model, grid, batch_times(grid, x))
    j = 2
    x_hat = term.to_hat(x, j)
    torch.testing.assert_close(term.to_x(x_hat, j), x, rtol=1e-15, atol=1e-15)
    denoised, eps = term.denoise(x_hat, j), term.eps(x_hat, j)
    torch.testing.assert_close(denoised, ring.denoiser(x_hat, grid.sigma[j]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eps, (x_hat - denoised) / term.sigma(j), rtol=1e-10, atol=1e-10)  # ε̂ = dx̂/dσ
    torch.testing.assert_close(term.eps_off_grid(x_hat, term.sigma(j)), eps, rtol=1e-10, atol=1e-10)
    assert term.h(j) == pytest.approx(term.lam(j + 1) - term.lam(j), rel=1e-12)
    assert term.to_x(x_hat, grid.steps) is not None and term.s(grid.steps) == 1.0


def test_adams_bashforth_weights():
    assert adams_bashforth_weights([0.0]) == [1.0]
    assert adams_bashforth_weights([0, -1]) == pytest.approx([3 / 2, -1 / 2])
    assert adams_bashforth_weights([0, -1, -2, -3]) == pytest.approx([55 / 24, -59 / 24, 37 / 24, -9 / 24])
    # any nodes: exact on cubics
    taus = [0.0, -0.8, -1.7, -2.9]
    for p in range(4):
        assert sum(w * t**p for w, t in zip(adams_bashforth_weights(taus), taus)) == pytest.approx(1 / (p + 1))


def test_ipndm_variable_step_is_the_paper_scheme_on_equal_sigma_steps(ring):
    """On a grid with equal steps in σ the variable-step weights are iPNDM's constants."""
    sde = sd.EDMSDE()
    model = ring.model(sde)
    grid = grid_from_times(sde, torch.linspace(20.0, 0.5, 13, dtype=torch.float64))
    x_T = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 20.0
    a = sd.sample(model, "ipndm", grid=grid, x_T=x_T)
    b = sd.sample(model, "ipndm", grid=grid, x_T=x_T, variable_step=True)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_ipndm_variable_step_reaches_order_4():
    """ρAB-DEIS weights: fourth order on the log-SNR grid (VP; on VE the dopri5 reference's own error
    shows at 1024 steps)."""
    solver = sd.get_solver("ipndm", variable_step=True)
    order, errors = measured_order(*_problem("vp"), solver)
    assert abs(order - solver.order) < ORDER_TOL, (order, errors)


def test_ipndm_costs_one_evaluation_per_step(ring):
    model = ring.model(sd.VPSDE())
    sd.sample(model, "ipndm", 10, (4, 2), grid="karras", denoise=True)
    assert model.nfe == 10
