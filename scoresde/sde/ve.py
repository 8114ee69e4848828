"""The variance-exploding SDE (Song et al. 2021, eq. 9 with geometric σ, appendix C)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from scoresde.sde.base import SDE


class VESDE(SDE):
    """VE SDE ``dx = σ(t)√(2 log(σ_max/σ_min)/T) dw`` with ``σ(t) = σ_min(σ_max/σ_min)^{t/T}``; s(t) = 1.

    As in Song et al. (T = 1), σ(0) = σ_min > 0: t = 0 is the data perturbed at σ_min, and
    σ(T) = σ_max. The prior is ``N(0, σ_max² I)``.
    """

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0, t_min: float = 1e-5):
        if not (0 < sigma_min < sigma_max):
            raise ValueError(f"ve: need 0 < sigma_min < sigma_max, got sigma_min={sigma_min} >= sigma_max={sigma_max}"
                             if sigma_min >= sigma_max else f"ve: sigma_min must be > 0, got {sigma_min}")
        if not (0 < t_min < T):
            raise ValueError(f"ve: need 0 < t_min < T, got t_min={t_min}, T={T}")
        self._sigma_min, self._sigma_max = float(sigma_min), float(sigma_max)
        self.T, self.t_min = float(T), float(t_min)
        self._log_ratio = math.log(self._sigma_max / self._sigma_min) / self.T  # per unit of time

    @property
    def sigma_min(self) -> float:
        return self._sigma_min

    @property
    def sigma_max(self) -> float:
        return self._sigma_max

    def s(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def s_of_sigma(self, sigma: Tensor) -> Tensor:
        return torch.ones_like(sigma)

    def sigma(self, t: Tensor) -> Tensor:
        return self._sigma_min * torch.exp(self._log_ratio * t)

    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        return torch.log(sigma / self._sigma_min) / self._log_ratio

    def f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def g(self, t: Tensor) -> Tensor:
        return self.sigma(t) * math.sqrt(2 * self._log_ratio)

    def prior_std(self) -> float:
        return self.sigma_max

    def extra_repr(self) -> str:
        return f"sigma_min={self._sigma_min}, sigma_max={self._sigma_max}, T={self.T}, t_min={self.t_min}"
