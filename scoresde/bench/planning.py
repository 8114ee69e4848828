"""Planning a benchmark sweep: run-wide settings, solver entries, one run per NFE budget (the step count whose
*declared* NFE is closest) or per tolerance, independent seeds per random stream, and the float64 reference ODE.

Reading a config into these objects is the job of the benchmark app (``scoresde-bench`` and its preset
``scoresde-compare``, :mod:`scoresde.cli.benchmark`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

import scoresde
from scoresde.distributed import DistContext

NOISE_MODES = ("generator", "per_sample")
OPTIMIZED = "optimized"  # the grid searched per solver and budget inside the sweep (scoresde.bench.grid_search)


@dataclass(frozen=True)
class SweepSettings:
    """Run-wide knobs of a sweep.

    Attributes:
        budgets: NFE budgets; each becomes the step count whose declared NFE is closest.
        grids: time grids every solver entry runs on (None: each entry's own grid); ``optimized`` is the grid
            :func:`scoresde.solvers.optimize_grid` finds for each deterministic entry and budget on a calibration
            batch (:mod:`scoresde.bench.grid_search`).
        n_samples: samples per run; they use seeds ``seed, seed + 1, …``.
        batch_size: samples per ``sample`` call (None: all at once); results do not depend on it.
        reference: options of the reference ODE (float64 ``scoresde.sample(..., "ode")``).
        metrics: which of rmse, sw, mmd, nll, fd to compute (where the problem allows).
        dist: a torchrun process group (:func:`scoresde.distributed.init_distributed`): each run's seed batches
            are split across the ranks and all-gathered, so every rank holds the samples one process would
            draw and computes the same metrics (only rank 0 writes). None or a single process: no sharding.
        noise: ``per_sample`` (sample i's x_T and solver noise from generators of its own seed: results do not
            depend on ``batch_size`` or the number of processes) or ``generator`` (one x_T draw for the whole seed
            list and one noise generator per run, from :func:`stream_seeds`: ~10× faster for stochastic solvers on
            small batches, one process only).
        floor_draws: exact sample sets each metric's floor averages over.
        grid_search_budget: the ``optimized`` grid's search cost bound (network evaluations made) in units of the run's
            NFE.
        grid_search_batch: samples in the ``optimized`` grid's calibration batch (seeds after the sweep's own).
        grid_search_validation: the share of the calibration batch the search holds out to check its grid against
            the named grid it started from (``optimize_grid``'s ``validation``).
    """

    budgets: tuple[int, ...] = (10, 20, 50)
    grids: tuple[str, ...] | None = None
    n_samples: int = 500
    seed: int = 0
    batch_size: int | None = None
    denoise: bool = True
    rho: float = 7.0
    n_data: int = 5000
    n_projections: int = 128
    reference: dict[str, Any] = field(default_factory=lambda: {"method": "dopri5", "rtol": 1e-7, "atol": 1e-7})
    metrics: tuple[str, ...] = ("rmse", "sw", "mmd", "nll", "fd")
    progress: bool = True
    dist: DistContext | None = None  # under torchrun: shard every run's seed batches across the ranks
    noise: str = "per_sample"
    floor_draws: int = 4
    grid_search_budget: float = 200.0
    grid_search_batch: int = 256
    grid_search_validation: float = 0.25

    def __post_init__(self) -> None:
        if self.n_samples < 2:
            raise ValueError(f"n_samples must be >= 2 (the metrics compare sample sets), got {self.n_samples}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or None, got {self.batch_size}")
        if not self.budgets or not all(isinstance(b, int) and b >= 1 for b in self.budgets):
            raise ValueError(f"budgets must be a non-empty list of positive integers, got {self.budgets!r}")
        if self.noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {', '.join(NOISE_MODES)}, got {self.noise!r}")
        if self.floor_draws < 2:
            raise ValueError(f"floor_draws must be >= 2 (the floors report a spread), got {self.floor_draws}")
        if self.grids is not None:
            bad = [g for g in self.grids if g not in (*scoresde.GRIDS, OPTIMIZED)]
            if bad or not self.grids:
                raise ValueError(f"unknown grids {bad or self.grids!r}; known: {', '.join(scoresde.GRIDS)}, "
                                 f"{OPTIMIZED}")
        if not (self.grid_search_budget > 0 and np.isfinite(self.grid_search_budget)):
            raise ValueError(f"grid_search_budget must be a positive number, got {self.grid_search_budget}")
        if self.grid_search_batch < 1:
            raise ValueError(f"grid_search_batch must be a positive integer, got {self.grid_search_batch}")
        if not 0.0 <= self.grid_search_validation < 1.0:
            raise ValueError(f"grid_search_validation must be a share in [0, 1), got {self.grid_search_validation}")

    @property
    def seeds(self) -> list[int]:
        """The per-sample seeds of every run."""
        return list(range(self.seed, self.seed + self.n_samples))

    @property
    def calibration_seeds(self) -> list[int]:
        """The per-sample seeds of the ``optimized`` grid's calibration batch: the ``grid_search_batch`` seeds
        after :attr:`seeds`, so the runs are evaluated on samples the search never saw."""
        start = self.seed + self.n_samples
        return list(range(start, start + self.grid_search_batch))


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
    target: tuple[float, bool] | None = None  # the reference's end, where it is not the grid's (optimized grids)
    search: dict[str, Any] | None = None  # an optimized grid's search record (scoresde.bench.grid_search)

    @property
    def optimized(self) -> bool:
        return self.entry.grid == OPTIMIZED

    @property
    def end(self) -> tuple[float, bool]:
        """(last positive time of the grid, whether it ends with the step to the data): the reference's end. An
        optimized grid, which may stop the ODE early, is measured against the ODE its search fitted: to the end
        of the named grids at the same budget."""
        if self.target is not None:
            return self.target
        g = self.grid
        t_end, T = (g.t_list[-2] if g.ends_at_data else g.t_list[-1]), g.t_list[0]
        return round(t_end / T, 12) * T, g.ends_at_data  # grids reach t_min up to round-off relative to T


def steps_for_budget(solver: scoresde.Solver, sde: scoresde.SDE, kind: str, budget: int,
                     settings: SweepSettings) -> tuple[int, scoresde.TimeGrid]:
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


def check_optimizable(entry: Entry, solver: scoresde.Solver, sde: scoresde.SDE | None = None) -> None:
    """The ``optimized`` grid is searched for deterministic solvers that step on the grid: a one-line ValueError
    naming the entry otherwise (stochastic solvers are refused: the search's objective would be noisy)."""
    probe = scoresde.make_grid(sde or scoresde.VPSDE(), 4)
    why = ("has tolerances (an adaptive run)" if entry.tolerances is not None
           else "chooses its own steps (adaptive)" if solver.declared_nfe(probe) is None
           else "is stochastic" if solver.stochastic else None)
    if why is not None:
        raise ValueError(f"the {OPTIMIZED} grid is searched for deterministic fixed-grid solvers; solvers entry "
                         f"{entry.label!r} ({entry.name}) {why}: choose such solvers (e.g. unipc, dpmpp_3m, ipndm) "
                         f"with solver=[...] or drop {OPTIMIZED} from the grids")


def plan_runs(entry: Entry, sde: scoresde.SDE, settings: SweepSettings) -> list[Run]:
    """Build the entry's solver(s) (raising the registry's errors at once) and one run per budget or tolerance.

    An ``optimized`` entry is planned on the Karras grid at each budget (its step count and declared NFE, which
    the search keeps); :class:`scoresde.bench.grid_search.GridSearches` replaces that grid by the one it finds."""
    if entry.grid == OPTIMIZED:
        check_optimizable(entry, scoresde.get_solver(entry.name, **entry.options), sde)
        named = plan_runs(replace(entry, grid="karras"), sde, settings)
        return [replace(run, entry=entry, target=run.end) for run in named]
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


def reference_solution(model: scoresde.ScoreModel, x_T: Tensor, end: tuple[float, bool],
                       settings: SweepSettings) -> tuple[Tensor, dict[str, Any]]:
    """Probability-flow ODE in float64 with a tight adaptive solver from ``x_T`` down to ``end``."""
    t_end, to_data = end
    model.reset_nfe()
    start = time.perf_counter()
    x = scoresde.sample(model, "ode", 1 + int(to_data), x_T=x_T.to(torch.float64), t_min=t_end, denoise=to_data,
                        **settings.reference)
    info = {**settings.reference, "t_end": t_end, "denoise": to_data, "nfe": model.nfe,
            "time_s": time.perf_counter() - start}
    return x, info

