"""The few-step solvers and grids of issue 14: DEIS's quadrature and reductions, DPM-Solver++(3M)'s orders, and
the polynomial, stop-early, spec-string and JSON grids."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

import scoresde as sd
from scoresde.evaluation import fit_order
from scoresde.solvers import grid_from_times
from scoresde.solvers.grids import load_grid, parse_grid_spec, save_grid
from scoresde.solvers.multistep import lagrange_basis, sigma_integrals
from tests.test_convergence import _problem, measured_order

pytestmark = pytest.mark.usefixtures("single_thread")


def _x_T(sde, n=32, seed=0):
    return sde.prior_sample((n, 2), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(sigma_max=20.0), sd.get_sde("flow")], ids=lambda s: s.name)
def test_deis_weights_are_the_integrals_of_the_lagrange_basis(sde):
    """32-point Gauss–Legendre in log σ against adaptive quadrature in σ, on the steps of a 5-step Karras grid
    (h up to 3.2), for the tAB nodes (t of the last three grid points)."""
    def t_of(s):
        return sde.t_of_sigma(torch.as_tensor(s, dtype=torch.float64)).numpy()

    grid = sd.make_grid(sde, 5, "karras")
    sig, ts = grid.sigma_list, grid.t_list
    for i in range(2, 5):
        nodes = ts[i - 2:i + 1][::-1]
        ours = sigma_integrals(nodes, sig[i], sig[i + 1], t_of)
        for j in range(3):
            ref = quad(lambda s, nodes=nodes, j=j: lagrange_basis(nodes, t_of(np.array([s])))[j][0], sig[i], sig[i + 1],
                       epsabs=1e-14, epsrel=1e-13, limit=200)[0]
            assert ours[j] == pytest.approx(ref, rel=1e-11, abs=1e-11), (i, j)
        assert sum(ours) == pytest.approx(sig[i + 1] - sig[i], rel=1e-12)  # the basis sums to 1


def test_deis_reductions():
    """Order 1 is Euler in σ (= DDIM, η = 0); under EDM (t = σ) tAB is ρAB; ρAB is Adams–Bashforth in σ."""
    tb = sd.get_testbed("ring")
    for sde in (sd.VPSDE(), sd.EDMSDE()):
        model, x_T = tb.model(sde), _x_T(sde)
        kwargs = dict(steps=8, x_T=x_T, grid="karras", denoise=True)
        torch.testing.assert_close(sd.sample(model, "deis", order=1, **kwargs), sd.sample(model, "euler", **kwargs),
                                   rtol=1e-12, atol=1e-12)
    model, x_T = tb.model(sd.EDMSDE()), _x_T(sd.EDMSDE())
    for order in (2, 3):
        kwargs = dict(steps=10, x_T=x_T, grid="karras", order=order)
        torch.testing.assert_close(sd.sample(model, "deis", **kwargs), sd.sample(model, "deis", basis="rho", **kwargs),
                                   rtol=1e-10, atol=1e-10)


def test_deis_costs_one_evaluation_per_step_and_rejects_bad_options(ring):
    model = ring.model(sd.VPSDE())
    sd.sample(model, "deis", 10, (4, 2), grid="karras", denoise=True)
    assert model.nfe == 10
    for options, match in (({"order": 4}, "order must be 1, 2 or 3"), ({"basis": "logt"}, "basis must be one of")):
        with pytest.raises(ValueError, match=match):
            sd.get_solver("deis", **options)


def test_dpmpp_3m_taylor_is_third_order_and_the_k_diffusion_update_second():
    """k-diffusion's 3M update halves the D'' term (d₂ ≈ h²D''/2): second order asymptotically (declared 2,
    fitted over 256–1024 steps by the registry test); taylor=True doubles d₂ and is third order."""
    problem = _problem("vp")
    solver = sd.get_solver("dpmpp_3m", taylor=True)
    assert solver.order == 3.0 and sd.get_solver("dpmpp_3m").order == 2.0
    order, errors = measured_order(*problem, solver, steps=(64, 128, 256))
    assert abs(order - 3) < 0.25, (order, errors)
    _, k_errors = measured_order(*problem, sd.get_solver("dpmpp_3m"), steps=(256, 512))
    assert fit_order((256, 512), k_errors) < 2.5, k_errors


def test_dpmpp_options_are_checked():
    with pytest.raises(ValueError, match="eta must be finite and >= 0"):
        sd.get_solver("dpmpp_2m_sde", eta=-1.0)
    with pytest.raises(ValueError, match="solver_type is an option of the 2M"):
        sd.get_solver("dpmpp_3m_sde", solver_type="heun")
    with pytest.raises(ValueError, match="taylor is an option of the 3M"):
        sd.get_solver("dpmpp_2m_sde", taylor=True)
    assert sd.get_solver("dpmpp_3m_sde").stochastic and sd.get_solver("dpmpp_3m_sde").strong_order() == 1.0


# ---- grids -------------------------------------------------------------------------------------------------------
def test_polynomial_grid_is_uniform_in_t_to_the_one_over_kappa():
    sde = sd.VPSDE()
    for kappa in (1.0, 2.0, 3.5):
        grid = sd.make_grid(sde, 9, "polynomial", kappa=kappa)
        u = grid.t ** (1 / kappa)
        assert grid.t[0] == sde.T and grid.t[-1] == sde.t_min
        torch.testing.assert_close(u.diff(), torch.full((9,), float(u.diff().mean()), dtype=torch.float64))
    torch.testing.assert_close(sd.make_grid(sde, 9, "polynomial", kappa=1.0).t, sd.make_grid(sde, 9, "uniform").t)
    with pytest.raises(ValueError, match="kappa"):
        sd.make_grid(sde, 9, "polynomial", kappa=0.0)


def test_stop_early_ends_the_ode_and_jumps_to_the_data():
    sde = sd.VPSDE()
    grid = sd.make_grid(sde, 10, "stop_early")  # diffusers' linspace layout: 999, 899, …, 100 → data
    assert grid.ends_at_data and grid.steps == 10
    torch.testing.assert_close(grid.t[:-1], torch.linspace(sde.T, sde.t_min, 11, dtype=torch.float64)[:-1])
    for kind in ("karras", "logsnr", "uniform"):
        stopped = sd.make_grid(sde, 8, kind, sigma_end=0.05)
        assert stopped.ends_at_data and stopped.sigma_list[-2] == pytest.approx(0.05, rel=1e-12)
        torch.testing.assert_close(stopped.t, sd.make_grid(sde, 8, kind, t_min=float(stopped.t[-2]), denoise=True).t)
    assert sd.make_grid(sde, 8, "karras", t_end=0.1).t_list[-2] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="at most one"):
        sd.make_grid(sde, 8, "karras", t_min=0.01, sigma_end=0.05)


def test_grid_specs_pass_through_sample():
    model = sd.get_testbed("ring").model(sd.VPSDE())
    x_T = _x_T(model.sde)
    assert parse_grid_spec("karras:sigma_end=0.05,rho=5") == ("karras", {"sigma_end": 0.05, "rho": 5.0})
    a = sd.sample(model, "dpmpp_2m", 8, x_T=x_T, grid="karras:sigma_end=0.05,rho=5")
    b = sd.sample(model, "dpmpp_2m", x_T=x_T, grid=sd.make_grid(model.sde, 8, "karras", sigma_end=0.05, rho=5))
    assert torch.equal(a, b)
    for bad, match in (("karras:sigma=1", "expected 'kind:key=value"), ("karras:rho=x", "bad value"),
                       ("spiral", "unknown grid")):
        with pytest.raises(Exception, match=match):
            sd.sample(model, "euler", 4, x_T=x_T, grid=bad)


def test_grids_save_and_load_as_json(tmp_path):
    sde = sd.VPSDE()
    model = sd.get_testbed("ring").model(sde)
    grid = sd.make_grid(sde, 7, "logsnr", sigma_end=0.03)
    path = str(tmp_path / "grid.json")
    save_grid(grid, path, sde, note="test")
    loaded = load_grid(sde, path)
    assert torch.equal(loaded.t, grid.t) and torch.equal(loaded.sigma, grid.sigma) and loaded.kind == "logsnr"
    x_T = _x_T(sde)
    assert torch.equal(sd.sample(model, "unipc", x_T=x_T, grid=path), sd.sample(model, "unipc", x_T=x_T, grid=grid))
    on_edm = load_grid(sd.EDMSDE(sigma_max=float(grid.sigma[0]) * 1.01), path)  # another SDE: the same σ's
    torch.testing.assert_close(on_edm.sigma, grid.sigma, rtol=1e-12, atol=0)
    (tmp_path / "bad.json").write_text('{"t": [1, 0]}')
    with pytest.raises(ValueError, match="not a saved scoresde grid"):
        load_grid(sde, str(tmp_path / "bad.json"))


def test_unipc_on_diffusers_default_grid_equals_diffusers_unipc(single_thread):
    """diffusers' default UniPC grid stops early (final_sigmas_type='zero': the last step jumps to the data);
    on the same σ's ending at σ = 0 scoresde's UniPC is diffusers' UniPC."""
    diffusers = pytest.importorskip("diffusers")
    sde, model = sd.VPSDE(), sd.get_testbed("ring").model(sd.VPSDE())
    betas, _ = sde.ddpm_schedule(1000)
    sched = diffusers.UniPCMultistepScheduler(num_train_timesteps=1000, trained_betas=betas.numpy(),
                                              prediction_type="epsilon", solver_order=2)
    sched.set_timesteps(10)
    sigmas = torch.tensor(sched.sigmas.numpy(), dtype=torch.float64)
    assert sigmas[-1] == 0
    x_T = torch.randn(128, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x_T
    for k, sigma in zip(sched.timesteps, sigmas[:-1]):
        t = torch.full((x.shape[0],), float(sde.t_of_sigma(sigma)), dtype=torch.float64)
        x = sched.step(model.eps(x, t), k, x).prev_sample
    t = torch.cat([sde.t_of_sigma(sigmas[:-1]), torch.zeros(1, dtype=torch.float64)])
    grid = dataclasses.replace(grid_from_times(sde, t, ends_at_data=True), kind="ddpm")
    model.reset_nfe()
    ours = sd.sample(model, "unipc", grid=grid, x_T=x_T)
    assert model.nfe == 10 and math.isclose(float(grid.t[-2]), float(sde.t_of_sigma(sigmas[-2])))
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-6)  # diffusers computes its coefficients in float32
