"""torchsde's solvers driven by one shared Brownian path: strong convergence as steps grow."""
from __future__ import annotations

import torch

import scoresde as sd


def test_one_brownian_path_shared_across_methods_and_step_counts():
    sde = sd.VPSDE()
    model = sd.get_testbed("gaussian", dim=2, mean=0.3, std=0.5).model(sde)
    x_T = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise = sd.GeneratorNoise(torch.Generator().manual_seed(7))
    solver = sd.get_solver("torchsde", method="euler")
    bm = solver.brownian(x_T, sde.T - sde.t_min, noise)

    def run(method, steps):
        grid = sd.make_grid(sde, steps, "uniform")
        return sd.get_solver("torchsde", method=method).sample(model, x_T, grid, bm=bm)

    fine = run("euler", 1024)
    errors = [(run("euler", n) - fine).pow(2).mean().sqrt().item() for n in (16, 64, 256)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.02, errors
    # milstein equals euler for additive noise; both track the same path
    torch.testing.assert_close(run("milstein", 64), run("euler", 64), rtol=1e-10, atol=1e-10)


def test_generator_noise_uses_one_batched_interval():
    sde = sd.VPSDE()
    model = sd.get_testbed("ring").model(sde)
    a = sd.sample(model, "torchsde", 8, (64, 2), seed=None, generator=torch.Generator().manual_seed(1))
    b = sd.sample(model, "torchsde", 8, (64, 2), seed=None, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.isfinite(a).all()
