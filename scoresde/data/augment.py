"""Data augmentation drawn from an injected generator, so that a resumed run draws the same augmentations.

Random horizontal flips (as in EDM's and DDPM's CIFAR-10 training: each image is mirrored left-right with
probability ½). One U[0, 1) draw per image from ``generator`` decides; sharded training draws the flips of
the whole global batch on every rank and keeps its own slice, so the data generator stays in step across
ranks.
"""
from __future__ import annotations

import torch
from torch import Tensor


def flip_mask(n: int, generator: torch.Generator | None = None, p: float = 0.5) -> Tensor:
    """(n,) booleans, True with probability ``p``, from ``n`` U[0, 1) draws of ``generator`` (on the CPU)."""
    if not 0 <= p <= 1:
        raise ValueError(f"the flip probability must lie in [0, 1], got {p}")
    return torch.rand(n, generator=generator) < p


def random_hflip(images: Tensor, generator: torch.Generator | None = None, p: float = 0.5,
                 mask: Tensor | None = None) -> Tensor:
    """Images (B, C, H, W) with each one mirrored along W with probability ``p`` (``mask`` (B,) given: exactly
    those). Returns a new tensor; the input is unchanged."""
    if images.ndim != 4:
        raise ValueError(f"horizontal flips need images (B, C, H, W), got shape {tuple(images.shape)}")
    if mask is None:
        mask = flip_mask(len(images), generator, p)
    if mask.shape != (len(images),):
        raise ValueError(f"the flip mask must have shape ({len(images)},), got {tuple(mask.shape)}")
    mask = mask.to(images.device).view(-1, 1, 1, 1)
    return torch.where(mask, images.flip(-1), images)


__all__ = ["flip_mask", "random_hflip"]
