"""Guided models: several conditional evaluations of one network combined into one score model.

Classifier-free guidance (Ho & Salimans 2022), visual anagrams (Geng et al. 2024) and hybrid images
(Geng et al. 2024, factorized diffusion) all evaluate one class-conditional network on ``J`` *branches*
(a view of the state, a class label) and combine the branch predictions linearly:

    out(x, t) = Σ_j  F_j( w_j · V_j⁻¹( pred(V_j x, t, y_j) ) )

with ``V_j`` an orthogonal view (a pixel permutation: flips, rotations), ``w_j`` a scalar weight and
``F_j`` an optional linear filter (low/high-pass). When ``Σ_j w_j F_j = I`` (checked), the combination is
the same in every parametrization: score, ε, x₀ and v are affine in one another with coefficients that
depend on (x, t) only, and orthogonal views commute with them. So the combination runs on the network's
own prediction kind and the result is a plain :class:`~scoresde.ScoreModel` that every registered solver
drives unchanged ("wrap the model, not the solver").

The ``J`` branches run as one batched call of ``J·B`` rows (``batched=True``) or as ``J`` calls. NFE is
honest: ``model.nfe`` counts guided evaluations (what a solver declares), ``model.counts`` the network
calls and the network passes in units of one B-row evaluation (``J`` per guided evaluation).

A *conditional model* is anything with ``predict(x, t, sde, class_labels) -> prediction``, a
``prediction`` kind and ``num_classes`` (the null class is label ``num_classes``):
:class:`~scoresde.models.Preconditioned` and :class:`~scoresde.testbeds.labelled.LabelledMixture` are both.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from scoresde.models.score_model import ScoreModel
from scoresde.sde.base import SDE

Filter = Callable[[Tensor], Tensor]


class ConditionalModel(Protocol):
    """What guidance needs from a class-conditional network (null class = ``num_classes``)."""

    prediction: str
    num_classes: int | None

    def predict(self, x: Tensor, t: Tensor, sde: SDE, class_labels: Tensor | int | None = None) -> Tensor: ...


@dataclass(frozen=True)
class View:
    """An orthogonal transform of one sample's pixels (a permutation) and its inverse, on (B, ...) batches."""

    name: str
    forward: Callable[[Tensor], Tensor]
    inverse: Callable[[Tensor], Tensor]


IDENTITY = View("identity", lambda x: x, lambda x: x)


@dataclass(frozen=True)
class Branch:
    """One conditional evaluation: class ``labels`` (int, (B,) tensor, or None for the null class), the
    scalar ``weight`` of its prediction, the ``view`` its input is seen through, an optional linear ``filter``."""

    labels: Tensor | int | None
    weight: float = 1.0
    view: View = IDENTITY
    filter: Filter | None = None


