"""The sweep: solvers × NFE budgets × time grids × SDEs on benchmark problems.

Every run draws its samples through :func:`draw`, the one function that takes the per-sample seed list:
sample i starts from x_T seeded by its own seed and, for stochastic solvers, takes its noise from a generator
of its own (:class:`scoresde.PerSampleNoise`), so every solver starts from the same x_T and splitting the
seed list across processes gives the same samples. torchsde's methods build their Brownian path from the
same per-sample seeds (``StackedBrownian``), so euler, milstein and srk are driven by one path per sample;
the step solvers (Euler–Maruyama, reverse diffusion, ancestral, PC) consume the same per-sample noise
stream, which is the same Brownian path only on the same grid.

Budgets become step counts (:mod:`scoresde.bench.planning`) and the RMSE reference is the float64 dopri5
probability-flow ODE from the same x_T (Song et al. 2021, eq. 13).

The grid ``optimized`` is searched per solver and budget before the run (:mod:`scoresde.bench.optimized`), on a
calibration batch of other seeds, so the run's RMSE is a held-out error; the search's cost is reported in the
row's ``grid_search``, not in its NFE or time.

Wall-clock columns: each run's ``sample`` calls are timed by :class:`scoresde.bench.timing.Stopwatch`
(``torch.cuda.synchronize()`` and CUDA events on a GPU, ``perf_counter`` on CPU), once per run — a sweep's
``time_s`` is a single measurement, not an interleaved median: read it as a rough cost, and compare speeds with
:func:`scoresde.bench.timing.compare`. Each problem's result records the thread count and the load average
before and after its sweep (``timing``), so a loaded machine shows in ``bench.json``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

import scoresde
from scoresde.bench.optimized import GridSearches, record
from scoresde.bench.planning import Entry, Run, SweepSettings, plan_runs, reference_solution, stream_seeds
from scoresde.bench.problems import Problem, noise_seed
from scoresde.bench.targets import Targets, build_targets, error_to, quality
from scoresde.bench.timing import Comparison, Conditions, Stopwatch, compare, load_average
from scoresde.bench.timing import sync as sync  # re-exported: bench.peers times its runs with it
from scoresde.distributed import all_gather_objects, rank_batches
from scoresde.solvers.noise import PerSampleNoise

Sampler = Callable[[Tensor, Sequence[int]], Tensor]


def chunks(seeds: Sequence[int], size: int | None) -> list[list[int]]:
    size = size or len(seeds)
    return [list(seeds[i:i + size]) for i in range(0, len(seeds), size)]


def start_noise(problem: Problem, seeds: Sequence[int], settings: SweepSettings) -> Tensor:
    """x_T of the seed list: sample i from its own seed (``per_sample``), or one draw of the whole list from the
    ``x_T`` stream of :func:`~scoresde.bench.planning.stream_seeds` (``generator``)."""
    if settings.noise == "per_sample":
        return problem.prior(seeds)
    g = torch.Generator().manual_seed(stream_seeds(settings.seed)["x_T"])
    return problem.sde.prior_sample((len(seeds), *problem.event_shape), generator=g).to(problem.device)


def _draw_batch(problem: Problem, run: Run, x_T: Tensor, noise: dict[str, Any], settings: SweepSettings
                ) -> tuple[Tensor, int, float]:
    """(samples from ``x_T``, measured NFE, CUDA-synchronised seconds of the ``sample`` call)."""
    check_resolved(run)
    problem.model.reset_nfe()
    with Stopwatch(problem.device) as watch:
        x = scoresde.sample(problem.model, run.entry.name, run.steps, x_T=x_T, grid=run.grid,
                            rho=settings.rho, denoise=settings.denoise, **noise, **run.options)
    return x, problem.model.nfe, watch.seconds


def check_resolved(run: Run) -> None:
    """An ``optimized`` run samples on the grid its search found (:class:`GridSearches`), never the plan's."""
    if run.optimized and run.search is None:
        raise RuntimeError(f"{run.entry.label}: the optimized grid is not searched yet (GridSearches.resolve)")


def _per_sample(problem: Problem, run: Run, part: list[int], settings: SweepSettings) -> tuple[Tensor, int, float]:
    noise = PerSampleNoise([noise_seed(s) for s in part], problem.device)
    return _draw_batch(problem, run, problem.prior(part), {"noise": noise}, settings)


