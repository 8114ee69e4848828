"""The variational bound of the discrete DDPM chain (Ho et al. 2020, eq. 5) on a score model.

    L = L_T + Σ_{t=2}^{N} L_{t−1} + L_0,
    L_T     = KL(q(x_N | x_0) ‖ N(0, I)),
    L_{t−1} = E_q KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)),
    L_0     = −E_q log p_θ(x_0 | x_1),

with ``β_t, ᾱ_t`` from the SDE's ``ddpm_schedule(N)`` and the model evaluated at the times of the ``ddpm``
grid (:func:`scoresde.make_grid`), where ``s(t)² = ᾱ_t``, so that the chain's ``q(x_t | x_0)`` is the
SDE's marginal there. ``p_θ(x_{t−1} | x_t) = N(μ_θ, σ_t² I)`` with Ho's eq. 11 mean
``μ_θ = (x_t − β_t/√(1−ᾱ_t)·ε_θ)/√α_t`` and ``σ_t² = β_t`` or ``β̃_t = (1−ᾱ_{t−1})/(1−ᾱ_t)·β_t``.
Since ``μ̃_t − μ_θ = β_t/(√α_t √(1−ᾱ_t))·(ε_θ − ε)`` for ``x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε``, each KL is
``½[D(β̃_t/σ_t² − 1 + log(σ_t²/β̃_t)) + β_t²/(α_t(1−ᾱ_t)σ_t²)·‖ε − ε_θ‖²]``. The expectation over x_t
is estimated with one draw of ε per term. L_0 is Ho's discretized Gaussian decoder (eq. 13), or, for
tests against continuous densities, ``−log N(x_0; μ_θ(x_1, 1), σ_1²I)``.

By Jensen, ``E[L] ≥ −log p_θ(x_0)`` for every x_0 (p_θ the chain's own marginal), hence ``≥`` the data's
entropy in expectation over the data.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from scoresde.models.score_model import ScoreModel
from scoresde.sde.base import SDE
from scoresde.solvers.grids import make_grid
from scoresde.utils import batch_sq_norm, flat_dim

VARIANCES = ("beta", "posterior")
DECODERS = ("discrete", "continuous")


@dataclass
class DDPMBoundResult:
    """The bound per sample (B,) in nats and its parts; ``bits_per_dim`` for the discrete decoder only."""

    nats: Tensor
    prior: Tensor
    diffusion: Tensor
    decoder: Tensor
    bits_per_dim: Tensor | None
    steps: int
    nfe: int
    seconds: float


def _log_bin_prob(lo: Tensor, hi: Tensor) -> Tensor:
    """``log(Φ(hi) − Φ(lo))`` for standardized bin edges (±inf allowed), stable in both tails."""
    upper = lo > 0  # in the upper tail use the mirror bin: Φ(hi) − Φ(lo) = Φ(−lo) − Φ(−hi)
    a, b = torch.where(upper, -hi, lo), torch.where(upper, -lo, hi)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return log_b + torch.log1p(-torch.exp(log_a - log_b).clamp(max=1 - 1e-12))


def discretized_gaussian_log_likelihood(x0: Tensor, mean: Tensor, std: Tensor, levels: int = 256) -> Tensor:
    """Ho et al.'s eq. 13: ``Σ_i log ∫_{δ−(x_i)}^{δ+(x_i)} N(x; μ_i, σ²)`` per sample, with bins of half-width
    ``1/(levels − 1)`` around data ``x0 = 2k/(levels−1) − 1`` and the edge bins open to ∓∞ at ±1."""
    half = 1 / (levels - 1)
    lo = torch.where(x0 <= -1 + 1e-6, torch.full_like(x0, -math.inf), (x0 - half - mean) / std)
    hi = torch.where(x0 >= 1 - 1e-6, torch.full_like(x0, math.inf), (x0 + half - mean) / std)
    return _log_bin_prob(lo, hi).reshape(x0.shape[0], -1).sum(1)


def has_ddpm_chain(sde: SDE) -> bool:
    """Whether ``sde`` is a continuous-time version of Ho et al.'s chain: it has a ``ddpm_schedule`` and is
    variance preserving, ``std² = 1 − s²`` (VP, cosine VP; not sub-VP, VE or EDM)."""
    if getattr(sde, "ddpm_schedule", None) is None:
        return False
    t = torch.linspace(0.1, 0.9, 5, dtype=torch.float64) * sde.T
    return bool(torch.allclose(sde.std(t) ** 2, 1 - sde.s(t) ** 2, rtol=1e-6, atol=1e-9))


def _check(model: ScoreModel, x0: Tensor, steps: int, variance: str, decoder: str, levels: int,
           timesteps: int | None) -> None:
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {', '.join(VARIANCES)}, got {variance!r}")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if getattr(model.sde, "ddpm_schedule", None) is None:
        raise ValueError(f"the DDPM bound needs an SDE with a DDPM discretization (vp, cosine); "
                         f"{model.sde.name} has none")
    if not has_ddpm_chain(model.sde):
        raise ValueError(f"the DDPM chain has marginal variance 1 − ᾱ; the {model.sde.name} SDE's std² ≠ 1 − s², "
                         "so its model is not a model of that chain")
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    if timesteps is not None and (not isinstance(timesteps, int) or timesteps < 1):
        raise ValueError(f"timesteps must be None (exact sum) or an integer >= 1, got {timesteps!r}")
    if not isinstance(x0, Tensor) or not torch.is_floating_point(x0) or x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError("x0 must be a non-empty floating-point batch of shape (B, ...)")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 holds non-finite values")
    if decoder == "discrete":
        if float(x0.min()) < -1 or float(x0.max()) > 1:
            raise ValueError(f"the discrete decoder needs data in [-1, 1], got [{float(x0.min()):.4g}, "
                             f"{float(x0.max()):.4g}]")
        k = (x0 + 1) * (levels - 1) / 2
        if float((k - k.round()).abs().max()) > 1e-3:
            raise ValueError(f"the discrete decoder needs data on the {levels}-level grid 2k/{levels - 1} - 1")


def ddpm_bound(model: ScoreModel, x0: Tensor, steps: int = 1000, *, variance: str = "beta",
               decoder: str = "discrete", levels: int = 256, timesteps: int | None = None,
               generator: torch.Generator | None = None) -> DDPMBoundResult:
    """Ho et al.'s bound (eq. 5) of the ``steps``-step chain at data ``x0`` (B, ...), per sample, in nats.

    Args:
        variance: ``beta`` (σ_t² = β_t) or ``posterior`` (σ_t² = β̃_t; at t = 1, where β̃_1 = 0, β̃_2 is used
            as in Ho et al.'s code).
        decoder: ``discrete`` (eq. 13, data on the ``levels``-level grid in [−1, 1]; gives bits/dim) or
            ``continuous`` (``−log N(x_0; μ_θ(x_1, 1), σ_1²)``, a bound on a continuous NLL in nats).
        timesteps: None sums all ``steps`` terms (exact up to the one-draw estimate of each E_q); an integer
            k draws k times t ~ U{1..N} per sample and uses ``L_T + N·mean(L_{t−1})`` (unbiased).
        generator: the source of ε (and of t when sampled).
    The model is evaluated at the ``ddpm`` grid's times; the first lies slightly past T (Π(1−β) < e^{−∫β}).
    """
    _check(model, x0, steps, variance, decoder, levels, timesteps)
    sde, start, nfe0 = model.sde, time.perf_counter(), model.nfe
    betas, abar = (v.to(x0.device, x0.dtype) for v in sde.ddpm_schedule(steps))
    times = make_grid(sde, steps, "ddpm").t[:-1].flip(0).to(x0.device, x0.dtype)  # times[i]: Ho's t = i + 1
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    post = (1 - abar_prev) / (1 - abar) * betas
    var = betas if variance == "beta" else torch.cat([post[1:2], post[1:]])
    d, b = flat_dim(x0), x0.shape[0]
    prior = 0.5 * (d * ((1 - abar[-1]) - 1 - torch.log(1 - abar[-1])) + abar[-1] * batch_sq_norm(x0))

    def term(i: Tensor) -> Tensor:
        """L_{t−1} (t = i + 1 ≥ 2) or L_0 (i = 0) per sample, for per-sample step indices i (B,)."""
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype,
                          device=generator.device if generator is not None else x0.device).to(x0.device)
        a, bt, v, p = (w[i].reshape((b,) + (1,) * (x0.ndim - 1)) for w in (abar, betas, var, post))
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        eps_hat = model.eps(x_t, times[i])
        coef = bt**2 / ((1 - bt) * (1 - a) * v)
        kl = 0.5 * (d * (p / v - 1 + torch.log(v / p)).flatten() + coef.flatten() * batch_sq_norm(eps - eps_hat))
        mean = (x_t - bt / (1 - a).sqrt() * eps_hat) / (1 - bt).sqrt()  # Ho eq. 11
        if decoder == "discrete":
            nll0 = -discretized_gaussian_log_likelihood(x0, mean, v.sqrt(), levels)
        else:
            nll0 = 0.5 * (d * torch.log(2 * math.pi * v).flatten() + batch_sq_norm(x0 - mean) / v.flatten())
        return torch.where(i == 0, nll0, kl)

    diffusion, dec = x0.new_zeros(b), x0.new_zeros(b)
    with torch.no_grad():
        if timesteps is None:
            for i in range(steps):
                value = term(torch.full((b,), i, device=x0.device))
                if i == 0:
                    dec = value
                else:
                    diffusion = diffusion + value
        else:
            for _ in range(timesteps):
                i = torch.randint(0, steps, (b,), generator=generator,
                                  device=generator.device if generator is not None else x0.device).to(x0.device)
                value = steps * term(i) / timesteps
                dec, diffusion = dec + torch.where(i == 0, value, 0), diffusion + torch.where(i == 0, 0, value)
    nats = prior + diffusion + dec
    bpd = nats / (d * math.log(2)) if decoder == "discrete" else None
    return DDPMBoundResult(nats, prior, diffusion, dec, bpd, steps, model.nfe - nfe0, time.perf_counter() - start)


__all__ = ["DDPMBoundResult", "ddpm_bound", "discretized_gaussian_log_likelihood", "has_ddpm_chain", "VARIANCES",
           "DECODERS"]
