"""DDIM (Song, Meng & Ermon 2021, eq. 12) written for any SDE in the shared σ-space term."""
from __future__ import annotations

import math

from torch import Tensor

from scoresde.solvers.base import StepContext, register
from scoresde.solvers.sigma_term import SigmaSolver


@register
class DDIM(SigmaSolver):
    """``x_{i+1} = s_{i+1}·x̂₀ + √(std_{i+1}² − c²)·ε̂ + c·z`` with ``c = η·√β̃_i`` (DDIM eq. 12 and 16),
    where β̃_i is the posterior variance of the SDE's forward kernel. Divided by s_{i+1}, in x̂ = x/s:

    ``x̂_{i+1} = x̂_i + (√(σ_{i+1}² − σ_up²) − σ_i)·ε̂ + σ_up·z``,  ``σ_up = η·σ_{i+1}·√(σ_i² − σ_{i+1}²)/σ_i``

    (k-diffusion's ``get_ancestral_step``). η = 0 is the deterministic DDIM (Euler in σ, a first-order
    solver of the probability-flow ODE); η = 1 is ancestral sampling with β̃. No noise on the last step."""

    name = "ddim"
    order = 1.0
    strong_orders = {"additive": 1.0}

    def __init__(self, eta: float = 0.0):
        if not (0.0 <= eta <= 1.0) or math.isnan(eta):
            raise ValueError(f"ddim: eta must lie in [0, 1], got {eta}")
        self.eta = float(eta)
        self.stochastic = self.eta > 0

    def options(self) -> dict[str, float]:
        return {"eta": self.eta}

    def step_hat(self, x_hat: Tensor, ctx: StepContext) -> Tensor:
        term, i = ctx.term, ctx.i
        sigma, sigma_next = term.sigma(i), term.sigma(i + 1)
        sigma_up = self.eta * sigma_next * math.sqrt(sigma**2 - sigma_next**2) / sigma
        x_next = x_hat + (math.sqrt(max(sigma_next**2 - sigma_up**2, 0.0)) - sigma) * term.eps(x_hat, i)
        if sigma_up > 0 and not ctx.last:
            x_next = x_next + sigma_up * ctx.increment(x_hat)
        return x_next
