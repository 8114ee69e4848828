"""The EDM SDE of Karras et al. 2022: s(t) = 1, σ(t) = t (their eq. 6 with the choices of Table 1)."""
from __future__ import annotations

import torch
from torch import Tensor

from scoresde.sde.base import SDE


class EDMSDE(SDE):
    """``dx = √(2t) dw``: σ(t) = t, s(t) = 1, so t is the noise level itself.

    Defaults follow Karras et al. 2022: σ_max = T = 80, σ_min = t_min = 0.002. The prior is
    ``N(0, σ_max² I)``.
    """

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        if not (0 < sigma_min < sigma_max):
            raise ValueError(f"edm: need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.T, self.t_min = float(sigma_max), float(sigma_min)

    @property
    def sigma_min(self) -> float:
        return self.t_min

    def s(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def s_of_sigma(self, sigma: Tensor) -> Tensor:
        return torch.ones_like(sigma)

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        return sigma

    def f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def g(self, t: Tensor) -> Tensor:
        return torch.sqrt(2 * t)

    def extra_repr(self) -> str:
        return f"sigma_min={self.t_min}, sigma_max={self.T}"
