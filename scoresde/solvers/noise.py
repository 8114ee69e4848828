"""Injected randomness (DESIGN.md, boundary 7): one interface for every draw a stochastic solver makes.

A :class:`NoiseSource` answers three questions, and a solver asks nothing else of it:

- ``noise(like)``: fresh standard normal noise shaped like ``like`` (Langevin corrector steps);
- ``noise.increment(like, t, t_next)``: the standardized Brownian increment ``ΔW/√|t − t_next|`` of the step
  from t to t_next, which a step of the reverse SDE (or of churn) draws;
- ``noise.brownian(like, t_start, t_end, levy)``: the Brownian path itself in ``u = t_start − t``, for torchsde.

:class:`GeneratorNoise` and :class:`PerSampleNoise` have no path of their own: an increment is a fresh draw, and
torchsde's path is seeded from the source. :class:`BrownianNoise` is one path shared by every solver and step
count, so solvers can be compared pathwise (strong convergence). A plain callable ``fn(like)`` is wrapped by
:func:`as_noise`. :class:`PerSampleNoise` gives every sample its own generator seeded from its own seed (as
EDM's ``StackedRandomGenerator``), so sample i is the same in a batch of 8 and in a batch of 64.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
import torchsde
from torch import Tensor
from torchsde._brownian.brownian_base import BaseBrownian


class NoiseSource(ABC):
    """Where a stochastic solver's randomness comes from (see the module docstring)."""

    @abstractmethod
    def __call__(self, like: Tensor) -> Tensor:
        """Fresh standard normal noise shaped like ``like``."""

    def increment(self, like: Tensor, t: float, t_next: float) -> Tensor:
        """The step's standardized Brownian increment: a fresh draw for a source without a path."""
        return self(like)

    def brownian(self, like: Tensor, t_start: float, t_end: float, levy: str = "none") -> BaseBrownian:
        """A Brownian path on ``u ∈ [0, t_start − t_end]`` for a batch shaped like ``like``, seeded from one draw."""
        draw = self(torch.empty(1, 2, dtype=torch.float64, device=like.device)).cpu().numpy().tobytes()
        return _interval(like, t_start - t_end, int.from_bytes(draw[:8], "little") % 2**62, levy)


def _interval(like: Tensor, duration: float, entropy: int, levy: str) -> torchsde.BrownianInterval:
    return torchsde.BrownianInterval(t0=0.0, t1=duration, size=(like.shape[0], like[0].numel()), dtype=like.dtype,
                                     device=like.device, entropy=entropy, levy_area_approximation=levy)


class CallableNoise(NoiseSource):
    """A plain ``fn(like) -> Tensor`` as a noise source."""

    def __init__(self, fn: Callable[[Tensor], Tensor]):
        self.fn = fn

    def __call__(self, like: Tensor) -> Tensor:
        return self.fn(like)


def as_noise(noise: NoiseSource | Callable[[Tensor], Tensor] | None) -> NoiseSource:
    """The one place a noise argument becomes a :class:`NoiseSource` (None: the global generator)."""
    if noise is None:
        return GeneratorNoise()
    return noise if isinstance(noise, NoiseSource) else CallableNoise(noise)


class GeneratorNoise(NoiseSource):
    """All noise from one ``torch.Generator`` (fast; the draws depend on the batch size)."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def __call__(self, like: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=self.generator, device=like.device, dtype=like.dtype)

    def brownian(self, like: Tensor, t_start: float, t_end: float, levy: str = "none") -> BaseBrownian:
        """One batched interval seeded from the generator."""
        return _interval(like, t_start - t_end, int(torch.randint(2**62, (1,), generator=self.generator)), levy)


class PerSampleNoise(NoiseSource):
    """One generator per sample, seeded with ``seeds[i]``: draws independent of the batch size."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in self.seeds]

    def __call__(self, like: Tensor) -> Tensor:
        if like.shape[0] != len(self.generators):
            raise ValueError(f"PerSampleNoise has {len(self.generators)} seeds "
                             f"but the batch has {like.shape[0]} samples")
        return torch.stack([torch.randn(like.shape[1:], generator=g, device=like.device, dtype=like.dtype)
                            for g in self.generators])

    def brownian(self, like: Tensor, t_start: float, t_end: float, levy: str = "none") -> BaseBrownian:
        """One interval per sample, seeded with the sample's seed (batch-size independent)."""
        return StackedBrownian(0.0, t_start - t_end, like[0].numel(), self.seeds, like.dtype, like.device, levy)


