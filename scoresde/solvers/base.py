"""The solver interface, the registry, and the step loop every single-step solver shares.

A solver is constructed from its options (all its knobs, validated at construction) and called as
``solver.sample(model, x_T, grid, noise, callback)``. It declares what it is:

- ``stochastic``;
- a deterministic solver's ``order`` (global order on the probability-flow ODE) and ``order_steps``, the
  step counts where that order is asymptotic (the convergence test fits it there);
- a stochastic solver's ``strong_orders``: strong order per noise type, as torchsde declares them
  (Euler–Maruyama: 1.0 for additive noise, 0.5 otherwise). Its ``order`` is the strong order for the noise
  of the reverse SDE, which is additive (:data:`REVERSE_NOISE`);
- what it is written in (``uses``): ``"score"`` (a step in x and t through ``ctx.predict``) or ``"denoiser"``
  (a step in x̂, σ and D or ε̂ through the σ-space term ``ctx.term``, which only such a solver is given);
- through :meth:`Solver.declared_nfe`, what a grid costs in network evaluations. NFE itself is never
  computed by a solver: the model's counting wrapper measures it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from scoresde.errors import UnknownNameError
from scoresde.models.score_model import ScoreModel
from scoresde.solvers.grids import TimeGrid
from scoresde.solvers.noise import NoiseSource, as_noise

NOISE_TYPES: tuple[str, ...] = ("additive", "diagonal", "scalar", "general")  # torchsde's names
REVERSE_NOISE = "additive"  # every SDE of scoresde is dx = f(t)x dt + g(t) dw: g depends on t only
USES: tuple[str, ...] = ("score", "denoiser")


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
    """Everything one step may need: the grid point, the noise source, a dict for multistep state and, for
    a solver that ``uses = "denoiser"``, the σ-space term (:class:`~scoresde.solvers.sigma_term.SigmaTerm`).

    ``t_batch`` holds the grid's times on the state's device, built once per run, so a step costs no
    host-to-device copy; :meth:`predict` passes the grid point's s and σ as floats to the model.
    """

    model: ScoreModel
    grid: TimeGrid
    i: int
    noise: NoiseSource
    state: dict[str, Any]
    t_batch: Tensor  # (steps + 1, B): every grid time, broadcast over the batch
    term: Any = None  # the SigmaTerm of a denoiser solver; None for a score solver

    @property
    def last(self) -> bool:
        return self.i == self.grid.steps - 1

    @property
    def t(self) -> Tensor:
        """t_i for every sample, shape (B,)."""
        return self.t_batch[self.i]

    def increment(self, like: Tensor) -> Tensor:
        """The standardized Brownian increment of this step (t_i → t_{i+1}) from the noise source."""
        return self.noise.increment(like, self.grid.t_list[self.i], self.grid.t_list[self.i + 1])

    def predict(self, x: Tensor, kind: str, j: int | None = None) -> Tensor:
        """The model's ``kind`` (score, eps, x0, v) at grid point ``j`` (default i), one evaluation."""
        j = self.i if j is None else j
        return self.model.predict(x, self.t_batch[j], kind, self.grid.s_list[j], self.grid.sigma_list[j])


class Solver(ABC):
    """Base class of all samplers. Subclasses implement :meth:`step` (or override :meth:`sample`)."""

    name: ClassVar[str] = "solver"
    stochastic: bool = False
    order_steps: tuple[int, int] = (64, 256)  # step counts where the declared order is asymptotic
    strong_orders: Mapping[str, float] = {}  # stochastic: strong order per noise type (torchsde's convention)
    uses: ClassVar[str] = "score"
    nfe_per_step: int | None = 1
    reaches_data: ClassVar[bool] = False  # True if step() itself handles a final step to σ = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # ``order = 2.0`` in a class body declares the global order; the property below serves it, so that a
        # stochastic solver's ``order`` is always its strong order for the reverse SDE's noise.
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("order")
        if isinstance(declared, (int, float)):
            cls._order = float(declared)
            delattr(cls, "order")

    _order: float = 1.0

    @property  # type: ignore[no-redef]
    def order(self) -> float:
        """Global order on the PF-ODE (deterministic), or ``strong_order(REVERSE_NOISE)`` (stochastic)."""
        return self.strong_order(REVERSE_NOISE) if self.stochastic else self._order

    @order.setter
    def order(self, value: float) -> None:
        self._order = float(value)

    def strong_order(self, noise_type: str = REVERSE_NOISE) -> float:
        """Strong order of this stochastic solver for SDEs with noise of ``noise_type``."""
        if not self.stochastic:
            raise ValueError(f"{self.name} is deterministic: it has a global order ({self.order}), no strong order")
        if noise_type not in self.strong_orders:
            raise ValueError(f"{self.name} supports the noise types {', '.join(self.strong_orders) or 'none'}, "
                             f"not {noise_type!r}")
        return float(self.strong_orders[noise_type])

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
        noise = as_noise(noise)
        guard = FiniteGuard()
        state: dict[str, Any] = {}
        t_batch = batch_times(grid, x)
        term = sigma_term(model, grid, t_batch) if self.uses == "denoiser" else None
        for i in range(grid.steps):
            x = self.advance(x, StepContext(model, grid, i, noise, state, t_batch, term))
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


def sigma_term(model: ScoreModel, grid: TimeGrid, t_batch: Tensor) -> Any:
    """The σ-space term of a run (imported here: sigma_term builds on this module)."""
    from scoresde.solvers.sigma_term import SigmaTerm
    return SigmaTerm(model, grid, t_batch)


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
    if isinstance(cls.uses, str) and cls.uses not in USES:  # (a property, as pc's, answers per instance)
        raise ValueError(f"solver {cls.name!r}: uses must be one of {', '.join(USES)}, got {cls.uses!r}")
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
