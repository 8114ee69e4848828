"""k-diffusion and diffusers as scoresde-bench peers: k-diffusion's own sampling.py loads without its package
``__init__``; every peer costs the NFE the bench plans for it; the SDE peers' noise is per sample; and the real
k-diffusion samplers and diffusers' DPM-Solver++(3M) equal scoresde's solvers on the same σ's."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

import scoresde as sd
from scoresde.bench import SweepSettings, plan_peers, sweep_problem
from scoresde.bench import kdiffusion_import as kdi
from scoresde.bench import peers as peers_mod
from scoresde.bench.problems import testbed_problem as make_problem
from scoresde.bench.report import markdown
from scoresde.cli.benchmark import parse_entries
from scoresde.solvers import grid_from_times
from scoresde.solvers.noise import GeneratorNoise
from tests.test_reference_samplers import SDES, _k_diffusion_case

pytestmark = pytest.mark.usefixtures("single_thread")
K = kdi.load_sampling()
needs_k = pytest.mark.skipif(K is None, reason="k-diffusion is not installed")
NEW_DIFFUSERS = ["euler_default", "heun_default", "dpmpp_2m_default", "dpmpp_3m", "dpmpp_3m_karras", "deis",
                 "deis_karras", "unipc_karras"]
NEW_KDIFFUSION = ["lms", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_3m_sde_eta0"]


def small(**kw) -> SweepSettings:
    return SweepSettings(**{"n_samples": 6, "n_data": 200, "n_projections": 16, "progress": False,
                            "metrics": ("rmse",), **kw})


def k_modules() -> dict[str, object]:
    return {k: v for k, v in sys.modules.items() if k == "k_diffusion" or k.startswith("k_diffusion.")}


def test_append_dims_is_k_diffusions():
    x = torch.arange(3.0)
    assert kdi.append_dims(x, 3).shape == (3, 1, 1)
    assert torch.equal(kdi.append_dims(x, 3).flatten(), x)
    assert kdi.append_dims(x, 1).shape == (3,)
    with pytest.raises(ValueError, match="input has 1 dims but target_dims is 0, which is less"):
        kdi.append_dims(x, 0)


@needs_k
def test_k_diffusion_sampling_loads_from_its_distribution_file():
    """The bench's module is k-diffusion's sampling.py (the real import where it works, else the same file run
    under the stand-in package); loading it standalone never writes a k_diffusion entry of sys.modules."""
    assert Path(K.__file__).parts[-2:] == ("k_diffusion", "sampling.py")
    assert peers_mod.import_kdiffusion() is K
    path = kdi.sampling_path()
    assert path is not None and path.name == "sampling.py"
    before = k_modules()
    standalone = kdi.load_standalone(path)
    assert k_modules() == before
    assert standalone.__name__ == "_scoresde_kdiffusion.sampling" and Path(standalone.__file__) == path
    assert kdi.is_standalone(standalone) and standalone.utils.append_dims is kdi.append_dims
    with pytest.raises(AttributeError, match="provides only append_dims.*utils.n_params"):
        standalone.utils.n_params  # noqa: B018
    assert kdi.is_standalone(K) == ("k_diffusion" not in sys.modules)


def draw_peer(problem, source: str, method: str, budget: int | None, st: SweepSettings, seeds=None):
    runs, _ = plan_peers(*(([method], []) if source == "diffusers" else ([], [method])), (budget or 1,))
    (run,) = runs
    return run, run.draw(problem, seeds or st.seeds, st)


@pytest.mark.parametrize("source,method", [("diffusers", m) for m in NEW_DIFFUSERS]
                         + [("k-diffusion", m) for m in NEW_KDIFFUSION])
def test_new_peers_cost_their_planned_budget(source, method):
    if source == "diffusers":
        pytest.importorskip("diffusers")
    elif K is None:
        pytest.skip("k-diffusion is not installed")
    problem = make_problem(sd.get_testbed("ring"), sd.VPSDE())
    st = small()
    for budget in (6, 10):
        run, (x, nfe, _) = draw_peer(problem, source, method, budget, st)
        planned = 2 * run.steps - 1 if method.startswith("heun") else run.steps
        assert nfe == planned == (budget - 1 if method.startswith("heun") else budget)
        assert bool(torch.isfinite(x).all())


@needs_k
def test_dpm_adaptive_measures_its_nfe_and_reports_without_a_budget():
    """One run at k-diffusion's default tolerances whatever the budgets: its NFE (rejected steps included) is
    k-diffusion's own count plus the one denoiser call of the jump to the data; the report takes a peer row
    without a budget."""
    problem = make_problem(sd.get_testbed("ring"), sd.VPSDE())
    st = small(budgets=(6,))
    run, (x, nfe, _) = draw_peer(problem, "k-diffusion", "dpm_adaptive", None, st)
    assert (run.budget, run.steps, run.tol) == (None, None, 0.05)
    sde = problem.sde
    x_hat = problem.prior(st.seeds) / float(sde.s(torch.tensor(sde.T)))
    sig_min, sig_max = float(sde.sigma(torch.tensor(sde.t_min))), float(sde.sigma(torch.tensor(sde.T)))
    _, info = K.sample_dpm_adaptive(problem.model.denoiser, x_hat, sig_min, sig_max, disable=True, return_info=True)
    assert nfe == info["nfe"] + 1 and info["n_accept"] >= 1
    peers, _ = plan_peers(["ddim"], ["dpm_adaptive"], st.budgets)
    res = sweep_problem(problem, parse_entries({"euler": {"name": "euler", "grid": "karras"}}, st.budgets), st, peers)
    row = next(r for r in res["rows"] if r["label"] == "dpm_adaptive")
    assert row["error"] is None and row["budget"] is None and row["tol"] == 0.05 and row["rmse"] is not None
    assert "k-diffusion:dpm_adaptive | rtol=5e-02" in markdown([res])


@needs_k
@pytest.mark.parametrize("method", ["dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_k_diffusion_sde_peers_draw_per_sample_noise(method):
    """One Brownian tree per sample, seeded from the sample's seed: any batch split gives the same samples."""
    problem = make_problem(sd.get_testbed("ring"), sd.VPSDE())
    st = small()
    _, (whole, _, _) = draw_peer(problem, "k-diffusion", method, 6, st)
    _, (split, _, _) = draw_peer(problem, "k-diffusion", method, 6, small(batch_size=4))
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-6)
    _, (other, _, _) = draw_peer(problem, "k-diffusion", method, 6, st, seeds=[s + 50 for s in st.seeds])
    assert (other - whole).abs().min() > 0


