"""Exact log-likelihoods through the probability-flow ODE (Song et al. 2021, eq. 13 and appendix D.2),
bits per dimension, and the dequantization of discrete (image) data.

Along the probability-flow ODE ``dx/dt = h(x, t) = f(t)x − ½g(t)²∇log p_t(x)`` the density obeys the
instantaneous change of variables ``d log p_t(x(t))/dt = −∇·h(x(t), t)`` (Chen et al. 2018), so

    log p_{t_min}(x) = log p_T(x(T)) + ∫_{t_min}^{T} ∇·h(x(t), t) dt,    x(t_min) = x.

The ODE is integrated *forward* from ``t_min`` to ``T`` jointly with the integral, and ``p_T`` is
replaced by the SDE's prior. With an exact score the result is the log-density of the *perturbed*
marginal ``p_{t_min}`` (the data convolved with the noise of time ``t_min``), up to the prior mismatch
``p_T ≠ prior`` (tiny for the default VP and VE SDEs) and the solver tolerance; as ``t_min → 0`` it
approaches ``log p_0`` (for VE, whose σ(0) = σ_min > 0, it approaches the density at σ_min).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torchdiffeq import odeint

from scoresde.models.score_model import ScoreModel
from scoresde.sde.reverse import ProbabilityFlowODE
from scoresde.solvers.ode import is_adaptive
from scoresde.utils import flat_dim

DIVERGENCES = ("exact", "hutchinson")
PROBE_NOISES = ("rademacher", "gaussian")

# (k, generator) -> (u in [0, 1)^shape of k, log q(u | k) of shape (B,)): the variational-dequantization hook.
DequantNoise = Callable[[Tensor, torch.Generator | None], tuple[Tensor, Tensor]]


@dataclass
class LikelihoodResult:
    """What :func:`ode_log_likelihood` measured, per sample (shape (B,)) unless stated.

    Attributes:
        log_likelihood: ``log p_{t_min}(x)`` in nats (the continuous density at the dequantized point
            when a dequantization is set).
        std_error: Hutchinson only: the standard error of each sample's estimate across its probes
            (std with ddof=1 over √probes); NaN with one probe (no spread to measure); None for "exact".
        nfe: network evaluations counted by the model's wrapper (rejected adaptive steps included).
        seconds: wall-clock time of the solve.
        prior_logp: ``log prior(x(T))``.
        delta_logp: ``∫_{t_min}^T ∇·h dt`` (mean over probes for Hutchinson).
        bits_per_dim: with a dequantization, the variational bound ``−log₂ P(k)/D`` (see
            :class:`Dequantization`); else None.
        x_T: the end point x(T) of the ODE.
        x: the point whose density was computed: x0, or its dequantized version.
        log_q: with a dequantization, ``log q(u | k)`` of the draw (B,); else None.
    """

    log_likelihood: Tensor
    std_error: Tensor | None
    nfe: int
    seconds: float
    prior_logp: Tensor
    delta_logp: Tensor
    bits_per_dim: Tensor | None = None
    x_T: Tensor | None = None
    x: Tensor | None = None
    log_q: Tensor | None = None


def bits_per_dim(log_likelihood: Tensor, dim: int, *, scale: float = 2 / 256) -> Tensor:
    """Bits per dimension of discrete data from the log-density of its continuous (dequantized) version.

    ``scale`` is the width of one quantization bin in the model's space, i.e. the per-dimension Jacobian of
    the map from integer units to model space. For 8-bit data mapped to [−1, 1) by ``x = 2(k + u)/256 − 1``
    that map has Jacobian ``(2/256)^D``, so a density ``p(x)`` on model space is the density
    ``p(x)·(2/256)^D`` on ``[0, 256)^D`` and (Theis et al. 2016; Ho et al. 2019)

        log P(k) ≥ E_u[log p(x)] + D·log(2/256),   bpd = −(log p(x) + D·log(2/256)) / (D·ln 2),

    i.e. ``bpd = −log p(x)/(D ln 2) − log₂(2/256) = −log p(x)/(D ln 2) + 7``. ``scale=1`` gives the plain
    bits per dimension of a continuous density. ``log_likelihood`` may already include ``−log q(u|k)``.
    """
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive bin width, got {scale}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return -(log_likelihood + dim * math.log(scale)) / (dim * math.log(2))


def uniform_noise(k: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Uniform dequantization noise ``u ~ U[0, 1)^D`` with ``log q(u | k) = 0``."""
    u = torch.rand(k.shape, generator=generator, dtype=k.dtype,
                   device=generator.device if generator is not None else k.device).to(k.device)
    return u, torch.zeros(k.shape[0], dtype=k.dtype, device=k.device)


