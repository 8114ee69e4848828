"""An MLP score network for low-dimensional data (2-D toy mixtures and the like)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from scoresde.models.networks.embeddings import ConditionEmbedding


class MLP(nn.Module):
    """``F(x, c_noise, class_labels) -> (B, dim)``: ``depth`` hidden SiLU layers of width ``hidden``, each
    receiving its own projection of the noise (and class) embedding; residual connections between hidden
    layers. Inputs of shape (B, *event) with ``prod(event) == dim`` are flattened and reshaped back.

    Args:
        dim: data dimension.
        hidden: hidden width (also the embedding width).
        depth: number of hidden layers.
        embedding: ``"fourier"`` (random features, NCSN++) or ``"sinusoidal"`` (positional, DDPM++).
        num_classes: classes for conditioning (label ``num_classes`` is the null class), or None.
        fourier_scale: std of the random Fourier frequencies.
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, embedding: str = "fourier",
                 num_classes: int | None = None, fourier_scale: float = 16.0):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.dim = dim
        self.cond = ConditionEmbedding(hidden, hidden, embedding, num_classes, fourier_scale)
        self.inp = nn.Linear(dim, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.embs = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | int | None = None) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.dim:
            raise ValueError(f"MLP(dim={self.dim}) got samples of {flat.shape[1]} values (shape {tuple(x.shape)})")
        emb = F.silu(self.cond(c_noise, class_labels))
        h = self.inp(flat)
        for layer, proj in zip(self.layers, self.embs):
            h = h + layer(F.silu(h + proj(emb)))
        return self.out(F.silu(h)).reshape(x.shape)


__all__ = ["MLP"]
