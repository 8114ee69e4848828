"""Grids that start part-way (SDEdit), one-interval solves, and the exact forward kernel between grid points:
the pieces image editing builds from any registered solver without changing it."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from scoresde.models.score_model import ScoreModel
from scoresde.sde.base import SDE
from scoresde.solvers.base import Solver, get_solver
from scoresde.solvers.grids import TimeGrid, make_grid
from scoresde.solvers.noise import NoiseSource, make_noise


def check_strength(strength: Any) -> float:
    """A number in [0, 1], or a ValueError naming the problem."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise ValueError(f"strength must be a number in [0, 1], got {strength!r}") from None
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise ValueError(f"strength must be in [0, 1], got {strength!r}")
    return value


def check_image(x: Tensor, name: str = "x", *, shape: Sequence[int] | None = None,
                data_range: tuple[float, float] | None = (-1.0, 1.0), tol: float = 1e-3) -> None:
    """Refuse an input an edit cannot mean: not a float batch (B, ...), not of the model's sample ``shape``
    (when known), or with values outside ``data_range`` (by more than ``tol``; NaN included). The
    ValueError names ``name``, what was expected and what was given."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
        got = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating-point batch (B, ...) of samples, got {got}")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected (B, {', '.join(map(str, shape))}) "
                         f"(the model's sample shape {tuple(shape)})")
    if data_range is not None and x.numel():
        lo, hi = data_range
        x_min, x_max = float(x.min()), float(x.max())
        if not (x_min >= lo - tol and x_max <= hi + tol):  # also False for NaN
            raise ValueError(f"{name} must lie in the data range [{lo:g}, {hi:g}] (images scaled to [-1, 1]; "
                             f"data_range=None skips this check), got values in [{x_min:.4g}, {x_max:.4g}]")


def sub_grid(grid: TimeGrid, start: int, end: int | None = None) -> TimeGrid:
    """Points ``start … end`` (inclusive) of ``grid`` as a grid of their own."""
    sl = slice(start, None if end is None else end + 1)
    return TimeGrid(grid.t[sl], grid.sigma[sl], grid.s[sl], grid.kind)


def start_grid(sde: SDE, steps: int, grid: str = "karras", *, strength: float | None = None,
               t_start: float | None = None, denoise: bool = True, rho: float = 7.0) -> TimeGrid | None:
    """The grid an edit solves on. ``t_start``: ``steps`` intervals from t_start (SDEdit's t₀, Meng et al. 2022).
    ``strength``: the last ``round(strength·steps)`` intervals of the full ``steps``-interval grid from T (the
    img2img convention of diffusers); None when that is no interval at all (strength 0: nothing to do)."""
    if (strength is None) == (t_start is None):
        raise ValueError("give exactly one of strength (in [0, 1]) and t_start")
    if t_start is not None:
        return make_grid(sde, steps, grid, T=float(t_start), rho=rho, denoise=denoise)
    n = round(check_strength(strength) * steps)
    full = make_grid(sde, steps, grid, rho=rho, denoise=denoise)
    return sub_grid(full, steps - n) if n > 0 else None


def noise_to(x0: Tensor, grid: TimeGrid, i: int, noise: NoiseSource) -> Tensor:
    """A draw of ``q(x_t | x₀) = N(s·x₀, s²σ² I)`` at grid point i."""
    s, sigma = grid.s_list[i], grid.sigma_list[i]
    return s * x0 + s * sigma * noise(x0)


def renoise(x: Tensor, grid: TimeGrid, i: int, noise: NoiseSource) -> Tensor:
    """The exact forward kernel from grid point i+1 back up to point i: ``x ← a·x + √var·z`` (RePaint's jump)."""
    a, var = grid.kernel(i)
    return a * x + math.sqrt(max(var, 0.0)) * noise(x)


def solve(model: ScoreModel, solver: str | Solver, x: Tensor, grid: TimeGrid, noise: NoiseSource,
          **solver_options: Any) -> Tensor:
    """Run ``solver`` from ``x`` at ``grid.t[0]`` to the end of ``grid``."""
    return get_solver(solver, **solver_options).sample(model, x, grid, noise)


def noise_source(seed: int | None, batch: int, device: torch.device, generator: torch.Generator | None,
                 noise: NoiseSource | None = None) -> NoiseSource:
    """``noise`` if given, else per-sample noise from ``seed`` (or ``generator`` with ``seed=None``)."""
    return noise if noise is not None else make_noise(seed, batch, device, generator)


def merge(known: Tensor, x: Tensor, mask: Tensor) -> Tensor:
    """``mask·known + (1 − mask)·x``, exact where the mask is 0 or 1."""
    return torch.where(mask, known, x)


def broadcast_mask(mask: Tensor, x: Tensor) -> Tensor:
    """A boolean mask (True = known) broadcast to ``x``: shape x.shape, (1, ...) or the last dims of x."""
    mask = torch.as_tensor(mask, device=x.device)
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("the mask must hold 0/1 or booleans (1 = known pixel)")
        mask = mask.bool()
    trailing = mask.ndim < x.ndim and mask.shape == x.shape[x.ndim - mask.ndim:]
    if not (trailing or mask.shape in (x.shape, (1, *x.shape[1:]))):
        raise ValueError(f"the mask has shape {tuple(mask.shape)}, which does not fit images of shape "
                         f"{tuple(x.shape)}: give {tuple(x.shape)}, {(1, *x.shape[1:])} or {tuple(x.shape[-2:])}")
    return mask.expand_as(x)


__all__ = ["broadcast_mask", "check_image", "check_strength", "merge", "noise_source", "noise_to", "renoise", "solve",
           "start_grid", "sub_grid"]
