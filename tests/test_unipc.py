"""UniPC: the same trajectory as diffusers' UniPCMultistepScheduler on the same denoiser and σ's (every order
and both B(h)), one NFE per step, and the corrector UniC raising the measured order by one."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import scoresde as sd
from scoresde.solvers import grid_from_times
from tests.test_convergence import _problem, measured_order


@pytest.mark.parametrize("order,variant,steps", [(1, "bh2", 10), (2, "bh2", 10), (2, "bh1", 6), (3, "bh2", 12),
                                                 (3, "bh1", 12)])
def test_matches_diffusers_unipc(order, variant, steps, single_thread):
    diffusers = pytest.importorskip("diffusers")
    sde, model = sd.VPSDE(), sd.get_testbed("ring").model(sd.VPSDE())
    betas, _ = sde.ddpm_schedule(1000)
    sched = diffusers.UniPCMultistepScheduler(num_train_timesteps=1000, trained_betas=betas.numpy(),
                                              prediction_type="epsilon", solver_order=order, solver_type=variant,
                                              final_sigmas_type="sigma_min")
    sched.set_timesteps(steps)
    sigmas = torch.tensor(sched.sigmas.numpy(), dtype=torch.float64)
    x_T = torch.randn(128, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x_T
    for k, sigma in zip(sched.timesteps, sigmas[:-1]):
        t = torch.full((x.shape[0],), float(sde.t_of_sigma(sigma)), dtype=torch.float64)
        x = sched.step(model.eps(x, t), k, x).prev_sample
    # diffusers' first σ (discrete step 999) lies at t ≈ 1.0034 > T: the DDPM-grid slack of check_start
    grid = dataclasses.replace(grid_from_times(sde, sde.t_of_sigma(sigmas)), kind="ddpm")
    model.reset_nfe()
    ours = sd.sample(model, sd.get_solver("unipc", order=order, variant=variant), grid=grid, x_T=x_T)
    assert model.nfe == steps
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-6)  # diffusers computes its coefficients in float32


@pytest.mark.slow
def test_corrector_raises_the_order_by_one(single_thread):
    problem = _problem("vp")
    predictor_only, _ = measured_order(*problem, sd.get_solver("unipc", order=2, corrector=False))
    corrected, errors = measured_order(*problem, sd.get_solver("unipc", order=2))  # 64, 128, 256 steps
    assert abs(predictor_only - 2) < 0.25 and abs(corrected - 3) < 0.25, (predictor_only, corrected, errors)


@pytest.mark.parametrize("options,match", [({"order": 4}, "order must be 1, 2 or 3"),
                                           ({"variant": "bh3"}, "variant must be one of")])
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        sd.get_solver("unipc", **options)
