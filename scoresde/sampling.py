"""``sample``: the one call that runs any registered solver on any model."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from scoresde.models.score_model import ScoreModel
from scoresde.solvers.base import Callback, Solver, StepInfo, get_solver
from scoresde.solvers.grids import TimeGrid, as_grid
from scoresde.solvers.noise import NoiseSource, make_noise


def sample(model: ScoreModel, solver: str | Solver = "heun", steps: int | None = 18,
           shape: Sequence[int] | None = None, *, grid: str | TimeGrid | Tensor = "uniform",
           seed: int | Sequence[int] | None = 0, generator: torch.Generator | None = None,
           noise: NoiseSource | None = None, x_T: Tensor | None = None, device: torch.device | str | None = None,
           dtype: torch.dtype = torch.float32, t_min: float | None = None, T: float | None = None,
           rho: float = 7.0, denoise: bool = False, progress: bool = False, callback: Callback | None = None,
           **solver_options: Any) -> Tensor:
    """Draw samples by running ``solver`` from the prior at ``T`` down the grid.

    Args:
        model: the score model (its SDE gives the prior and the grid's σ(t)).
        solver: a registered solver name (``scoresde.SOLVERS``) or a Solver; ``solver_options`` go to it.
        steps: number of grid intervals (with ``denoise=True`` the last is the step into σ = 0).
        shape: batch shape (B, ...) when ``x_T`` is not given.
        grid: ``uniform``, ``quadratic``, ``karras`` (with ``rho``), ``logsnr``, ``ddpm``, a TimeGrid,
            or a tensor of decreasing times.
        seed: an int (sample i gets seed + i) or one seed per sample: results do not depend on the
            batch size. ``seed=None`` draws from ``generator`` instead.
        noise: a ready noise source (overrides ``seed``/``generator``).
        x_T: the starting state at T; drawn from the SDE's prior when omitted.
        progress: show a tqdm bar.
    Returns:
        The samples, shape (B, ...). ``model.nfe`` tells how many evaluations they took.
    """
    solver = get_solver(solver, **solver_options)
    sde = model.sde
    grid = as_grid(sde, steps, grid, t_min=t_min, T=T, rho=rho, denoise=denoise)
    if x_T is None:
        if shape is None:
            raise ValueError("give either shape or x_T")
        shape = tuple(int(n) for n in shape)
        if len(shape) < 2 or min(shape) < 1:
            raise ValueError(f"shape must be (B, ...) with positive sizes, got {shape}")
        device = torch.device(device) if device is not None else torch.device("cpu")
    else:
        shape, device, dtype = tuple(x_T.shape), x_T.device, x_T.dtype
    noise = noise if noise is not None else make_noise(seed, shape[0], device, generator)
    if x_T is None:
        x_T = sde.prior_sample(shape, noise=noise(torch.empty(shape, device=device, dtype=dtype)))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=grid.steps, desc=solver.name, leave=False)

    def report(info: StepInfo) -> None:
        if bar is not None:
            bar.update(1)
        if callback is not None:
            callback(info)

    try:
        return solver.sample(model, x_T, grid, noise, report if (bar or callback) else None)
    finally:
        if bar is not None:
            bar.close()
