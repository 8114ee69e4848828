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

from scoresde.errors import UnknownNameError
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
    """Everything one step may need: the grid point, the noise source, and a dict for multistep state.

    ``t_batch`` holds the grid's times on the state's device, built once per run, so a step costs no
    host-to-device copy; :meth:`predict` passes the grid point's s and σ as floats to the model.
    """

    model: ScoreModel
    grid: TimeGrid
    i: int
    noise: NoiseSource
    state: dict[str, Any]
    t_batch: Tensor  # (steps + 1, B): every grid time, broadcast over the batch

    @property
    def last(self) -> bool:
        return self.i == self.grid.steps - 1

    @property
    def t(self) -> Tensor:
        """t_i for every sample, shape (B,)."""
        return self.t_batch[self.i]

    def times(self, x: Tensor) -> tuple[Tensor, float, float]:
        """(t_i broadcast to the batch, σ_i, σ_{i+1})."""
        sig = self.grid.sigma_list
        return self.t_batch[self.i], sig[self.i], sig[self.i + 1]

    def predict(self, x: Tensor, kind: str, j: int | None = None) -> Tensor:
        """The model's ``kind`` (score, eps, x0, v) at grid point ``j`` (default i), one evaluation."""
        j = self.i if j is None else j
        return self.model.predict(x, self.t_batch[j], kind, self.grid.s_list[j], self.grid.sigma_list[j])

    def x0_eps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(x₀, ε) at grid point i from one evaluation."""
        return self.model.x0_eps(x, self.t, self.grid.s_list[self.i], self.grid.sigma_list[self.i])


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
        guard = FiniteGuard()
        state: dict[str, Any] = {}
        t_batch = batch_times(grid, x)
        for i in range(grid.steps):
            x = self.advance(x, StepContext(model, grid, i, noise, state, t_batch))
            guard.update(x, i)
            if callback is not None:
                callback(StepInfo(i, grid.steps, grid.t_list[i], grid.t_list[i + 1], x))
        guard.check(self.name, grid)
        return x

    def advance(self, x: Tensor, ctx: StepContext) -> Tensor:
        """One grid interval: :meth:`step`, or the denoising step ``x ← D(x)`` into σ = 0 for solvers
        whose step does not reach the data by itself."""
        if ctx.grid.sigma_list[ctx.i + 1] == 0 and not self.reaches_data:
            return ctx.predict(x, "x0")
        return self.step(x, ctx)

    @abstractmethod
    def step(self, x: Tensor, ctx: StepContext) -> Tensor:
        """One step from ``grid.t[i]`` to ``grid.t[i+1]``."""

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


def batch_times(grid: TimeGrid, x: Tensor) -> Tensor:
    """The grid's times on ``x``'s device and dtype, expanded over the batch: shape (steps + 1, B)."""
    return grid.t.to(device=x.device, dtype=x.dtype)[:, None].expand(-1, x.shape[0])


def check_start(x: Tensor, grid: TimeGrid, model: ScoreModel) -> None:
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError(f"x must be a batch tensor of shape (B, ...), got {getattr(x, 'shape', type(x).__name__)}")
    T = model.sde.T
    slack = 0.01 if grid.kind == "ddpm" else 1e-9  # DDPM's Π(1−β_i) < exp(−∫β): its t_0 is ≈ 1.0034
    if grid.t[0] > T * (1 + slack) or not bool((grid.t[:-1] > 0).all()) or not bool(grid.sigma.isfinite().all()):
        raise ValueError(f"grid times must lie in (0, T={T}] of the {model.sde.name} SDE, "
                         f"got {grid.t[0].item():.6g} … {grid.t[-1].item():.6g}")


class FiniteGuard:
    """Finds the first step that produced a NaN or inf, with no host sync per step: each step keeps
    the sum of its state (NaN and inf carry into a sum; one reduction, no boolean temporary) and the
    sums are checked once, at the end."""

    def __init__(self) -> None:
        self.sums: list[Tensor] = []
        self.steps: list[int] = []

    def update(self, x: Tensor, i: int) -> None:
        self.sums.append(x.sum())
        self.steps.append(i)

    def check(self, solver: str, grid: TimeGrid) -> None:
        if not self.sums:
            return
        bad = ~torch.isfinite(torch.stack(self.sums))
        if bool(bad.any()):
            i = self.steps[int(bad.nonzero()[0])]
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
        raise UnknownNameError(f"unknown solver {name!r}; registered solvers: {', '.join(sorted(SOLVERS))}")
    try:
        return SOLVERS[name](**options)
    except TypeError as err:
        raise TypeError(f"solver {name!r}: {err}") from None
