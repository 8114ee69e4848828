"""The ``optimized`` grid of a sweep: :func:`scoresde.solvers.optimize_grid` run per solver and budget.

For each deterministic fixed-grid entry and budget with grid ``optimized``, the search fits the grid's interior
noise levels to minimise the RMS distance to the probability-flow ODE solution (Song et al. 2021, eq. 13) on a
*calibration* batch drawn from the problem's own model, from the seeds after the sweep's
(:attr:`~scoresde.bench.planning.SweepSettings.calibration_seeds`); the run is then scored on the sweep's seeds,
which the search never saw, so its RMSE is a held-out error. The search starts from the best named grid at the
same declared NFE (Karras at the bench's ``rho`` among them) and keeps it when nothing beats it on the calibration
batch.

The search's cost (network evaluations and seconds, and the calibration reference's) is recorded in the run's
``grid_search`` record and never in its ``nfe`` or ``time_s``: the run's own sampling is drawn and timed after the
search, on the grid it found. One (solver, options, NFE, end point) is searched once per problem and sweep; a
second entry or budget that lands on the same search reuses it (``reused``).
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from torch import Tensor

from scoresde.bench.planning import Run, SweepSettings, reference_solution
from scoresde.bench.problems import Problem
from scoresde.solvers.grid_search import NAMED_GRIDS, optimize_grid
from scoresde.solvers.grids import grid_to_dict

KEPT = ("start", "named_errors", "start_error", "calib_error", "fit_error", "start_fit_error", "validation_error",
        "start_validation_error", "searched_fit_error", "searched_validation_error", "kept", "validation_batch",
        "evaluations", "search_nfe", "declared_search_nfe", "remembered_calls", "method", "batch")


def screened_grids(rho: float) -> tuple[str, ...]:
    """The named grids the search screens first, its Karras grid with the sweep's ``rho`` (so the named
    ``karras`` run of the same budget is among the grids it starts from)."""
    return tuple(f"karras:rho={rho:g}" if g == "karras" and rho != 7.0 else g for g in NAMED_GRIDS)


class GridSearches:
    """The optimized grids of one problem's sweep, each searched once, on one calibration batch."""

    def __init__(self, problem: Problem, settings: SweepSettings):
        self.problem, self.settings = problem, settings
        self.searches: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.references: dict[tuple[float, bool], tuple[Tensor, dict[str, Any]]] = {}
        self._x_T: Tensor | None = None

    @property
    def x_T(self) -> Tensor:
        """The calibration batch's starting noise: ``problem.prior`` of the calibration seeds."""
        if self._x_T is None:
            self._x_T = self.problem.prior(self.settings.calibration_seeds)
        return self._x_T

    def reference(self, end: tuple[float, bool]) -> Tensor:
        """The calibration batch's float64 reference ODE solution to ``end`` (the sweep's reference solver)."""
        if end not in self.references:
            x, info = reference_solution(self.problem.reference_model, self.x_T, end, self.settings)
            self.references[end] = (x, info)
        return self.references[end][0]

    def resolve(self, run: Run) -> Run:
        """``run`` on the grid the search finds for its solver and declared NFE (searched once per key); its
        ``search`` holds the record :func:`record` describes. Raises the search's ValueError (no grid fits)."""
        if not run.optimized or run.search is not None:
            return run
        nfe = run.solver.declared_nfe(run.grid)
        key = (run.solver.name, repr(sorted(run.options.items())), nfe, run.end)
        reused = key in self.searches
        if not reused:
            self.searches[key] = self.search(run, nfe)
        found = self.searches[key]
        return replace(run, grid=found["grid"], steps=found["grid"].steps,
                       search={k: v for k, v in found.items() if k != "grid"} | {"reused": reused})

    def search(self, run: Run, nfe: int) -> dict[str, Any]:
        """One :func:`~scoresde.solvers.optimize_grid` call, timed, with the record of what it found and spent."""
        reference = self.reference(run.end)
        info: dict[str, Any] = {}
        start = time.perf_counter()
        grid = optimize_grid(self.problem.model, run.solver, nfe, calib=self.x_T, reference=reference,
                             denoise=run.end[1], grids=screened_grids(self.settings.rho),
                             budget=self.settings.grid_search_budget,
                             validation=self.settings.grid_search_validation, info=info)
        seconds = time.perf_counter() - start
        ref_info = self.references[run.end][1]
        seeds = self.settings.calibration_seeds
        return {"grid": grid, **{k: info[k] for k in KEPT}, "search_s": seconds,
                "budget": self.settings.grid_search_budget, "calibration_seeds": [seeds[0], seeds[-1]],
                "reference_nfe": ref_info["nfe"], "reference_s": ref_info["time_s"],
                "found": grid_to_dict(grid, self.problem.sde)}


def record(search: dict[str, Any], heldout: float | None) -> dict[str, Any]:
    """A run's ``grid_search`` entry in bench.json: the grid found (``found``, in :func:`~scoresde.solvers.grids.
    save_grid`'s format: save it as JSON and pass ``grid=path.json`` to any app), the named grid it started from
    (``start``) and every named grid's calibration RMSE, the calibration RMSE of the found grid (``calib_rmse``)
    and its held-out RMSE on the sweep's seeds (``heldout_rmse``), and the search's cost: evaluations, declared and
    measured NFE, seconds, and the calibration reference's NFE and seconds (shared by every search of the problem).
    """
    out = dict(search)
    out["calib_rmse"], out["start_calib_rmse"] = out.pop("calib_error"), out.pop("start_error")
    out["heldout_rmse"] = heldout
    return out


__all__ = ["GridSearches", "record", "screened_grids"]