class Dequantization:
    """Dequantize ``levels``-level data given in model space as ``x = 2k/(levels − 1) − 1`` ∈ [−1, 1].

    * ``centered=False`` (the usual 8-bit convention): ``x̃ = 2(k + u)/levels − 1`` ∈ [−1, 1), bin width
      ``Δ = 2/levels``; for 256 levels this is ``2(k + u)/256 − 1``.
    * ``centered=True``: bins of width ``Δ = 2/(levels − 1)`` centred on the data points themselves,
      ``x̃ = x + Δ(u − ½)`` (the same bins as Ho et al.'s discretized decoder); right for a model whose
      data sit on the grid ``2k/(levels − 1) − 1`` (e.g. the digits testbed, 17 levels at k/8 − 1).

    In both cases ``log P(k) ≥ E_{q(u|k)}[log p(x̃) − log q(u | k)] + D·log Δ``; :meth:`bits_per_dim`
    turns that into bits per dimension. The variational-dequantization hook ``noise(k, generator) ->
    (u, log q(u | k))`` (Ho et al. 2019, Flow++ §3.1) draws ``u ∈ [0, 1)^D`` given the integer levels ``k``
    (float tensor of the data's shape) and returns its log-density per sample; the default is uniform.
    """

    def __init__(self, levels: int = 256, centered: bool = False, noise: DequantNoise | None = None):
        if not isinstance(levels, int) or levels < 2:
            raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
        self.levels, self.centered, self.noise = levels, bool(centered), noise or uniform_noise

    @property
    def bin_width(self) -> float:
        return 2 / (self.levels - 1) if self.centered else 2 / self.levels

    def levels_of(self, x: Tensor) -> Tensor:
        """The integer levels k of data ``x`` in [−1, 1] on the grid ``2k/(levels − 1) − 1`` (checked)."""
        if not torch.is_floating_point(x) or x.ndim < 2:
            raise ValueError(f"data must be a floating-point batch (B, ...) , got {x.dtype} of shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()) or float(x.min()) < -1 or float(x.max()) > 1:
            raise ValueError(f"data must lie in [-1, 1] (images scaled to [-1, 1]); got values in "
                             f"[{float(x.min()):.4g}, {float(x.max()):.4g}]")
        k = (x + 1) * (self.levels - 1) / 2
        if float((k - k.round()).abs().max()) > 1e-3:
            raise ValueError(f"data are not on the {self.levels}-level grid 2k/{self.levels - 1} - 1")
        return k.round()

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(x̃, log q(u | k)) for data ``x`` in [−1, 1]; x̃ has x's shape, log q has shape (B,)."""
        k = self.levels_of(x)
        u, log_q = self.noise(k, generator)
        if u.shape != k.shape or log_q.shape != (k.shape[0],):
            raise ValueError(f"the dequantization noise must return u of shape {tuple(k.shape)} and log q of "
                             f"shape ({k.shape[0]},), got {tuple(u.shape)} and {tuple(log_q.shape)}")
        if self.centered:
            return x + self.bin_width * (u - 0.5), log_q
        return self.bin_width * (k + u) - 1, log_q

    def bits_per_dim(self, log_likelihood: Tensor, log_q: Tensor, dim: int) -> Tensor:
        """``−(log p(x̃) − log q(u|k) + D log Δ)/(D ln 2)``: an upper bound on ``−log₂ P(k)/D`` in expectation."""
        return bits_per_dim(log_likelihood - log_q, dim, scale=self.bin_width)

    def __repr__(self) -> str:
        return f"Dequantization(levels={self.levels}, centered={self.centered})"


def _probes(x: Tensor, probes: int, noise: str, generator: torch.Generator | None) -> Tensor:
    """``probes`` probe vectors per sample, shape (probes, *x.shape), drawn once on the generator's device."""
    shape, device = (probes, *x.shape), generator.device if generator is not None else x.device
    if noise == "gaussian":
        eps = torch.randn(shape, generator=generator, dtype=x.dtype, device=device)
    else:
        eps = torch.randint(0, 2, shape, generator=generator, device=device).to(x.dtype) * 2 - 1
    return eps.to(x.device)


def _vjps(h: Tensor, x: Tensor, vs: Tensor) -> Tensor:
    """``vᵀ ∂h/∂x`` for each of the vectors ``vs`` (P, *h.shape), shape (P, *x.shape): one vmapped backward pass
    (``is_grads_batched``), or a loop of P passes where an operation has no batching rule."""
    try:
        (out,) = torch.autograd.grad(h, x, vs, retain_graph=True, is_grads_batched=True)
        return out
    except (RuntimeError, NotImplementedError):
        return torch.stack([torch.autograd.grad(h, x, v, retain_graph=True)[0] for v in vs])


def _divergence(h: Tensor, x: Tensor, eps: Tensor | None) -> Tensor:
    """∇·h at x: the exact trace, shape (1, B), or one Hutchinson–Skilling estimate εᵀ(∂h/∂x)ε per probe,
    shape (P, B). ``h`` must have been computed from ``x`` (with grad); the network is evaluated once."""
    b, d = h.shape[0], h[0].numel()
    if eps is None:  # the trace from the D basis vectors e_i: Σ_i (e_iᵀ ∂h/∂x)_i
        basis = torch.eye(d, dtype=h.dtype, device=h.device)[:, None, :].expand(d, b, d).reshape(d, *h.shape)
        rows = _vjps(h, x, basis).reshape(d, b, d)
        return rows.diagonal(dim1=0, dim2=2).sum(-1)[None]
    return (_vjps(h, x, eps) * eps).reshape(eps.shape[0], b, -1).sum(-1)


def _check_inputs(model: ScoreModel, x0: Tensor, divergence: str, probes: int, noise: str,
                  t_min: float, T: float) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")
    if noise not in PROBE_NOISES:
        raise ValueError(f"noise must be one of {', '.join(PROBE_NOISES)}, got {noise!r}")
    if not isinstance(probes, int) or probes < 1:
        raise ValueError("probes must be >= 1")
    if not isinstance(x0, Tensor) or not torch.is_floating_point(x0) or x0.ndim < 2 or x0.shape[0] == 0:
        got = f"{x0.dtype} of shape {tuple(x0.shape)}" if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"x0 must be a non-empty floating-point batch of shape (B, ...), got {got}")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 holds non-finite values")
    if not (0 < t_min < T <= model.sde.T):
        raise ValueError(f"need 0 < t_min < T <= {model.sde.T} for the {model.sde.name} SDE, "
                         f"got t_min={t_min}, T={T}")