class BrownianNoise(NoiseSource):
    """One Brownian path W on ``t ∈ [t_end, t_start]`` (in ``u = t_start − t``), shared by every solver and step
    count: a step from t to t_next draws ``(W(u_next) − W(u))/√(u_next − u)``, and torchsde integrates the same
    path, so a coarse run and a fine run (or two solvers) see the same noise. Fresh draws (Langevin steps) come
    from ``seed + 1``. The path has space-time Lévy area, as torchsde's ``srk`` needs."""

    def __init__(self, t_start: float, t_end: float, seed: int = 0, levy: str = "space-time"):
        self.t_start, self.t_end, self.seed, self.levy = float(t_start), float(t_end), int(seed), levy
        self.generator = torch.Generator().manual_seed(self.seed + 1)
        self.path: torchsde.BrownianInterval | None = None

    def _path(self, like: Tensor) -> torchsde.BrownianInterval:
        if self.path is None:
            self.path = _interval(like, self.t_start - self.t_end, self.seed, self.levy)
        return self.path

    def __call__(self, like: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=self.generator, dtype=like.dtype).to(like.device)

    def increment(self, like: Tensor, t: float, t_next: float) -> Tensor:
        u, u_next = self.t_start - t, self.t_start - t_next
        return (self._path(like)(u, u_next) / math.sqrt(u_next - u)).reshape(like.shape)

    def brownian(self, like: Tensor, t_start: float, t_end: float, levy: str = "none") -> BaseBrownian:
        if t_start != self.t_start or t_end < self.t_end:
            raise ValueError(f"this Brownian path covers t in [{self.t_end}, {self.t_start}]; "
                             f"asked for [{t_end}, {t_start}]")
        return self._path(like)


class StackedBrownian(BaseBrownian):
    """One ``BrownianInterval`` per sample, stacked along the batch: sample i's path depends only on
    its own seed, so results do not depend on the batch size."""

    def __init__(self, t0: float, t1: float, dim: int, seeds: list[int], dtype: torch.dtype,
                 device: torch.device | str, levy_area_approximation: str = "none"):
        self.intervals = [torchsde.BrownianInterval(t0=t0, t1=t1, size=(1, dim), dtype=dtype, device=device,
                                                    entropy=seed, levy_area_approximation=levy_area_approximation)
                          for seed in seeds]
        self._shape = (len(seeds), dim)

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        parts = [bm(ta, tb, return_U=return_U, return_A=return_A) for bm in self.intervals]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(p, dim=0) for p in zip(*parts))
        return torch.cat(parts, dim=0)

    def __repr__(self) -> str:
        return f"StackedBrownian(batch={self._shape[0]}, dim={self._shape[1]})"

    @property
    def dtype(self):
        return self.intervals[0].dtype

    @property
    def device(self):
        return self.intervals[0].device

    @property
    def shape(self):
        return self._shape

    @property
    def levy_area_approximation(self):
        return self.intervals[0].levy_area_approximation


def make_noise(seed: int | Sequence[int] | None, batch: int, device: torch.device | str,
               generator: torch.Generator | None = None) -> NoiseSource:
    """Per-sample noise for seeds ``seed, seed+1, …`` (or an explicit list), or a generator's noise."""
    if seed is None:
        return GeneratorNoise(generator)
    seeds = list(range(seed, seed + batch)) if isinstance(seed, int) else list(seed)
    return PerSampleNoise(seeds, device)
