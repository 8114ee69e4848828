"""Classifier guidance (Dhariwal & Nichol 2021, Alg. 1 and 2; Song et al. 2021, eq. 14): add
``scale·∇ₓ log p_φ(y | x_t, t)`` of a noise-aware classifier to the score.

``∇ₓ log p_t(x | y) = ∇ₓ log p_t(x) + ∇ₓ log p_t(y | x)`` (Bayes), so with the exact classifier and
``scale = 1`` the guided score is exactly the conditional score; ``scale > 1`` tilts toward
``p_t(x)·p_t(y | x)^scale``. The classifier sees no SDE time either: :class:`NoiseConditionalClassifier`
gives its network EDM's ``c_in·x̂`` and ``c_noise = ln(σ)/4`` (Karras et al. 2022, Table 1).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scoresde.guidance.composite import GuidedModel, as_labels, check_scale
from scoresde.models.networks.embeddings import SinusoidalEmbedding
from scoresde.models.score_model import ScoreModel
from scoresde.sde.base import SDE
from scoresde.utils import append_dims, as_time

ClassifierFn = Callable[[Tensor, Tensor], Tensor]  # (x (B, ...), t (B,)) -> logits (B, C)


class ClassifierNet(nn.Module):
    """A small ``net(x, c_noise) -> logits``: an MLP for flat points (B, d), a strided CNN with global
    pooling for images (B, C, H, W); the noise embedding is added to the hidden features."""

    def __init__(self, event_shape: tuple[int, ...], num_classes: int, width: int = 64, depth: int = 3):
        super().__init__()
        self.image = len(event_shape) == 3
        self.embed = nn.Sequential(SinusoidalEmbedding(width), nn.Linear(width, width), nn.SiLU())
        if self.image:
            chans = [event_shape[0]] + [width] * depth
            self.layers = nn.ModuleList(nn.Conv2d(a, b, 3, stride=1 if i == 0 else 2, padding=1)
                                        for i, (a, b) in enumerate(zip(chans[:-1], chans[1:])))
        else:
            dims = [math.prod(event_shape)] + [width] * depth
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(width, num_classes)
        self.num_classes = num_classes

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        emb = self.embed(c_noise)
        h = x if self.image else x.reshape(x.shape[0], -1)
        for layer in self.layers:
            h = F.silu(layer(h) + append_dims(emb, h.ndim))
        return self.head(h.mean(dim=(2, 3)) if self.image else h)


class NoiseConditionalClassifier(nn.Module):
    """``logits(x, t)`` of ``p_φ(y | x_t)``: the network sees ``c_in·x/s`` and ``c_noise = ln(σ)/4`` only."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.net, self.sigma_data = net, sigma_data

    @property
    def num_classes(self) -> int:
        return int(self.net.num_classes)

    def forward(self, x: Tensor, sigma: Tensor | float, s: Tensor | float = 1.0) -> Tensor:
        sigma, s = as_time(sigma, x), as_time(s, x)
        c_in = torch.rsqrt(sigma**2 + self.sigma_data**2) / s
        return self.net(x * append_dims(c_in, x.ndim), sigma.log() / 4)

    def bind(self, sde: SDE) -> ClassifierFn:
        """``(x, t) -> logits`` at SDE time t of ``sde``."""
        def logits(x: Tensor, t: Tensor) -> Tensor:
            t = as_time(t, x)
            return self(x, sde.sigma(t), sde.s(t))
        return logits


def noisy_batch(sde: SDE, x0: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """``(x_t, t)`` with σ(t) log-uniform on [σ(t_min), σ(T)] (every noise level the sampler visits)."""
    ends = sde.sigma(torch.tensor([sde.t_min, sde.T], dtype=torch.float64)).log()
    u = torch.rand(x0.shape[0], generator=generator, dtype=torch.float64)
    t = sde.t_of_sigma(torch.exp(ends[0] + u * (ends[1] - ends[0]))).to(x0.device, x0.dtype)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    mean, std = sde.marginal(x0, t)
    return mean + std * eps, t


def train_classifier(classifier: NoiseConditionalClassifier, sde: SDE, data: Tensor, labels: Tensor, *,
                     steps: int = 500, batch_size: int = 256, lr: float = 2e-3,
                     generator: torch.Generator | None = None) -> list[float]:
    """Train ``classifier`` with cross-entropy on noisy data ``x_t ~ q(x_t | x₀)`` (Dhariwal & Nichol 2021,
    §4.1), noise levels log-uniform over the SDE's range. Returns the loss of every step."""
    if data.shape[0] != labels.shape[0] or data.shape[0] < 1:
        raise ValueError(f"data {tuple(data.shape)} and labels {tuple(labels.shape)} must have the same length")
    as_labels(labels, len(labels), classifier.num_classes, labels.device, allow_null=False)
    opt = torch.optim.Adam(classifier.parameters(), lr=lr)
    logits_fn, losses = classifier.bind(sde), []
    classifier.train()
    for _ in range(steps):
        idx = torch.randint(len(data), (min(batch_size, len(data)),), generator=generator)
        x_t, t = noisy_batch(sde, data[idx], generator)
        loss = F.cross_entropy(logits_fn(x_t, t), labels[idx].long())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    classifier.eval()
    return losses


def classifier_guidance(base: ScoreModel, classifier: ClassifierFn, class_labels: Tensor | int, scale: float,
                        num_classes: int) -> GuidedModel:
    """``score(x, t) + scale·∇ₓ log softmax(classifier(x, t))[y]`` as a score model (Dhariwal & Nichol 2021,
    Alg. 1 in score form). ``base`` is the unconditional model; each evaluation is one pass of it and one
    forward + backward pass of the classifier (``counts["classifier_passes"]``)."""
    scale = check_scale(scale)

    def fn(x: Tensor, t: Tensor) -> Tensor:
        y = as_labels(class_labels, x.shape[0], num_classes, x.device, allow_null=False)
        score = base.score(x, t)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            log_p = torch.log_softmax(classifier(xg, t), dim=1).gather(1, y[:, None]).sum()
            grad = torch.autograd.grad(log_p, xg)[0]
        guided.count("network_calls")
        guided.count("network_passes")
        guided.count("classifier_passes")
        return score + scale * grad

    guided = GuidedModel(fn, base.sde, "score", passes_per_eval=1)
    guided.counts["classifier_passes"] = 0
    return guided


__all__ = ["ClassifierNet", "NoiseConditionalClassifier", "classifier_guidance", "noisy_batch", "train_classifier"]
