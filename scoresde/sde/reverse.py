"""Reverse-time SDE and probability-flow ODE of any forward SDE (Song et al. 2021, eqs. 6 and 13).

Both are derived generically from ``f``, ``g`` and a score function ``score(x, t)``; nothing here
depends on which SDE is used.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from scoresde.sde.base import SDE

ScoreFn = Callable[[Tensor, Tensor], Tensor]


class ReverseSDE:
    """``dx = [f(t)x − g(t)² ∇log p_t(x)] dt + g(t) dw̄``, integrated from T down to t_min (eq. 6)."""

    def __init__(self, sde: SDE, score: ScoreFn):
        self.sde, self.score = sde, score

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Reverse drift for a backward step (multiply by the negative dt)."""
        return self.drift_from_score(x, t, self.score(x, t))

    def drift_from_score(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        return self.sde.drift(x, t) - self.sde.diffusion(x, t) ** 2 * score

    def diffusion(self, x: Tensor, t: Tensor) -> Tensor:
        return self.sde.diffusion(x, t)


class ProbabilityFlowODE:
    """``dx/dt = f(t)x − ½g(t)² ∇log p_t(x)`` (eq. 13): the ODE whose marginals match the SDE's."""

    def __init__(self, sde: SDE, score: ScoreFn):
        self.sde, self.score = sde, score

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return self.drift_from_score(x, t, self.score(x, t))

    def drift_from_score(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        return self.sde.drift(x, t) - 0.5 * self.sde.diffusion(x, t) ** 2 * score
