"""Small helpers shared by every part of scoresde."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims so a per-sample (or scalar) tensor broadcasts against a
    tensor with ``ndim`` dims. The one broadcasting helper of the project (DESIGN.md, boundary 6)."""
    if v.ndim > ndim:
        raise ValueError(f"cannot broadcast a tensor of {v.ndim} dims against {ndim} dims")
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def as_time(t: Tensor | float, x: Tensor) -> Tensor:
    """Return ``t`` as a float tensor on ``x``'s device and dtype, one value per sample of ``x``."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t


def flat_dim(x: Tensor) -> int:
    """Number of scalar dimensions of one sample of a batch ``x`` of shape (B, ...)."""
    return math.prod(x.shape[1:])


def batch_sq_norm(x: Tensor) -> Tensor:
    """Squared Euclidean norm of each sample, shape (B,)."""
    return x.reshape(x.shape[0], -1).pow(2).sum(dim=1)