def ode_log_likelihood(model: ScoreModel, x0: Tensor, *, divergence: str = "exact", probes: int = 1,
                       noise: str = "rademacher", method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
                       t_min: float | None = None, T: float | None = None, generator: torch.Generator | None = None,
                       dequantization: Dequantization | None = None) -> LikelihoodResult:
    """``log p_{t_min}(x0)`` per sample via the probability-flow ODE (Song et al. 2021, appendix D.2).

    Args:
        model: the score model; its SDE defines the ODE and the prior.
        x0: data of shape (B, ...) on the model's device (the ODE state stays there); with a dequantization,
            discrete data in [−1, 1] (see :class:`Dequantization`), dequantized with ``generator`` first.
        divergence: ``exact`` (autograd trace over every dimension: one backward pass per dimension, for
            low-dimensional data) or ``hutchinson`` (Hutchinson–Skilling: ``probes`` probes per sample,
            drawn once from ``generator`` and fixed along the trajectory, FFJORD-style).
        noise: probe distribution, ``rademacher`` or ``gaussian``.
        method, rtol, atol: torchdiffeq's method and tolerances (on x and on the log-density integral).
        t_min, T: integration interval (defaults: the SDE's); the model is never evaluated outside it
            (adaptive steps are clipped at T with torchdiffeq's ``step_t``, and t is clamped).
    Returns a :class:`LikelihoodResult`; its ``nfe`` is measured by the model's counting wrapper.
    """
    sde = model.sde
    t_min = float(sde.t_min if t_min is None else t_min)
    T = float(sde.T if T is None else T)
    _check_inputs(model, x0, divergence, probes, noise, t_min, T)
    log_q = None
    if dequantization is not None:
        x0, log_q = dequantization(x0, generator)
    eps = _probes(x0, probes, noise, generator) if divergence == "hutchinson" else None
    flow = ProbabilityFlowODE(sde, model.score)
    last_t = [t_min]

    def func(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        last_t[0] = float(t)
        with torch.enable_grad():
            x = state[0].detach().requires_grad_(True)
            h = flow.drift(x, t.clamp(t_min, T).to(x.dtype))
            div = _divergence(h, x, eps)
        return h.detach(), div.detach()

    nfe0, start = model.nfe, time.perf_counter()
    ts = torch.tensor([t_min, T], dtype=torch.float64, device=x0.device)
    state0 = (x0.detach(), torch.zeros(probes if eps is not None else 1, x0.shape[0], dtype=x0.dtype,
                                       device=x0.device))
    options = {"step_t": torch.tensor([T], dtype=torch.float64)} if is_adaptive(method) else None
    try:
        with torch.no_grad():
            xs, integrals = odeint(func, state0, ts, method=method, rtol=rtol, atol=atol, options=options)
    except AssertionError as err:  # torchdiffeq reports non-finite states and step underflow this way
        raise FloatingPointError(f"likelihood ODE ({method}): the solve failed near t={last_t[0]:.6g}: {err}. "
                                 "Check the model's output there, or loosen rtol/atol.") from None
    x_T, per_probe = xs[-1], integrals[-1]
    prior_logp = sde.prior_log_prob(x_T)
    delta = per_probe.mean(0)
    std_error = None
    if eps is not None:
        std_error = (per_probe.std(0) / math.sqrt(probes) if probes > 1
                     else torch.full_like(delta, float("nan")))
    log_likelihood = prior_logp + delta
    if not bool(torch.isfinite(log_likelihood).all()):
        raise FloatingPointError(f"likelihood ODE ({method}): non-finite log-likelihood")
    bpd = None if dequantization is None else dequantization.bits_per_dim(log_likelihood, log_q, flat_dim(x0))
    return LikelihoodResult(log_likelihood, std_error, model.nfe - nfe0, time.perf_counter() - start, prior_logp,
                            delta, bpd, x_T, x0, log_q)



__all__ = ["LikelihoodResult", "Dequantization", "DequantNoise", "bits_per_dim", "ode_log_likelihood",
           "uniform_noise", "DIVERGENCES", "PROBE_NOISES"]
