"""A denoiser trained at one noise level, evaluated at others: the classic first exercise before time
conditioning (a plain U-Net that never sees σ), trained with :class:`scoresde.training.Trainer`.

The network is wrapped as ``Preconditioned(net, kind="x0", c_noise=zero_c_noise)``: its noise input is always
0, so it is a *blind* denoiser ``D(x)``; :class:`FixedSigmaLoss` trains it at one σ with
``|D(x₀ + σε) − x₀|²`` (the EDM loss at fixed σ without the weight, Karras et al. 2022, eq. 2).
:func:`denoising_mse` then measures it at other σ, where it over- or under-smooths.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from scoresde.models.preconditioning import Preconditioned
from scoresde.models.score_model import ScoreModel
from scoresde.utils import append_dims, batch_sq_norm


def zero_c_noise(sigma: Tensor) -> Tensor:
    """A constant noise input: the network cannot tell σ."""
    return torch.zeros_like(sigma)


def blind_denoiser(net: nn.Module) -> Preconditioned:
    """``net`` as an x₀-predicting model that is never told the noise level."""
    return Preconditioned(net, kind="x0", c_noise=zero_c_noise)


class FixedSigmaLoss:
    """``loss(model, x0, generator=None, class_labels=None) -> (B,)``: ``|D(s·(x₀ + σε)) − x₀|²`` summed over
    dims at the one noise level ``sigma`` (a loss callable for :class:`scoresde.training.Trainer`)."""

    def __init__(self, sigma: float):
        if not float(sigma) > 0:
            raise ValueError(f"FixedSigmaLoss: sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)

    def __call__(self, model: ScoreModel, x0: Tensor, generator: torch.Generator | None = None,
                 class_labels: Tensor | None = None) -> Tensor:
        if class_labels is not None:
            raise ValueError("FixedSigmaLoss trains an unconditional denoiser; pass class_labels=None")
        sigma = torch.full((x0.shape[0],), self.sigma, dtype=x0.dtype, device=x0.device)
        t = model.sde.t_of_sigma(sigma)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = append_dims(model.sde.s(t), x0.ndim) * (x0 + self.sigma * eps)
        return batch_sq_norm(model.predict(x_t, t, "x0") - x0)


@torch.no_grad()
def denoising_mse(model: ScoreModel, x0: Tensor, sigmas: Sequence[float], generator: torch.Generator | None = None
                  ) -> Tensor:
    """Mean squared error per pixel of ``model``'s x₀ prediction at each σ of ``sigmas``, shape (len(sigmas),)."""
    out = []
    for sigma in sigmas:
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        t = model.sde.t_of_sigma(torch.full((x0.shape[0],), float(sigma), dtype=x0.dtype, device=x0.device))
        x_t = append_dims(model.sde.s(t), x0.ndim) * (x0 + float(sigma) * eps)
        out.append((model.x0(x_t, t) - x0).pow(2).mean())
    return torch.stack(out)


__all__ = ["FixedSigmaLoss", "blind_denoiser", "denoising_mse", "zero_c_noise"]
