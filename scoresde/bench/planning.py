"""Planning and running sampler comparisons: run-wide settings, solver entries, one run per NFE budget (the step
count whose *declared* NFE is closest), independent seeds per random stream, and the float64 reference ODE.

Shared by ``scoresde-compare`` (:mod:`scoresde.cli.compare`) and the benchmark suite (:mod:`scoresde.bench`);
reading a config into these objects is the apps' job.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

import scoresde

NOISE_MODES = ("generator", "per_sample")


@dataclass(frozen=True)
class Settings:
    """The run-wide knobs of a comparison (``compare.yaml``): budgets, batch, seeds, noise mode, grid and
    reference settings."""

    budgets: tuple[int, ...]
    batch: int
    seed: int
    noise: str
    denoise: bool
    rho: float
    n_data: int
    n_projections: int
    reference: dict[str, Any]
    progress: bool


@dataclass(frozen=True)
class Entry:
    """One line of the ``solvers`` config: a registered solver, its grid and options."""

    label: str
    name: str
    grid: str
    options: dict[str, Any]
    budgets: tuple[int, ...]
    tolerances: tuple[float, ...] | None


@dataclass(frozen=True)
class Run:
    """One sampling run: an entry at one budget (or one tolerance) with its step count and grid."""

    entry: Entry
    solver: scoresde.Solver
    options: dict[str, Any]
    steps: int
    grid: scoresde.TimeGrid
    budget: int | None
    tol: float | None

    @property
    def end(self) -> tuple[float, bool]:
        """(last positive time of the grid, whether it ends with the step to the data): the reference's end."""
        g = self.grid
        t_end, T = (g.t_list[-2] if g.ends_at_data else g.t_list[-1]), g.t_list[0]
        return round(t_end / T, 12) * T, g.ends_at_data  # grids reach t_min up to round-off relative to T


def steps_for_budget(solver: scoresde.Solver, sde: scoresde.SDE, kind: str, budget: int,
                     settings: Settings) -> tuple[int, scoresde.TimeGrid]:
    """The step count whose declared NFE on the ``kind`` grid is closest to ``budget`` (ties: the cheaper)."""
    def grid(steps: int) -> scoresde.TimeGrid:
        return scoresde.make_grid(sde, steps, kind, rho=settings.rho, denoise=settings.denoise)

    def cost(steps: int) -> int:
        return solver.declared_nfe(grid(steps))

    lo, hi = 1, 2  # find hi with cost(hi) > budget, then bisect: cost(lo) <= budget < cost(hi) (or lo = 1)
    while cost(hi) <= budget and hi < 4 * budget + 4:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid)
    best = hi if abs(cost(hi) - budget) < abs(cost(lo) - budget) else lo
    return best, grid(best)


def plan_runs(entry: Entry, sde: scoresde.SDE, settings: Settings) -> list[Run]:
    """Build the entry's solver(s) (raising the registry's errors at once) and one run per budget or tolerance."""
    if entry.tolerances is not None:
        runs = []
        steps = 1 + int(settings.denoise)
        grid = scoresde.make_grid(sde, steps, entry.grid, rho=settings.rho, denoise=settings.denoise)
        for tol in entry.tolerances:
            options = {**entry.options, "rtol": tol, "atol": tol}
            solver = scoresde.get_solver(entry.name, **options)
            if solver.declared_nfe(grid) is not None:
                raise ValueError(f"solvers entry {entry.label!r}: tolerances are for adaptive solvers; "
                                 f"{solver!r} steps on the grid, so give it budgets")
            runs.append(Run(entry, solver, options, steps, grid, None, tol))
        return runs
    solver = scoresde.get_solver(entry.name, **entry.options)
    probe = scoresde.make_grid(sde, 2, entry.grid, rho=settings.rho, denoise=settings.denoise)
    if solver.declared_nfe(probe) is None:
        raise ValueError(f"solvers entry {entry.label!r}: {solver!r} chooses its own steps; give it tolerances "
                         "instead of budgets")
    runs, chosen = [], set()
    for budget in entry.budgets:
        steps, grid = steps_for_budget(solver, sde, entry.grid, budget, settings)
        if steps not in chosen:  # two budgets may round to the same step count
            chosen.add(steps)
            runs.append(Run(entry, solver, dict(entry.options), steps, grid, budget, None))
    return runs


def stream_seeds(seed: int) -> dict[str, int]:
    """Independent seeds for each random stream, derived from one seed by NumPy's ``SeedSequence``.

    One seed reused for two streams correlates them: a solver whose noise generator had x_T's seed would
    draw x_T/std(T) again as its first noise."""
    keys = ("x_T", "noise", "data", "floor", "projections")
    return dict(zip(keys, (int(s) for s in np.random.SeedSequence(seed).generate_state(len(keys)))))


def noise_kwargs(settings: Settings) -> dict[str, Any]:
    """Arguments of ``scoresde.sample`` for the solver noise: a fresh seeded source per run, so a run does not
    depend on the runs before it (``per_sample``: sample i gets seed noise + i)."""
    seed = stream_seeds(settings.seed)["noise"]
    if settings.noise == "per_sample":
        return {"seed": seed}
    return {"seed": None, "generator": torch.Generator().manual_seed(seed)}


def reference_solution(model: scoresde.ScoreModel, x_T: Tensor, end: tuple[float, bool],
                       settings: Settings) -> tuple[Tensor, dict[str, Any]]:
    """Probability-flow ODE in float64 with a tight adaptive solver from ``x_T`` down to ``end``."""
    t_end, to_data = end
    model.reset_nfe()
    start = time.perf_counter()
    x = scoresde.sample(model, "ode", 1 + int(to_data), x_T=x_T.to(torch.float64), t_min=t_end, denoise=to_data,
                        **settings.reference)
    info = {**settings.reference, "t_end": t_end, "denoise": to_data, "nfe": model.nfe,
            "time_s": time.perf_counter() - start}
    return x, info


def execute(run: Run, model: scoresde.ScoreModel, x_T: Tensor, settings: Settings) -> tuple[Tensor, int, float]:
    """One timed ``scoresde.sample`` call; returns the samples, the measured NFE and the seconds taken."""
    model.reset_nfe()
    start = time.perf_counter()
    x = scoresde.sample(model, run.entry.name, run.steps, x_T=x_T, grid=run.entry.grid, rho=settings.rho,
                        denoise=settings.denoise, **noise_kwargs(settings), **run.options)
    return x, model.nfe, time.perf_counter() - start
