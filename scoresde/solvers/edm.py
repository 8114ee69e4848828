"""EDM's deterministic and stochastic samplers (Karras et al. 2022, Alg. 1 and 2) in the σ-parametrization
of any SDE: the state is ``x̂ = x/s`` and the ODE is ``dx̂/dσ = (x̂ − D(x̂; σ))/σ`` (the shared σ-space term)."""
from __future__ import annotations

import math

from torch import Tensor

from scoresde.solvers.base import StepContext, register
from scoresde.solvers.sigma_term import SigmaSolver


class EDMSampler(SigmaSolver):
    """Karras et al. 2022, Algorithm 2 (``edm_sampler``), for any SDE.

    With churn ``S_churn > 0`` each step first raises σ_i to σ̂ = σ_i(1 + γ),
    ``γ = min(S_churn/N, √2 − 1)`` when ``S_tmin ≤ σ_i ≤ S_tmax``, adding noise of std
    ``√(σ̂² − σ_i²)·S_noise`` (the step's Brownian increment, standardized); with ``S_churn = 0`` the sampler
    is exactly deterministic. The second-order correction is skipped on a step into σ = 0 (Alg. 2, line 9),
    so N steps ending at the data cost 2N − 1 evaluations. ``second_order=False`` gives the Euler sampler.

    With churn the sampler is a discretization of Karras et al.'s eq. 6 (the PF-ODE plus a Langevin term
    whose noise depends on σ only: additive); its strong order there is measured in tests/test_strong_order.py.
    """

    second_order = True
    churn_strong_order = 1.0

    def __init__(self, S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = math.inf, S_noise: float = 1.0):
        for key, value in (("S_churn", S_churn), ("S_tmin", S_tmin), ("S_noise", S_noise)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{self.name}: {key} must be finite and >= 0, got {value}")
        if not S_tmax >= S_tmin:
            raise ValueError(f"{self.name}: need S_tmax >= S_tmin, got S_tmin={S_tmin}, S_tmax={S_tmax}")
        self.S_churn, self.S_tmin = float(S_churn), float(S_tmin)
        self.S_tmax, self.S_noise = float(S_tmax), float(S_noise)
        self.stochastic = self.S_churn > 0
        self.order = 2.0 if self.second_order else 1.0
        self.strong_orders = {"additive": self.churn_strong_order}
        self.nfe_per_step = 2 if self.second_order else 1

    def options(self) -> dict[str, float]:
        return {"S_churn": self.S_churn, "S_tmin": self.S_tmin, "S_tmax": self.S_tmax, "S_noise": self.S_noise}

    def step_hat(self, x_hat: Tensor, ctx: StepContext) -> Tensor:
        # The slope d = (x̂ − D(x̂; σ))/σ of Alg. 2 is the term's ε̂ at (x̂, σ).
        term, i = ctx.term, ctx.i
        sigma, sigma_next = term.sigma(i), term.sigma(i + 1)
        gamma = min(self.S_churn / ctx.grid.steps, math.sqrt(2) - 1) if self.S_tmin <= sigma <= self.S_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if self.stochastic:  # like edm_sampler, draw at every step (γ may be 0) so the noise streams agree
            x_hat = x_hat + math.sqrt(sigma_hat**2 - sigma**2) * self.S_noise * ctx.increment(x_hat)
        d = term.eps_off_grid(x_hat, sigma_hat) if gamma > 0 else term.eps(x_hat, i)
        x_next = x_hat + (sigma_next - sigma_hat) * d
        if self.second_order and sigma_next > 0:
            x_next = x_hat + (0.5 * (sigma_next - sigma_hat)) * (d + term.eps(x_next, i + 1))
        return x_next


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
