"""Ready testbeds: an isotropic Gaussian, 2-D ring and grid mixtures, a high-dimensional mixture, and
scikit-learn's 8×8 digits as a finite dataset (its ideal denoiser is the exact score of image data).

Testbeds build on :mod:`scoresde.data` (the digits, the ring's geometry), never the other way round."""
from __future__ import annotations

import math

import torch

from scoresde.data.datasets import load_digits
from scoresde.data.toys import ring_means
from scoresde.errors import UnknownNameError
from scoresde.testbeds.mixture import GaussianMixture


def gaussian(dim: int = 2, mean: float = 0.0, std: float = 0.5) -> GaussianMixture:
    """Isotropic Gaussian ``N(mean·1, std² I)`` in ``dim`` dimensions."""
    if std <= 0:
        raise ValueError(f"gaussian: std must be > 0, got {std}")
    return GaussianMixture(torch.full((1, dim), float(mean), dtype=torch.float64), std, name="gaussian")


def ring(n: int = 8, radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    """``n`` equal components on a circle of ``radius`` (the 2-D ring of score-model papers)."""
    return GaussianMixture(ring_means(n, radius), std, name="ring")


def grid(n: int = 5, spacing: float = 1.0, std: float = 0.05) -> GaussianMixture:
    """An ``n × n`` grid of equal components, centred at the origin."""
    axis = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * spacing
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    return GaussianMixture(torch.stack([xx.flatten(), yy.flatten()], 1), std, name="grid")


def high_dim(dim: int = 64, components: int = 10, std: float = 0.2, seed: int = 0) -> GaussianMixture:
    """``components`` random unit-norm-scaled means in ``dim`` dimensions (fixed by ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(components, dim, generator=g, dtype=torch.float64)
    means = means / means.norm(dim=1, keepdim=True) * math.sqrt(dim) * 0.5
    weights = torch.rand(components, generator=g, dtype=torch.float64) + 0.5
    return GaussianMixture(means, std, weights, name="high_dim")


def dataset(points: torch.Tensor, name: str = "dataset") -> GaussianMixture:
    """The empirical distribution of ``points`` (N, *event_shape): its ideal denoiser
    (Karras et al. 2022, appendix B.3) is a softmax-weighted average of the points."""
    points = torch.as_tensor(points, dtype=torch.float64)
    return GaussianMixture(points.reshape(len(points), -1), 0.0, event_shape=tuple(points.shape[1:]), name=name)


def digits(limit: int | None = None) -> GaussianMixture:
    """scikit-learn's 8×8 digits (1797 images, shipped with scikit-learn) scaled to [−1, 1], shape (1, 8, 8)."""
    images, _ = load_digits()
    images = images[:limit] if limit is not None else images
    return dataset(images, name="digits")


TESTBEDS = {"gaussian": gaussian, "ring": ring, "grid": grid, "high_dim": high_dim, "digits": digits}


def get_testbed(name: str, **kwargs: float) -> GaussianMixture:
    """Build a testbed by name (gaussian, ring, grid, high_dim, digits)."""
    if name not in TESTBEDS:
        raise UnknownNameError(f"unknown testbed {name!r}; known testbeds: {', '.join(sorted(TESTBEDS))}")
    return TESTBEDS[name](**kwargs)
