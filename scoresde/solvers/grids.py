"""Time grids: the decreasing sequence of times (and noise levels) a solver steps through.

A grid of ``steps`` intervals holds ``steps + 1`` times ``T = t_0 > t_1 > … > t_N``. With
``denoise=True`` the last point is the data itself (σ = 0) and the last interval is the final
denoising step ``x ← D(x; σ_{N−1})`` (Karras et al. 2022, Alg. 2 appends σ_N = 0; Song et al.'s
``noise_removal``). Grids are computed once, in float64, on the CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from scoresde.errors import UnknownNameError
from scoresde.sde.base import SDE, forward_kernel

GRIDS: tuple[str, ...] = ("uniform", "quadratic", "karras", "logsnr", "ddpm")


@dataclass(frozen=True)
class TimeGrid:
    """``t``, ``sigma`` and the signal scale ``s``: float64 tensors of shape (steps + 1,).

    When ``sigma[-1] == 0`` the last point is the data (s = 1) and ``t[-1]`` is set to 0 (never evaluated).
    """

    t: Tensor
    sigma: Tensor
    s: Tensor
    kind: str = "custom"

    @cached_property
    def t_list(self) -> list[float]:
        return self.t.tolist()

    @cached_property
    def sigma_list(self) -> list[float]:
        return self.sigma.tolist()

    @cached_property
    def s_list(self) -> list[float]:
        return self.s.tolist()

    def kernel(self, i: int) -> tuple[float, float]:
        """Forward kernel from point i+1 to point i: ``x_i = a·x_{i+1} + √var·z`` (see SDE.transition)."""
        s, sig = self.s_list, self.sigma_list
        return forward_kernel(s[i], s[i + 1], sig[i], sig[i + 1])

    @property
    def steps(self) -> int:
        return len(self.t) - 1

    @property
    def ends_at_data(self) -> bool:
        return bool(self.sigma[-1] == 0)

    def __post_init__(self) -> None:
        if self.t.ndim != 1 or len(self.t) < 2 or not (self.t.shape == self.sigma.shape == self.s.shape):
            raise ValueError("a time grid needs at least 2 points, with t and sigma of equal 1-D shape")
        if not torch.all(self.sigma[:-1] > self.sigma[1:]):
            raise ValueError(f"the {self.kind} grid is not strictly decreasing in sigma: {self.sigma.tolist()}")


def _check(sde: SDE, steps: int, t_min: float, T: float) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    for name, value in (("t_min", t_min), ("T", T)):
        if not (0 < value <= sde.T) or not math.isfinite(value):
            raise ValueError(f"{name}={value} is outside (0, T={sde.T}] of the {sde.name} SDE")
    if not t_min < T:
        raise ValueError(f"need t_min < T, got t_min={t_min}, T={T}")


def make_grid(sde: SDE, steps: int, kind: str = "uniform", *, t_min: float | None = None, T: float | None = None,
              rho: float = 7.0, denoise: bool = False) -> TimeGrid:
    """Build a grid of ``steps`` intervals from ``T`` (default ``sde.T``) down to ``t_min`` (default ``sde.t_min``).

    Kinds: ``uniform`` in t (Song et al. 2021); ``quadratic`` in t, dense near the data (Song et al.
    2021a, DDIM §D.2); ``karras`` uniform in σ^{1/ρ} (Karras et al. 2022, eq. 5); ``logsnr`` uniform
    in λ = −log σ (Lu et al. 2022, DPM-Solver §3.3); ``ddpm`` the times whose ᾱ equal DDPM's
    discrete ᾱ_i (Ho et al. 2020), for SDEs that define ``ddpm_schedule`` (VP, sub-VP, cosine): with it the
    ancestral solver is exactly Ho et al.'s chain, including its final step to the data. Because
    Π(1 − β_i) < exp(−∫β), its first time lies slightly past T (≈ 1.0034 for N = 1000).
    """
    t_min = sde.t_min if t_min is None else float(t_min)
    T = sde.T if T is None else float(T)
    _check(sde, steps, t_min, T)
    if kind == "ddpm":
        return _ddpm_grid(sde, steps)
    n = steps if denoise else steps + 1  # points before the optional data point
    u = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    t_min_, T_ = torch.tensor(t_min, dtype=torch.float64), torch.tensor(T, dtype=torch.float64)
    if kind == "uniform":
        t = T_ + u * (t_min_ - T_)
    elif kind == "quadratic":
        t = t_min_ + (T_ - t_min_) * (1 - u) ** 2
    elif kind in ("karras", "logsnr"):
        s_max, s_min = sde.sigma(T_), sde.sigma(t_min_)
        if kind == "karras":
            sig = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        else:
            sig = torch.exp(torch.log(s_max) + u * (torch.log(s_min) - torch.log(s_max)))
        t = sde.t_of_sigma(sig)
    else:
        raise UnknownNameError(f"unknown grid {kind!r}; known grids: {', '.join(GRIDS)}")
    t[0] = T_  # exact end points despite round-off
    if n > 1:
        t[-1] = t_min_
    if denoise:
        t = torch.cat([t, t.new_zeros(1)])
    return grid_from_times(sde, t, kind, denoise)


def grid_from_times(sde: SDE, t: Tensor, kind: str = "custom", ends_at_data: bool = False) -> TimeGrid:
    """A TimeGrid from decreasing times; with ``ends_at_data`` the last time stands for σ = 0."""
    sigma = sde.sigma(t)
    if ends_at_data:
        sigma[-1] = 0
    return TimeGrid(t, sigma, sde.s_of_sigma(sigma), kind)


def _ddpm_grid(sde: SDE, steps: int) -> TimeGrid:
    schedule = getattr(sde, "ddpm_schedule", None)
    if schedule is None:
        raise ValueError(f"the ddpm grid needs an SDE with a DDPM discretization (vp, subvp, cosine); "
                         f"{sde.name} has none")
    _, alphas_cumprod = schedule(steps)
    t = sde.t_of_alpha_bar(alphas_cumprod).flip(0)
    return grid_from_times(sde, torch.cat([t, t.new_zeros(1)]), "ddpm", ends_at_data=True)


def as_grid(sde: SDE, steps: int | None, grid: str | TimeGrid | Tensor, **kwargs: float | bool) -> TimeGrid:
    """Accept a grid kind, a ready TimeGrid, or a tensor of decreasing times."""
    if isinstance(grid, TimeGrid):
        return grid
    if isinstance(grid, Tensor):
        return grid_from_times(sde, grid.detach().to("cpu", torch.float64))
    if steps is None:
        raise ValueError("steps is required when the grid is given by name")
    return make_grid(sde, steps, grid, **kwargs)
