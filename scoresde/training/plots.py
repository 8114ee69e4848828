"""Pictures of samples for tensorboard and ``scoresde-sample``: image grids and 2-D scatter plots."""
from __future__ import annotations

import math
from typing import Any

from torch import Tensor


def image_grid(images: Tensor, nrow: int | None = None, pad: int = 1) -> Tensor:
    """Tile images (B, C, H, W) in [-1, 1] into one (C, H', W') image in [0, 1], ``nrow`` per row
    (default ⌈√B⌉), separated by ``pad`` white pixels. Plain torch, no torchvision."""
    if images.ndim != 4:
        raise ValueError(f"image_grid takes (B, C, H, W), got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    grid = images.new_ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    x = ((images.float().clamp(-1, 1) + 1) / 2).cpu()
    grid = grid.float().cpu()
    for i in range(b):
        r, k = divmod(i, nrow)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = x[i]
    return grid


def scatter_figure(points: Tensor, title: str = "", labels: Tensor | None = None) -> Any:
    """A matplotlib figure of 2-D points (B, 2), coloured by ``labels`` (B,) when given (not registered
    with pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    p = points.detach().float().cpu()
    colour = {} if labels is None else {"c": labels.cpu().numpy(), "cmap": "tab10"}
    ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.5, **colour)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


__all__ = ["image_grid", "scatter_figure"]
