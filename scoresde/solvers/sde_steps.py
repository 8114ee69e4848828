"""Single-step samplers of the reverse SDE and of the DDPM chain (Song et al. 2021; Ho et al. 2020).

All three are written through the SDE's exact forward kernel between grid points,
``x_t = a·x_{t'} + √var·z`` (:meth:`SDE.transition`), or its drift and diffusion, so none of
them knows which SDE it runs on. Each step draws the step's Brownian increment from the noise source.

Strong orders: the reverse SDE's noise is additive (g depends on t only), where Euler–Maruyama has strong
order 1.0 (Kloeden & Platen 1992, §10.2; torchsde's ``Euler``); with multiplicative noise it is 0.5. The
kernel-based steps are written for the linear SDEs of scoresde, whose noise is always additive. The last step
of each adds no noise (Ho et al.'s z = 0 at t = 1; score_sde's noise removal), which is a denoising step, not
a step of the SDE, so tests/test_strong_order.py measures the strong order at an interior grid time.
"""
from __future__ import annotations

import math

from torch import Tensor

from scoresde.solvers.base import Solver, StepContext, register

VARIANCES = ("beta", "posterior")


def add_noise(x_mean: Tensor, std: float, ctx: StepContext) -> Tensor:
    """``x_mean + std·z``; the last step adds none (Ho et al.'s z = 0 at t = 1; score_sde's noise removal)."""
    if ctx.last or std == 0:
        return x_mean
    return x_mean + std * ctx.increment(x_mean)


@register
class EulerMaruyama(Solver):
    """Euler–Maruyama on the reverse SDE (Song et al. 2021, eq. 6 and appendix F):
    ``x ← x − [f x − g² ∇log p_t] Δt + g √Δt z`` with Δt = t_i − t_{i+1} > 0."""

    name = "euler_maruyama"
    stochastic = True
    strong_orders = {"additive": 1.0, "diagonal": 0.5, "scalar": 0.5, "general": 0.5}

    def step(self, x: Tensor, ctx: StepContext) -> Tensor:
        t = ctx.grid.t[ctx.i : ctx.i + 1]  # float64 on the host: f(t), g(t) as Python floats
        dt = ctx.grid.t_list[ctx.i] - ctx.grid.t_list[ctx.i + 1]
        f, g = float(ctx.model.sde.f(t)), float(ctx.model.sde.g(t))
        x_mean = x - (f * x - g**2 * ctx.predict(x, "score")) * dt
        return add_noise(x_mean, g * math.sqrt(dt), ctx)


@register
class ReverseDiffusion(Solver):
    """Reverse-diffusion predictor (Song et al. 2021, eq. 46): with the forward kernel
    ``x_i = a·x_{i+1} + √var·z``, the reverse step is ``x ← (2 − a)x + var·∇log p + √var·z``."""

    name = "reverse_diffusion"
    stochastic = True
    strong_orders = {"additive": 1.0}

    def step(self, x: Tensor, ctx: StepContext) -> Tensor:
        a, var = ctx.grid.kernel(ctx.i)
        x_mean = (2 - a) * x + var * ctx.predict(x, "score")
        return add_noise(x_mean, math.sqrt(var), ctx)


@register
class Ancestral(Solver):
    """Ancestral sampling of the DDPM chain (Ho et al. 2020, Alg. 2; Song et al. 2021, eq. 47):
    ``x ← (x + β_i ∇log p)/√α_i + σ_i z`` with ``α_i = a²``, ``β_i = var`` from the forward kernel.

    ``variance="beta"`` takes Ho's σ_i² = β_i (score_sde's VP predictor); ``"posterior"`` takes
    β̃_i = β_i·std_{i+1}²/std_i² (score_sde's VE predictor; Ho's other choice). On the ``ddpm`` grid
    this is exactly Ho et al.'s chain with β_i = linspace(β_min/N, β_max/N, N).
    """

    name = "ancestral"
    stochastic = True
    strong_orders = {"additive": 1.0}
    reaches_data = True  # the step to σ = 0 is Ho's last step: (x + std²∇log p)/s, no noise

    def __init__(self, variance: str = "beta"):
        if variance not in VARIANCES:
            raise ValueError(f"ancestral: unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
        self.variance = variance

    def options(self) -> dict[str, str]:
        return {"variance": self.variance}

    def step(self, x: Tensor, ctx: StepContext) -> Tensor:
        sigma, sigma_next = ctx.grid.sigma_list[ctx.i], ctx.grid.sigma_list[ctx.i + 1]
        a, var = ctx.grid.kernel(ctx.i)
        x_mean = (x + var * ctx.predict(x, "score")) * (1 / a)
        if self.variance == "posterior":
            var = var * (sigma_next / sigma) ** 2 / a**2
        return add_noise(x_mean, math.sqrt(var), ctx)