def draw(problem: Problem, run: Run, seeds: Sequence[int], settings: SweepSettings) -> tuple[Tensor, int, float]:
    """Samples ``seeds`` of one run: (samples (n, ...), NFE of one ``sample`` call, seconds).

    ``per_sample`` noise: sample i starts from ``problem.prior([seeds[i]])`` and its solver noise comes from its
    own generator, so any split of ``seeds`` (batch_size, processes) gives the same samples. ``generator`` noise:
    x_T is :func:`start_noise` and the solver noise one generator per run (from the ``noise`` stream), so the run
    does not depend on the runs before it. The time covers the sampling calls only (CUDA-synchronised), not
    drawing x_T. Under ``settings.dist`` each rank draws its batches (:func:`scoresde.distributed.rank_batches`;
    no collective inside a solve, so adaptive solvers that take different step counts on different ranks never
    wait on each other), then the batches are all-gathered in order; the time is the slowest rank's."""
    ctx = settings.dist
    with torch.no_grad():
        if settings.noise == "generator":
            if ctx is not None and ctx.enabled:
                raise ValueError("noise=generator draws one batch in one process; use noise=per_sample under torchrun")
            x_T = start_noise(problem, seeds, settings)
            noise = {"seed": None, "generator": torch.Generator().manual_seed(stream_seeds(settings.seed)["noise"])}
            size = settings.batch_size or len(seeds)
            parts = [_draw_batch(problem, run, x_T[i:i + size], noise, settings) for i in range(0, len(seeds), size)]
            return torch.cat([p[0] for p in parts]), max(p[1] for p in parts), sum(p[2] for p in parts)
        if ctx is None or not ctx.enabled:
            parts = [_per_sample(problem, run, part, settings) for part in chunks(seeds, settings.batch_size)]
            return torch.cat([p[0] for p in parts]), max(p[1] for p in parts), sum(p[2] for p in parts)
        size = settings.batch_size or -(-len(seeds) // ctx.world_size)
        mine = [(i, _per_sample(problem, run, part, settings))
                for i, part in rank_batches(seeds, size, ctx.rank, ctx.world_size)]
        mine = [(i, (x.cpu(), nfe, sec)) for i, (x, nfe, sec) in mine]
        gathered = all_gather_objects(mine, ctx, what=f"gathering the samples of {run.entry.label}")
    by_index = dict(pair for rank_part in gathered for pair in rank_part)
    parts = [by_index[i] for i in range(len(by_index))]
    seconds = max(sum(p[2] for _, p in rank_part) for rank_part in gathered)
    x = torch.cat([p[0] for p in parts]).to(problem.device)
    return x, max(p[1] for p in parts), seconds


def time_runs(problem: Problem, runs: dict[str, Any], settings: SweepSettings, *, repeats: int = 9,
              warmup: int = 1, conditions: Conditions | None = None) -> Comparison:
    """Re-time sweep runs (:class:`~scoresde.bench.planning.Run`) and peer runs (``PeerRun``) of one problem
    against each other with :func:`scoresde.bench.timing.compare`: interleaved rounds after warm-up, every run
    on the same x_T (all of ``settings.seeds`` in one batch, :func:`start_noise`, drawn once outside the timed
    region), its noise as in :func:`draw`. ``runs`` maps a name to a run; ratios come from the result's
    :meth:`~scoresde.bench.timing.Comparison.ratio`. A sweep times each run once; this is the measurement behind
    a time ratio that is quoted."""
    seeds = list(settings.seeds)

    def ours(run: Run) -> Callable[[Tensor], Tensor]:
        def sample(x_T: Tensor) -> Tensor:
            if settings.noise == "per_sample":
                noise: dict[str, Any] = {"noise": PerSampleNoise([noise_seed(s) for s in seeds], problem.device)}
            else:
                noise = {"seed": None, "generator": torch.Generator().manual_seed(stream_seeds(settings.seed)["noise"])}
            return scoresde.sample(problem.model, run.entry.name, run.steps, x_T=x_T, grid=run.grid,
                                   rho=settings.rho, denoise=settings.denoise, **noise, **run.options)
        check_resolved(run)
        return sample

    def peer(run: Any) -> Callable[[Tensor], Tensor]:
        sampler = run.make(problem, run.steps)  # built once, outside the timed calls (as in PeerRun.draw)
        return lambda x_T: sampler(x_T, seeds)

    impls = {name: (peer(r) if hasattr(r, "make") else ours(r)) for name, r in runs.items()}
    x_T = start_noise(problem, seeds, settings)
    with torch.no_grad():
        return compare(impls, (x_T,), repeats=repeats, warmup=warmup, device=problem.device, conditions=conditions)


def plan(entries: list[Entry], sde: scoresde.SDE, settings: SweepSettings) -> list[Run]:
    """Every entry on every grid of ``settings.grids`` (or its own) at every budget or tolerance."""
    runs = []
    for entry in entries:
        for grid in settings.grids or (entry.grid,):
            runs.extend(plan_runs(replace(entry, grid=grid), sde, settings))
    return runs


def run_row(problem: Problem, run: Run) -> dict[str, Any]:
    """The description of one run (its results are filled in by :func:`measure_run`)."""
    return {"problem": problem.name, "sde": problem.sde.name, "source": "scoresde", "label": run.entry.label,
            "solver": run.entry.name, "grid": run.entry.grid, "options": run.options, "budget": run.budget,
            "tol": run.tol, "steps": run.steps, "declared_nfe": run.solver.declared_nfe(run.grid),
            "stochastic": bool(run.solver.stochastic), "order": float(run.solver.order),
            "nfe": None, "time_s": None, "samples_per_s": None, "rmse": None, "error": None,
            "sw": None, "mmd": None, "nll": None, "fd": None, "grid_search": None}


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

    def __init__(self, problem: Problem, settings: SweepSettings, targets: Targets | None = None):
        self.problem, self.settings, self.targets, self.cache = problem, settings, targets, {}
        self.x_T = start_noise(problem, settings.seeds, settings)
        self.info: list[dict[str, Any]] = []

    def get(self, end: tuple[float, bool]) -> Tensor:
        """The reference solution to ``end``; its details (and, with targets, its own quality metrics) go to
        ``info``."""
        if end not in self.cache:
            x, info = reference_solution(self.problem.reference_model, self.x_T, end, self.settings)
            self.cache[end] = x
            scores = quality(x, self.problem, self.targets) if self.targets is not None else {}
            self.info.append({"problem": self.problem.name, "sde": self.problem.sde.name, **info,
                              **{k: v for k, v in scores.items() if v is not None}})
        return self.cache[end]

    def data_end(self) -> tuple[float, bool]:
        """The ODE to t_min, then the denoising step to the data: the end of every sampler that ends at the data."""
        g = scoresde.make_grid(self.problem.sde, 2, "uniform", denoise=True)
        return Run.end.fget(Run(None, None, {}, 2, g, None, None))  # type: ignore[arg-type]  # Run.end needs the grid only

    def end_of(self, end: tuple[float, bool]) -> tuple[float, bool]:
        """The reference end a run ending at ``end`` is scored against. A run that ends at the data — whether its
        grid reaches t_min first or stops the ODE early and jumps (``stop_early``, diffusers' default grids) — is
        held against the same solution at the data, so stopping early is charged for what it skips; a run that
        stops short of the data (``denoise=false``) against the ODE at its own last time."""
        return self.data_end() if end[1] else end


def measure_run(problem: Problem, run: Run, targets: Targets, refs: References,
                settings: SweepSettings, searches: GridSearches | None = None) -> dict[str, Any]:
    """Draw the run's samples for the sweep's seeds and score them; a diverging run is recorded, not raised. An
    ``optimized`` run first gets its grid from ``searches`` (the search's cost stays out of the run's NFE and
    time; its record, with the held-out RMSE, goes to the row's ``grid_search``)."""
    row = run_row(problem, run)
    try:
        if run.optimized:
            run = (searches or GridSearches(problem, settings)).resolve(run)
            row = run_row(problem, run)
        x, nfe, seconds = draw(problem, run, settings.seeds, settings)
    except (FloatingPointError, ValueError) as err:  # e.g. NaN at a step, or a grid the solver refuses
        row["error"] = f"{type(err).__name__}: {err}"
        return row
    reference = refs.get(refs.end_of(run.end)) if not run.solver.stochastic and "rmse" in targets.metrics else None
    row = score_samples(row, x, nfe, seconds, problem, targets, reference)
    if run.search is not None:
        row["grid_search"] = record(run.search, row["rmse"])
    return row


def calibration(searches: GridSearches, settings: SweepSettings) -> dict[str, Any] | None:
    """The optimized grids' calibration batch (seeds, reference solutions and their cost), None without one."""
    if not searches.references:
        return None
    seeds = settings.calibration_seeds
    return {"seeds": [seeds[0], seeds[-1]], "batch": len(seeds), "budget": settings.grid_search_budget,
            "validation": settings.grid_search_validation,
            "searches": len(searches.searches), "reference": [info for _, info in searches.references.values()]}


def sweep_problem(problem: Problem, entries: list[Entry], settings: SweepSettings,
                  peers: Sequence[Any] = ()) -> dict[str, Any]:
    """Every planned run (and every peer sampler) on one problem: rows, floors and reference details."""
    from tqdm.auto import tqdm

    conditions = Conditions(torch.get_num_threads(), None, str(problem.device), load_before=load_average())
    runs = plan(entries, problem.sde, settings)
    targets = build_targets(problem, settings.metrics, settings.n_data, len(settings.seeds), settings.seed,
                            settings.n_projections, settings.floor_draws)
    refs = References(problem, settings, targets)
    searches = GridSearches(problem, settings)
    rows = []
    bar = tqdm(total=len(runs) + len(peers), desc=f"scoresde-bench {problem.name}/{problem.sde.name}",
               disable=not settings.progress)
    for run in runs:
        bar.set_postfix_str(f"{run.entry.label}@{run.entry.grid} steps={run.steps}")
        rows.append(measure_run(problem, run, targets, refs, settings, searches))
        bar.update(1)
    for peer in peers:
        bar.set_postfix_str(f"{peer.source}:{peer.method} steps={peer.steps}")
        rows.append(peer.measure(problem, targets, refs, settings))
        bar.update(1)
    bar.close()
    conditions.load_after = load_average()
    return {"problem": problem.name, "sde": problem.sde.name, "exact": problem.exact, "device": str(problem.device),
            "noise": settings.noise, "n_samples": len(settings.seeds), "seeds": stream_seeds(settings.seed),
            "floors": targets.floors, "floors_std": targets.floors_std, "metrics": list(targets.metrics),
            "reference": refs.info, "timing": conditions.to_dict(), "rows": rows,
            "calibration": calibration(searches, settings)}
