"""Inpainting with a known-pixel mask, on any registered solver.

* ``replace`` (Song et al. 2021, app. I.2, "imputation"; score_sde's ``get_pc_inpainter``): after every
  reverse step to t_{i+1}, the known pixels are replaced by a fresh draw of ``q(x_{t_{i+1}} | x₀)``.
* ``repaint`` (Lugmayr et al. 2022, Alg. 1 and the jump schedule of §4.2): the same merge, and after every
  ``jump_length`` steps the state is pushed back up ``jump_length`` grid points with the exact forward kernel
  and the steps are redone, ``resamplings − 1`` extra times, so the unknown region harmonizes with the known.

The solver runs one grid interval at a time (the merge happens between intervals), so a multistep method
such as DPM-Solver++(2M) restarts at every interval (first order). The known pixels of the output equal the
input exactly: the last merge is at σ = 0 (``denoise=True``) and the output is pasted once more at the end.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from scoresde.editing.stepping import (
    broadcast_mask,
    check_image,
    merge,
    noise_source,
    noise_to,
    renoise,
    solve,
    sub_grid,
)
from scoresde.models.score_model import ScoreModel
from scoresde.solvers.base import Solver
from scoresde.solvers.grids import make_grid
from scoresde.solvers.noise import NoiseSource

METHODS = ("replace", "repaint")


def repaint_schedule(steps: int, jump_length: int = 10, resamplings: int = 10) -> list[int]:
    """Grid indices RePaint visits: down one point at a time; at every multiple of ``jump_length`` (before the
    last interval) back up ``jump_length`` points, ``resamplings − 1`` times (Lugmayr et al. 2022, §4.2)."""
    if jump_length < 1 or resamplings < 1:
        raise ValueError(f"jump_length and resamplings must be >= 1, got {jump_length}, {resamplings}")
    jumps = {k: resamplings - 1 for k in range(jump_length, steps, jump_length)}
    path, i = [0], 0
    while i < steps:
        i += 1
        path.append(i)
        if jumps.get(i, 0) > 0:
            jumps[i] -= 1
            path.extend(range(i - 1, i - jump_length - 1, -1))
            i -= jump_length
    return path


def inpaint(model: ScoreModel, x0: Tensor, mask: Tensor, *, method: str = "replace", solver: str | Solver = "heun",
            steps: int = 50, grid: str = "karras", rho: float = 7.0, denoise: bool = True, jump_length: int = 5,
            resamplings: int = 5, seed: int | None = 0, generator: torch.Generator | None = None,
            noise: NoiseSource | None = None, shape: Sequence[int] | None = None,
            data_range: tuple[float, float] | None = (-1.0, 1.0), **solver_options: Any) -> Tensor:
    """Fill the unknown pixels of ``x0`` (B, ...) where ``mask`` is False/0 (True/1 = known; shape of x0,
    (1, ...) of one image, or (H, W)). Returns images shaped like x0 whose known pixels equal x0 exactly.
    ``shape`` (the model's sample shape, when known) and ``data_range`` (None: no check) are checked as in
    :func:`scoresde.editing.sdedit`; a mask that fits neither raises a ValueError naming both shapes."""
    check_image(x0, "inpaint: x0", shape=shape, data_range=data_range)
    if method not in METHODS:
        raise ValueError(f"unknown inpainting method {method!r}; choose one of {', '.join(METHODS)}")
    mask = broadcast_mask(mask, x0)
    g = make_grid(model.sde, steps, grid, rho=rho, denoise=denoise)
    src = noise_source(seed, x0.shape[0], x0.device, generator, noise)
    path = repaint_schedule(steps, jump_length, resamplings) if method == "repaint" else list(range(steps + 1))
    x = model.sde.prior_sample(tuple(x0.shape), noise=src(x0)).to(x0.dtype)
    for a, b in zip(path[:-1], path[1:]):
        if b < a:
            x = renoise(x, g, b, src)
            continue
        x = solve(model, solver, x, sub_grid(g, a, b), src, **solver_options)
        x = merge(noise_to(x0, g, b, src), x, mask)
    return merge(x0, x, mask)


__all__ = ["METHODS", "inpaint", "repaint_schedule"]
