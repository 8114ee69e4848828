"""The samplers against transcriptions of the published algorithms, step for step.

Each reference below is the paper's algorithm written out plainly (EDM's ``edm_sampler``,
Ho et al.'s Algorithm 2, k-diffusion's ``sample_dpmpp_2m`` for DPM-Solver++ Alg. 2), driven by the
same exact denoiser and the same noise stream.
"""
from __future__ import annotations

import math

import numpy as np
import torch

import scoresde as sd
from scoresde.solvers.noise import GeneratorNoise


def edm_sampler(net, latents, num_steps=18, sigma_min=0.002, sigma_max=80, rho=7, S_churn=0, S_min=0,
                S_max=float("inf"), S_noise=1, randn_like=torch.randn_like):
    """Karras et al. 2022, Algorithm 2, as in the paper's reference code; returns every state."""
    step_indices = torch.arange(num_steps, dtype=torch.float64)
    t_steps = (sigma_max ** (1 / rho) + step_indices / (num_steps - 1)
               * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t_steps = torch.cat([t_steps, torch.zeros_like(t_steps[:1])])
    x_next = latents.to(torch.float64) * t_steps[0]
    states = []
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        gamma = min(S_churn / num_steps, np.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0
        t_hat = t_cur + gamma * t_cur
        x_hat = x_cur + (t_hat**2 - t_cur**2).sqrt() * S_noise * randn_like(x_cur)
        denoised = net(x_hat, t_hat)
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if i < num_steps - 1:
            denoised = net(x_next, t_next)
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        states.append(x_next)
    return states


def _record(states):
    return lambda info: states.append(info.x.clone())


def test_heun_reproduces_edm_sampler_step_for_step():
    tb = sd.get_testbed("ring")
    sde = sd.EDMSDE()
    latents = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    net = lambda x, sigma: tb.denoiser(x, sigma)  # noqa: E731
    churn = dict(S_churn=40.0, S_tmin=0.05, S_tmax=50.0, S_noise=1.003)
    for options in ({}, churn):
        gen_ref, gen_ours = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        ref_opts = {("S_min" if k == "S_tmin" else "S_max" if k == "S_tmax" else k): v for k, v in options.items()}
        reference = edm_sampler(net, latents, randn_like=lambda x, g=gen_ref: torch.randn(x.shape, generator=g,
                                                                                          dtype=x.dtype),
                                **ref_opts)
        ours = []
        sd.sample(tb.model(sde), "heun", 18, x_T=latents * 80.0, grid="karras", denoise=True,
                  noise=GeneratorNoise(gen_ours), callback=_record(ours), **options)
        assert len(ours) == len(reference) == 18
        for i, (a, b) in enumerate(zip(ours, reference)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"step {i} ({options or 'deterministic'})")


def test_heun_on_vp_is_edm_sampler_in_sigma():
    """Under VP, the Heun sampler is Alg. 2 on x̂ = x/s with D(x̂; σ) at t(σ) (the σ-parametrization)."""
    tb = sd.get_testbed("ring")
    sde = sd.VPSDE()
    grid = sd.make_grid(sde, 12, "karras", denoise=True)
    latents = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = edm_sampler(lambda x, s: tb.denoiser(x, s), latents, num_steps=12, sigma_min=float(grid.sigma[-2]),
                      sigma_max=float(grid.sigma[0]))
    x_T = latents * float(grid.sigma[0]) * float(grid.s[0])
    ours = sd.sample(tb.model(sde), "heun", grid=grid, x_T=x_T)
    torch.testing.assert_close(ours, ref[-1], rtol=1e-8, atol=1e-8)


def test_heun_without_churn_is_exactly_deterministic():
    model = sd.get_testbed("ring").model(sd.EDMSDE())
    a = sd.sample(model, "heun", 10, (16, 2), grid="karras", seed=0, denoise=True)
    x_T = sd.EDMSDE().prior_sample((16, 2), noise=sd.PerSampleNoise(range(16))(torch.empty(16, 2)))
    b = sd.sample(model, "heun", 10, x_T=x_T, grid="karras", noise=lambda x: torch.full_like(x, float("nan")),
                  denoise=True)
    assert torch.equal(a, b)  # no noise is drawn: a NaN noise source changes nothing


def test_ancestral_on_the_ddpm_grid_is_ho_et_al_algorithm_2():
    tb = sd.get_testbed("ring")
    sde = sd.VPSDE()
    n = 1000
    grid = sd.make_grid(sde, n, "ddpm")
    model = tb.model(sde)
    betas = torch.linspace(1e-4, 0.02, n, dtype=torch.float64)  # Ho et al. 2020, §4
    alphas, alphas_cumprod = 1 - betas, torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(grid.s[:-1] ** 2, alphas_cumprod.flip(0), rtol=1e-12, atol=0)

    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    gen_ref = torch.Generator().manual_seed(3)
    x = x_T.clone()
    for i in reversed(range(n)):  # Algorithm 2: t = T, …, 1 (0-based here)
        t = torch.full((16,), float(grid.t[n - 1 - i]), dtype=torch.float64)
        eps = model.eps(x, t)
        z = torch.randn(x.shape, generator=gen_ref, dtype=x.dtype) if i > 0 else torch.zeros_like(x)
        x = (x - betas[i] / torch.sqrt(1 - alphas_cumprod[i]) * eps) / torch.sqrt(alphas[i]) + torch.sqrt(betas[i]) * z
    ours = sd.sample(model, "ancestral", grid=grid, x_T=x_T, noise=GeneratorNoise(torch.Generator().manual_seed(3)))
    torch.testing.assert_close(ours, x, rtol=1e-9, atol=1e-9)


def test_dpmpp_2m_matches_k_diffusion_transcription():
    tb = sd.get_testbed("ring")
    for sde in (sd.EDMSDE(), sd.VESDE(sigma_max=20.0), sd.VPSDE()):
        grid = sd.make_grid(sde, 15, "karras", denoise=True)
        sigmas = grid.sigma
        x_hat = torch.randn(32, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * sigmas[0]
        x, old = x_hat.clone(), None
        for i in range(len(sigmas) - 1):  # k-diffusion sample_dpmpp_2m (Lu et al. 2022b, Alg. 2)
            denoised = tb.denoiser(x, sigmas[i])
            t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
            h = t_next - t
            if old is None or sigmas[i + 1] == 0:
                x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised
            else:
                r = (t - (-sigmas[i - 1].log())) / h
                x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * ((1 + 1 / (2 * r)) * denoised - old / (2 * r))
            old = denoised
        ours = sd.sample(tb.model(sde), "dpmpp_2m", grid=grid, x_T=x_hat * float(grid.s[0]))
        torch.testing.assert_close(ours, x, rtol=1e-9, atol=1e-9, msg=sde.name)


def test_ddim_eta0_equals_euler_in_sigma_and_eta1_is_posterior_ancestral():
    tb = sd.get_testbed("ring")
    sde = sd.VPSDE()
    model = tb.model(sde)
    kwargs = dict(steps=20, shape=(32, 2), seed=0, dtype=torch.float64, denoise=True)
    torch.testing.assert_close(sd.sample(model, "ddim", **kwargs), sd.sample(model, "euler", **kwargs))
    torch.testing.assert_close(sd.sample(model, "ddim", eta=1.0, **kwargs),
                               sd.sample(model, "ancestral", variance="posterior", **kwargs))


def test_chain_and_sde_approach_the_same_distribution():
    """DDPM ancestral sampling and Euler–Maruyama on the VP SDE, with a Gaussian's exact score: both
    variances converge to the data variance c² as steps grow; the gap between them shrinks too."""
    c2 = 0.25
    tb = sd.get_testbed("gaussian", dim=1, mean=0.0, std=math.sqrt(c2))
    model = tb.model(sd.VPSDE())
    n = 200_000
    gaps, errors = [], []
    for steps in (5, 20, 200):
        var = {}
        for name in ("ancestral", "euler_maruyama"):
            x = sd.sample(model, name, steps, (n, 1), seed=None, generator=torch.Generator().manual_seed(steps),
                          dtype=torch.float64, denoise=True)
            var[name] = x.var().item()
        gaps.append(abs(var["ancestral"] - var["euler_maruyama"]))
        errors.append(max(abs(v - c2) for v in var.values()))
    mc = 5 * c2 * math.sqrt(2 / n)
    assert errors[-1] < mc + 0.005
    assert errors[0] > errors[-1] and gaps[0] > gaps[-1] + mc
    assert gaps[0] > 0.01  # at 5 steps the two discretizations differ measurably


def sample_dpmpp_2m_sde(model, x, sigmas, eta=1.0, s_noise=1.0, noise_sampler=None, solver_type="midpoint"):
    """k-diffusion's ``sample_dpmpp_2m_sde`` (DPM-Solver++(2M) SDE), transcribed without its callback."""
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised  # denoising step
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                elif solver_type == "midpoint":
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + (noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
                         * (-2 * eta_h).expm1().neg().sqrt() * s_noise)
        old_denoised = denoised
        h_last = h
    return x


def sample_dpmpp_3m_sde(model, x, sigmas, eta=1.0, s_noise=1.0, noise_sampler=None):
    """k-diffusion's ``sample_dpmpp_3m_sde`` (DPM-Solver++(3M) SDE), transcribed without its callback."""
    denoised_1, denoised_2 = None, None
    h, h_1, h_2 = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised  # denoising step
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0 = h_1 / h
                r1 = h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * d
            if eta:
                x = x + (noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
                         * (-2 * h * eta).expm1().neg().sqrt() * s_noise)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def _k_diffusion_case(sde, steps, denoise, seed):
    """The σ's of a Karras grid, x̂_T, and our x_T = s_0·x̂_T."""
    grid = sd.make_grid(sde, steps, "karras", denoise=denoise)
    x_hat = torch.randn(32, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * grid.sigma[0]
    return grid, x_hat, x_hat * float(grid.s[0])


SDES = (sd.EDMSDE(), sd.VESDE(sigma_max=20.0), sd.VPSDE())


def test_dpmpp_sde_solvers_match_k_diffusion_transcriptions():
    """dpmpp_2m_sde (both corrections) and dpmpp_3m_sde at several η, on the same σ's and the same noise stream
    (the transcription's noise sampler draws from a generator seeded as ours)."""
    tb = sd.get_testbed("ring")
    worst = 0.0
    cases = [("dpmpp_2m_sde", sample_dpmpp_2m_sde, {"solver_type": "midpoint"}),
             ("dpmpp_2m_sde", sample_dpmpp_2m_sde, {"solver_type": "heun"}),
             ("dpmpp_3m_sde", sample_dpmpp_3m_sde, {})]
    for sde in SDES:
        for denoise in (True, False):
            grid, x_hat, x_T = _k_diffusion_case(sde, 12, denoise, 6)
            for name, reference, options in cases:
                for eta, s_noise in ((0.0, 1.0), (0.5, 1.0), (1.0, 1.003)):
                    gen = torch.Generator().manual_seed(9)
                    ref = reference(tb.denoiser, x_hat.clone(), grid.sigma, eta=eta, s_noise=s_noise,
                                    noise_sampler=lambda s, s_next, g=gen, like=x_hat: torch.randn(
                                        like.shape, generator=g, dtype=like.dtype), **options)
                    ours = sd.sample(tb.model(sde), name, grid=grid, x_T=x_T, eta=eta, s_noise=s_noise,
                                     noise=GeneratorNoise(torch.Generator().manual_seed(9)), **options)
                    ref = ref * float(grid.s[-1])  # k-diffusion's x is x̂; ours is s·x̂ (s = 1 at the data)
                    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10,
                                               msg=f"{name} {options} eta={eta} {sde.name} denoise={denoise}")
                    worst = max(worst, (ours - ref).abs().max().item())
    assert worst < 1e-10


def test_dpmpp_at_eta_zero_is_the_deterministic_solver_exactly():
    tb = sd.get_testbed("ring")
    for sde in SDES:
        model = tb.model(sde)
        x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        kwargs = dict(steps=9, x_T=x_T, seed=0, grid="karras", denoise=True)
        nan_noise = lambda x: torch.full_like(x, math.nan)  # noqa: E731  (η = 0 draws nothing)
        assert torch.equal(sd.sample(model, "dpmpp_3m_sde", eta=0.0, noise=nan_noise, **kwargs),
                           sd.sample(model, "dpmpp_3m", **kwargs))
        assert torch.equal(sd.sample(model, "dpmpp_2m_sde", eta=0.0, **kwargs), sd.sample(model, "dpmpp_2m", **kwargs))
        assert not sd.get_solver("dpmpp_2m_sde", eta=0.0).stochastic
        noisy = sd.sample(model, "dpmpp_3m_sde", eta=1.0, **kwargs)
        assert not torch.allclose(noisy, sd.sample(model, "dpmpp_3m", **kwargs))


def ipndm_sampler(denoiser, x, sigmas, max_order=4):
    """iPNDM as the paper gives it (Zhang & Chen 2023, App. B; the loop of the reference code of Zhou et al.'s
    "Fast ODE-based sampling", ``get_ipndm``): Adams–Bashforth with the constant weights on the slopes
    d = (x − D(x; σ))/σ, order min(i + 1, max_order); Euler (x ← D) on a step into σ = 0."""
    buffer = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        d_cur = (x - denoiser(x, t_cur)) / t_cur
        order = min(max_order, i + 1) if t_next > 0 else 1
        if order == 1:
            x_next = x + (t_next - t_cur) * d_cur
        elif order == 2:
            x_next = x + (t_next - t_cur) * (3 * d_cur - buffer[-1]) / 2
        elif order == 3:
            x_next = x + (t_next - t_cur) * (23 * d_cur - 16 * buffer[-1] + 5 * buffer[-2]) / 12
        else:
            x_next = x + (t_next - t_cur) * (55 * d_cur - 59 * buffer[-1] + 37 * buffer[-2] - 9 * buffer[-3]) / 24
        buffer = (buffer + [d_cur])[-(max_order - 1):]
        x = x_next
    return x


def test_ipndm_matches_the_papers_loop():
    tb = sd.get_testbed("ring")
    worst = 0.0
    for sde in SDES:
        for denoise in (True, False):
            grid, x_hat, x_T = _k_diffusion_case(sde, 10, denoise, 7)
            ref = ipndm_sampler(tb.denoiser, x_hat.clone(), grid.sigma) * float(grid.s[-1])
            ours = sd.sample(tb.model(sde), "ipndm", grid=grid, x_T=x_T)
            torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10, msg=f"{sde.name} denoise={denoise}")
            worst = max(worst, (ours - ref).abs().max().item())
    assert worst < 1e-10