def check_scale(scale: Any, what: str = "guidance scale") -> float:
    """A finite float, or a ValueError naming ``what``."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"the {what} must be a finite number, got {scale!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"the {what} must be finite, got {value}")
    return value


def as_labels(labels: Tensor | int | None, batch: int, num_classes: int | None, device: torch.device,
                 allow_null: bool = True) -> Tensor:
    """Labels as a (batch,) long tensor; None is the null class ``num_classes``. Unknown classes raise."""
    if not num_classes:
        raise ValueError("guidance needs a class-conditional model (num_classes is None): "
                         "train it with num_classes and label dropout")
    if labels is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    out = torch.as_tensor(labels, device=device)
    if out.dtype.is_floating_point or out.dtype == torch.bool:
        raise ValueError(f"class labels must be integers, got {out.dtype}")
    out = out.long().expand(batch) if out.ndim == 0 else out.long()
    if out.shape != (batch,):
        raise ValueError(f"class labels must be one int or shape ({batch},), got shape {tuple(out.shape)}")
    top = num_classes + 1 if allow_null else num_classes
    if bool(((out < 0) | (out >= top)).any()):
        bad = int(out[(out < 0) | (out >= top)][0])
        raise ValueError(f"unknown class {bad}: the model has classes 0..{num_classes - 1}"
                         + (f" (and the null class {num_classes})" if allow_null else ""))
    return out


class GuidedModel(ScoreModel):
    """A :class:`ScoreModel` whose evaluations run several network passes; ``counts`` tells how many."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], sde: SDE, prediction: str, passes_per_eval: int):
        super().__init__(fn, sde, prediction)
        self.passes_per_eval = passes_per_eval
        self.counts: dict[str, float] = {"network_calls": 0, "network_passes": 0}

    def count(self, key: str, amount: float = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + amount

    def reset_nfe(self) -> None:
        super().reset_nfe()
        self.counts = {k: 0 for k in self.counts}

    @property
    def network_passes(self) -> float:
        """Network evaluations in units of one B-row pass (NFE in the unguided sense)."""
        return self.counts["network_passes"]


def _check_partition(branches: Sequence[Branch], probe: Tensor) -> None:
    """Σ_j w_j F_j must be the identity, else the combination depends on the parametrization."""
    total = sum(b.weight * (b.filter(probe) if b.filter is not None else probe) for b in branches)
    if not torch.allclose(total, probe, rtol=1e-4, atol=1e-4 * float(probe.abs().max())):
        raise ValueError("the branch weights (and filters) of a guided model must sum to the identity, "
                         f"got weights {[b.weight for b in branches]}")


def _probe(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """A random (1, ...) sample shaped like one row of ``like``, drawn on the CPU from ``generator`` (a private
    generator seeded 0 when None), never from the global RNG."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    z = torch.randn((1, *like.shape[1:]), generator=gen, dtype=torch.float64, device=gen.device)
    return z.to(like.device, like.dtype)


def compose(model: ConditionalModel, sde: SDE, branches: Sequence[Branch], batched: bool = True, *,
            generator: torch.Generator | None = None) -> GuidedModel:
    """A guided :class:`ScoreModel`: every evaluation runs the branches (one ``J·B`` call when ``batched``)
    and returns ``Σ_j F_j(w_j V_j⁻¹ pred_j)`` in the model's own prediction kind (see the module docstring).

    With filters, the first evaluation checks ``Σ_j w_j F_j = I`` on a random probe image drawn from
    ``generator`` (None: a private generator seeded 0), so the global RNG is never touched."""
    branches = list(branches)
    if not branches:
        raise ValueError("compose needs at least one branch")
    for b in branches:
        check_scale(b.weight, "branch weight")
    filtered = any(b.filter is not None for b in branches)
    if not filtered:  # scalar weights: the check is exact now; with filters it needs an image of x's shape
        _check_partition(branches, torch.ones(1, dtype=torch.float64))
    checked: list[bool] = [] if filtered else [True]

    def fn(x: Tensor, t: Tensor) -> Tensor:
        if not checked:
            _check_partition(branches, _probe(x, generator))
            checked.append(True)
        b = x.shape[0]
        xs = [br.view.forward(x) for br in branches]
        ys = [as_labels(br.labels, b, model.num_classes, x.device) for br in branches]
        if batched:
            preds = model.predict(torch.cat(xs), t.repeat(len(branches)), sde, torch.cat(ys)).split(b)
            guided.count("network_calls")
        else:
            preds = [model.predict(xj, t, sde, yj) for xj, yj in zip(xs, ys)]
            guided.count("network_calls", len(branches))
        guided.count("network_passes", len(branches))
        out = torch.zeros_like(x)
        for br, pred in zip(branches, preds):
            term = br.weight * br.view.inverse(pred)
            out = out + (br.filter(term) if br.filter is not None else term)
        return out

    guided = GuidedModel(fn, sde, model.prediction, len(branches))
    return guided


__all__ = ["Branch", "ConditionalModel", "GuidedModel", "IDENTITY", "View", "check_scale", "as_labels",
           "compose"]
