"""Time grids: the decreasing sequence of times (and noise levels) a solver steps through.

A grid of ``steps`` intervals holds ``steps + 1`` times ``T = t_0 > t_1 > … > t_N``. With
``denoise=True`` the last point is the data itself (σ = 0) and the last interval is the final
denoising step ``x ← D(x; σ_{N−1})`` (Karras et al. 2022, Alg. 2 appends σ_N = 0; Song et al.'s
``noise_removal``). Grids are computed once, in float64, on the CPU.

Stopping early (diffusers' default grids): ``t_end=`` or ``sigma_end=`` ends the ODE at that point of the named
spacing and jumps to the data with the denoiser; the kind ``stop_early`` is diffusers' ``linspace`` layout. A
grid is also named by a spec string, ``"kind:key=value,…"`` (``"karras:sigma_end=0.05"``,
``"polynomial:kappa=3"``), or by a JSON file written by :func:`save_grid` (``"path/to/grid.json"``), which
is how the apps and :func:`scoresde.sample` pass grids through.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from scoresde.errors import UnknownNameError
from scoresde.sde.base import SDE, forward_kernel

GRIDS: tuple[str, ...] = ("uniform", "quadratic", "polynomial", "karras", "logsnr", "stop_early", "ddpm")
GRID_FORMAT = "scoresde.grid/1"


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
              rho: float = 7.0, denoise: bool = False, kappa: float = 2.0, t_end: float | None = None,
              sigma_end: float | None = None) -> TimeGrid:
    """Build a grid of ``steps`` intervals from ``T`` (default ``sde.T``) down to ``t_min`` (default ``sde.t_min``).

    Kinds: ``uniform`` in t (Song et al. 2021); ``quadratic`` in t, dense near the data (Song et al.
    2021a, DDIM §D.2); ``polynomial`` uniform in t^{1/κ} (``kappa``; DEIS's "time-quadratic" is κ = 2, Zhang &
    Chen 2023, §5); ``karras`` uniform in σ^{1/ρ} (Karras et al. 2022, eq. 5); ``logsnr`` uniform
    in λ = −log σ (Lu et al. 2022, DPM-Solver §3.3); ``stop_early`` diffusers' default ``linspace`` layout: the
    uniform grid of ``steps`` intervals from T to t_min whose last interval is replaced by the denoiser's jump
    to the data (the ODE stops at t_min + (T − t_min)/steps); ``ddpm`` the times whose ᾱ equal DDPM's
    discrete ᾱ_i (Ho et al. 2020), for SDEs that define ``ddpm_schedule`` (VP, sub-VP, cosine): with it the
    ancestral solver is exactly Ho et al.'s chain, including its final step to the data. Because
    Π(1 − β_i) < exp(−∫β), its first time lies slightly past T (≈ 1.0034 for N = 1000).

    ``t_end`` (or ``sigma_end``, through t(σ)) stops the ODE early: the ``kind`` spacing runs from T to t_end and
    the last of the ``steps`` intervals jumps from there to the data (σ = 0) with the denoiser, as diffusers'
    grids do; it stands for ``t_min=t_end, denoise=True``.
    """
    if t_end is not None or sigma_end is not None:
        if sum(v is not None for v in (t_min, t_end, sigma_end)) > 1:
            raise ValueError("give at most one of t_min, t_end and sigma_end")
        if sigma_end is not None:
            if not (sigma_end > 0 and math.isfinite(sigma_end)):
                raise ValueError(f"sigma_end must be a positive number, got {sigma_end}")
            t_end = float(sde.t_of_sigma(torch.tensor(float(sigma_end), dtype=torch.float64)))
        t_min, denoise = t_end, True
    t_min = sde.t_min if t_min is None else float(t_min)
    T = sde.T if T is None else float(T)
    _check(sde, steps, t_min, T)
    if kind == "ddpm":
        return _ddpm_grid(sde, steps)
    if kind == "stop_early":
        if steps < 2:
            raise ValueError("the stop_early grid needs steps >= 2 (the last step is the jump to the data)")
        t = torch.linspace(T, t_min, steps + 1, dtype=torch.float64)[:-1]
        return grid_from_times(sde, torch.cat([t, t.new_zeros(1)]), kind, ends_at_data=True)
    if kind == "polynomial" and not (kappa > 0 and math.isfinite(kappa)):
        raise ValueError(f"kappa must be a positive number, got {kappa}")
    n = steps if denoise else steps + 1  # points before the optional data point
    u = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    t_min_, T_ = torch.tensor(t_min, dtype=torch.float64), torch.tensor(T, dtype=torch.float64)
    if kind == "uniform":
        t = T_ + u * (t_min_ - T_)
    elif kind == "quadratic":
        t = t_min_ + (T_ - t_min_) * (1 - u) ** 2
    elif kind == "polynomial":
        t = (T_ ** (1 / kappa) + u * (t_min_ ** (1 / kappa) - T_ ** (1 / kappa))) ** kappa
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


SPEC_KEYS = {"rho": float, "kappa": float, "t_min": float, "T": float, "t_end": float, "sigma_end": float,
             "denoise": lambda v: {"true": True, "false": False}[v.lower()]}


def parse_grid_spec(spec: str) -> tuple[str, dict[str, float | bool]]:
    """``"kind:key=value,…"`` → (kind, options); keys: rho, kappa, t_min, T, t_end, sigma_end, denoise."""
    kind, _, rest = spec.partition(":")
    options: dict[str, float | bool] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in SPEC_KEYS:
            raise ValueError(f"grid {spec!r}: expected 'kind:key=value,…' with keys {', '.join(SPEC_KEYS)}; "
                             f"got {item!r}")
        try:
            options[key] = SPEC_KEYS[key](value.strip())
        except (ValueError, KeyError):
            raise ValueError(f"grid {spec!r}: bad value {value!r} for {key}") from None
    return kind.strip(), options


def as_grid(sde: SDE, steps: int | None, grid: str | TimeGrid | Tensor, **kwargs: float | bool) -> TimeGrid:
    """Accept a grid kind or spec (``"karras:sigma_end=0.05"``), a JSON file of :func:`save_grid`, a ready
    TimeGrid, or a tensor of decreasing times. Options in a spec override ``kwargs``; a saved grid brings its
    own steps and ignores ``steps`` and ``kwargs``."""
    if isinstance(grid, TimeGrid):
        return grid
    if isinstance(grid, Tensor):
        return grid_from_times(sde, grid.detach().to("cpu", torch.float64))
    if isinstance(grid, str) and grid.endswith(".json"):
        return load_grid(sde, grid)
    if steps is None:
        raise ValueError("steps is required when the grid is given by name")
    kind, options = parse_grid_spec(grid)
    if {"t_end", "sigma_end"} & set(options):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("t_min", "denoise")}
    return make_grid(sde, steps, kind, **{**kwargs, **options})


def grid_to_dict(grid: TimeGrid, sde: SDE | None = None, **meta: object) -> dict:
    """A JSON-able description of ``grid`` (σ's, times, the SDE's name) with free-form ``meta``."""
    return {"format": GRID_FORMAT, "kind": grid.kind, "sde": None if sde is None else sde.name,
            "steps": grid.steps, "ends_at_data": grid.ends_at_data, "t": grid.t_list, "sigma": grid.sigma_list,
            "meta": meta}


def grid_from_dict(sde: SDE, data: dict) -> TimeGrid:
    """The grid of :func:`grid_to_dict` on ``sde``: its own times when it was made for an SDE of this name,
    otherwise t(σ) of ``sde`` (σ-space solvers see the same σ's either way)."""
    if not isinstance(data, dict) or data.get("format") != GRID_FORMAT:
        raise ValueError(f"not a saved scoresde grid (format {GRID_FORMAT!r})")
    sigma = torch.tensor(data["sigma"], dtype=torch.float64)
    ends = bool(data["ends_at_data"])
    if data.get("sde") == sde.name:
        t = torch.tensor(data["t"], dtype=torch.float64)
    else:
        t = sde.t_of_sigma(sigma.clamp_min(1e-300))
        if ends:
            t[-1] = 0.0
    if len(t) != len(sigma) or not torch.isfinite(t).all():
        raise ValueError(f"the saved grid's σ's {data['sigma']} lie outside the {sde.name} SDE")
    grid = grid_from_times(sde, t, str(data.get("kind", "custom")), ends)
    if data.get("sde") == sde.name and not torch.allclose(grid.sigma, sigma, rtol=1e-9, atol=0):
        raise ValueError(f"the saved grid's σ's do not match σ(t) of this {sde.name} SDE (other parameters?)")
    return grid


def save_grid(grid: TimeGrid, path: str, sde: SDE | None = None, **meta: object) -> None:
    """Write ``grid`` as JSON (``grid=path.json`` loads it back in :func:`scoresde.sample` and the apps)."""
    with open(path, "w") as f:
        json.dump(grid_to_dict(grid, sde, **meta), f, indent=1)


def load_grid(sde: SDE, path: str) -> TimeGrid:
    """Read a grid written by :func:`save_grid` for ``sde``."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"no grid file {path!r}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a JSON grid ({err})") from None
    return grid_from_dict(sde, data)
