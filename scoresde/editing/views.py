"""Views for visual anagrams (Geng et al. 2024): orthogonal pixel permutations of (B, ..., H, W) batches."""
from __future__ import annotations

import torch
from torch import Tensor

from scoresde.errors import UnknownNameError
from scoresde.guidance.composite import IDENTITY, View


def _rot(k: int) -> View:
    return View(f"rot{90 * k}", lambda x: torch.rot90(x, k, dims=(-2, -1)), lambda x: torch.rot90(x, -k, dims=(-2, -1)))


def _flip(dim: int, name: str) -> View:
    return View(name, lambda x: torch.flip(x, dims=(dim,)), lambda x: torch.flip(x, dims=(dim,)))


def _transpose(x: Tensor) -> Tensor:
    return x.transpose(-2, -1)


VIEWS: dict[str, View] = {
    "identity": IDENTITY,
    "flip_ud": _flip(-2, "flip_ud"),      # upside down
    "flip_lr": _flip(-1, "flip_lr"),      # mirror
    "rot90": _rot(1),                      # counter-clockwise
    "rot180": _rot(2),
    "rot270": _rot(3),
    "transpose": View("transpose", _transpose, _transpose),
}


def get_view(name: str | View) -> View:
    """A view by name (``VIEWS``) or a ready :class:`View`."""
    if isinstance(name, View):
        return name
    if name not in VIEWS:
        raise UnknownNameError(f"unknown view {name!r}; known views: {', '.join(VIEWS)}")
    return VIEWS[name]


__all__ = ["VIEWS", "get_view"]
