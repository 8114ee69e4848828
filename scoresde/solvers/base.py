"""The solver interface, the registry, and the step loop every single-step solver shares.

A solver is constructed from its options (all its knobs, validated at construction) and called as
``solver.sample(model, x_T, grid, noise, callback)``. It declares what it is: ``stochastic``, its
``order`` (global order for ODE solvers, strong order for SDE solvers), what it is written in
(``uses``: score or denoiser) and, through :meth:`Solver.declared_nfe`, what a grid costs in network
evaluations. NFE itself is never computed by a solver: the model's counting wrapper measures it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from scoresde.models.score_model import ScoreModel
from scoresde.solvers.grids import TimeGrid
from scoresde.solvers.noise import GeneratorNoise, NoiseSource


@dataclass
class StepInfo:
    """What a solver reports after each step through the callback (DESIGN.md, boundary 5)."""

    step: int
    steps: int
    t: float
    t_next: float
    x: Tensor


Callback = Callable[[StepInfo], None]


@dataclass
class StepContext:
    """Everything one step may need: the grid point, the noise source, and a dict for multistep state."""

    model: ScoreModel
    grid: TimeGrid
    i: int
    noise: NoiseSource
    state: dict[str, Any]

    @property
    def last(self) -> bool:
        return self.i == self.grid.steps - 1

    def times(self, x: Tensor) -> tuple[Tensor, float, float]:
        """(t_i broadcast to the batch, σ_i, σ_{i+1})."""
        sig = self.grid.sigma_list
        t = torch.full((x.shape[0],), self.grid.t_list[self.i], device=x.device, dtype=x.dtype)
        return t, sig[self.i], sig[self.i + 1]


class Solver(ABC):
    """Base class of all samplers. Subclasses implement :meth:`step` (or override :meth:`sample`)."""

    name: ClassVar[str] = "solver"
    stochastic: bool = False
    order: float = 1.0
    uses: ClassVar[str] = "score"
    nfe_per_step: int | None = 1
    reaches_data: ClassVar[bool] = False  # True if step() itself handles a final step to σ = 0

    def options(self) -> dict[str, Any]:
        """The knobs this instance was built with (for tables and configs)."""
        return {}

    def declared_nfe(self, grid: TimeGrid) -> int | None:
        """Network evaluations this solver declares for ``grid`` (None where it is adaptive)."""
        if self.nfe_per_step is None:
            return None
        return self.nfe_per_step * grid.steps - (self.nfe_per_step - 1) * int(grid.ends_at_data)

    def sample(self, model: ScoreModel, x: Tensor, grid: TimeGrid, noise: NoiseSource | None = None,
               callback: Callback | None = None) -> Tensor:
        """Integrate from ``x`` at ``grid.t[0]`` to the end of the grid and return the final state."""
        check_start(x, grid, model)
        noise = noise if noise is not None else GeneratorNoise()
        guard = FiniteGuard(x)
        state: dict[str, Any] = {}
        for i in range(grid.steps):
            x = self.advance(x, StepContext(model, grid, i, noise, state))
            guard.update(x, i)
            if callback is not None:
                callback(StepInfo(i, grid.steps, grid.t_list[i], grid.t_list[i + 1], x))
        guard.check(self.name, grid)
        return x

    def advance(self, x: Tensor, ctx: StepContext) -> Tensor:
        """One grid interval: :meth:`step`, or the denoising step ``x ← D(x)`` into σ = 0 for solvers
        whose step does not reach the data by itself."""
        if ctx.grid.sigma_list[ctx.i + 1] == 0 and not self.reaches_data:
            return ctx.model.x0(x, ctx.times(x)[0])
        return self.step(x, ctx)

    @abstractmethod
    def step(self, x: Tensor, ctx: StepContext) -> Tensor:
        """One step from ``grid.t[i]`` to ``grid.t[i+1]``."""

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


def check_start(x: Tensor, grid: TimeGrid, model: ScoreModel) -> None:
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError(f"x must be a batch tensor of shape (B, ...), got {getattr(x, 'shape', type(x).__name__)}")
    T = model.sde.T
    slack = 0.01 if grid.kind == "ddpm" else 1e-9  # DDPM's Π(1−β_i) < exp(−∫β): its t_0 is ≈ 1.0034
    if grid.t[0] > T * (1 + slack) or not bool((grid.t[:-1] > 0).all()) or not bool(grid.sigma.isfinite().all()):
        raise ValueError(f"grid times must lie in (0, T={T}] of the {model.sde.name} SDE, "
                         f"got {grid.t[0].item():.6g} … {grid.t[-1].item():.6g}")


class FiniteGuard:
    """Finds the first step that produced a non-finite value without a host sync per step."""

    def __init__(self, like: Tensor):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=like.device)

    def update(self, x: Tensor, i: int) -> None:
        bad = ~torch.isfinite(x).all()
        self.first_bad = torch.where(bad & (self.first_bad < 0), torch.full_like(self.first_bad, i), self.first_bad)

    def check(self, solver: str, grid: TimeGrid) -> None:
        i = int(self.first_bad)
        if i >= 0:
            raise FloatingPointError(
                f"{solver}: non-finite values (NaN or inf) appeared at step {i} of {grid.steps}, "
                f"going from t={float(grid.t[i]):.6g} (sigma={float(grid.sigma[i]):.6g}) to "
                f"t={float(grid.t[i + 1]):.6g}; check the model's output near this t")


# ---- registry -----------------------------------------------------------------------------------
SOLVERS: dict[str, type[Solver]] = {}


def register(cls: type[Solver]) -> type[Solver]:
    """Class decorator: add a solver to the registry under ``cls.name``."""
    if cls.name in SOLVERS:
        raise ValueError(f"a solver named {cls.name!r} is already registered")
    SOLVERS[cls.name] = cls
    return cls


def get_solver(name: str | Solver, **options: Any) -> Solver:
    """Build a registered solver by name with its options (or pass a ready solver through)."""
    if isinstance(name, Solver):
        if options:
            raise ValueError("options cannot be given together with a ready solver instance")
        return name
    if name not in SOLVERS:
        raise KeyError(f"unknown solver {name!r}; registered solvers: {', '.join(sorted(SOLVERS))}")
    try:
        return SOLVERS[name](**options)
    except TypeError as err:
        raise TypeError(f"solver {name!r}: {err}") from None
