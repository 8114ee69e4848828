"""The sweep: solvers × NFE budgets × time grids × SDEs on benchmark problems.

Every run draws its samples through :func:`draw`, the one function that takes the per-sample seed list:
sample i starts from x_T seeded by its own seed and, for stochastic solvers, takes its noise from a generator
of its own (:class:`scoresde.PerSampleNoise`), so every solver starts from the same x_T and splitting the
seed list across processes gives the same samples. torchsde's methods build their Brownian path from the
same per-sample seeds (``StackedBrownian``), so euler, milstein and srk are driven by one path per sample;
the step solvers (Euler–Maruyama, reverse diffusion, ancestral, PC) consume the same per-sample noise
stream, which is the same Brownian path only on the same grid.

Budgets become step counts and the RMSE reference is the float64 dopri5 probability-flow ODE from the same
x_T (Song et al. 2021, eq. 13), both as in ``scoresde-compare`` (whose helpers are reused).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

import scoresde
from scoresde.bench.metrics import Targets, build_targets, error_to, quality
from scoresde.bench.planning import Entry, Run, Settings, plan_runs, reference_solution
from scoresde.bench.problems import Problem, noise_seed
from scoresde.distributed import DistContext, all_gather_objects, rank_batches
from scoresde.solvers.noise import PerSampleNoise

Sampler = Callable[[Tensor, Sequence[int]], Tensor]


@dataclass(frozen=True)
class SweepSettings:
    """Run-wide knobs of a sweep.

    Attributes:
        budgets: NFE budgets; each becomes the step count whose declared NFE is closest.
        grids: time grids every solver entry runs on (None: each entry's own grid).
        n_samples: samples per run; they use seeds ``seed, seed + 1, …``.
        batch_size: samples per ``sample`` call (None: all at once); results do not depend on it.
        reference: options of the reference ODE (float64 ``scoresde.sample(..., "ode")``).
        metrics: which of rmse, sw, mmd, nll, fd to compute (where the problem allows).
        dist: a torchrun process group (:func:`scoresde.distributed.init_distributed`): each run's seed batches
            are split across the ranks and all-gathered, so every rank holds the samples one process would
            draw and computes the same metrics (only rank 0 writes). None or a single process: no sharding.
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

    def __post_init__(self) -> None:
        if self.n_samples < 2:
            raise ValueError(f"n_samples must be >= 2 (the metrics compare sample sets), got {self.n_samples}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or None, got {self.batch_size}")
        if not self.budgets or not all(isinstance(b, int) and b >= 1 for b in self.budgets):
            raise ValueError(f"budgets must be a non-empty list of positive integers, got {self.budgets!r}")
        if self.grids is not None:
            bad = [g for g in self.grids if g not in scoresde.GRIDS]
            if bad or not self.grids:
                raise ValueError(f"unknown grids {bad or self.grids!r}; known: {', '.join(scoresde.GRIDS)}")

    @property
    def seeds(self) -> list[int]:
        """The per-sample seeds of every run."""
        return list(range(self.seed, self.seed + self.n_samples))

    def compare_settings(self) -> Settings:
        """The same knobs as ``scoresde-compare``'s Settings, for its planning and reference helpers."""
        return Settings(self.budgets, self.n_samples, self.seed, "per_sample", self.denoise, self.rho, self.n_data,
                        self.n_projections, dict(self.reference), self.progress)


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so a wall-clock time covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def chunks(seeds: Sequence[int], size: int | None) -> list[list[int]]:
    size = size or len(seeds)
    return [list(seeds[i:i + size]) for i in range(0, len(seeds), size)]


def _draw_batch(problem: Problem, run: Run, part: list[int], settings: SweepSettings) -> tuple[Tensor, int, float]:
    """(samples of the seeds ``part``, measured NFE, CUDA-synchronised seconds of the ``sample`` call)."""
    x_T = problem.prior(part)
    noise = PerSampleNoise([noise_seed(s) for s in part], problem.device)
    problem.model.reset_nfe()
    sync(problem.device)
    tick = time.perf_counter()
    x = scoresde.sample(problem.model, run.entry.name, run.steps, x_T=x_T, grid=run.entry.grid,
                        rho=settings.rho, denoise=settings.denoise, noise=noise, **run.options)
    sync(problem.device)
    return x, problem.model.nfe, time.perf_counter() - tick


def draw(problem: Problem, run: Run, seeds: Sequence[int], settings: SweepSettings) -> tuple[Tensor, int, float]:
    """Samples ``seeds`` of one run: (samples (n, ...), NFE of one ``sample`` call, seconds).

    Sample i starts from ``problem.prior([seeds[i]])`` and its solver noise comes from its own generator, so
    any split of ``seeds`` (batch_size, processes) gives the same samples. The time covers the sampling
    calls only (CUDA-synchronised), not drawing x_T. Under ``settings.dist`` each rank draws its batches
    (:func:`scoresde.distributed.rank_batches`; no collective inside a solve, so adaptive solvers that take
    different step counts on different ranks never wait on each other), then the batches are all-gathered in
    order; the time is the slowest rank's."""
    ctx = settings.dist
    with torch.no_grad():
        if ctx is None or not ctx.enabled:
            parts = [_draw_batch(problem, run, part, settings) for part in chunks(seeds, settings.batch_size)]
            return torch.cat([p[0] for p in parts]), max(p[1] for p in parts), sum(p[2] for p in parts)
        size = settings.batch_size or -(-len(seeds) // ctx.world_size)
        mine = [(i, _draw_batch(problem, run, part, settings))
                for i, part in rank_batches(seeds, size, ctx.rank, ctx.world_size)]
        mine = [(i, (x.cpu(), nfe, sec)) for i, (x, nfe, sec) in mine]
        gathered = all_gather_objects(mine, ctx, what=f"gathering the samples of {run.entry.label}")
    by_index = dict(pair for rank_part in gathered for pair in rank_part)
    parts = [by_index[i] for i in range(len(by_index))]
    seconds = max(sum(p[2] for _, p in rank_part) for rank_part in gathered)
    x = torch.cat([p[0] for p in parts]).to(problem.device)
    return x, max(p[1] for p in parts), seconds


def plan(entries: list[Entry], sde: scoresde.SDE, settings: SweepSettings) -> list[Run]:
    """Every entry on every grid of ``settings.grids`` (or its own) at every budget (compare's ``plan_runs``)."""
    cs = settings.compare_settings()
    runs = []
    for entry in entries:
        for grid in settings.grids or (entry.grid,):
            runs.extend(plan_runs(replace(entry, grid=grid), sde, cs))
    return runs


def run_row(problem: Problem, run: Run) -> dict[str, Any]:
    """The description of one run (its results are filled in by :func:`measure_run`)."""
    return {"problem": problem.name, "sde": problem.sde.name, "source": "scoresde", "label": run.entry.label,
            "solver": run.entry.name, "grid": run.entry.grid, "options": run.options, "budget": run.budget,
            "tol": run.tol, "steps": run.steps, "declared_nfe": run.solver.declared_nfe(run.grid),
            "stochastic": bool(run.solver.stochastic), "order": float(run.solver.order),
            "nfe": None, "time_s": None, "samples_per_s": None, "rmse": None, "error": None,
            "sw": None, "mmd": None, "nll": None, "fd": None}


def score_samples(row: dict[str, Any], x: Tensor, nfe: int, seconds: float, problem: Problem, targets: Targets,
                  reference: Tensor | None) -> dict[str, Any]:
    """Fill a row's NFE, time, throughput, RMSE to ``reference`` (if given) and quality metrics."""
    row.update(nfe=int(nfe), time_s=seconds, samples_per_s=len(x) / seconds if seconds > 0 else None)
    if reference is not None and "rmse" in targets.metrics:
        row["rmse"] = error_to(x, reference)
    row.update(quality(x, problem, targets))
    return row


class References:
    """Reference ODE solutions of one problem from the full seed list's x_T, one per end point, made on demand."""

    def __init__(self, problem: Problem, settings: SweepSettings):
        self.problem, self.settings, self.cache = problem, settings, {}
        self.x_T = problem.prior(settings.seeds)
        self.info: list[dict[str, Any]] = []

    def get(self, end: tuple[float, bool]) -> Tensor:
        if end not in self.cache:
            x, info = reference_solution(self.problem.reference_model, self.x_T, end, self.settings.compare_settings())
            self.cache[end] = x
            self.info.append({"problem": self.problem.name, "sde": self.problem.sde.name, **info})
        return self.cache[end]

    def default_end(self) -> tuple[float, bool]:
        """The end point of a uniform grid with the sweep's denoising setting (the peers' reference)."""
        g = scoresde.make_grid(self.problem.sde, 2, "uniform", denoise=self.settings.denoise)
        return Run.end.fget(Run(None, None, {}, 2, g, None, None))  # type: ignore[arg-type]  # Run.end needs the grid only


def measure_run(problem: Problem, run: Run, targets: Targets, refs: References,
                settings: SweepSettings) -> dict[str, Any]:
    """Draw the run's samples for the sweep's seeds and score them; a diverging run is recorded, not raised."""
    row = run_row(problem, run)
    try:
        x, nfe, seconds = draw(problem, run, settings.seeds, settings)
    except (FloatingPointError, ValueError) as err:  # e.g. NaN at a step, or a grid the solver refuses
        row["error"] = f"{type(err).__name__}: {err}"
        return row
    reference = refs.get(run.end) if not run.solver.stochastic and "rmse" in targets.metrics else None
    return score_samples(row, x, nfe, seconds, problem, targets, reference)


def sweep_problem(problem: Problem, entries: list[Entry], settings: SweepSettings,
                  peers: Sequence[Any] = ()) -> dict[str, Any]:
    """Every planned run (and every peer sampler) on one problem: rows, floors and reference details."""
    from tqdm.auto import tqdm

    runs = plan(entries, problem.sde, settings)
    targets = build_targets(problem, settings.metrics, settings.n_data, len(settings.seeds), settings.seed + 7919,
                            settings.n_projections)
    refs = References(problem, settings)
    rows = []
    bar = tqdm(total=len(runs) + len(peers), desc=f"scoresde-bench {problem.name}/{problem.sde.name}",
               disable=not settings.progress)
    for run in runs:
        bar.set_postfix_str(f"{run.entry.label}@{run.entry.grid} steps={run.steps}")
        rows.append(measure_run(problem, run, targets, refs, settings))
        bar.update(1)
    for peer in peers:
        bar.set_postfix_str(f"{peer.source}:{peer.method} steps={peer.steps}")
        rows.append(peer.measure(problem, targets, refs, settings))
        bar.update(1)
    bar.close()
    return {"problem": problem.name, "sde": problem.sde.name, "exact": problem.exact, "device": str(problem.device),
            "floors": targets.floors,
            "floors_std": targets.floors_std, "metrics": list(targets.metrics), "reference": refs.info, "rows": rows}
