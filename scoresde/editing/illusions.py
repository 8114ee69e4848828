"""Visual anagrams (Geng et al. 2024) and hybrid images (Oliva et al. 2006; Geng et al. 2024, factorized
diffusion) as guided models: every registered solver samples them unchanged.

* Anagram: condition A seen upright, condition B seen through a view V (a flip or rotation). At every
  evaluation the prediction for ``(x, A)`` and ``V⁻¹`` of the prediction for ``(V x, B)`` are averaged, so the
  final image reads as A one way and as B the other (Geng et al. 2024, eq. 3; views must be orthogonal,
  here pixel permutations).
* Hybrid: the low frequencies of the prediction under A plus the high frequencies under B,
  ``L(pred_A) + (I − L)(pred_B)`` with L a Gaussian blur: A from afar, B up close.

Each condition may use classifier-free guidance with scale ``w``; the 2 (or 4, with guidance) predictions
run as one batched network call. Combining x₀, ε or score predictions gives the same result (see
:mod:`scoresde.guidance.composite`).
"""
from __future__ import annotations

import torch
from torch import Tensor

from scoresde.editing.filters import high_pass, low_pass
from scoresde.editing.views import get_view
from scoresde.guidance.cfg import cfg_branches
from scoresde.guidance.composite import IDENTITY, Branch, ConditionalModel, GuidedModel, View, check_scale, compose
from scoresde.sde.base import SDE


def _condition(labels: Tensor | int, scale: float, **branch: object) -> list[Branch]:
    """One condition's branches: plain (weight 1) or classifier-free guided (weights w, 1 − w)."""
    w = check_scale(scale)
    return [Branch(labels, **branch)] if w == 1.0 else cfg_branches(labels, w, **branch)


def _scaled(branches: list[Branch], factor: float) -> list[Branch]:
    return [Branch(b.labels, b.weight * factor, b.view, b.filter) for b in branches]


def anagram_model(model: ConditionalModel, sde: SDE, label_a: Tensor | int, label_b: Tensor | int,
                  view: str | View = "flip_ud", scale: float = 1.0, batched: bool = True, *,
                  generator: torch.Generator | None = None) -> GuidedModel:
    """A guided model whose samples read as ``label_a`` upright and as ``label_b`` through ``view``
    (``generator``: see :func:`~scoresde.guidance.compose`)."""
    v = get_view(view)
    if v is IDENTITY:
        raise ValueError("an anagram needs a view other than the identity (e.g. flip_ud, rot90, rot180)")
    branches = _condition(label_a, scale) + _condition(label_b, scale, view=v)
    return compose(model, sde, _scaled(branches, 0.5), batched=batched, generator=generator)


def hybrid_model(model: ConditionalModel, sde: SDE, label_low: Tensor | int, label_high: Tensor | int,
                 blur_sigma: float = 2.0, scale: float = 1.0, batched: bool = True, *,
                 generator: torch.Generator | None = None) -> GuidedModel:
    """A guided model whose samples show ``label_low`` in their low frequencies (blur of std ``blur_sigma``
    pixels) and ``label_high`` in the rest. Its first evaluation checks that the bands add up to the identity
    on a probe image drawn from ``generator`` (None: a private generator seeded 0; never the global RNG)."""
    low, high = low_pass(blur_sigma), high_pass(blur_sigma)
    low(torch.zeros(1, 1, 4, 4))  # validates blur_sigma now, not at the first solver step
    branches = _condition(label_low, scale, filter=low) + _condition(label_high, scale, filter=high)
    return compose(model, sde, branches, batched=batched, generator=generator)


__all__ = ["anagram_model", "hybrid_model"]
