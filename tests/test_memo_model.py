"""MemoModel answers a call from memory only when x and t equal a stored call's exactly; a solver run on a grid
that shares its first k points with an earlier run costs exactly k fewer evaluations and gives the same samples;
refine_points finds the minimum of a separable objective to its tolerance."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde.models.memo import MemoModel
from scoresde.solvers.grid_search import grid_of_points, refine_points

pytestmark = pytest.mark.usefixtures("single_thread")


def _ring_model():
    sde = sd.EDMSDE()
    return sde, sd.get_testbed("ring").model(sde)


def test_exact_hits_only():
    _, model = _ring_model()
    memo = MemoModel(model)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    first = memo.x0(x, 1.5)
    assert torch.equal(memo.x0(x.clone(), 1.5), first) and memo.hits == 1
    nudged = x.clone()
    nudged[3, 1] = torch.nextafter(nudged[3, 1], torch.tensor(math.inf))  # one ulp in one entry
    memo.x0(nudged, 1.5)
    memo.x0(x, float(torch.nextafter(torch.tensor(1.5), torch.tensor(2.0))))  # the same x, t one float32 ulp away
    assert memo.hits == 1 and memo.nfe == model.nfe == 3
    assert torch.equal(memo.x0(x, 1.5), model.x0(x, 1.5))  # the remembered answer is the model's own


def test_a_shared_prefix_costs_nothing():
    """iPNDM on 6 steps to the data evaluates once at each of σ_0 … σ_5: a grid that moves only σ_4 repeats the
    first four evaluations, which come from memory, and its samples equal the plain model's bit for bit."""
    sde, model = _ring_model()
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(1))
    log_hi = math.log(80.0)
    points = np.log([30.0, 8.0, 2.0, 0.6, 0.15])
    moved = points.copy()
    moved[3] = math.log(0.4)
    memo = MemoModel(model)
    solver = sd.get_solver("ipndm")
    a = solver.sample(memo, x_T, grid_of_points(sde, points, log_hi, True, sde.T, sde.t_min))
    assert memo.nfe == 6 and memo.hits == 0
    b = solver.sample(memo, x_T, grid_of_points(sde, moved, log_hi, True, sde.T, sde.t_min))
    assert memo.nfe == 6 + 2 and memo.hits == 4
    plain = solver.sample(model, x_T, grid_of_points(sde, moved, log_hi, True, sde.T, sde.t_min))
    assert torch.equal(b, plain) and not torch.equal(a, b)


def test_capacity_drops_the_oldest():
    _, model = _ring_model()
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    entry = (16 + 8 + 16) * 8  # x (8 × 2), t (8) and the output (8 × 2), float64
    memo = MemoModel(model, capacity=2 * entry)
    for t in (1.0, 2.0, 3.0):
        memo.x0(x, t)
    assert memo.stored_bytes == 2 * entry
    memo.x0(x, 3.0)
    memo.x0(x, 1.0)  # dropped: evaluated again
    assert memo.hits == 1 and memo.nfe == 4
    with pytest.raises(ValueError, match="capacity"):
        MemoModel(model, capacity=0)


def test_refine_points_reaches_the_minimum_of_a_separable_objective():
    """Three noise levels between log σ = 4 and −6 with the error minimised at (2, −1, −4): one point at a time the
    search lands there to within its step tolerance, every trial grid strictly decreasing."""
    target = np.array([2.0, -1.0, -4.0])
    seen = []

    def objective(points: np.ndarray) -> float:
        seen.append(points.copy())
        return float(((points - target) ** 2).sum())

    best = {"value": math.inf}

    def tracked(points: np.ndarray) -> float:
        value = objective(points)
        if value < best["value"]:
            best.update(value=value, points=points.copy())
        return value

    refine_points(tracked, np.array([3.0, 0.0, -5.0]), 4.0, -6.0, movable=3, tol=1e-6)
    assert np.allclose(best["points"], target, atol=1e-4)
    assert all(4.0 > p[0] > p[1] > p[2] > -6.0 for p in seen)
    calls = len(seen)
    refine_points(tracked, np.array([-6.0]), 4.0, -6.0, movable=0)  # a grid that ends at t_min with one step
    assert len(seen) == calls


def test_a_grid_with_merged_points_is_refused():
    sde = sd.EDMSDE()
    with pytest.raises(ValueError, match="decrease strictly"):
        grid_of_points(sde, np.log([30.0, 2.0, 2.0]), math.log(80.0), True, sde.T, sde.t_min)
