"""Injected randomness (DESIGN.md, boundary 7).

A noise source is any callable ``noise(like) -> Tensor`` returning standard normal noise shaped like
``like``. :class:`PerSampleNoise` gives every sample its own generator seeded from its own seed (as
EDM's ``StackedRandomGenerator``), so sample i is the same in a batch of 8 and in a batch of 64.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

NoiseSource = Callable[[Tensor], Tensor]


class GeneratorNoise:
    """All noise from one ``torch.Generator`` (fast; the draws depend on the batch size)."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def __call__(self, like: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=self.generator, device=like.device, dtype=like.dtype)


class PerSampleNoise:
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


def make_noise(seed: int | Sequence[int] | None, batch: int, device: torch.device | str,
               generator: torch.Generator | None = None) -> NoiseSource:
    """Per-sample noise for seeds ``seed, seed+1, …`` (or an explicit list), or a generator's noise."""
    if seed is None:
        return GeneratorNoise(generator)
    seeds = list(range(seed, seed + batch)) if isinstance(seed, int) else list(seed)
    return PerSampleNoise(seeds, device)
