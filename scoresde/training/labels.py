"""Class labels in training: classifier-free guidance's label dropout, and fixed labels for sample plots."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def drop_labels(labels: Tensor, p: float, null_class: int, generator: torch.Generator | None = None) -> Tensor:
    """Classifier-free guidance's label dropout (Ho & Salimans 2022): each label becomes ``null_class`` with
    probability ``p``, from one U[0, 1) draw per label of ``generator``. Returns a new tensor (B,)."""
    if p <= 0:
        return labels
    u = torch.rand(labels.shape, generator=generator, device=labels.device)
    return torch.where(u < p, torch.full_like(labels, null_class), labels)


def fixed_labels(n: int, num_classes: int) -> Tensor:
    """``n`` labels for sample plots, classes in blocks of ``⌈n/K⌉`` (row ``k`` of a grid with ``⌈n/K⌉``
    images per row is class ``k``), shape (n,)."""
    per = math.ceil(n / num_classes)
    return (torch.arange(n) // per).clamp(max=num_classes - 1)


__all__ = ["drop_labels", "fixed_labels"]
