"""The one change of variables of every σ-space solver (the term, separate from the method, as diffrax does).

With ``x = s·x̂`` the probability-flow ODE of any of scoresde's SDEs is Karras et al. 2022, eq. 4 with
``s = 1``: ``dx̂/dσ = ε̂(x̂; σ) = (x̂ − D(x̂; σ))/σ``, where ``D`` is the denoiser. Exponential integrators step
in the half log-SNR ``λ = −log σ`` (Lu et al. 2022, DPM-Solver++ eq. 9: in x̂ the α_t of the paper cancels).
:class:`SigmaTerm` holds σ_i, s_i, λ_i of a grid, evaluates D or ε̂ at a grid point or at an off-grid σ
(EDM's churn), and maps x̂ back to x; :class:`SigmaSolver` is the base of every solver written in x̂, σ and
D (or ε̂) only, which is what ``uses = "denoiser"`` declares.
"""
from __future__ import annotations

import math
from abc import abstractmethod

import numpy as np
import torch
from torch import Tensor

from scoresde.models.score_model import ScoreModel
from scoresde.solvers.base import Solver, StepContext
from scoresde.solvers.grids import TimeGrid


class SigmaTerm:
    """The σ-space view of a model on a grid. Evaluations are counted by the model's wrapper as usual.

    Args:
        model: the score model (any prediction kind; its SDE gives s(σ) and t(σ) off the grid).
        grid: the time grid; point j has ``σ_j``, ``s_j`` and ``λ_j = −log σ_j``.
        t_batch: the grid's times on the state's device, shape (steps + 1, B).
    """

    def __init__(self, model: ScoreModel, grid: TimeGrid, t_batch: Tensor):
        self.model, self.grid, self.t_batch = model, grid, t_batch
        self._sigma, self._s = grid.sigma_list, grid.s_list

    def sigma(self, j: int) -> float:
        return self._sigma[j]

    def s(self, j: int) -> float:
        return self._s[j]

    def lam(self, j: int) -> float:
        """λ_j = −log σ_j (half log-SNR; Lu et al. 2022, §3.1)."""
        return -math.log(self._sigma[j])

    def h(self, i: int) -> float:
        """The step in λ from point i to i + 1: ``h_i = λ_{i+1} − λ_i = log(σ_i/σ_{i+1})``."""
        return math.log(self._sigma[i] / self._sigma[i + 1])

    def to_hat(self, x: Tensor, j: int) -> Tensor:
        """x̂ = x/s_j."""
        return x / self._s[j]

    def to_x(self, x_hat: Tensor, j: int) -> Tensor:
        """x = s_j·x̂ (s = 1 at the data)."""
        return x_hat * self._s[j]

    def _predict(self, x_hat: Tensor, j: int, kind: str) -> Tensor:
        s = self._s[j]
        return self.model.predict(x_hat * s, self.t_batch[j], kind, s, self._sigma[j])

    def denoise(self, x_hat: Tensor, j: int) -> Tensor:
        """D(x̂; σ_j) = E[x₀ | x̂] at grid point j (one evaluation)."""
        return self._predict(x_hat, j, "x0")

    def eps(self, x_hat: Tensor, j: int) -> Tensor:
        """ε̂(x̂; σ_j) = (x̂ − D(x̂; σ_j))/σ_j = dx̂/dσ at grid point j (one evaluation; asked as ε directly,
        which spares score- and ε-models the round trip through D)."""
        return self._predict(x_hat, j, "eps")

    def t(self, j: int) -> float:
        """The SDE time t_j of grid point j."""
        return self.grid.t_list[j]

    def t_of_sigma(self, sigma: np.ndarray) -> np.ndarray:
        """The SDE's times t(σ) at off-grid noise levels (float64), for weights integrated over a step (DEIS)."""
        return self.model.sde.t_of_sigma(torch.as_tensor(sigma, dtype=torch.float64)).numpy()

    def eps_off_grid(self, x_hat: Tensor, sigma: float) -> Tensor:
        """ε̂(x̂; σ) at a σ that is not a grid point (EDM's churned σ̂), through the SDE's s(σ) and t(σ)."""
        sde = self.model.sde
        sig = torch.tensor(sigma, dtype=torch.float64)
        s, t = float(sde.s_of_sigma(sig)), float(sde.t_of_sigma(sig))
        t_batch = torch.full((x_hat.shape[0],), t, device=x_hat.device, dtype=x_hat.dtype)
        return self.model.predict(x_hat * s, t_batch, "eps", s, sigma)


class SigmaSolver(Solver):
    """A solver written in x̂, σ and D or ε̂ through the :class:`SigmaTerm` (``uses = "denoiser"``): it
    implements :meth:`step_hat` from x̂_i to x̂_{i+1}; the change of variables in and out happens here, once.
    Every σ-space solver handles the step into σ = 0 itself (``reaches_data``)."""

    uses = "denoiser"
    reaches_data = True

    def step(self, x: Tensor, ctx: StepContext) -> Tensor:
        term = ctx.term
        return term.to_x(self.step_hat(term.to_hat(x, ctx.i), ctx), ctx.i + 1)

    @abstractmethod
    def step_hat(self, x_hat: Tensor, ctx: StepContext) -> Tensor:
        """One step of x̂ from σ_i to σ_{i+1}; ``ctx.term`` gives σ, λ, D and ε̂, ``ctx.state`` holds history."""


__all__ = ["SigmaSolver", "SigmaTerm"]
