"""2-D toy distributions for training small score models, each scaled to lie roughly in [-3, 3]²
(per-coordinate standard deviation between about 1 and 1.5, like the ring testbed).

- ``ring``: the 8-Gaussian ring testbed (radius 2, std 0.1), ``scoresde.get_testbed("ring").sample``; its
  exact score is known, so a trained model can be checked against it.
- ``moons``: two interleaving half circles (scikit-learn's ``make_moons``), centred and scaled by 1.5,
  Gaussian noise of std 0.05·1.5.
- ``swiss_roll``: the 2-D swiss roll ``t·(cos t, sin t)/5`` with ``t ~ U[1.5π, 4.5π]``, noise std 0.1.
- ``checkerboard``: uniform on the 8 black squares of a 4×4 board over [-2, 2]² (the FFJORD toy).
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


def ring(n: int, generator: torch.Generator | None = None) -> Tensor:
    from scoresde.testbeds import get_testbed
    return get_testbed("ring").sample(n, generator=generator, dtype=torch.float64)


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


__all__ = ["TOYS", "make_toy"]
