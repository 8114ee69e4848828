"""The forward SDE ``dx = f(t)·x dt + g(t) dw`` in the (s(t), σ(t)) notation of Karras et al. 2022, §2.

Every SDE of scoresde is linear with scalar coefficients, so its marginals are
``q(x_t | x_0) = N(s(t)·x_0, s(t)²σ(t)² I)`` (Song et al. 2021, eq. 29 and appendix B; Karras et al.
2022, eq. 4). A subclass gives ``s``, ``sigma``, ``t_of_sigma`` and the coefficients ``f``, ``g`` of
the paper that defines it; everything else (marginals, transition kernels, priors) is derived here.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from scoresde.utils import append_dims, as_time, batch_sq_norm, flat_dim


def forward_kernel(s: Tensor | float, s_next: Tensor | float, sigma: Tensor | float,
                   sigma_next: Tensor | float) -> tuple[Tensor | float, Tensor | float]:
    """The Gaussian kernel of a linear SDE with marginals (s, σ) from the earlier point (s', σ') to (s, σ):
    ``x = a·x' + √var·z`` with ``a = s/s'`` and ``var = s²(σ² − σ'²)`` (floats or tensors)."""
    return s / s_next, s**2 * (sigma**2 - sigma_next**2)


class SDE(ABC):
    """Base class of the forward SDEs. Time runs over ``[0, T]``; sampling goes from ``T`` to ``t_min``.

    Attributes:
        T: end time of the forward process.
        t_min: default smallest time a sampler integrates to (score_sde's ``eps``).
    """

    name: str = "sde"
    T: float = 1.0
    t_min: float = 1e-3

    # ---- what a subclass defines -------------------------------------------------------------
    @abstractmethod
    def s(self, t: Tensor) -> Tensor:
        """Signal scale s(t): ``x_t = s(t)·x_0 + s(t)σ(t)·ε``."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """Noise level σ(t) of the unscaled variable ``x/s`` (EDM's σ)."""

    @abstractmethod
    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        """Inverse of σ(t)."""

    @abstractmethod
    def f(self, t: Tensor) -> Tensor:
        """Scalar drift coefficient f(t): the drift is ``f(t)·x``."""

    @abstractmethod
    def g(self, t: Tensor) -> Tensor:
        """Diffusion coefficient g(t)."""

    def prior_std(self) -> float:
        """Standard deviation of the prior p_T used to start sampling (std(T) unless overridden)."""
        return float(self.std(torch.tensor(self.T, dtype=torch.float64)))

    # ---- derived quantities --------------------------------------------------------------------
    def std(self, t: Tensor) -> Tensor:
        """Marginal standard deviation ``std(t) = s(t)·σ(t)``."""
        return self.s(t) * self.sigma(t)

    def s_of_sigma(self, sigma: Tensor) -> Tensor:
        """Signal scale as a function of σ; σ = 0 (data) gives s = 1. Subclasses give closed forms."""
        return torch.where(sigma > 0, self.s(self.t_of_sigma(sigma)), torch.ones_like(sigma))

    @property
    def sigma_min(self) -> float:
        """σ(0); VE and EDM return the σ_min they were built with (VE: σ(0); EDM: its t_min = σ(t_min))."""
        return float(self.sigma(torch.tensor(0.0, dtype=torch.float64)))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(torch.tensor(self.T, dtype=torch.float64)))

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Forward drift ``f(t)·x`` for a batch ``x`` of any shape (B, ...)."""
        return append_dims(self.f(as_time(t, x)), x.ndim) * x

    def diffusion(self, x: Tensor, t: Tensor) -> Tensor:
        """g(t) broadcast against ``x``."""
        return append_dims(self.g(as_time(t, x)), x.ndim)

    def marginal(self, x0: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Mean and std of ``q(x_t | x_0)``, both broadcast against ``x0``."""
        t = as_time(t, x0)
        return append_dims(self.s(t), x0.ndim) * x0, append_dims(self.std(t), x0.ndim)

    def perturb(self, x0: Tensor, t: Tensor | float, noise: Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Sample ``x_t ~ q(x_t | x_0)``. Returns ``(x_t, ε)``."""
        self.check_time(t)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        mean, std = self.marginal(x0, t)
        return mean + std * noise, noise

    def transition(self, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
        """Forward kernel from the earlier time ``t_next`` to ``t``: ``x_t = a·x_{t_next} + √var·z``.

        Exact for any linear SDE whose marginals are (s, σ): ``a = s(t)/s(t_next)``,
        ``var = s(t)²(σ(t)² − σ(t_next)²)``. For VP this is DDPM's ``α_i = 1 − β_i`` and ``β_i``
        (Ho et al. 2020, eq. 2); for VE it is score_sde's ``σ_i² − σ_{i−1}²``.
        ``t_next`` may be given as σ = 0 through :meth:`transition_sigma`.
        """
        return self.transition_sigma(self.sigma(t), self.sigma(t_next))

    def transition_sigma(self, sigma: Tensor, sigma_next: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`transition` written in σ; ``sigma_next`` may be 0 (the data)."""
        return forward_kernel(self.s_of_sigma(sigma), self.s_of_sigma(sigma_next), sigma, sigma_next)

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                     device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                     noise: Tensor | None = None) -> Tensor:
        """Sample the prior ``N(0, std(T)² I)`` (VP: N(0, I); VE: N(0, σ_max² I))."""
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return noise * self.prior_std()

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """Log-density of the prior at each sample of ``x``, shape (B,)."""
        d, var = flat_dim(x), self.prior_std() ** 2
        return -0.5 * d * math.log(2 * math.pi * var) - batch_sq_norm(x) / (2 * var)

    def check_time(self, t: Tensor | float) -> None:
        """Raise if any ``t`` lies outside ``(0, T]``."""
        t = torch.as_tensor(t)
        if not torch.all((t > 0) & (t <= self.T)):
            bad = t[~((t > 0) & (t <= self.T))].flatten()[0].item() if t.ndim else t.item()
            raise ValueError(f"time t={bad} is outside (0, T={self.T}] of the {self.name} SDE")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        return ""
