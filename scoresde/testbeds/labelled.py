"""A class-labelled Gaussian mixture: exact conditional scores and the exact noisy classifier p_t(y | x).

Each component k of a :class:`GaussianMixture` carries a class label ``c(k)``. Then under any SDE

* ``p_t(x | y) = Σ_{k: c(k)=y} w_k N_k(x) / π_y`` with ``π_y = Σ_{k: c(k)=y} w_k``: the same mixture with
  the other classes' components removed, so its score is exact (:meth:`score`);
* ``p_t(y | x) = Σ_{k: c(k)=y} w_k N_k(x) / Σ_k w_k N_k(x)``, the exact noise-aware classifier
  (:meth:`log_class_probs`), where ``N_k`` is component k's density after the noise (Karras et al. 2022,
  app. B.3; the Jacobian of ``x = s·x̂`` cancels in the ratio).

With label ``num_classes`` standing for the null class (the whole mixture), the testbed has the interface of
a class-conditional network (``predict(x, t, sde, class_labels)``, ``prediction``, ``num_classes``), so
classifier-free and classifier guidance run on it unchanged and can be compared with exact answers
(Ho & Salimans 2022; Dhariwal & Nichol 2021).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from scoresde.data.toys import ring_means
from scoresde.models.score_model import ScoreModel
from scoresde.sde.base import SDE
from scoresde.testbeds.mixture import GaussianMixture
from scoresde.utils import append_dims, as_time


class LabelledMixture:
    """``mixture`` with one class label per component (ints in [0, num_classes)); label ``num_classes`` (or
    None) is the null class, i.e. the unconditional mixture."""

    prediction = "score"

    def __init__(self, mixture: GaussianMixture, labels: Sequence[int] | Tensor, num_classes: int | None = None):
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (len(mixture.weights),):
            raise ValueError(f"need one label per component ({len(mixture.weights)}), got shape {tuple(labels.shape)}")
        self.num_classes = int(num_classes if num_classes is not None else int(labels.max()) + 1)
        if bool(((labels < 0) | (labels >= self.num_classes)).any()):
            raise ValueError(f"component labels must lie in [0, {self.num_classes})")
        self.mixture, self.labels = mixture, labels
        self.class_prior = torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, labels, mixture.weights)
        if bool((self.class_prior == 0).any()):
            raise ValueError("every class needs at least one component")

    def _mask(self, class_labels: Tensor | int | None, batch: int, device: torch.device) -> Tensor:
        """(B, K) boolean: which components each sample's class keeps (all of them for the null class)."""
        y = torch.full((batch,), self.num_classes) if class_labels is None else torch.as_tensor(class_labels)
        y = y.long().expand(batch) if y.ndim == 0 else y.long()
        if y.shape != (batch,) or bool(((y < 0) | (y > self.num_classes)).any()):
            raise ValueError(f"class labels must be ints in [0, {self.num_classes}] (null: {self.num_classes}) "
                             f"of shape ({batch},), got {y.tolist() if y.numel() < 10 else tuple(y.shape)}")
        y = y.to(device)
        return (self.labels.to(device)[None, :] == y[:, None]) | (y[:, None] == self.num_classes)

    def _log_joint(self, x: Tensor, t: Tensor | float, sde: SDE) -> tuple[Tensor, Tensor, Tensor]:
        """(log w_k N_k(x̂) (B, K), variances (B, K), s (B,)) at time t, on the unscaled x̂ = x/s."""
        t = as_time(t, x)
        s = sde.s(t)
        log_w, var = self.mixture.log_components(x / append_dims(s, x.ndim), sde.sigma(t))
        return log_w, var, s

    def score(self, x: Tensor, t: Tensor | float, sde: SDE, class_labels: Tensor | int | None = None) -> Tensor:
        """Exact ``∇ₓ log p_t(x | y)`` (the unconditional score for the null class)."""
        log_w, var, s = self._log_joint(x, t, sde)
        log_w = log_w.masked_fill(~self._mask(class_labels, x.shape[0], x.device), -math.inf)
        weight = torch.softmax(log_w, dim=1) / var
        means = self.mixture.means.to(x.device, x.dtype)
        flat = x.reshape(x.shape[0], -1) / s[:, None]
        return ((weight @ means - weight.sum(1, keepdim=True) * flat) / s[:, None]).reshape(x.shape)

    def predict(self, x: Tensor, t: Tensor, sde: SDE, class_labels: Tensor | int | None = None) -> Tensor:
        """The interface of a class-conditional network: the exact score."""
        return self.score(x, t, sde, class_labels)

    def score_model(self, sde: SDE, class_labels: Tensor | int | None = None) -> ScoreModel:
        """A counted exact model of ``p_t(x | y)`` under ``sde``."""
        return ScoreModel(lambda x, t: self.score(x, t, sde, class_labels), sde, "score")

    def log_class_probs(self, x: Tensor, t: Tensor | float, sde: SDE) -> Tensor:
        """Exact ``log p_t(y | x)`` for every class, shape (B, num_classes); differentiable in x."""
        log_w, _, _ = self._log_joint(x, t, sde)
        onehot = torch.nn.functional.one_hot(self.labels.to(x.device), self.num_classes).to(torch.bool)
        per_class = log_w[:, :, None].masked_fill(~onehot[None], -math.inf).logsumexp(dim=1)
        return per_class - log_w.logsumexp(dim=1, keepdim=True)

    def classifier(self, sde: SDE) -> Callable[[Tensor, Tensor], Tensor]:
        """The exact noise-aware classifier ``(x, t) -> log p_t(y | x)`` (as logits) under ``sde``."""
        return lambda x, t: self.log_class_probs(x, t, sde)

    def log_prob(self, x: Tensor, t: Tensor | float, sde: SDE, class_labels: Tensor | int | None = None) -> Tensor:
        """Exact ``log p_t(x | y)``, shape (B,)."""
        log_w, _, s = self._log_joint(x, t, sde)
        mask = self._mask(class_labels, x.shape[0], x.device)
        prior = (torch.where(mask, self.mixture.weights.to(x.device, x.dtype)[None], 0.0)).sum(1)
        return log_w.masked_fill(~mask, -math.inf).logsumexp(1) - prior.log() - self.mixture.dim * s.log()

    def conditional(self, y: int) -> GaussianMixture:
        """The exact data distribution of class ``y``: the components labelled y, reweighted."""
        if not 0 <= int(y) < self.num_classes:
            raise ValueError(f"unknown class {y}: classes are 0..{self.num_classes - 1}")
        keep = self.labels == int(y)
        m = self.mixture
        return GaussianMixture(m.means[keep], m.stds[keep], m.weights[keep], m.event_shape, f"{m.name}|y={y}")

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` exact data samples and their class labels."""
        k = torch.multinomial(self.mixture.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.mixture.dim, generator=generator, dtype=torch.float64)
        x = self.mixture.means[k] + self.mixture.stds[k, None] * z
        return x.reshape((n,) + self.mixture.event_shape).float(), self.labels[k]


def labelled_ring(modes: int = 8, radius: float = 4.0, std: float = 0.5, num_classes: int = 2) -> LabelledMixture:
    """``modes`` isotropic Gaussians on a circle in 2-D, labelled ``k mod num_classes`` around the ring."""
    mixture = GaussianMixture(ring_means(modes, radius), std, name=f"labelled ring of {modes}")
    return LabelledMixture(mixture, torch.arange(modes) % num_classes, num_classes)


__all__ = ["LabelledMixture", "labelled_ring"]
