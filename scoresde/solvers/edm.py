"""EDM's deterministic and stochastic samplers (Karras et al. 2022, Alg. 1 and 2) in the σ-parametrization
of any SDE: the state is ``x̂ = x/s`` and the ODE is ``dx̂/dσ = (x̂ − D(x̂; σ))/σ``."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from scoresde.solvers.base import Solver, StepContext, register


class EDMSampler(Solver):
    """Karras et al. 2022, Algorithm 2 (``edm_sampler``), for any SDE.

    With churn ``S_churn > 0`` each step first raises σ_i to σ̂ = σ_i(1 + γ),
    ``γ = min(S_churn/N, √2 − 1)`` when ``S_tmin ≤ σ_i ≤ S_tmax``, adding noise of std
    ``√(σ̂² − σ_i²)·S_noise``; with ``S_churn = 0`` the sampler is exactly deterministic. The
    second-order correction is skipped on a step into σ = 0 (Alg. 2, line 9), so N steps ending at
    the data cost 2N − 1 evaluations. ``second_order=False`` gives the Euler sampler.
    """

    uses = "denoiser"
    reaches_data = True
    second_order = True

    def __init__(self, S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = math.inf, S_noise: float = 1.0):
        for key, value in (("S_churn", S_churn), ("S_tmin", S_tmin), ("S_noise", S_noise)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{self.name}: {key} must be finite and >= 0, got {value}")
        if not S_tmax >= S_tmin:
            raise ValueError(f"{self.name}: need S_tmax >= S_tmin, got S_tmin={S_tmin}, S_tmax={S_tmax}")
        self.S_churn, self.S_tmin = float(S_churn), float(S_tmin)
        self.S_tmax, self.S_noise = float(S_tmax), float(S_noise)
        self.stochastic = self.S_churn > 0
        self.order = (2.0 if self.second_order else 1.0) if not self.stochastic else 0.5
        self.nfe_per_step = 2 if self.second_order else 1

    def options(self) -> dict[str, float]:
        return {"S_churn": self.S_churn, "S_tmin": self.S_tmin, "S_tmax": self.S_tmax, "S_noise": self.S_noise}

    @staticmethod
    def _slope_off_grid(ctx: StepContext, x_hat: Tensor, sigma: float) -> Tensor:
        """dx̂/dσ = (x̂ − D(x̂; σ))/σ = ε̂ at a churned σ̂ that is not a grid point."""
        sde = ctx.model.sde
        sig = torch.tensor(sigma, dtype=torch.float64)
        s, t = float(sde.s_of_sigma(sig)), float(sde.t_of_sigma(sig))
        t_batch = torch.full((x_hat.shape[0],), t, device=x_hat.device, dtype=x_hat.dtype)
        return ctx.model.predict(x_hat * s, t_batch, "eps", s, sigma)

    def step(self, x: Tensor, ctx: StepContext) -> Tensor:
        # The slope d = (x̂ − D(x̂; σ))/σ of Alg. 2 is the model's ε̂ at (x̂, σ): asking for ε directly
        # saves the round trip through D for score- and ε-models.
        i, grid = ctx.i, ctx.grid
        sigma, sigma_next = grid.sigma_list[i], grid.sigma_list[i + 1]
        s, s_next = grid.s_list[i], grid.s_list[i + 1]
        x_hat = x / s if s != 1.0 else x
        gamma = min(self.S_churn / grid.steps, math.sqrt(2) - 1) if self.S_tmin <= sigma <= self.S_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if self.stochastic:  # like edm_sampler, draw at every step (γ may be 0) so the noise streams agree
            x_hat = x_hat + math.sqrt(sigma_hat**2 - sigma**2) * self.S_noise * ctx.noise(x_hat)
        d = self._slope_off_grid(ctx, x_hat, sigma_hat) if gamma > 0 else ctx.predict(x, "eps")
        x_next = x_hat + (sigma_next - sigma_hat) * d
        if self.second_order and sigma_next > 0:
            d_prime = ctx.predict(x_next * s_next if s_next != 1.0 else x_next, "eps", i + 1)
            x_next = x_hat + (0.5 * (sigma_next - sigma_hat)) * (d + d_prime)
        return x_next * s_next if s_next != 1.0 else x_next


@register
class Heun(EDMSampler):
    __doc__ = EDMSampler.__doc__
    name = "heun"


@register
class Euler(EDMSampler):
    """Euler in σ (Karras et al. 2022, Alg. 2 without the correction; k-diffusion's ``sample_euler``),
    with the same optional churn."""

    name = "euler"
    second_order = False
