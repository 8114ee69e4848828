"""DDIM (Song, Meng & Ermon 2021, eq. 12) written for any SDE through x₀ and ε predictions."""
from __future__ import annotations

import math

from torch import Tensor

from scoresde.solvers.base import Solver, StepContext, register


@register
class DDIM(Solver):
    """``x_{i+1} = s_{i+1}·x̂₀ + √(std_{i+1}² − c²)·ε̂ + c·z`` with ``c = η·√β̃_i`` (DDIM eq. 12 and 16),
    where β̃_i is the posterior variance of the SDE's forward kernel. η = 0 is the deterministic DDIM
    (a first-order solver of the probability-flow ODE); η = 1 is ancestral sampling with β̃."""

    name = "ddim"
    uses = "denoiser"
    order = 1.0
    reaches_data = True

    def __init__(self, eta: float = 0.0):
        if not (0.0 <= eta <= 1.0) or math.isnan(eta):
            raise ValueError(f"ddim: eta must lie in [0, 1], got {eta}")
        self.eta = float(eta)
        self.stochastic = self.eta > 0
        self.order = 1.0 if self.eta == 0 else 0.5

    def options(self) -> dict[str, float]:
        return {"eta": self.eta}

    def step(self, x: Tensor, ctx: StepContext) -> Tensor:
        _, sigma, sigma_next = ctx.times(x)
        s, s_next = ctx.grid.s_list[ctx.i], ctx.grid.s_list[ctx.i + 1]
        a, var = ctx.grid.kernel(ctx.i)
        c = self.eta * math.sqrt(var * (sigma_next / sigma) ** 2) / a
        # x̂₀ = (x − std·ε̂)/s, so s'x̂₀ + √(std'² − c²)ε̂ = (s'/s)·x + (√(std'² − c²) − s'σ)·ε̂
        eps = ctx.predict(x, "eps")
        x_next = (s_next / s) * x + (math.sqrt(max((s_next * sigma_next) ** 2 - c**2, 0.0)) - s_next * sigma) * eps
        if c > 0 and not ctx.last:
            x_next = x_next + c * ctx.noise(x)
        return x_next
