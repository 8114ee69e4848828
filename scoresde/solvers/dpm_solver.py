"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), data prediction, multistep."""
from __future__ import annotations

from scoresde.solvers.base import register
from scoresde.solvers.dpmpp_multistep import DPMSolverPPMultistep


@register
class DPMSolverPP2M(DPMSolverPPMultistep):
    """DPM-Solver++(2M): second-order multistep exponential integrator on the data prediction.

    In λ = −log σ, with h_i = λ_{i+1} − λ_i, r_i = h_{i−1}/h_i and the state x̂ = x/s
    (eq. for x̃_{t_i} in Alg. 2; in x̂ the factor α_{t_i} disappears):

    ``x̂_{i+1} = (σ_{i+1}/σ_i)·x̂_i − (e^{−h_i} − 1)·D_i``, with
    ``D_i = (1 + 1/(2r_i))·x̂₀(i) − 1/(2r_i)·x̂₀(i−1)`` after the first step (first order on the
    first step). A step into σ = 0 returns the denoised x̂₀, as k-diffusion's ``sample_dpmpp_2m``.
    Works for VP and VE alike since the state is in σ. It is ``dpmpp_2m_sde`` at η = 0 (the same code,
    :class:`~scoresde.solvers.dpmpp_multistep.DPMSolverPPMultistep`, with the midpoint correction)."""

    name = "dpmpp_2m"
    multistep = 2
    default_eta = 0.0

    def __init__(self):
        super().__init__(eta=0.0)

    def options(self) -> dict:
        return {}
