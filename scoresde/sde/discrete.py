"""A discrete-time diffusion model's ᾱ table (a diffusers scheduler's) written as one more VP-type SDE.

A discrete model is trained on ``x_k = √ᾱ_k·x₀ + √(1 − ᾱ_k)·ε`` for integer timesteps k = 0 … N−1 (Ho et al.
2020, eq. 4). In DESIGN.md's notation that is ``s_k = √ᾱ_k`` and ``σ_k = √((1 − ᾱ_k)/ᾱ_k)`` (Karras et al. 2022,
Table 1, "VP" column, discrete case). The continuous SDE time is ``t = k + 1``, so ``t = T = N`` is the last
table entry and ``t = t_min = 1`` the first; between entries ``log σ`` is linear in t, which is exactly how
diffusers' Karras/Euler schedulers give a fractional timestep to a σ that is not in the table
(``EulerDiscreteScheduler._sigma_to_t``: interpolation in ``log σ`` between the neighbouring entries, clamped to
[0, N−1]). Below the first entry, ``σ(t)² = t·σ₀²`` reaches the data at t = 0 (ᾱ = 1), and the network's
timestep stays clamped at 0 as in ``_sigma_to_t``.

The network's timestep is :meth:`DiscreteVPSDE.timestep`: ``max(t − 1, 0)``. An integer timestep k is the exact
float ``t = k + 1`` in float32 as well, so the network sees exactly the integer timesteps diffusers' DDPM/DDIM
schedulers give it.

Being VP (``s = 1/√(1 + σ²)``), the drift and diffusion follow from σ(t):
``f = d log s/dt = −σσ'/(1 + σ²)`` and ``g² = s²·dσ²/dt = −2f`` (Song et al. 2021, eq. 11 with β(t) = −2f);
they are piecewise smooth, with a jump at each table entry.
"""
from __future__ import annotations

import torch
from torch import Tensor

from scoresde.errors import UserError
from scoresde.sde.base import SDE

SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace")


def log_sigma_of_alpha_bar(alpha_bar: Tensor) -> Tensor:
    """``log σ = ½·log((1 − ᾱ)/ᾱ)``, float64. The table and :meth:`DiscreteVPSDE.t_of_alpha_bar` both use this one
    formula, so a table entry maps back to its integer time bit for bit."""
    alpha_bar = alpha_bar.to(torch.float64)
    return 0.5 * (torch.log1p(-alpha_bar) - torch.log(alpha_bar))


