"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), data prediction, multistep."""
from __future__ import annotations

import math

from torch import Tensor

from scoresde.solvers.base import Solver, StepContext, register


@register
class DPMSolverPP2M(Solver):
    """DPM-Solver++(2M): second-order multistep exponential integrator on the data prediction.

    In λ = −log σ, with h_i = λ_{i+1} − λ_i, r_i = h_{i−1}/h_i and the state x̂ = x/s
    (eq. for x̃_{t_i} in Alg. 2; in x̂ the factor α_{t_i} disappears):

    ``x̂_{i+1} = (σ_{i+1}/σ_i)·x̂_i − (e^{−h_i} − 1)·D_i``, with
    ``D_i = (1 + 1/(2r_i))·x̂₀(i) − 1/(2r_i)·x̂₀(i−1)`` after the first step (first order on the
    first step). A step into σ = 0 returns the denoised x̂₀, as k-diffusion's ``sample_dpmpp_2m``.
    Works for VP and VE alike since the state is in σ."""

    name = "dpmpp_2m"
    uses = "denoiser"
    order = 2.0
    reaches_data = True

    def step(self, x: Tensor, ctx: StepContext) -> Tensor:
        _, sigma, sigma_next = ctx.times(x)
        denoised = ctx.predict(x, "x0")
        if sigma_next == 0:
            return denoised
        s, s_next = ctx.grid.s_list[ctx.i], ctx.grid.s_list[ctx.i + 1]
        h = math.log(sigma / sigma_next)
        previous = ctx.state.get("previous")
        if previous is None:
            d = denoised
        else:
            old_denoised, h_last = previous
            r = h_last / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        ctx.state["previous"] = (denoised, h)
        x_hat = (sigma_next / sigma) * (x / s) - math.expm1(-h) * d
        return s_next * x_hat
