"""Conversions between the four things a network may predict: score, ε, x₀ (the denoiser) and v.

With ``x = s·x₀ + s·σ·ε`` (DESIGN.md notation, std = s·σ):

* score ``∇log p_t(x) = −ε/std``                        (Song et al. 2021, eq. 7 target)
* ε-prediction ``ε = (x − s·x₀)/std``                    (Ho et al. 2020, eq. 12)
* x₀-prediction ``x₀ = (x − std·ε)/s = D(x/s; σ)``       (Karras et al. 2022, eq. 3 denoiser)
* v-prediction in VP-normalized form: with ``α = 1/√(1+σ²)`` and ``σ̃ = σα`` (the VP signal and
  noise scales at the same σ), ``v = α·ε − σ̃·x₀`` (Salimans & Ho 2022, §4). Under the VP SDE
  α = s and σ̃ = std, so this is exactly ``v = s·ε − std·x₀``; under VE/EDM it is the v of the
  VP process with the same σ, applied to ``x/s``.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from scoresde.utils import append_dims

Prediction = Literal["score", "eps", "x0", "v"]
PREDICTIONS: tuple[str, ...] = ("score", "eps", "x0", "v")


def check_prediction(kind: str) -> None:
    if kind not in PREDICTIONS:
        raise ValueError(f"unknown prediction {kind!r}; choose one of {', '.join(PREDICTIONS)}")


def to_x0_eps(out: Tensor, kind: str, x: Tensor, s: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """Turn a prediction of ``kind`` into (x₀, ε). ``s`` and ``sigma`` are per-sample, shape (B,)."""
    s, sigma = append_dims(s, x.ndim), append_dims(sigma, x.ndim)
    std = s * sigma
    if kind == "x0":
        return out, (x - s * out) / std
    if kind in ("score", "eps"):
        eps = -std * out if kind == "score" else out
        return (x - std * eps) / s, eps
    if kind == "v":
        alpha = torch.rsqrt(1 + sigma**2)
        x_vp = x * alpha / s
        return alpha * x_vp - sigma * alpha * out, sigma * alpha * x_vp + alpha * out
    check_prediction(kind)
    raise AssertionError


def convert(out: Tensor, src: str, dst: str, x: Tensor, s: Tensor, sigma: Tensor) -> Tensor:
    """Convert a prediction from kind ``src`` to kind ``dst`` at state ``x`` with scale ``s`` and noise ``sigma``."""
    check_prediction(dst)
    if src == dst:
        return out
    if {src, dst} == {"score", "eps"}:  # the common cheap case
        std = append_dims(s * sigma, x.ndim)
        return -std * out if src == "score" else -out / std
    x0, eps = to_x0_eps(out, src, x, s, sigma)
    if dst == "x0":
        return x0
    if dst == "eps":
        return eps
    if dst == "score":
        return -eps / append_dims(s * sigma, x.ndim)
    alpha = append_dims(torch.rsqrt(1 + sigma**2), x.ndim)
    return alpha * eps - append_dims(sigma, x.ndim) * alpha * x0