@needs_k
def test_real_k_diffusion_samplers_equal_scoresdes_on_the_same_sigmas():
    """k-diffusion's own euler, heun, dpmpp_2m, dpmpp_2m_sde (midpoint) and dpmpp_3m_sde at η = 0 and 1 against
    scoresde's solvers of the same name on the same Karras σ's (float64), the SDE ones fed the same noise:
    k-diffusion's ``noise_sampler(σ, σ_next)`` draws from a generator seeded as scoresde's ``GeneratorNoise`` (as
    the transcriptions in tests/test_reference_samplers.py do). Measured worst difference 4e-12 (VE, no final
    denoising step)."""
    tb = sd.get_testbed("ring")
    worst = 0.0
    for sde in SDES:
        for denoise in (True, False):
            grid, x_hat, x_T = _k_diffusion_case(sde, 12, denoise, 6)
            model = tb.model(sde)
            cases = [(name, {}) for name in ("euler", "heun", "dpmpp_2m")]
            cases += [(name, {"eta": eta}) for name in ("dpmpp_2m_sde", "dpmpp_3m_sde") for eta in (0.0, 1.0)]
            for name, options in cases:
                gen = torch.Generator().manual_seed(9)

                def draws(sigma, sigma_next, g=gen, like=x_hat):
                    return torch.randn(like.shape, generator=g, dtype=like.dtype)

                noise = {"noise_sampler": draws} if options else {}
                ref = getattr(K, f"sample_{name}")(tb.denoiser, x_hat.clone(), grid.sigma, disable=True,
                                                   **options, **noise)
                ours = sd.sample(model, name, grid=grid, x_T=x_T, **options,
                                 noise=GeneratorNoise(torch.Generator().manual_seed(9)))
                ref = ref * float(grid.s[-1])  # k-diffusion's x is x̂; ours is s·x̂
                torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10,
                                           msg=f"{name} {options} {sde.name} denoise={denoise}")
                worst = max(worst, (ours - ref).abs().max().item())
    assert worst < 1e-10


def diffusers_loop(scheduler: str, model, sde, steps: int, x_T, **options):
    """diffusers' ``scheduler`` on the VP SDE's 1000-step table, fed the testbed's exact ε at each σ; returns its
    samples and its σ's."""
    diffusers = pytest.importorskip("diffusers")
    betas, _ = sde.ddpm_schedule(1000)
    sched = getattr(diffusers, scheduler)(num_train_timesteps=1000, trained_betas=betas.numpy(),
                                          prediction_type="epsilon", **options)
    sched.set_timesteps(steps)
    sigmas = torch.tensor(sched.sigmas.numpy(), dtype=torch.float64)
    x = x_T
    for k, sigma in zip(sched.timesteps, sigmas[:-1]):
        t = torch.full((x.shape[0],), float(sde.t_of_sigma(sigma)), dtype=torch.float64)
        x = sched.step(model.eps(x, t), k, x).prev_sample
    return x, sigmas


def diffusers_3m(model, sde, steps: int, karras: bool, x_T, **options):
    """diffusers' DPM-Solver++ (order 3), its samples and σ's."""
    return diffusers_loop("DPMSolverMultistepScheduler", model, sde, steps, x_T, algorithm_type="dpmsolver++",
                          solver_order=3, use_karras_sigmas=karras, **options)