class DiscreteVPSDE(SDE):
    """The VP SDE whose ``s`` and ``σ`` pass through a discrete ᾱ table (see the module docstring).

    Args:
        alphas_cumprod: ᾱ_0 … ᾱ_{N−1}, strictly decreasing in (0, 1) (a scheduler's ``alphas_cumprod``; diffusers
            computes it in float32, and it is used here as those exact values, in float64).
        timestep_spacing: how the scheduler picks n of the N timesteps (``leading``, ``trailing``, ``linspace``;
            diffusers' ``set_timesteps``); it defines :meth:`ddpm_schedule`, the chain of the ``ddpm`` grid.
        steps_offset: diffusers' ``steps_offset`` (added to ``leading`` timesteps).
    """

    name = "discrete"

    def __init__(self, alphas_cumprod: Tensor, timestep_spacing: str = "leading", steps_offset: int = 0):
        ab = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64).flatten()
        if ab.numel() < 2 or not bool(((ab > 0) & (ab < 1)).all()) or not bool((ab[1:] < ab[:-1]).all()):
            raise UserError("alphas_cumprod must hold at least 2 values in (0, 1), strictly decreasing "
                            f"(got {ab.numel()} values from {ab[:1].tolist()} to {ab[-1:].tolist()})")
        if timestep_spacing not in SPACINGS:
            raise UserError(f"timestep_spacing={timestep_spacing!r} is not one of {', '.join(SPACINGS)}")
        self.alphas_cumprod = ab
        self.log_sigmas = log_sigma_of_alpha_bar(ab)
        self.num_train_timesteps = ab.numel()
        self.T, self.t_min = float(ab.numel()), 1.0
        self.timestep_spacing, self.steps_offset = timestep_spacing, int(steps_offset)
        self._sigma0_sq = float(torch.exp(2 * self.log_sigmas[0]))
        self._tables: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    # ---- the table on the caller's device ----------------------------------------------------------
    def _table(self, like: Tensor) -> Tensor:
        key = (like.device, torch.float64 if like.dtype == torch.float64 else torch.float32)
        if key not in self._tables:
            self._tables[key] = self.log_sigmas.to(device=like.device, dtype=key[1])
        return self._tables[key]

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For t ≥ 1: the entry k below t, the weight w = t − 1 − k ∈ [0, 1] and the table (in t's dtype)."""
        ls = self._table(t)
        tau = (t - 1).clamp(0, self.num_train_timesteps - 1)
        k = tau.floor().clamp(max=self.num_train_timesteps - 2)
        return k.long(), tau - k, ls

    def _log_sigma_and_slope(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """log σ(t) and d log σ/dt on the table's part of the time axis (t ≥ 1)."""
        k, w, ls = self._segment(t)
        lo, hi = ls[k], ls[k + 1]
        return lo + w * (hi - lo), hi - lo

    # ---- the SDE -------------------------------------------------------------------------------------
    def sigma(self, t: Tensor) -> Tensor:
        log_sigma, _ = self._log_sigma_and_slope(t)
        below = torch.sqrt(t.clamp(min=0) * self._sigma0_sq)
        return torch.where(t >= 1, torch.exp(log_sigma), below)

    def s(self, t: Tensor) -> Tensor:
        return self.s_of_sigma(self.sigma(t))

    def s_of_sigma(self, sigma: Tensor) -> Tensor:
        return torch.rsqrt(1 + sigma**2)

    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        """The inverse of σ(t): diffusers' ``_sigma_to_t`` plus one above σ₀ (σ past the last entry gives T),
        ``σ²/σ₀²`` below it."""
        ls = self._table(sigma)
        log_sigma = torch.log(sigma.clamp(min=torch.finfo(sigma.dtype).tiny))
        k = (torch.searchsorted(ls, log_sigma.contiguous(), right=True) - 1).clamp(0, self.num_train_timesteps - 2)
        lo, hi = ls[k], ls[k + 1]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        return torch.where(sigma >= ls[0].exp(), 1 + k + w, sigma**2 / self._sigma0_sq)

    def f(self, t: Tensor) -> Tensor:
        """``f = −σσ'/(1 + σ²)``: with ``σσ' = σ²·(log σ)'`` on the table and ``½σ₀²`` below it."""
        sigma = self.sigma(t)
        _, slope = self._log_sigma_and_slope(t)
        sigma_dsigma = torch.where(t >= 1, sigma**2 * slope, torch.full_like(t, 0.5 * self._sigma0_sq))
        return -sigma_dsigma / (1 + sigma**2)

    def g(self, t: Tensor) -> Tensor:
        return torch.sqrt(-2 * self.f(t))

    def prior_std(self) -> float:
        """Sampling starts from N(0, I), as diffusers' DDPM/DDIM pipelines do (``init_noise_sigma = 1``)."""
        return 1.0

    # ---- the network's time and the scheduler's chain ------------------------------------------------
    def timestep(self, t: Tensor) -> Tensor:
        """The network's (fractional) timestep at SDE time t: ``max(t − 1, 0)``."""
        return (t - 1).clamp(min=0)

    def timestep_of_sigma(self, sigma: Tensor) -> Tensor:
        """diffusers' ``_sigma_to_t(σ)``: the timestep the scheduler gives the network at noise σ."""
        return self.timestep(self.t_of_sigma(sigma))

    def chain_timesteps(self, n: int) -> Tensor:
        """The n timesteps (ascending, int64) diffusers' ``DDPMScheduler.set_timesteps(n)`` picks with this
        ``timestep_spacing`` (``leading``: ``k·(N//n) + steps_offset``; ``trailing``: ``round(N − k·N/n) − 1``;
        ``linspace``: ``round(linspace(0, N−1, n))``)."""
        N = self.num_train_timesteps
        if not isinstance(n, int) or not 1 <= n <= N:
            raise ValueError(f"the chain of a {N}-step table takes 1 to {N} steps, got {n!r}")
        if self.timestep_spacing == "leading":
            idx = torch.arange(n, dtype=torch.float64) * (N // n) + self.steps_offset
        elif self.timestep_spacing == "trailing":
            idx = torch.round(N - torch.arange(n, dtype=torch.float64) * (N / n)).flip(0) - 1
        else:
            idx = torch.round(torch.linspace(0, N - 1, n, dtype=torch.float64))
        idx = idx.long()
        if int(idx.max()) >= N or int(idx.min()) < 0:
            raise ValueError(f"timesteps {idx.tolist()} fall outside the table of {N} entries")
        return idx

    def ddpm_schedule(self, n: int) -> tuple[Tensor, Tensor]:
        """The scheduler's own chain of n steps (Ho et al. 2020, Alg. 2 on the strided table): ``ᾱ`` at
        :meth:`chain_timesteps` and ``β_k = 1 − ᾱ_k/ᾱ_{k−1}`` (ᾱ before the first is 1), as diffusers'
        ``DDPMScheduler.step`` computes ``current_beta_t``. For ``leading`` spacing this is DDPMScheduler's chain
        exactly (its ``previous_timestep`` is ``t − N//n``); float64."""
        ab = self.alphas_cumprod[self.chain_timesteps(n)]
        previous = torch.cat([ab.new_ones(1), ab[:-1]])
        return 1 - ab / previous, ab

    def t_of_alpha_bar(self, alpha_bar: Tensor) -> Tensor:
        """The time whose ᾱ(t) = s(t)² equals ``alpha_bar``; a table entry k gives exactly ``k + 1``."""
        ls = self._table(alpha_bar.to(torch.float64))
        log_sigma = log_sigma_of_alpha_bar(alpha_bar)
        k = (torch.searchsorted(ls, log_sigma.contiguous(), right=True) - 1).clamp(0, self.num_train_timesteps - 2)
        w = ((log_sigma - ls[k]) / (ls[k + 1] - ls[k])).clamp(0, 1)
        return torch.where(log_sigma >= ls[0], 1 + k + w, torch.exp(2 * log_sigma) / self._sigma0_sq)

    def extra_repr(self) -> str:
        return (f"N={self.num_train_timesteps}, sigma_min={self.log_sigmas[0].exp().item():.4g}, "
                f"sigma_max={self.log_sigmas[-1].exp().item():.4g}, timestep_spacing={self.timestep_spacing!r}")


__all__ = ["DiscreteVPSDE", "log_sigma_of_alpha_bar", "SPACINGS"]
