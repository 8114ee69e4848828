"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), data prediction, multistep."""
from __future__ import annotations

import math

from torch import Tensor

from scoresde.solvers.base import StepContext, register
from scoresde.solvers.sigma_term import SigmaSolver


@register
class DPMSolverPP2M(SigmaSolver):
    """DPM-Solver++(2M): second-order multistep exponential integrator on the data prediction.

    In λ = −log σ, with h_i = λ_{i+1} − λ_i, r_i = h_{i−1}/h_i and the state x̂ = x/s
    (eq. for x̃_{t_i} in Alg. 2; in x̂ the factor α_{t_i} disappears):

    ``x̂_{i+1} = (σ_{i+1}/σ_i)·x̂_i − (e^{−h_i} − 1)·D_i``, with
    ``D_i = (1 + 1/(2r_i))·x̂₀(i) − 1/(2r_i)·x̂₀(i−1)`` after the first step (first order on the
    first step). A step into σ = 0 returns the denoised x̂₀, as k-diffusion's ``sample_dpmpp_2m``.
    Works for VP and VE alike since the state is in σ."""

    name = "dpmpp_2m"
    order = 2.0

    def step_hat(self, x_hat: Tensor, ctx: StepContext) -> Tensor:
        term, i = ctx.term, ctx.i
        denoised = term.denoise(x_hat, i)
        if term.sigma(i + 1) == 0:
            return denoised
        h = term.h(i)
        previous = ctx.state.get("previous")
        if previous is None:
            d = denoised
        else:
            old_denoised, h_last = previous
            r = h_last / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        ctx.state["previous"] = (denoised, h)
        return (term.sigma(i + 1) / term.sigma(i)) * x_hat - math.expm1(-h) * d