def grid_of_sigmas(sde, sigmas):
    """scoresde's grid on diffusers' σ's (ending at σ = 0); its first σ (discrete step 999) lies at t ≈ 1.0034 > T:
    the DDPM-grid slack of check_start."""
    t = torch.cat([sde.t_of_sigma(sigmas[:-1]), sigmas.new_zeros(1)])
    return dataclasses.replace(grid_from_times(sde, t, ends_at_data=True), kind="ddpm")


@pytest.mark.parametrize("steps,karras", [(6, True), (16, False)])
def test_diffusers_deis_equals_scoresdes_logrho_deis(steps, karras):
    """diffusers' DEISMultistepScheduler (order 3) extrapolates ε̂ in log ρ and integrates over ρ = σ in closed
    form; scoresde's ``deis`` with ``basis="logrho"`` is that method, and with ``lower_order_final=False`` the two
    agree on the same σ's to diffusers' float32 coefficients. diffusers' DEIS ends at σ_min, not at the data (on
    Karras σ's its last σ repeats σ_min: a zero-length step whose evaluation is spent for nothing), so scoresde's
    grid is its σ's without the repeat and without the step to the data. The paper's tAB basis differs
    (gap > 1e-3)."""
    sde = sd.VPSDE()
    model = sd.get_testbed("ring").model(sde)
    x_T = torch.randn(128, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theirs, sigmas = diffusers_loop("DEISMultistepScheduler", model, sde, steps, x_T, solver_order=3,
                                    use_karras_sigmas=karras, lower_order_final=False)
    kept = sigmas[:-1] if float(sigmas[-1]) == float(sigmas[-2]) else sigmas  # Karras σ's repeat σ_min
    assert float(kept[-1]) > 0
    grid = dataclasses.replace(grid_from_times(sde, sde.t_of_sigma(kept), ends_at_data=False), kind="ddpm")
    nfe = len(kept) - 1
    model.reset_nfe()
    ours = sd.sample(model, "deis", grid=grid, x_T=x_T, basis="logrho")
    assert model.nfe == nfe
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=2e-5)  # diffusers' float32 σ's and coefficients
    tab = sd.sample(model, "deis", grid=grid, x_T=x_T)
    assert (tab - theirs).abs().max().item() > 1e-3


@pytest.mark.parametrize("steps,karras", [(6, False), (6, True), (16, False), (16, True)])
def test_diffusers_dpmpp_3m_equals_scoresdes_without_its_warm_start_and_final_choices(steps, karras):
    """diffusers' DPMSolverMultistepScheduler(solver_order=3, "dpmsolver++") has the 3M update of k-diffusion and
    scoresde's ``dpmpp_3m``. With ``solver_type="heun"`` (its second step is then φ₂·d₀, as scoresde's) and
    ``lower_order_final=False`` the two agree on the same σ's to diffusers' float32 coefficients (measured ≤ 3e-6).
    Its defaults differ on purpose: ``lower_order_final`` takes the second-to-last step at order 2 below 15 steps
    (the large difference at 6 steps: 1.27 on Karras, 0.058 on its default grid, measured) and the ``midpoint``
    second step uses ½(1 − e^{−h})·d₀ (≈2e-4 at 6 steps). The last step, into σ = 0, is x̂ ← D in both."""
    sde = sd.VPSDE()
    model = sd.get_testbed("ring").model(sde)
    x_T = torch.randn(128, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theirs, sigmas = diffusers_3m(model, sde, steps, karras, x_T, solver_type="heun", lower_order_final=False)
    assert float(sigmas[-1]) == 0.0
    grid = grid_of_sigmas(sde, sigmas)
    model.reset_nfe()
    ours = sd.sample(model, "dpmpp_3m", grid=grid, x_T=x_T)
    assert model.nfe == steps
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    default, _ = diffusers_3m(model, sde, steps, karras, x_T)
    gap = (default - ours).abs().max().item()
    assert gap > 1e-2 if steps < 15 else gap < 1e-5  # lower_order_final acts below 15 steps only


def test_diffusers_deis_lower_order_final_equals_scoresdes():
    """With its default ``lower_order_final`` (below 15 steps: order 1 on the last step, ≤ 2 on the one before),
    diffusers' DEIS on its default timesteps (which end at σ_min without a repeat) equals scoresde's logrho DEIS
    with ``lower_order_final=True``; without it scoresde's differs."""
    sde = sd.VPSDE()
    model = sd.get_testbed("ring").model(sde)
    x_T = torch.randn(128, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    theirs, sigmas = diffusers_loop("DEISMultistepScheduler", model, sde, 8, x_T, solver_order=3)
    assert float(sigmas[-1]) != float(sigmas[-2]) and float(sigmas[-1]) > 0
    grid = dataclasses.replace(grid_from_times(sde, sde.t_of_sigma(sigmas), ends_at_data=False), kind="ddpm")
    ours = sd.sample(model, "deis", grid=grid, x_T=x_T, basis="logrho", lower_order_final=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=2e-5)
    plain = sd.sample(model, "deis", grid=grid, x_T=x_T, basis="logrho")
    assert (plain - theirs).abs().max().item() > 1e-4
