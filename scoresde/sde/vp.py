"""The variance-preserving family: VP and sub-VP (Song et al. 2021, eqs. 11 and 17) and the cosine
schedule of Nichol & Dhariwal 2021 (eq. 17) written as a VP SDE."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from scoresde.sde.base import SDE


class _LinearBetaSDE(SDE):
    """Shared linear β(t) = β_min + t(β_max − β_min) and its integral B(t) = ∫₀ᵗ β."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, t_min: float = 1e-3):
        if not (0 <= beta_min < beta_max):
            raise ValueError(f"{self.name}: need 0 <= beta_min < beta_max, "
                             f"got beta_min={beta_min}, beta_max={beta_max}")
        if not (0 < t_min < T):
            raise ValueError(f"{self.name}: need 0 < t_min < T, got t_min={t_min}, T={T}")
        self.beta_min, self.beta_max, self.T, self.t_min = float(beta_min), float(beta_max), float(T), float(t_min)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral_beta(self, t: Tensor) -> Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def t_of_integral(self, b: Tensor) -> Tensor:
        """Solve B(t) = b for t ≥ 0 (the positive root of the quadratic, written to avoid cancellation)."""
        db = self.beta_max - self.beta_min
        return 2 * b / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * db * b))

    def s(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self.integral_beta(t))

    def f(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def prior_std(self) -> float:
        """Song et al. 2021 sample both VP and sub-VP from N(0, I)."""
        return 1.0

    def ddpm_schedule(self, n: int) -> tuple[Tensor, Tensor]:
        """DDPM's discretization for ``n`` steps (Ho et al. 2020 §4; Song et al. 2021 eq. 10):
        ``β_i = β_min/n + (i/(n−1))(β_max − β_min)/n`` and ``ᾱ_i = Π_{j≤i}(1 − β_j)``, i = 0 … n−1
        (float64). With the defaults and n = 1000 this is Ho et al.'s linspace(1e-4, 0.02, 1000)."""
        if n < 2 or self.beta_max / n >= 1:
            raise ValueError(f"ddpm_schedule needs n >= 2 steps with beta_max/n < 1 (every β_i < 1), "
                             f"got n={n}, beta_max={self.beta_max}")
        betas = torch.linspace(self.beta_min / n, self.beta_max / n, n, dtype=torch.float64)
        return betas, torch.cumprod(1 - betas, dim=0)

    def t_of_alpha_bar(self, alpha_bar: Tensor) -> Tensor:
        """The time whose ᾱ(t) = s(t)² equals ``alpha_bar``."""
        return self.t_of_integral(-torch.log(alpha_bar))

    def extra_repr(self) -> str:
        return f"beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T}, t_min={self.t_min}"


class VPSDE(_LinearBetaSDE):
    """VP SDE ``dx = −½β(t)x dt + √β(t) dw`` (Song et al. 2021, eq. 11): std² = 1 − s², σ² = e^{B(t)} − 1."""

    name = "vp"

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(torch.expm1(self.integral_beta(t)))

    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        return self.t_of_integral(torch.log1p(sigma**2))

    def s_of_sigma(self, sigma: Tensor) -> Tensor:
        return torch.rsqrt(1 + sigma**2)

    def g(self, t: Tensor) -> Tensor:
        return torch.sqrt(self.beta(t))


class SubVPSDE(_LinearBetaSDE):
    """sub-VP SDE ``dx = −½β x dt + √(β(1 − e^{−2B(t)})) dw`` (Song et al. 2021, eq. 17):
    std = 1 − s², so σ = 2 sinh(B/2)."""

    name = "subvp"

    def sigma(self, t: Tensor) -> Tensor:
        return 2 * torch.sinh(0.5 * self.integral_beta(t))

    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        return self.t_of_integral(2 * torch.asinh(0.5 * sigma))

    def s_of_sigma(self, sigma: Tensor) -> Tensor:
        return 2 / (sigma + torch.sqrt(sigma**2 + 4))

    def g(self, t: Tensor) -> Tensor:
        return torch.sqrt(self.beta(t) * -torch.expm1(-2 * self.integral_beta(t)))


class CosineVPSDE(SDE):
    """VP SDE with Nichol & Dhariwal's cosine ᾱ(t) = cos²(φ(t))/cos²(φ(0)), φ(t) = (t+s₀)/(1+s₀)·π/2.

    ``β(t) = −d log ᾱ/dt = π/(1+s₀)·tan φ(t)``; ``f = −½β``, ``g = √β``. ᾱ reaches 0 at t = 1, so T
    defaults to 0.9946 as in DPM-Solver's continuous cosine schedule.
    """

    name = "cosine"

    def __init__(self, s0: float = 0.008, T: float = 0.9946, t_min: float = 1e-3):
        if not (0 < t_min < T < 1):
            raise ValueError(f"cosine: need 0 < t_min < T < 1, got t_min={t_min}, T={T}")
        self.s0, self.T, self.t_min = float(s0), float(T), float(t_min)
        self._dphi = math.pi / (2 * (1 + self.s0))
        self._cos_phi0 = math.cos(self.s0 * self._dphi)

    def _phi(self, t: Tensor) -> Tensor:
        return (t + self.s0) * self._dphi

    def s(self, t: Tensor) -> Tensor:
        return torch.cos(self._phi(t)) / self._cos_phi0

    def sigma(self, t: Tensor) -> Tensor:
        s = self.s(t)
        return torch.sqrt(1 - s**2) / s

    def s_of_sigma(self, sigma: Tensor) -> Tensor:
        return torch.rsqrt(1 + sigma**2)

    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        return torch.acos(self.s_of_sigma(sigma) * self._cos_phi0) / self._dphi - self.s0

    def f(self, t: Tensor) -> Tensor:
        return -self._dphi * torch.tan(self._phi(t))

    def g(self, t: Tensor) -> Tensor:
        return torch.sqrt(2 * self._dphi * torch.tan(self._phi(t)))

    def prior_std(self) -> float:
        return 1.0

    def ddpm_schedule(self, n: int) -> tuple[Tensor, Tensor]:
        """Nichol & Dhariwal's discrete schedule (their eq. 17): ``ᾱ_i = f(i/n)/f(0)``, i = 1 … n,
        ``β_i = min(1 − ᾱ_i/ᾱ_{i−1}, 0.999)``; returns (β, Π(1 − β)) in float64."""
        if n < 2:
            raise ValueError(f"ddpm_schedule needs n >= 2 steps, got {n}")
        t = torch.arange(n + 1, dtype=torch.float64) / n
        alpha_bar = (torch.cos(self._phi(t)) / self._cos_phi0) ** 2
        betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
        return betas, torch.cumprod(1 - betas, dim=0)

    def t_of_alpha_bar(self, alpha_bar: Tensor) -> Tensor:
        return torch.acos(torch.sqrt(alpha_bar) * self._cos_phi0) / self._dphi - self.s0

    def extra_repr(self) -> str:
        return f"s0={self.s0}, T={self.T}, t_min={self.t_min}"
