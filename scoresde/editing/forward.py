"""Views of the forward process and three ways back: one-step Tweedie denoising, iterative denoising
from an intermediate time (any solver), and a Gaussian-blur baseline.

``x_t = s(t)·x₀ + s(t)σ(t)·ε`` under any SDE (Song et al. 2021, eq. 29); Tweedie's formula gives the
posterior mean ``E[x₀ | x_t] = (x_t + s²σ²·∇log p_t(x_t))/s`` in one evaluation (Efron 2011; Karras et al.
2022, eq. 3), which is blurry at large σ because it averages every plausible x₀; solving the reverse
dynamics from t draws one sample of ``p(x₀ | x_t)`` instead (Song et al. 2021; the SDEdit start, Meng et al.
2022).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from scoresde.editing.filters import gaussian_blur
from scoresde.editing.stepping import noise_source, solve
from scoresde.models.score_model import ScoreModel
from scoresde.sde.base import SDE
from scoresde.solvers.base import Solver
from scoresde.solvers.grids import make_grid
from scoresde.utils import append_dims


def forward_process(x0: Tensor, sde: SDE, times: Sequence[float] | Tensor, seed: int | None = 0,
                    generator: torch.Generator | None = None, same_noise: bool = True) -> Tensor:
    """``x_t`` for each of ``times``: shape (len(times), B, ...). With ``same_noise`` one ε per sample is
    shared by every t (one noise image seen at growing σ), else each t draws its own."""
    times = torch.as_tensor(times, dtype=x0.dtype, device=x0.device).reshape(-1)
    if times.numel() == 0 or not bool(((times > 0) & (times <= sde.T)).all()):
        raise ValueError(f"times must be a non-empty list in (0, T={sde.T}] of the {sde.name} SDE, "
                         f"got {times.tolist()}")
    src = noise_source(seed, x0.shape[0], x0.device, generator)
    eps = src(x0)
    out = []
    for t in times:
        s, sigma = sde.s(t), sde.sigma(t)
        out.append(s * x0 + s * sigma * (eps if same_noise else src(x0)))
    return torch.stack(out)


def tweedie_denoise(model: ScoreModel, x_t: Tensor, t: float | Tensor) -> Tensor:
    """One evaluation: the posterior mean ``E[x₀ | x_t]``."""
    return model.x0(x_t, t)


def iterative_denoise(model: ScoreModel, x_t: Tensor, t: float, solver: str | Solver = "heun", steps: int = 18,
                      grid: str = "karras", rho: float = 7.0, seed: int | None = 0,
                      generator: torch.Generator | None = None, **solver_options: Any) -> Tensor:
    """Solve the reverse dynamics from ``x_t`` at time ``t`` to the data (``steps`` intervals, the last into σ = 0)."""
    g = make_grid(model.sde, steps, grid, T=float(t), rho=rho, denoise=True)
    return solve(model, solver, x_t, g, noise_source(seed, x_t.shape[0], x_t.device, generator), **solver_options)


def blur_baseline(x_t: Tensor, t: float | Tensor, sde: SDE, sigma_px: float = 1.0) -> Tensor:
    """The classical baseline: undo the signal scale and blur away the noise, ``blur(x_t/s(t))``."""
    s = sde.s(torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).reshape(-1))
    return gaussian_blur(x_t / append_dims(s, x_t.ndim), sigma_px)


def compare_denoisers(model: ScoreModel, x0: Tensor, t: float, sigma_px: float = 1.0, seed: int = 0,
                      **iterative: Any) -> dict[str, Tensor]:
    """``{"clean", "noisy", "tweedie", "iterative", "blur"}`` for ``x0`` noised to time t (same noise),
    and ``"mse_*"`` per method: mean squared error against x0, shape (B,)."""
    x_t = forward_process(x0, model.sde, [t], seed=seed)[0]
    out = {"clean": x0, "noisy": x_t, "tweedie": tweedie_denoise(model, x_t, t),
           "iterative": iterative_denoise(model, x_t, t, seed=seed + 10_000, **iterative),
           "blur": blur_baseline(x_t, t, model.sde, sigma_px)}
    for key in ("tweedie", "iterative", "blur"):
        out[f"mse_{key}"] = (out[key] - x0).pow(2).flatten(1).mean(1)
    return out


__all__ = ["blur_baseline", "compare_denoisers", "forward_process", "iterative_denoise", "tweedie_denoise"]
