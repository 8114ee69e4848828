"""SDEdit (Meng et al. 2022): perturb an input to an intermediate time and solve the reverse dynamics back.

``x_{t₀} = s(t₀)·x + s(t₀)σ(t₀)·ε`` then any registered solver from ``t₀`` to the data. ``strength`` picks t₀
on the sampler's own grid (the last ``round(strength·steps)`` intervals run, as in diffusers' img2img), so
strength 0 returns the input unchanged and strength 1 starts from (almost) pure noise; ``t_start`` gives
t₀ directly (Meng et al.'s t₀ ∈ (0, T]). Conditioning is the model's: pass a class-conditional or guided
model (:func:`scoresde.guidance.classifier_free_guidance`) to steer the edit toward a class.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from scoresde.editing.stepping import check_image, noise_source, noise_to, solve, start_grid
from scoresde.models.score_model import ScoreModel
from scoresde.solvers.base import Solver
from scoresde.solvers.noise import NoiseSource


def sdedit(model: ScoreModel, x: Tensor, strength: float | None = None, *, t_start: float | None = None,
           solver: str | Solver = "heun", steps: int = 18, grid: str = "karras", rho: float = 7.0,
           denoise: bool = True, seed: int | None = 0, generator: torch.Generator | None = None,
           noise: NoiseSource | None = None, shape: Sequence[int] | None = None,
           data_range: tuple[float, float] | None = (-1.0, 1.0), **solver_options: Any) -> Tensor:
    """Edit images ``x`` (B, ...) in the model's data space ([-1, 1] for images).

    Args:
        model: the (possibly conditional or guided) score model; its SDE defines the noising.
        strength: in [0, 1]: the fraction of the ``steps``-interval grid that is run (0: x unchanged).
        t_start: instead of ``strength``, the SDE time t₀ to noise to; then ``steps`` intervals run from t₀.
        solver, steps, grid, rho, denoise, solver_options: the sampler, as in :func:`scoresde.sample`.
        seed / generator / noise: the randomness (sample i uses seed + i: batch-size independent).
        shape: the model's sample shape (e.g. ``Pretrained.shape``); when given, ``x`` must be (B, *shape).
        data_range: the range ``x`` must lie in (to 1e-3); None for data not scaled to [-1, 1] (2-D toys).
    Returns:
        The edited images, shaped like ``x``.
    Raises:
        ValueError: ``x`` of another shape or outside ``data_range``, or a bad ``strength``.
    """
    check_image(x, "sdedit: x", shape=shape, data_range=data_range)
    g = start_grid(model.sde, steps, grid, strength=strength, t_start=t_start, denoise=denoise, rho=rho)
    if g is None:
        return x.clone()
    src = noise_source(seed, x.shape[0], x.device, generator, noise)
    return solve(model, solver, noise_to(x, g, 0, src), g, src, **solver_options)


__all__ = ["sdedit"]
