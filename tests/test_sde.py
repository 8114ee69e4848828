"""The forward SDEs checked against exact answers: the closed-form marginals against a simulation of
``dx = f(t)x dt + g(t) dw``, the (s, σ) relations of Karras et al. 2022 (eq. 4), the transition
kernels, DDPM's discretization, the priors, input checks and the reverse dynamics (Song et al. 2021,
eqs. 6 and 13). Every test runs over the whole registry ``scoresde.SDES``."""
from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch

import scoresde as sd

F64 = torch.float64
NAMES = sorted(sd.SDES)
VP_LIKE = {"vp", "subvp", "cosine"}


@pytest.fixture(params=NAMES)
def sde(request) -> sd.SDE:
    return sd.get_sde(request.param)


def _times(sde: sd.SDE, lo: float, hi: float, n: int) -> torch.Tensor:
    """``n`` times spread over [lo·T, hi·T] (float64)."""
    return torch.linspace(lo, hi, n, dtype=F64) * sde.T


# ---- q(x_t | x_0) against an Euler–Maruyama simulation --------------------------------------------

# A moderate σ_max for VE and a horizon of a few units for EDM (T = 80), so the simulation stays cheap.
SIM_KWARGS = {"ve": {"sigma_min": 0.01, "sigma_max": 5.0}}
SIM_PATHS, SIM_STEPS = 20_000, 2_000
# Euler–Maruyama's weak error with 2000 steps on these horizons, measured once off-line from the exact moment
# recursion of EM (m ← (1 + f dt)m, v ← (1 + f dt)²v + g²dt): < 0.25% for every SDE (worst: VE variance,
# ≈ log(σ_max/σ_min)·dt). The allowance below is twice that; the Monte-Carlo error is 4.5 standard errors.
EM_REL_BIAS = 5e-3


