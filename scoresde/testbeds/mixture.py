"""Gaussian mixtures with isotropic components: exact scores, denoisers and densities under every SDE.

A mixture ``p₀ = Σ_k w_k N(μ_k, c_k² I)`` stays a mixture under the noise: the unscaled variable
``x̂ = x/s`` has ``p(x̂; σ) = Σ_k w_k N(μ_k, (c_k² + σ²) I)``, so the denoiser
``D(x̂; σ) = Σ_k r_k(x̂)[μ_k + c_k²/(c_k² + σ²)(x̂ − μ_k)]`` (posterior responsibilities r_k) and the
score under any SDE, ``∇log p_t(x) = (s·D(x/s; σ) − x)/(s²σ²)``, are exact (Karras et al. 2022,
eq. 3 and appendix B.3). Components with c_k = 0 give the ideal denoiser of a finite dataset.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from scoresde.models.score_model import ScoreModel
from scoresde.sde.base import SDE
from scoresde.utils import append_dims, as_time


class GaussianMixture:
    """``Σ_k w_k N(μ_k, c_k² I)`` on samples of shape ``event_shape`` (flattened to d = Π event_shape).

    Args:
        means: (K, d) component means.
        stds: (K,) component standard deviations c_k ≥ 0 (0 for point masses).
        weights: (K,) mixture weights (normalized here); uniform when omitted.
        event_shape: shape of one sample, e.g. (2,) or (1, 8, 8); defaults to (d,).
    """

    def __init__(self, means: Tensor, stds: Tensor | float, weights: Tensor | None = None,
                 event_shape: tuple[int, ...] | None = None, name: str = "mixture"):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(means.shape)}")
        k, d = means.shape
        stds = torch.as_tensor(stds, dtype=torch.float64).expand(k).clone()
        weights = torch.ones(k) if weights is None else torch.as_tensor(weights)
        weights = weights.to(torch.float64)
        if weights.shape != (k,) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError(f"weights must be {k} non-negative numbers with a positive sum")
        if bool((stds < 0).any()):
            raise ValueError("component stds must be >= 0")
        self.event_shape = tuple(event_shape) if event_shape is not None else (d,)
        if math.prod(self.event_shape) != d:
            raise ValueError(f"event_shape {self.event_shape} does not hold d={d} values")
        self.means, self.stds, self.weights, self.name = means, stds, weights / weights.sum(), name

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _params(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return (self.means.to(x.device, x.dtype), self.stds.to(x.device, x.dtype),
                self.weights.to(x.device, x.dtype))

    def check_batch(self, x: Tensor, name: str = "x") -> None:
        """Refuse a batch that is not (B, *event_shape), naming the expected and the given shape (every density,
        score and denoiser goes through :meth:`log_components`, which calls this: one shape comparison)."""
        if tuple(x.shape[1:]) != self.event_shape:
            expected = ", ".join(["B", *map(str, self.event_shape)])
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected ({expected}): the {self.name} testbed's "
                             f"samples have event shape {self.event_shape}")

    def log_components(self, x_hat: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """log(w_k N(x̂; μ_k, v_k I)) of shape (B, K), and the variances v_k = c_k² + σ² of shape (B, K)."""
        self.check_batch(x_hat)
        means, stds, weights = self._params(x_hat)
        flat = x_hat.reshape(x_hat.shape[0], -1)
        var = stds[None, :] ** 2 + sigma[:, None] ** 2
        sq = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ means.T + means.pow(2).sum(1)[None, :]).clamp_min(0)
        log_n = -0.5 * self.dim * torch.log(2 * math.pi * var) - sq / (2 * var)
        return torch.log(weights)[None, :] + log_n, var

    def denoiser(self, x_hat: Tensor, sigma: Tensor | float) -> Tensor:
        """Exact ``D(x̂; σ) = E[x₀ | x₀ + σε = x̂]`` for a batch x̂ of shape (B, *event_shape)."""
        sigma = as_time(sigma, x_hat)
        log_w, var = self.log_components(x_hat, sigma)
        resp = torch.softmax(log_w, dim=1)  # (B, K)
        means, stds, _ = self._params(x_hat)
        shrink = stds[None, :] ** 2 / var  # (B, K)
        flat = x_hat.reshape(x_hat.shape[0], -1)
        out = resp @ means + (resp * shrink).sum(1, keepdim=True) * flat - (resp * shrink) @ means
        return out.reshape(x_hat.shape)

    def score_sigma(self, x_hat: Tensor, sigma: Tensor | float) -> Tensor:
        """Exact ``∇ log p(x̂; σ) = Σ_k r_k(x̂)(μ_k − x̂)/(c_k² + σ²)``, written without the cancellation
        of ``(D − x̂)/σ²`` at small σ."""
        sigma = as_time(sigma, x_hat)
        log_w, var = self.log_components(x_hat, sigma)
        weight = torch.softmax(log_w, dim=1) / var  # (B, K)
        means, _, _ = self._params(x_hat)
        flat = x_hat.reshape(x_hat.shape[0], -1)
        return (weight @ means - weight.sum(1, keepdim=True) * flat).reshape(x_hat.shape)

    def log_prob_sigma(self, x_hat: Tensor, sigma: Tensor | float) -> Tensor:
        """``log p(x̂; σ)`` of the unscaled noisy variable, shape (B,)."""
        log_w, _ = self.log_components(x_hat, as_time(sigma, x_hat))
        return torch.logsumexp(log_w, dim=1)

    def log_prob(self, x0: Tensor) -> Tensor:
        """Exact log-density of the data (needs every c_k > 0)."""
        if bool((self.stds == 0).any()):
            raise ValueError(f"{self.name} has point-mass components: its data density does not exist")
        return self.log_prob_sigma(x0, 0.0)

    def marginal_log_prob(self, x: Tensor, t: Tensor | float, sde: SDE) -> Tensor:
        """Exact ``log p_t(x)`` under ``sde``: ``log p(x/s; σ) − d·log s``."""
        t = as_time(t, x)
        s, sigma = sde.s(t), sde.sigma(t)
        return self.log_prob_sigma(x / append_dims(s, x.ndim), sigma) - self.dim * torch.log(s)

    def score(self, x: Tensor, t: Tensor | float, sde: SDE) -> Tensor:
        """Exact ``∇ₓ log p_t(x)`` under ``sde``."""
        t = as_time(t, x)
        s = append_dims(sde.s(t), x.ndim)
        return self.score_sigma(x / s, sde.sigma(t)) / s

    def model(self, sde: SDE) -> ScoreModel:
        """A counted exact model of this testbed under ``sde`` (it predicts the exact score)."""
        return ScoreModel(lambda x, t: self.score(x, t, sde), sde, "score")

    def sample(self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> Tensor:
        """``n`` exact data samples, shape (n, *event_shape)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[k] + self.stds[k, None] * z
        return x.reshape((n,) + self.event_shape).to(device, dtype)

    def mean(self) -> Tensor:
        return (self.weights @ self.means).reshape(self.event_shape)

    def covariance(self) -> Tensor:
        """Exact (d, d) covariance of the data."""
        mu = self.weights @ self.means
        centered = self.means - mu
        second = (self.weights[:, None] * centered).T @ centered
        return second + torch.eye(self.dim, dtype=torch.float64) * float(self.weights @ self.stds**2)

    def __repr__(self) -> str:
        return f"GaussianMixture({self.name}: K={len(self.weights)}, event_shape={self.event_shape})"
