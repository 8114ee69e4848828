"""Benchmark problems: a counted model, its SDE, and whatever the problem knows exactly.

A :class:`Problem` is what every sweep run samples from. Exact-score testbeds
(:class:`scoresde.GaussianMixture`: 2-D mixtures, the 64-D mixture, the ideal denoiser of the 8×8 digits,
Karras et al. 2022, appendix B.3) know their data distribution exactly: exact samples, and for mixtures
with positive component widths the exact data log-density. A trained network knows only its training
data (toys: fresh draws of the generator; images: the dataset). Image problems carry a feature
extractor (:func:`scoresde.evaluation.feature_extractor`) for the FID-style distance. A model that comes
without its data (a diffusers model directory) is compared against samples of its own float64 probability-flow
ODE (:func:`reference_data`), or against a data set the user names.

Starting noise is drawn per sample from the sample's own seed (:meth:`Problem.prior`), so splitting a
seed list across processes gives the same samples as one process running all of them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from scoresde.models.score_model import ScoreModel
from scoresde.sde import SDE
from scoresde.solvers.noise import PerSampleNoise
from scoresde.testbeds import GaussianMixture

FEATURE_DATASETS = {(1, 8, 8): "digits", (1, 28, 28): "fashion_mnist"}
DataFn = Callable[[int, torch.Generator], Tensor]


def x_T_seed(seed: int) -> int:
    """The seed of sample ``seed``'s starting noise (even); its solver noise uses :func:`noise_seed` (odd),
    so the two streams of one sample never coincide."""
    return 2 * int(seed)


def noise_seed(seed: int) -> int:
    """The seed of sample ``seed``'s solver noise (Brownian increments, Langevin noise)."""
    return 2 * int(seed) + 1


@dataclass
class Problem:
    """One benchmark problem.

    Attributes:
        name: for tables and file names.
        model: the counted score model the solvers drive.
        sde: the forward SDE of ``model``.
        event_shape: the shape of one sample.
        data: ``data(n, generator)`` → n data samples (exact for testbeds), or None.
        log_prob: exact data log-density ``(n, *event_shape) → (n,)``, or None.
        features: feature extractor for the FID-style distance (images), or None.
        reference_model: the model the float64 reference ODE runs on (exact testbeds: a float64 model;
            networks: the float32 network behind a cast).
        exact: True for exact-score testbeds.
        device: where sampling runs.
    """

    name: str
    model: ScoreModel
    sde: SDE
    event_shape: tuple[int, ...]
    data: DataFn | None
    log_prob: Callable[[Tensor], Tensor] | None
    features: Callable[[Tensor], Tensor] | None
    reference_model: ScoreModel
    exact: bool
    device: torch.device

    def prior(self, seeds: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """x_T for samples ``seeds``: sample i from a generator seeded ``x_T_seed(seeds[i])`` (shape (n, ...))."""
        shape = (len(seeds), *self.event_shape)
        noise = PerSampleNoise([x_T_seed(s) for s in seeds], self.device)
        return self.sde.prior_sample(shape, noise=noise(torch.empty(shape, device=self.device, dtype=dtype)))

    @property
    def is_image(self) -> bool:
        return len(self.event_shape) == 3


def image_features(event_shape: tuple[int, ...], device: torch.device | str = "cpu"
                   ) -> Callable[[Tensor], Tensor] | None:
    """The shipped classifier's 128-d features for digits (1×8×8) or Fashion-MNIST (1×28×28), else None."""
    dataset = FEATURE_DATASETS.get(tuple(event_shape))
    if dataset is None:
        return None
    from scoresde.evaluation import feature_extractor
    extract = feature_extractor(dataset)
    return lambda x: extract(x.to("cpu", torch.float32))


def testbed_problem(testbed: GaussianMixture, sde: SDE, device: torch.device | str = "cpu") -> Problem:
    """An exact-score testbed under ``sde``: exact samples, exact log-density where it exists."""
    device = torch.device(device)
    has_density = bool((testbed.stds > 0).all())

    def data(n: int, generator: torch.Generator) -> Tensor:
        return testbed.sample(n, generator=generator, device=device)

    def log_prob(x: Tensor) -> Tensor:
        return testbed.log_prob(x.to("cpu", torch.float64))

    return Problem(testbed.name, testbed.model(sde), sde, tuple(testbed.event_shape), data,
                   log_prob if has_density else None, image_features(testbed.event_shape, device),
                   testbed.model(sde), True, device)


def network_problem(net: torch.nn.Module, sde: SDE, event_shape: Sequence[int], name: str,
                    data: DataFn | None = None, device: torch.device | str = "cpu") -> Problem:
    """A trained preconditioned network (``net.score_model(sde)``, the null class if class-conditional).

    ``data`` gives real samples to compare against (toys: fresh draws; images: the dataset)."""
    device = torch.device(device)
    if not hasattr(net, "score_model"):
        raise TypeError(f"network_problem needs a Preconditioned network (with .score_model(sde)), "
                        f"got {type(net).__name__}")
    net = net.to(device).eval().requires_grad_(False)
    model = net.score_model(sde)

    def in_float32(x: Tensor, t: Tensor) -> Tensor:  # the float64 reference ODE drives the float32 network
        return model(x.float(), t.float()).to(x.dtype)

    reference = ScoreModel(in_float32, sde, model.prediction)
    shape = tuple(int(s) for s in event_shape)
    return Problem(name, model, sde, shape, data, None, image_features(shape, device), reference, False, device)


def reference_data(problem: Problem, reference: dict[str, Any], batch: int = 256) -> DataFn:
    """``data(n, generator)``: n samples of the problem's own probability-flow ODE, solved in float64 with the
    reference solver (``reference``: method, rtol, atol, as :func:`scoresde.bench.planning.reference_solution`) from
    x_T drawn with ``generator`` down to the data (denoised), ``batch`` at a time. For a model whose data are not at
    hand, the metrics then measure the distance to the distribution the exact ODE would give."""
    import scoresde

    def data(n: int, generator: torch.Generator) -> Tensor:
        x_T = problem.sde.prior_sample((n, *problem.event_shape), generator=generator, dtype=torch.float64)
        with torch.no_grad():
            parts = [scoresde.sample(problem.reference_model, "ode", 2, x_T=part.to(problem.device), denoise=True,
                                     **reference) for part in x_T.split(batch)]
        return torch.cat(parts).float().cpu()

    return data


def dataset_sampler(points: Tensor) -> DataFn:
    """``data(n, generator)`` drawing n rows of a fixed tensor without replacement (all rows if n is larger)."""
    def data(n: int, generator: torch.Generator) -> Tensor:
        idx = torch.randperm(len(points), generator=generator)[: min(n, len(points))]
        return points[idx]
    return data
