"""What every run of a benchmark problem is scored against: fixed data samples (and their features), fixed
projections, and each metric's floor. The metric functions themselves live in :mod:`scoresde.evaluation.metrics`.

- ``sw``: sliced Wasserstein-2 (:func:`scoresde.evaluation.sliced_wasserstein`) to data samples, with
  fixed projections (same directions for every run);
- ``mmd``: unbiased squared RBF MMD (:func:`scoresde.evaluation.mmd`, median bandwidth) to a data subset;
- ``nll``: the exact data log-density of the samples, ``−mean log p_data(x)`` (testbeds with a density).
  Its floor, ``−mean log p_data`` over exact samples, estimates the entropy H(p); the gap is
  ``KL(q‖p) + H(q) − H(p)``, zero for exact sampling up to Monte Carlo error;
- ``fd``: Fréchet distance in the 128-d feature space of the shipped classifier (images; FID-style,
  :func:`scoresde.evaluation.frechet_distance_from_features`).

Every metric also has a *floor*: its value for exact (or real) samples of the same size, i.e. what a perfect
sampler would score with this sample size.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from scoresde.bench.planning import stream_seeds
from scoresde.bench.problems import Problem
from scoresde.evaluation.metrics import frechet_distance_from_features, mmd, rmse, sliced_wasserstein

QUALITY = ("sw", "mmd", "nll", "fd")
METRICS = ("rmse", *QUALITY)
MMD_DATA = 2000  # data rows the MMD compares against (its cost is quadratic)
FLOOR_DRAWS = 4  # exact sample sets the floors average over (one draw scatters as much as good solvers differ)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


@dataclass
class Targets:
    """Data samples (and their features) every run of one problem is compared against, and the floors."""

    data: Tensor | None
    data_features: Tensor | None
    projection_seed: int
    n_projections: int
    metrics: tuple[str, ...]
    floors: dict[str, float] = field(default_factory=dict)
    floors_std: dict[str, float] = field(default_factory=dict)


def available(problem: Problem, metrics: tuple[str, ...]) -> tuple[str, ...]:
    """The requested metrics this problem can compute (``rmse`` is always possible)."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {', '.join(METRICS)}")
    can = {"rmse": True, "sw": problem.data is not None, "mmd": problem.data is not None,
           "nll": problem.log_prob is not None, "fd": problem.data is not None and problem.features is not None}
    return tuple(m for m in metrics if can[m])


def build_targets(problem: Problem, metrics: tuple[str, ...], n_data: int, n_samples: int, seed: int,
                  n_projections: int = 128, floor_draws: int = FLOOR_DRAWS) -> Targets:
    """Draw the data samples and measure each metric's floor (mean and std over ``floor_draws`` sets of
    ``n_samples`` exact/real samples drawn independently of them). The data, the floor sets and the projections
    each have their own stream of :func:`~scoresde.bench.planning.stream_seeds` of ``seed``."""
    metrics, seeds = available(problem, metrics), stream_seeds(seed)
    data = problem.data(n_data, _gen(seeds["data"])).float().cpu() if problem.data is not None else None
    feats = problem.features(data) if data is not None and "fd" in metrics else None
    targets = Targets(data, feats, seeds["projections"], n_projections, metrics)
    if data is not None:
        draws = [quality(problem.data(n_samples, _gen(seeds["floor"] + k)).float().cpu(), problem, targets)
                 for k in range(floor_draws)]
        for m in QUALITY:
            values = [d[m] for d in draws if d[m] is not None]
            if values:
                targets.floors[m] = float(np.mean(values))
                targets.floors_std[m] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return targets


def quality(x: Tensor, problem: Problem, targets: Targets) -> dict[str, float | None]:
    """The distribution metrics of samples ``x`` (n, *event_shape) against ``targets``."""
    x = x.detach().float().cpu()
    out: dict[str, float | None] = {m: None for m in QUALITY}
    if targets.data is None:
        return out
    if "sw" in targets.metrics:
        out["sw"] = sliced_wasserstein(x, targets.data, targets.n_projections, generator=_gen(targets.projection_seed))
    if "mmd" in targets.metrics:
        out["mmd"] = mmd(x, targets.data[:MMD_DATA])
    if "nll" in targets.metrics:
        out["nll"] = float(-problem.log_prob(x).mean())
    if "fd" in targets.metrics:
        out["fd"] = frechet_distance_from_features(targets.data_features, problem.features(x))
    return out


def error_to(x: Tensor, reference: Tensor) -> float:
    """RMSE between samples and the reference solution from the same x_T."""
    return rmse(x.detach().to("cpu", torch.float64), reference.detach().to("cpu", torch.float64))
