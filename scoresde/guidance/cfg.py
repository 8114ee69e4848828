"""Classifier-free guidance (Ho & Salimans 2022, eq. 6), as a model wrapper any solver can drive."""
from __future__ import annotations

from torch import Tensor

from scoresde.guidance.composite import Branch, ConditionalModel, GuidedModel, check_scale, compose
from scoresde.sde.base import SDE


def cfg_branches(class_labels: Tensor | int, scale: float, **branch: object) -> list[Branch]:
    """The two branches of classifier-free guidance: the conditional prediction with weight ``w`` and the
    null-class prediction with weight ``1 − w`` (extra ``branch`` fields, e.g. a view, go to both)."""
    w = check_scale(scale)
    return [Branch(class_labels, w, **branch), Branch(None, 1.0 - w, **branch)]


def classifier_free_guidance(model: ConditionalModel, sde: SDE, class_labels: Tensor | int, scale: float,
                             batched: bool = True) -> GuidedModel:
    """Classifier-free guidance: ``score = score(x, ∅) + w·(score(x, y) − score(x, ∅))``.

    ``w`` is the guidance *scale* (Imagen's / diffusers' convention): ``w = 0`` is the unconditional model,
    ``w = 1`` the conditional one, ``w > 1`` extrapolates. Ho & Salimans's eq. 6 writes the same thing as
    ``(1 + w')·ε(x, y) − w'·ε(x, ∅)`` with ``w' = w − 1``. For exact scores, ``w`` tilts toward
    ``p_t(x | y)^w p_t(x)^{1−w} ∝ p_t(x)·p_t(y | x)^w``, i.e. classifier guidance with scale ``w``.

    The conditional and null-class predictions run as one batched network call of 2B rows
    (``batched=False``: two calls); ``model.nfe`` counts guided evaluations and
    ``model.counts["network_passes"]`` the two network passes each one costs.

    Args:
        model: a class-conditional model (``Preconditioned``, ``LabelledMixture``; null class = num_classes).
        sde: the SDE that gives t its meaning.
        class_labels: the class (int) or one class per sample (B,).
        scale: the guidance scale w (finite).
    """
    return compose(model, sde, cfg_branches(class_labels, scale), batched=batched)


__all__ = ["cfg_branches", "classifier_free_guidance"]
