"""Noise and class embeddings shared by the networks.

A network is conditioned on a scalar noise input ``c_noise`` of shape (B,) chosen by the preconditioning
layer (never SDE time, DESIGN.md boundary 3) and, optionally, on integer class labels of shape (B,).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalEmbedding(nn.Module):
    """Transformer positional embedding of a scalar (Vaswani et al. 2017; DDPM++ of Song et al. 2021 and
    Ho et al. 2020): ``[cos(c·ω_k), sin(c·ω_k)]`` with ``ω_k = (1/max_positions)^(k/(dim/2))``.
    Input (B,), output (B, dim)."""

    def __init__(self, dim: int, max_positions: int = 10000):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        half = dim // 2
        freqs = (1 / max_positions) ** (torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs)

    def forward(self, c: Tensor) -> Tensor:
        arg = c.to(self.freqs.dtype).outer(self.freqs)
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Gaussian random Fourier features (Tancik et al. 2020; NCSN++ of Song et al. 2021):
    ``[cos(2π c·ω), sin(2π c·ω)]`` with fixed ``ω ~ N(0, scale²)``. Input (B,), output (B, dim)."""

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        self.register_buffer("freqs", torch.randn(dim // 2) * scale)

    def forward(self, c: Tensor) -> Tensor:
        arg = c.to(self.freqs.dtype).outer(2 * math.pi * self.freqs)
        return torch.cat([arg.cos(), arg.sin()], dim=1)


def noise_embedding(kind: str, dim: int, fourier_scale: float = 16.0) -> nn.Module:
    """``"fourier"`` (NCSN++) or ``"sinusoidal"`` / ``"positional"`` (DDPM++)."""
    if kind == "fourier":
        return FourierEmbedding(dim, fourier_scale)
    if kind in ("sinusoidal", "positional"):
        return SinusoidalEmbedding(dim)
    raise ValueError(f"unknown noise embedding {kind!r}; choose 'fourier' or 'sinusoidal'")


class ConditionEmbedding(nn.Module):
    """Noise embedding → 2-layer MLP (SiLU), plus a learned class embedding.

    With ``num_classes = K`` there are K + 1 class embeddings: index K is the null (unconditional) class,
    used when ``class_labels`` is None and, later, for classifier-free guidance (Ho & Salimans 2022).
    ``forward(c_noise (B,), class_labels (B,) ints | int | None) -> (B, emb_dim)``.
    """

    def __init__(self, base_dim: int, emb_dim: int, embedding: str = "sinusoidal",
                 num_classes: int | None = None, fourier_scale: float = 16.0):
        super().__init__()
        self.noise = noise_embedding(embedding, base_dim, fourier_scale)
        self.mlp = nn.Sequential(nn.Linear(base_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.num_classes = num_classes or 0
        self.classes = nn.Embedding(self.num_classes + 1, emb_dim) if self.num_classes else None

    @property
    def null_class(self) -> int:
        """The label of the unconditional (null) class."""
        return self.num_classes

    def forward(self, c_noise: Tensor, class_labels: Tensor | int | None = None) -> Tensor:
        if c_noise.ndim != 1:
            raise ValueError(f"c_noise must have shape (B,), got {tuple(c_noise.shape)}")
        emb = self.mlp(self.noise(c_noise).to(self.mlp[0].weight.dtype))
        if self.classes is None:
            if class_labels is not None:
                raise ValueError("this network was built without num_classes; pass class_labels=None")
            return emb
        labels = torch.as_tensor(self.null_class if class_labels is None else class_labels, device=c_noise.device)
        labels = labels.long().expand(c_noise.shape[0]) if labels.ndim == 0 else labels.long()
        if labels.shape != c_noise.shape or bool(((labels < 0) | (labels > self.null_class)).any()):
            raise ValueError(f"class_labels must be ints in [0, {self.null_class}] of shape {tuple(c_noise.shape)}")
        return emb + self.classes(labels)


__all__ = ["SinusoidalEmbedding", "FourierEmbedding", "ConditionEmbedding", "noise_embedding"]