@contextmanager
def _one_thread():
    """2000 tiny steps: intra-op threads only add synchronization (and thrash on a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("name", NAMES)
def test_marginal_matches_euler_maruyama(name):
    """Mean and variance of a fine EM simulation of the forward SDE from a fixed x0 match q(x_t|x_0)."""
    sde = sd.get_sde(name, **SIM_KWARGS.get(name, {}))
    # Stop at 0.8·T: near T the cosine drift −(π/2)·tan φ(t) blows up and EM's bias reaches 3% at t = T.
    horizon = min(0.8 * sde.T, 4.0)
    checkpoints = [round(0.3 * SIM_STEPS), SIM_STEPS]  # t = 0.3·H and H
    dt = horizon / SIM_STEPS
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((SIM_PATHS, 1), 2.0, dtype=F64)

    def normal() -> torch.Tensor:  # float32 draws are plenty for a Monte-Carlo moment check, and 5× cheaper
        return torch.randn(x0.shape, generator=gen).to(F64)

    # Start from the t = 0 marginal: the point x0 for every SDE but VE, whose σ(0) = σ_min > 0.
    mean0, std0 = sde.marginal(x0, 0.0)
    x = mean0 + std0 * normal()
    n = x.numel()
    checked = 0
    with _one_thread():
        for k in range(SIM_STEPS):
            t = torch.tensor(k * dt, dtype=F64)
            x = x + sde.drift(x, t) * dt + sde.diffusion(x, t) * normal() * math.sqrt(dt)
            if k + 1 not in checkpoints:
                continue
            t_now = (k + 1) * dt
            mean, std = sde.marginal(x0[:1], t_now)
            m, v = mean.item(), std.item() ** 2
            se_mean, se_var = math.sqrt(v / n), v * math.sqrt(2 / (n - 1))
            emp_mean, emp_var = x.mean().item(), x.var().item()
            assert abs(emp_mean - m) <= 4.5 * se_mean + EM_REL_BIAS * abs(m), (t_now, emp_mean, m)
            assert abs(emp_var - v) <= 4.5 * se_var + EM_REL_BIAS * v, (t_now, emp_var, v)
            checked += 1
    assert checked == len(checkpoints)


def test_perturb_is_mean_plus_std_noise(sde):
    """perturb(x0, t, noise) = s(t)·x0 + s(t)σ(t)·noise, with per-sample t broadcast over image-shaped x0."""
    x0 = torch.randn(4, 3, 2, 2, dtype=F64)
    noise = torch.randn_like(x0)
    t = _times(sde, 0.1, 1.0, 4)
    xt, eps = sde.perturb(x0, t, noise=noise)
    s, sigma = sde.s(t), sde.sigma(t)
    expected = s[:, None, None, None] * x0 + (s * sigma)[:, None, None, None] * noise
    torch.testing.assert_close(xt, expected)
    assert eps is noise
    mean, std = sde.marginal(x0, t)
    torch.testing.assert_close(mean, s[:, None, None, None] * x0)
    torch.testing.assert_close(std.flatten(), s * sigma)


# ---- the (s, σ) parametrization --------------------------------------------------------------------

def _reference_s_std(sde: sd.SDE, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """s(t) and std(t) written from the papers (DESIGN.md's reference SDEs), independently of the library."""
    if sde.name in ("vp", "subvp"):  # Song et al. 2021, eqs. 11, 17 and 29
        s = torch.exp(-0.5 * (0.1 * t + 0.5 * (20.0 - 0.1) * t**2))
        return s, (torch.sqrt(1 - s**2) if sde.name == "vp" else 1 - s**2)
    if sde.name == "ve":  # σ(t) = σ_min(σ_max/σ_min)^t with the defaults 0.01, 50
        return torch.ones_like(t), 0.01 * (50.0 / 0.01) ** t
    if sde.name == "edm":  # σ(t) = t
        return torch.ones_like(t), t
    if sde.name == "cosine":  # Nichol & Dhariwal 2021, eq. 17: ᾱ(t) = cos²((t+s₀)/(1+s₀)·π/2) / cos²(s₀/(1+s₀)·π/2)
        phi = lambda u: (u + 0.008) / 1.008 * math.pi / 2  # noqa: E731
        s = torch.cos(phi(t)) / math.cos(phi(0.0))
        return s, torch.sqrt(1 - s**2)
    if sde.name == "flow":  # Lipman et al. 2023, eq. 20 (σ_min = 0); Liu et al. 2023: x_t = (1 − t)x₀ + tε
        return 1 - t, t
    raise AssertionError(f"no reference for {sde.name}: add one when registering a new SDE")


def test_reference_closed_forms(sde):
    t = torch.cat([torch.tensor([sde.t_min], dtype=F64), _times(sde, 0.01, 1.0, 40)])
    s, std = _reference_s_std(sde, t)
    torch.testing.assert_close(sde.s(t), s, rtol=1e-10, atol=0)
    torch.testing.assert_close(sde.std(t), std, rtol=1e-8, atol=0)
    torch.testing.assert_close(sde.sigma(t), std / s, rtol=1e-8, atol=0)

def test_t_of_sigma_inverts_sigma(sde):
    t = torch.cat([torch.tensor([sde.t_min], dtype=F64), _times(sde, 0.01, 1.0, 50)])
    sigma = sde.sigma(t)
    torch.testing.assert_close(sde.t_of_sigma(sigma), t, rtol=1e-9, atol=0)


def test_s_of_sigma_and_std(sde):
    t = torch.cat([torch.tensor([sde.t_min], dtype=F64), _times(sde, 0.01, 1.0, 50)])
    sigma, s = sde.sigma(t), sde.s(t)
    torch.testing.assert_close(sde.s_of_sigma(sigma), s, rtol=1e-10, atol=0)
    torch.testing.assert_close(sde.std(t), s * sigma, rtol=1e-12, atol=0)
    # σ = 0 is the data itself: s = 1, and the kernel from σ = 0 is the marginal.
    torch.testing.assert_close(sde.s_of_sigma(torch.zeros(1, dtype=F64)), torch.ones(1, dtype=F64))


def test_scale_and_noise_at_time_zero(sde):
    """s(0) = 1 for every SDE; σ(0) = 0 except VE, whose σ(0) = σ_min (Song et al. 2021, appendix C)."""
    zero = torch.zeros(1, dtype=F64)
    torch.testing.assert_close(sde.s(zero), torch.ones(1, dtype=F64))
    expected = sde.sigma_min if sde.name == "ve" else 0.0
    torch.testing.assert_close(sde.sigma(zero), torch.full((1,), expected, dtype=F64))


def test_f_and_g_are_consistent_with_the_marginals(sde):
    """f = d log s/dt and g² = s²·dσ²/dt (Karras et al. 2022, eq. 4: f = ṡ/s, g = s√(2σ̇σ))."""
    t = _times(sde, 0.05, 0.95, 19)
    h = 1e-5 * sde.T
    dlogs = (torch.log(sde.s(t + h)) - torch.log(sde.s(t - h))) / (2 * h)
    dsig2 = (sde.sigma(t + h) ** 2 - sde.sigma(t - h) ** 2) / (2 * h)
    torch.testing.assert_close(sde.f(t), dlogs, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(sde.g(t) ** 2, dsig2 * sde.s(t) ** 2, rtol=1e-6, atol=1e-9)


def test_transition_composes_with_marginal(sde):
    """x_t = a·x_{t'} + √var·z with x_{t'} ~ q(·|x0) has the marginal q(x_t|x0) (t' < t)."""
    t = _times(sde, 0.1, 1.0, 10)
    t_next = t * torch.linspace(0.05, 0.9, 10, dtype=F64)
    a, var = sde.transition(t, t_next)
    torch.testing.assert_close(a * sde.s(t_next), sde.s(t), rtol=1e-10, atol=0)
    torch.testing.assert_close(a**2 * sde.std(t_next) ** 2 + var, sde.std(t) ** 2, rtol=1e-10, atol=1e-14)
    assert bool((var > 0).all())
    # From σ = 0 (the data) the kernel is the marginal itself.
    a0, var0 = sde.transition_sigma(sde.sigma(t), torch.zeros_like(t))
    torch.testing.assert_close(a0, sde.s(t), rtol=1e-10, atol=0)
    torch.testing.assert_close(var0, sde.std(t) ** 2, rtol=1e-10, atol=0)


# ---- DDPM as the VP discretization -----------------------------------------------------------------

def test_ddpm_schedule_is_ho_et_al():
    betas, alphas_cumprod = sd.VPSDE().ddpm_schedule(1000)
    assert betas.dtype == F64 and betas.shape == (1000,)
    torch.testing.assert_close(betas, torch.linspace(1e-4, 0.02, 1000, dtype=F64))
    torch.testing.assert_close(alphas_cumprod, torch.cumprod(1 - betas, dim=0))


def test_ddpm_alpha_bar_approaches_s_squared_at_rate_one_over_n():
    """ᾱ_N vs s(1)²: Σβ_i = B(1) exactly, so log ᾱ_N − log s(1)² = Σ[log(1−β_i) + β_i] ≈ −½Σβ_i²
    ≈ −c/N with c = ½∫₀¹β² = ½(β_min² + β_min·Δβ + Δβ²/3)."""
    sde = sd.VPSDE()
    db = sde.beta_max - sde.beta_min
    c = 0.5 * (sde.beta_min**2 + sde.beta_min * db + db**2 / 3)
    log_s1_sq = math.log(float(sde.s(torch.tensor(1.0, dtype=F64))) ** 2)
    gaps = {}
    for n in (500, 1000, 2000):
        _, alphas_cumprod = sde.ddpm_schedule(n)
        gaps[n] = math.log(float(alphas_cumprod[-1])) - log_s1_sq
        assert -1.1 * c / n <= gaps[n] <= -0.9 * c / n, (n, gaps[n], c / n)
    # At N = 1000 the measured gap is ≈ −0.067 in log ᾱ (ᾱ_N is ≈ 6.5% below s(1)²).
    assert abs(gaps[1000]) < 0.07
    assert gaps[1000] / gaps[2000] == pytest.approx(2.0, rel=0.02)
    assert gaps[500] / gaps[1000] == pytest.approx(2.0, rel=0.02)


def test_cosine_ddpm_schedule_is_nichol_dhariwal():
    """Nichol & Dhariwal 2021, eq. 17: ᾱ_i = f(i/n)/f(0) (i = 1 … n), β_i = 1 − ᾱ_i/ᾱ_{i−1} clipped at 0.999,
    so Π(1 − β) telescopes back to ᾱ_i = s(i/n)² wherever no β was clipped."""
    sde, n = sd.CosineVPSDE(), 1000
    betas, alphas_cumprod = sde.ddpm_schedule(n)
    assert betas.dtype == F64 and betas.shape == (n,)
    torch.testing.assert_close(alphas_cumprod, torch.cumprod(1 - betas, dim=0))
    assert float(betas.max()) == pytest.approx(0.999) and bool((betas > 0).all())
    i = torch.arange(1, n + 1, dtype=F64)
    unclipped = betas < 0.999
    assert int(unclipped.sum()) >= n - 2  # only the last step or so hits the clip
    last = int(unclipped.nonzero().max())
    torch.testing.assert_close(alphas_cumprod[: last + 1], sde.s(i[: last + 1] / n) ** 2, rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", sorted(VP_LIKE))
def test_t_of_alpha_bar_inverts_s_squared(name):
    sde = sd.get_sde(name)
    t = torch.cat([torch.tensor([sde.t_min], dtype=F64), _times(sde, 0.01, 1.0, 40)])
    torch.testing.assert_close(sde.t_of_alpha_bar(sde.s(t) ** 2), t, rtol=1e-9, atol=0)


# ---- priors ------------------------------------------------------------------------------------------

EXPECTED_PRIOR_STD = {"vp": 1.0, "subvp": 1.0, "cosine": 1.0, "ve": 50.0, "edm": 80.0, "flow": 1.0}


def test_prior_std(sde):
    assert sde.prior_std() == pytest.approx(EXPECTED_PRIOR_STD[sde.name], rel=1e-12)
    if sde.name == "ve":
        assert sde.prior_std() == pytest.approx(sde.sigma_max, rel=1e-12)
        assert sd.VESDE(sigma_max=7.0).prior_std() == pytest.approx(7.0, rel=1e-12)


def test_prior_log_prob_is_isotropic_normal(sde):
    x = torch.randn(5, 3, 2, dtype=F64) * sde.prior_std()
    expected = torch.distributions.Normal(0.0, torch.tensor(sde.prior_std(), dtype=F64)).log_prob(x).sum(dim=(1, 2))
    torch.testing.assert_close(sde.prior_log_prob(x), expected, rtol=1e-12, atol=1e-10)


def test_prior_sample(sde):
    noise = torch.randn(4, 3, dtype=F64)
    torch.testing.assert_close(sde.prior_sample((4, 3), noise=noise, dtype=F64), noise * sde.prior_std())
    a = sde.prior_sample((4, 3), generator=torch.Generator().manual_seed(3))
    b = sde.prior_sample((4, 3), generator=torch.Generator().manual_seed(3))
    assert a.shape == (4, 3) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    big = sde.prior_sample((100_000,), generator=torch.Generator().manual_seed(0), dtype=F64)
    # sample std of 1e5 normals: relative SE ≈ 1/√(2n) ≈ 0.22%
    assert big.std().item() == pytest.approx(sde.prior_std(), rel=0.012)


# ---- bad input ---------------------------------------------------------------------------------------

def test_get_sde_unknown_name():
    with pytest.raises(KeyError) as err:
        sd.get_sde("nope")
    for name in sd.SDES:
        assert name in str(err.value)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="sigma_min"):
        sd.VESDE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="beta"):
        sd.VPSDE(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match="beta"):
        sd.SubVPSDE(beta_min=5.0, beta_max=1.0)


def test_perturb_rejects_times_outside_0_T(sde):
    x0 = torch.zeros(2, 3, dtype=F64)
    for bad in (0.0, sde.T * 1.01 + 0.01, -0.5):
        with pytest.raises(ValueError, match=r"\bt\b"):
            sde.perturb(x0, bad)
    with pytest.raises(ValueError, match=r"\bt\b"):
        sde.perturb(x0, torch.tensor([0.5 * sde.T, 0.0], dtype=F64))
    sde.perturb(x0, sde.T)  # T itself is allowed


# ---- reverse dynamics -------------------------------------------------------------------------------

def _any_score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.sin(x) * (1 + t[:, None, None])


def test_reverse_sde_and_pf_ode_drifts(sde):
    x = torch.randn(6, 2, 3, dtype=F64)
    t = _times(sde, 0.1, 0.9, 6)
    f, g = sde.f(t)[:, None, None], sde.g(t)[:, None, None]
    score = _any_score(x, t)
    rev, ode = sd.ReverseSDE(sde, _any_score), sd.ProbabilityFlowODE(sde, _any_score)
    torch.testing.assert_close(rev.drift(x, t), f * x - g**2 * score)
    torch.testing.assert_close(ode.drift(x, t), f * x - 0.5 * g**2 * score)
    torch.testing.assert_close(rev.diffusion(x, t).expand_as(x), g.expand_as(x))
    torch.testing.assert_close(sde.drift(x, t), f * x)
