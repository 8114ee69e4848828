"""Time grids optimized per solver and budget: :func:`optimize_grid`.

At 5–20 NFE the grid matters as much as the solver (AYS, Sabour et al. 2024; GITS, Chen et al. 2024). Here a
grid is fitted the simplest honest way: the RMS distance between a solver's samples and a tight probability-flow
ODE solution from the same starting noise, on a calibration batch drawn from the model itself (no data), is
minimised over the grid's interior noise levels, derivative-free, within a fixed budget of network evaluations.

The budget counts network evaluations, not solves. The solves of a search share their first steps whenever a move
leaves the grid's first points where they were, and those steps' model calls are answered from memory
(:class:`~scoresde.models.memo.MemoModel`, exact: the same x and t give the model's own answer). The last stage of
the search is built to profit: it moves one noise level at a time (:func:`refine_points`), so a move of a late point
costs only the evaluations from that point on.

On problems whose samples fall into sharp modes (an ideal denoiser over a few thousand images, Gaussians of
width 0.05) that error is dominated by the few samples that end in another mode than the ODE's, and a search on a
few hundred samples can fit exactly those. So part of the calibration batch is held out of the fit, and the searched
grid must beat the named grid it started from there too (``validation``); a larger calibration batch costs no
more network evaluations, only time (RESULTS.md §8 measures both).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from scoresde.models.memo import MemoModel
from scoresde.models.score_model import ScoreModel
from scoresde.solvers.base import Solver, get_solver
from scoresde.solvers.grids import TimeGrid, as_grid, grid_from_times, make_grid
from scoresde.solvers.noise import make_noise

NAMED_GRIDS: tuple[str, ...] = ("karras", "logsnr", "polynomial", "quadratic", "uniform", "stop_early")
METHODS = ("Nelder-Mead", "Powell")


STOPS = 5  # stop points tried per named grid (σ_end = σ_lo·(σ_max/σ_lo)^{k/8}, k < STOPS)


def budget_grid(solver: Solver, sde: Any, nfe: int, spec: str, denoise: bool) -> TimeGrid | None:
    """The grid named by ``spec`` (``"karras"``, ``"karras:sigma_end=0.1"``) with the most steps whose declared
    cost is at most ``nfe`` (None if there is none)."""
    for steps in range(nfe, 0, -1):
        try:
            grid = as_grid(sde, steps, spec, denoise=denoise)
        except ValueError:
            continue
        cost = solver.declared_nfe(grid)
        if cost is not None and cost <= nfe:
            return grid
    return None


def screening_specs(grids: Sequence[str], denoise: bool, log_lo: float, log_hi: float) -> list[str]:
    """The named grids (names or specs, ``"karras:rho=5"``), and for grids that end at the data each also stopped
    early at :data:`STOPS` − 1 higher σ_end (a coarse search over where the ODE stops, which a local search from
    σ_lo seldom finds)."""
    specs = []
    for spec in grids:
        specs.append(spec)
        sep = "," if ":" in spec else ":"  # a spec with options already ("karras:rho=5") takes one more
        if denoise and spec.partition(":")[0] not in ("stop_early", "ddpm"):
            specs += [f"{spec}{sep}sigma_end={math.exp(log_lo + (log_hi - log_lo) * k / 8):.6g}"
                      for k in range(1, STOPS)]
    return specs


def logits_of(grid: TimeGrid, log_lo: float) -> np.ndarray:
    """Logits z with ``softmax(z)`` = the grid's increments of log σ from σ_0 down to σ_lo (the last increment
    is the gap σ_{N−1} → σ_lo of a grid ending at the data). Increments are floored at 1e-3 of the range so the
    search can move every point."""
    pos = np.log(np.array([s for s in grid.sigma_list if s > 0]))
    inc = -np.diff(np.append(pos, log_lo)) if grid.ends_at_data else -np.diff(pos)
    inc = np.maximum(inc, 1e-3 * (pos[0] - log_lo))
    return np.log(inc / inc.sum())


def grid_of_points(sde: Any, log_sigmas: np.ndarray, log_hi: float, ends_at_data: bool, T: float,
                   t_min: float) -> TimeGrid:
    """The grid through σ(T) = e^{log_hi} and the noise levels ``exp(log_sigmas)`` (then the jump to the data, or
    t_min as the last time). Built point by point, so two grids that share their first points share them bit for
    bit (and the solver's states and model calls up to there, which :class:`MemoModel` then answers). Raises
    ValueError unless the noise levels decrease strictly."""
    sigma = torch.tensor(np.exp(np.concatenate([[log_hi], log_sigmas])), dtype=torch.float64)
    if not bool((sigma[1:] < sigma[:-1]).all()):  # two points merged at round-off: a step of length 0
        raise ValueError("grid_of_points: the noise levels must decrease strictly")
    t = sde.t_of_sigma(sigma)
    t[0] = T
    if ends_at_data:
        t = torch.cat([t, t.new_zeros(1)])
    else:
        t[-1] = t_min
    return grid_from_times(sde, t, "optimized", ends_at_data)


def grid_of(sde: Any, z: np.ndarray, log_hi: float, log_lo: float, ends_at_data: bool, T: float,
            t_min: float) -> TimeGrid:
    """The monotone grid of logits z: ``log σ_k = log σ_0 − (log σ_0 − log σ_lo)·Σ_{j≤k} softmax(z)_j``."""
    w = np.exp(z - z.max())
    logs = log_hi - (log_hi - log_lo) * np.cumsum(w / w.sum())
    return grid_of_points(sde, logs[:-1] if ends_at_data else logs, log_hi, ends_at_data, T, t_min)


def reference_solution(model: ScoreModel, x_T: Tensor, ends_at_data: bool, rtol: float = 1e-8) -> Tensor:
    """The probability-flow ODE from T to t_min by dopri5 at rtol = atol = ``rtol`` (then the denoiser's jump to
    the data for a grid that ends there)."""
    sde = model.sde
    t = torch.tensor([sde.T, sde.t_min] + ([0.0] if ends_at_data else []), dtype=torch.float64)
    ode = get_solver("ode", method="dopri5", rtol=rtol, atol=rtol)
    return ode.sample(model, x_T, grid_from_times(sde, t, "reference", ends_at_data))


@dataclass(frozen=True)
class Rows:
    """The calibration batch's split: the first ``fit`` rows are searched on, the last ``validation`` rows are not."""

    fit: int
    validation: int


def split_rows(batch: int, validation: float) -> Rows:
    """``round(validation·batch)`` validation rows, at least one when ``validation`` > 0 and the batch has two rows,
    and always at least one fit row."""
    held = min(max(round(validation * batch), 1 if validation > 0 else 0), batch - 1) if batch > 1 else 0
    return Rows(batch - held, held)


@dataclass(frozen=True)
class Errors:
    """RMS errors of one solve of the calibration batch: on the fit rows, the validation rows and all of them
    (non-finite samples count as an infinite error)."""

    fit: float
    validation: float
    all: float

    @property
    def validation_rmse(self) -> float | None:
        return None if math.isnan(self.validation) else self.validation

    @staticmethod
    def of(x: Tensor, reference: Tensor, rows: Rows) -> Errors:
        sq = (x - reference).double().pow(2).reshape(x.shape[0], -1).mean(dim=1)
        sq = torch.where(torch.isfinite(sq), sq, torch.full_like(sq, math.inf))

        def rmse(part: Tensor) -> float:
            return part.mean().sqrt().item() if part.numel() else math.nan

        return Errors(rmse(sq[: rows.fit]), rmse(sq[rows.fit:]), rmse(sq))


COARSE = 4  # smooth directions of the first search stage
STAGES = (0.35, 0.6)  # shares of the budget at which the coarse and the full simplex stages end; the point-by-point
# stage (refine_points) runs to the end of the budget


def coarse_basis(n: int, k: int = COARSE) -> np.ndarray:
    """(n, min(n, k)) piecewise-linear hat functions over the increment index: a change of the logits along a
    column moves a whole stretch of the grid smoothly. With n ≤ k the identity (every logit is its own direction)."""
    if n <= k:
        return np.eye(n)
    knots = np.linspace(0.0, n - 1.0, k)
    return np.stack([np.interp(np.arange(n), knots, np.eye(k)[j]) for j in range(k)], axis=1)


def search(objective: Any, dims: int, method: str, maxfev: int) -> Any:
    """scipy's ``minimize`` of ``objective`` over ``dims`` coefficients from 0 with at most ``maxfev`` evaluations:
    Nelder–Mead (adaptive, initial simplex ±0.5 along each coefficient) or Powell."""
    options: dict[str, Any] = {"maxfev": maxfev}
    if method == "Nelder-Mead":
        options.update(adaptive=True, xatol=1e-4, fatol=1e-5,
                       initial_simplex=np.vstack([np.zeros(dims)] + [0.5 * e for e in np.eye(dims)]))
    return minimize(objective, np.zeros(dims), method=method, options=options)


class BudgetSpent(Exception):
    """Raised by the objective when one more solve could take the search past its bound."""


def refine_points(objective: Any, log_sigmas: np.ndarray, log_hi: float, log_lo: float, movable: int,
                  step: float = 0.5, tol: float = 1e-3) -> None:
    """Move the grid's noise levels one at a time, the others fixed (a compass search, Kolda, Lewis & Torczon 2003,
    on one coordinate at a time; Align Your Steps, Sabour et al. 2024, also refines its schedule one time step at
    a time). Point k lives between its neighbours as ``u = (log σ_{k−1} − log σ_k)/(log σ_{k−1} − log σ_{k+1})``,
    searched in logit(u) (u held in [0.001, 0.999], as :func:`logits_of` floors increments), so every move keeps the
    grid strictly decreasing; a move of ±``step`` that lowers the objective is taken and that point's step grows by
    1.5, else it halves. Sweeps run from the last point to the first, since with the model's evaluations remembered
    a move of point k costs only the evaluations from k on, until every step is below ``tol`` or ``objective``
    raises :class:`BudgetSpent`. ``objective(log_sigmas)`` returns the error (lower is better) and keeps the best
    point itself. With nothing ``movable`` it does nothing."""
    if movable < 1:
        return
    points = np.array(log_sigmas, dtype=np.float64)
    steps = np.full(movable, step)
    current = objective(points)
    while steps.max() >= tol:
        for k in reversed(range(movable)):
            upper = points[k - 1] if k > 0 else log_hi
            lower = points[k + 1] if k + 1 < len(points) else log_lo
            u = min(max((upper - points[k]) / (upper - lower), 1e-3), 1 - 1e-3)  # σ_k = σ_min (u = 1) can move too
            logit = math.log(u / (1 - u))
            for sign in (1.0, -1.0):
                trial = points.copy()
                trial[k] = upper - (upper - lower) * 0.5 * (1 + math.tanh(0.5 * (logit + sign * steps[k])))  # sigmoid
                value = objective(trial)
                if value < current:
                    points, current = trial, value
                    steps[k] *= 1.5
                    break
            else:
                steps[k] *= 0.5


def optimize_grid(model: ScoreModel, solver: str | Solver, nfe: int, shape: Sequence[int] | None = None, *,
                  reference: Tensor | None = None, calib: Tensor | None = None, seed: int = 0,
                  denoise: bool = True, grids: Sequence[str] = NAMED_GRIDS, budget: float = 200.0,
                  method: str = "Nelder-Mead", rtol: float = 1e-8, dtype: torch.dtype = torch.float64,
                  validation: float = 0.25, info: dict | None = None, **solver_options: Any) -> TimeGrid:
    """The grid for ``solver`` at ``nfe`` network evaluations that minimises the RMS error to the ODE solution.

    Args:
        model: the score model; the calibration batch starts from its SDE's prior (no data needed).
        solver: a deterministic registered solver (name or instance; ``solver_options`` go to it).
        nfe: the budget of one sampling run (the grid's steps follow from the solver's declared cost).
        shape: the calibration batch shape (B, ...), drawn with per-sample seeds ``seed, seed + 1, …``.
        reference: the reference end states of the calibration batch; default: :func:`reference_solution`.
        calib: the calibration batch x_T itself (instead of ``shape`` and ``seed``).
        denoise: search grids that end with the denoiser's jump to the data (the few-step setting; the interior
            points then include where the ODE stops) or grids that end at t_min.
        grids: the named grids tried first (for ``denoise``, each also stopped early at 4 higher σ_end); the
            search starts from the best of them on the calibration batch (``info["start"]`` names it).
        budget: the search's cost bound in units of ``nfe``: screening plus optimisation make at most ``budget·nfe``
            network evaluations (model calls answered from memory are not evaluations; a solve is started only if it
            fits the bound with none of its calls remembered; the named grids are screened even where that alone
            takes more; the reference solve is counted apart, in ``info``).
        method: scipy's derivative-free ``Nelder-Mead`` (adaptive, initial simplex of ±0.5 in the logits)
            or ``Powell``; both deterministic, so the result is reproducible from ``seed``. The search runs in three
            stages (:data:`STAGES`): to 35 % of the budget along :data:`COARSE` smooth directions
            (:func:`coarse_basis`: hat functions over the step index, so a 20-step grid is first bent as a whole,
            where a 20-dimensional simplex would spend its budget on its first few moves), to 60 % on every logit
            from the best point found, and the rest one noise level at a time (:func:`refine_points`), where the
            remembered calls make each move cheap.
        validation: the share of the calibration batch (its last rows) the search never fits: the start grid is the
            named grid best on the other rows (the *fit* rows), the search minimises the error on the fit rows only,
            and its grid is returned only if it is also better than the start grid on the validation rows; else the
            start grid is (a guard against overfitting: on sharp-mode problems a search on a few hundred samples can
            fit which of them cross between modes, and lose on samples it never saw). 0 fits the whole batch and keeps
            the found grid whenever it beats the start on it. Each run is still one solve of the whole batch, so the
            split costs no evaluation.
        info: a dict to fill with the start grid, calibration errors (whole batch, fit rows, validation rows),
            solves (``evaluations``), network evaluations spent (``search_nfe``), what the solves would have cost
            with nothing remembered (``declared_search_nfe``) and the calls answered from memory (``remembered_calls``).

    The free parameters are the logits z of the increments of log σ between σ(T) and σ(t_min)
    (:func:`grid_of`): every z gives a strictly decreasing grid. The objective is log RMSE on the fit rows. If the
    search does not beat the best named grid on the fit rows (and, with ``validation``, on the validation rows),
    that named grid is returned.
    """
    solver = get_solver(solver, **solver_options)
    if solver.stochastic or solver.declared_nfe(make_grid(model.sde, 4)) is None:
        raise ValueError(f"optimize_grid needs a deterministic fixed-grid solver; {solver.name} is "
                         f"{'stochastic' if solver.stochastic else 'adaptive'}")
    if method not in METHODS:
        raise ValueError(f"optimize_grid: method must be one of {', '.join(METHODS)}, got {method!r}")
    if not 0.0 <= validation < 1.0:  # also refuses NaN
        raise ValueError(f"optimize_grid: validation must be a share in [0, 1), got {validation}")
    sde = model.sde
    if calib is None:
        if shape is None:
            raise ValueError("optimize_grid: give the calibration batch shape or calib")
        shape = tuple(int(n) for n in shape)
        noise = make_noise(seed, shape[0], "cpu")
        calib = sde.prior_sample(shape, noise=noise(torch.empty(shape, dtype=dtype)))
    nfe_start = model.nfe
    if reference is None:
        reference = reference_solution(model, calib, denoise, rtol)
    nfe_reference, evals, declared = model.nfe - nfe_start, 0, 0
    rows = split_rows(int(calib.shape[0]), validation)
    memo = MemoModel(model)  # the search's solves share their first steps: those calls are answered from memory
    limit = budget * nfe

    def spent() -> int:
        return model.nfe - nfe_start - nfe_reference

    def errors(grid: TimeGrid, bounded: bool = True) -> Errors:
        nonlocal evals, declared
        cost = solver.declared_nfe(grid)
        if bounded and spent() + cost > limit:  # as if nothing were remembered: a strict bound
            raise BudgetSpent
        evals, declared = evals + 1, declared + cost
        with torch.no_grad():
            x = solver.sample(memo, calib, grid)
        return Errors.of(x, reference, rows)

    log_hi = math.log(float(sde.sigma(torch.tensor(sde.T, dtype=torch.float64))))
    log_lo = math.log(float(sde.sigma(torch.tensor(sde.t_min, dtype=torch.float64))))
    named: dict[str, tuple[Errors, TimeGrid]] = {}
    for spec in screening_specs(grids, denoise, log_lo, log_hi):
        grid = budget_grid(solver, sde, nfe, spec, denoise)
        if grid is not None and grid.ends_at_data == denoise:
            named[spec] = (errors(grid, bounded=False), grid)
    if not named:
        raise ValueError(f"optimize_grid: no grid of {', '.join(grids)} fits {nfe} NFE for {solver.name}")
    start_kind = min(named, key=lambda k: named[k][0].fit)
    start_errors, start = named[start_kind]
    start_error = start_errors.fit
    best = {"grid": start, "errors": start_errors, "z": logits_of(start, log_lo)}  # the best on the fit rows so far

    def error_of(grid_of_x: Any, x: np.ndarray) -> float:
        """log RMSE on the fit rows of the grid ``grid_of_x(x)`` (logits or noise levels); the best grid so far is
        kept in ``best``, with its logits when it came from the simplex stages (the stages that start from them)."""
        try:
            grid = grid_of_x(x)
        except ValueError:  # σ's no longer strictly decreasing at round-off: not a grid
            return math.inf
        found = errors(grid)
        if found.fit < best["errors"].fit:
            best.update(grid=grid, errors=found)
            if grid_of_x is of_logits:
                best["z"] = np.array(x, copy=True)
        return math.log(max(found.fit, 1e-300))

    def of_logits(z: np.ndarray) -> TimeGrid:
        return grid_of(sde, z, log_hi, log_lo, denoise, sde.T, sde.t_min)

    def of_points(points: np.ndarray) -> TimeGrid:
        return grid_of_points(sde, points, log_hi, denoise, sde.T, sde.t_min)

    dims = len(best["z"])
    basis = coarse_basis(dims)
    stages = [(basis, STAGES[0]), (np.eye(dims), STAGES[1])] if basis.shape[1] < dims else [(basis, STAGES[1])]
    try:
        for directions, share in stages:  # coarse to fine: a few smooth directions first, then every logit
            stage_limit = share * limit

            def in_stage(c: np.ndarray, d: np.ndarray = directions, z: np.ndarray = best["z"],
                         until: float = stage_limit) -> float:
                if spent() + nfe > until:
                    raise BudgetSpent
                return error_of(of_logits, z + d @ c)

            try:
                search(in_stage, directions.shape[1], method, maxfev=1 << 30)
            except BudgetSpent:
                pass
        points = np.log(np.array([s for s in best["grid"].sigma_list[1:] if s > 0]))
        refine_points(lambda p: error_of(of_points, p), points, log_hi, log_lo,
                      movable=len(points) if denoise else len(points) - 1)
    except BudgetSpent:
        pass
    searched: Errors = best["errors"]
    found, found_errors, kept = start, start_errors, "start"
    if searched.fit < start_error and (rows.validation == 0 or searched.validation < start_errors.validation):
        found, found_errors, kept = best["grid"], searched, "search"
    if info is not None:
        info.update(solver=solver.name, options=solver.options(), nfe=nfe, steps=found.steps, start=start_kind,
                    named_errors={k: v[0].all for k, v in named.items()}, start_error=start_errors.all,
                    calib_error=found_errors.all, fit_error=found_errors.fit, start_fit_error=start_error,
                    validation_error=found_errors.validation_rmse, start_validation_error=start_errors.validation_rmse,
                    searched_fit_error=searched.fit, searched_validation_error=searched.validation_rmse,
                    kept=kept, validation_batch=rows.validation,
                    evaluations=evals, search_nfe=spent(), declared_search_nfe=declared, remembered_calls=memo.hits,
                    reference_nfe=nfe_reference, method=method, seed=seed, batch=int(calib.shape[0]))
    return found


__all__ = ["NAMED_GRIDS", "budget_grid", "grid_of", "grid_of_points", "logits_of", "optimize_grid", "refine_points",
           "reference_solution"]
