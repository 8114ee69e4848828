"""Conversions between the five things a network may predict: score, ε, x₀ (the denoiser), v and the velocity u.

With ``x = s·x₀ + s·σ·ε`` (DESIGN.md notation, std = s·σ):

* score ``∇log p_t(x) = −ε/std``                        (Song et al. 2021, eq. 7 target)
* ε-prediction ``ε = (x − s·x₀)/std``                    (Ho et al. 2020, eq. 12)
* x₀-prediction ``x₀ = (x − std·ε)/s = D(x/s; σ)``       (Karras et al. 2022, eq. 3 denoiser)
* v-prediction in VP-normalized form: with ``α = 1/√(1+σ²)`` and ``σ̃ = σα`` (the VP signal and
  noise scales at the same σ), ``v = α·ε − σ̃·x₀`` (Salimans & Ho 2022, §4). Under the VP SDE
  α = s and σ̃ = std, so this is exactly ``v = s·ε − std·x₀``; under VE/EDM it is the v of the
  VP process with the same σ, applied to ``x/s``.
* velocity ``u = ε − x₀``, the flow-matching target (Lipman et al. 2023, eq. 23; Liu et al. 2023, eq. 1):
  from ``x̂ = x/s = x₀ + σ·ε``, ``x₀ = (x̂ − σ·u)/(1 + σ)`` and ``ε = (x̂ + u)/(1 + σ)``. Under the flow SDE
  (s = 1 − t, σ = t/(1 − t), so s·(1 + σ) = 1) this is ``x₀ = x − t·u``, and u is the probability-flow ODE
  drift ``dx/dt`` (:mod:`scoresde.sde.flow`). Under any other SDE it is the same ``ε − x₀`` of the unscaled
  variable x̂ = x/s: the velocity of the linear interpolant with the same σ, whose state is ``x̂/(1 + σ)`` at
  time ``σ/(1 + σ)`` — not ``dx/dt`` of that SDE's own ODE.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from scoresde.utils import append_dims

Prediction = Literal["score", "eps", "x0", "v", "velocity"]
PREDICTIONS: tuple[str, ...] = ("score", "eps", "x0", "v", "velocity")


def check_prediction(kind: str) -> None:
    if kind not in PREDICTIONS:
        raise ValueError(f"unknown prediction {kind!r}; choose one of {', '.join(PREDICTIONS)}")


Scale = Tensor | float


def _per_sample(v: Scale, ndim: int) -> Scale:
    """A Python float broadcasts as it is (no kernel); a per-sample (B,) tensor gets trailing dims."""
    return v if isinstance(v, float) else append_dims(v, ndim)


def _vp_alpha(sigma: Scale) -> Scale:
    return 1 / math.sqrt(1 + sigma**2) if isinstance(sigma, float) else torch.rsqrt(1 + sigma**2)


def to_x0_eps(out: Tensor, kind: str, x: Tensor, s: Scale, sigma: Scale) -> tuple[Tensor, Tensor]:
    """Turn a prediction of ``kind`` into (x₀, ε). ``s`` and ``sigma`` are per-sample (B,) tensors or,
    when every sample shares them (a solver's grid point), Python floats."""
    s, sigma = _per_sample(s, x.ndim), _per_sample(sigma, x.ndim)
    std = s * sigma
    if kind == "x0":
        return out, (x - s * out) / std
    if kind in ("score", "eps"):
        eps = -std * out if kind == "score" else out
        return (x - std * eps) / s, eps
    if kind == "v":
        alpha = _vp_alpha(sigma)
        x_vp = x * (alpha / s)
        return alpha * x_vp - sigma * alpha * out, sigma * alpha * x_vp + alpha * out
    if kind == "velocity":
        x_hat, one_plus = x / s, 1 + sigma
        return (x_hat - sigma * out) / one_plus, (x_hat + out) / one_plus
    check_prediction(kind)
    raise AssertionError


def convert(out: Tensor, src: str, dst: str, x: Tensor, s: Scale, sigma: Scale) -> Tensor:
    """Convert a prediction from kind ``src`` to kind ``dst`` at state ``x`` with scale ``s`` and noise ``sigma``."""
    check_prediction(dst)
    if src == dst:
        return out
    s, sigma = _per_sample(s, x.ndim), _per_sample(sigma, x.ndim)
    if {src, dst} == {"score", "eps"}:  # the common cheap case
        return -(s * sigma) * out if src == "score" else out / -(s * sigma)
    if src == "x0" and dst == "score":
        return (s * out - x) / (s * sigma) ** 2
    x0, eps = to_x0_eps(out, src, x, s, sigma)
    if dst == "x0":
        return x0
    if dst == "eps":
        return eps
    if dst == "score":
        return eps / -(s * sigma)
    if dst == "velocity":
        return eps - x0
    alpha = _vp_alpha(sigma)
    return alpha * eps - sigma * alpha * x0
