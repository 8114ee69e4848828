"""The linear-interpolant ("flow matching", "rectified flow") path written as one more linear SDE.

Flow matching with the optimal-transport conditional path (Lipman et al. 2023, eq. 20 with σ_min = 0) and
rectified flow (Liu et al. 2023, eq. 1) both interpolate ``x_t = (1 − t)·x₀ + t·ε``, ``ε ~ N(0, I)``,
t ∈ [0, 1]. In the (s, σ) notation of Karras et al. 2022 (§2, eq. 4) this is

    s(t) = 1 − t,   σ(t) = t/(1 − t),   std(t) = s·σ = t,   t(σ) = σ/(1 + σ),

and the linear SDE ``dx = f(t)·x dt + g(t) dw`` with exactly these marginals has

    f(t) = d log s/dt = −1/(1 − t),
    g(t)² = d(std²)/dt − 2 f(t)·std² = 2t + 2t²/(1 − t) = 2t/(1 − t)   (= s²·dσ²/dt, Karras et al. eq. 4).

Its probability-flow ODE (Song et al. 2021, eq. 13) is the flow-matching ODE: with the score
``∇log p_t(x) = −E[ε | x]/t``,

    f·x − ½g²·∇log p_t = (−x + E[ε | x])/(1 − t) = E[ε − x₀ | x_t = x],

because ``x = (1 − t)E[x₀ | x] + t·E[ε | x]``. The right side is the marginal velocity field that
conditional flow matching regresses on (Lipman et al. 2023, Thm. 1 / eq. 8; Liu et al. 2023, eq. 1; Albergo &
Vanden-Eijnden 2023, with the interpolant I_t = (1 − t)x₀ + tε): a flow model's ``u = ε − x₀`` prediction *is* the
PF-ODE drift under this SDE (tests/test_flow.py checks it exactly on a Gaussian mixture).

The reverse SDE (Song et al. 2021, eq. 6) uses the forward SDE's own g: ``dx = [f·x − g²∇log p_t] dt + g dw̄``
with ``g² = 2t/(1 − t)``. :class:`InterpolantReverseSDE` is the whole one-parameter family with the same
marginals (stochastic interpolants, Albergo, Boffi & Vanden-Eijnden 2023, §2: the generative SDEs with diffusion
coefficient ε(t) = ½γ²g²): diffusion ``γ·g`` and drift ``f·x − ½(1 + γ²)g²∇log p_t``; γ = 1 is the reverse SDE,
γ = 0 the PF-ODE. The registered stochastic solvers integrate γ = 1.

Endpoints: at t = 1, s = 0 and σ = f = g² = ∞, so the horizon the library samples from and trains up to is
``T = 0.999`` (σ(T) = 999) by default; ``t_min = 1e-3`` (σ ≈ 1.001e-3) as for the VP SDE. The prior is
``N(0, I)``, the flow-matching prior (Lipman et al. 2023, §4): q(x_T | x₀) = N((1 − T)·x₀, T²I) differs from it
by O(1 − T). Near T the coefficients are stiff (f(T) = −1000, g(T)² ≈ 2000): the σ-space solvers do not see them,
and the kernel-based stochastic steps use the exact kernel; Euler–Maruyama's first step on a coarse uniform grid is
far off, but with 64 uniform steps every registered solver recovers a Gaussian (tests/test_flow_sampling.py).
"""
from __future__ import annotations

import torch
from torch import Tensor

from scoresde.sde.base import SDE
from scoresde.sde.reverse import ReverseSDE, ScoreFn


class FlowSDE(SDE):
    """Linear interpolant ``x_t = (1 − t)·x₀ + t·ε`` (rectified flow / flow matching), t ∈ [t_min, T] ⊂ (0, 1).

    ``s = 1 − t``, ``σ = t/(1 − t)``, ``t(σ) = σ/(1 + σ)``, ``s(σ) = 1/(1 + σ)``, ``f = −1/(1 − t)``,
    ``g = √(2t/(1 − t))`` (see the module docstring for the derivation). Prior ``N(0, I)``.

    Args:
        T: the horizon, where sampling starts and training stops (< 1: σ(1) = ∞). Default 0.999.
        t_min: smallest time a sampler integrates to. Default 1e-3.
    """

    name = "flow"

    def __init__(self, T: float = 0.999, t_min: float = 1e-3):
        if not (0 < t_min < T < 1):
            raise ValueError(f"flow: need 0 < t_min < T < 1 (σ(1) = ∞), got t_min={t_min}, T={T}")
        self.T, self.t_min = float(T), float(t_min)

    def s(self, t: Tensor) -> Tensor:
        return 1 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t / (1 - t)

    def std(self, t: Tensor) -> Tensor:
        """std(t) = t exactly (s·σ rounds)."""
        return torch.as_tensor(t).clone()

    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        return sigma / (1 + sigma)

    def s_of_sigma(self, sigma: Tensor) -> Tensor:
        return 1 / (1 + sigma)

    def f(self, t: Tensor) -> Tensor:
        return -1 / (1 - t)

    def g(self, t: Tensor) -> Tensor:
        return torch.sqrt(2 * t / (1 - t))

    def prior_std(self) -> float:
        """The flow-matching prior N(0, I) (Lipman et al. 2023, §4; Liu et al. 2023, §2)."""
        return 1.0

    def extra_repr(self) -> str:
        return f"T={self.T}, t_min={self.t_min}"


class InterpolantReverseSDE(ReverseSDE):
    """The reverse-time SDEs with the marginals of ``sde``, for any noise scale γ ≥ 0 (any linear SDE):

    ``dx = [f(t)x − ½(1 + γ²)g(t)²∇log p_t(x)] dt + γ·g(t) dw̄``

    (Albergo, Boffi & Vanden-Eijnden 2023, "Stochastic interpolants", §2, with their ε(t) = ½γ²g(t)²; cf. the
    Langevin term of Karras et al. 2022, eq. 6). γ = 1 is :class:`ReverseSDE`
    (Song et al. 2021, eq. 6); γ = 0 is the probability-flow ODE. The Fokker–Planck equation of every member
    is the forward one, since the extra ``½(γ² − 1)g²∇log p`` drift cancels the extra ``½(γ² − 1)g²Δp``
    diffusion. The registered stochastic solvers integrate the γ = 1 member (they read ``sde.f`` and ``sde.g``);
    this object gives the drift and diffusion of another member to code that integrates it directly.
    """

    def __init__(self, sde: SDE, score: ScoreFn, gamma: float = 1.0):
        if not gamma >= 0:
            raise ValueError(f"InterpolantReverseSDE: gamma must be >= 0, got {gamma}")
        super().__init__(sde, score)
        self.gamma = float(gamma)

    def drift_from_score(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        return self.sde.drift(x, t) - 0.5 * (1 + self.gamma**2) * self.sde.diffusion(x, t) ** 2 * score

    def diffusion(self, x: Tensor, t: Tensor) -> Tensor:
        return self.gamma * self.sde.diffusion(x, t)


__all__ = ["FlowSDE", "InterpolantReverseSDE"]
