"""2-D toy distributions for training small score models, each scaled to lie roughly in [-3, 3]²
(per-coordinate standard deviation between about 1 and 1.5, like the ring testbed).

- ``ring``: 8 equal Gaussians of std 0.1 on a circle of radius 2 (:func:`ring_means`). It is the distribution
  of the ``ring`` testbed, which builds its exact score on :func:`ring_means` (bit for bit the same samples
  from the same generator), so a model trained on the toy can be checked against the exact score.
- ``moons``: two interleaving half circles (scikit-learn's ``make_moons``), centred and scaled by 1.5,
  Gaussian noise of std 0.05·1.5.
- ``swiss_roll``: the 2-D swiss roll ``t·(cos t, sin t)/5`` with ``t ~ U[1.5π, 4.5π]``, noise std 0.1.
- ``checkerboard``: uniform on the 8 black squares of a 4×4 board over [-2, 2]² (the FFJORD toy).

Toys are sample-only data sets and import nothing of :mod:`scoresde.testbeds`: the dependency runs one way,
testbeds (exact scores) → data (tests/test_import_layers.py fails if the circle returns).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def _rand(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


def _randn(n: int, generator: torch.Generator | None, dim: int = 2) -> Tensor:
    return torch.randn(n, dim, generator=generator, dtype=torch.float64)


def ring_means(modes: int = 8, radius: float = 2.0) -> Tensor:
    """(modes, 2) float64 centres of ``modes`` equal Gaussians on a circle of ``radius``, the first at angle 0."""
    angle = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    return radius * torch.stack([angle.cos(), angle.sin()], 1)


def ring(n: int, generator: torch.Generator | None = None, modes: int = 8, radius: float = 2.0,
         std: float = 0.1) -> Tensor:
    """``n`` draws of the equal mixture of ``N(μ_k, std² I)`` over :func:`ring_means` (the draws of
    ``GaussianMixture.sample``: a component per sample, then one normal pair per sample)."""
    k = torch.multinomial(torch.full((modes,), 1 / modes, dtype=torch.float64), n, replacement=True,
                          generator=generator)
    return ring_means(modes, radius)[k] + std * _randn(n, generator)


def moons(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> Tensor:
    upper = _rand(n, generator) < 0.5
    t = math.pi * _rand(n, generator)
    x = torch.where(upper, t.cos(), 1 - t.cos())
    y = torch.where(upper, t.sin(), 0.5 - t.sin())
    pts = torch.stack([x - 0.5, y - 0.25], 1) + noise * _randn(n, generator)
    return 1.5 * pts


def swiss_roll(n: int, generator: torch.Generator | None = None, noise: float = 0.1) -> Tensor:
    t = 1.5 * math.pi * (1 + 2 * _rand(n, generator))
    return torch.stack([t * t.cos(), t * t.sin()], 1) / 5 + noise * _randn(n, generator)


def checkerboard(n: int, generator: torch.Generator | None = None) -> Tensor:
    x = 4 * _rand(n, generator) - 2
    offset = 2 * torch.randint(0, 2, (n,), generator=generator, dtype=torch.float64)
    y = _rand(n, generator) - offset + torch.floor(x) % 2
    return torch.stack([x, y], 1)


TOYS: dict[str, Callable[..., Tensor]] = {"ring": ring, "moons": moons, "swiss_roll": swiss_roll,
                                          "checkerboard": checkerboard}


def make_toy(name: str, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """``n`` samples of the 2-D toy ``name`` (ring, moons, swiss_roll, checkerboard), shape (n, 2)."""
    if name not in TOYS:
        raise KeyError(f"unknown toy {name!r}; known toys: {', '.join(TOYS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return TOYS[name](n, generator).to(dtype)


__all__ = ["TOYS", "make_toy", "ring_means"]
