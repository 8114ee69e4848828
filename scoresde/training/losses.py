"""Training losses: each a small callable ``loss(model, x0, generator=None, class_labels=None) -> (B,)``.

``model`` is a :class:`scoresde.ScoreModel` (its ``fn(x, t)`` already fixes any class conditioning, e.g.
``Preconditioned.score_model(sde, labels)``), or, for class-conditional training with ``class_labels``, a
builder ``model(class_labels) -> ScoreModel`` such as ``lambda y: net.score_model(sde, y)``.

Every loss is written against the :class:`scoresde.ScoreModel` interface only: it draws a time (or a noise
level), perturbs ``x0`` with the SDE's own marginal ``x_t = s(t)·x0 + std(t)·ε``, asks the model for the
quantity the loss is written in (``model.predict(x_t, t, kind)``) and returns the per-sample loss summed
over every data dimension, shape (B,). The caller takes the mean. So every loss trains every
parametrization (score, ε, x₀, v, velocity) under every SDE, and the exact-score testbeds give its exact minimum.

Randomness is injected: pass a ``torch.Generator`` (on ``x0``'s device). Each loss also takes the time
(``t``, ``step`` or ``sigma``) as an optional argument that fixes it, for tests and for plots of the loss
against time.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from scoresde.errors import UnknownNameError
from scoresde.models.score_model import ScoreModel
from scoresde.sde.base import SDE
from scoresde.utils import append_dims, as_time, batch_sq_norm

WEIGHTINGS: tuple[str, ...] = ("std2", "likelihood")


ModelArg = ScoreModel | Callable[[Tensor | None], ScoreModel]


def _bind(loss: str, model: ModelArg, class_labels: Tensor | None) -> ScoreModel:
    """The ScoreModel to evaluate: ``model`` itself, or ``model(class_labels)`` for a builder."""
    if isinstance(model, ScoreModel):
        if class_labels is not None:
            raise ValueError(f"{loss}: class_labels were given with a ScoreModel, whose fn(x, t) cannot take them; "
                             "pass a builder labels -> ScoreModel, e.g. lambda y: net.score_model(sde, y)")
        return model
    if not callable(model):
        raise TypeError(f"{loss}: model must be a ScoreModel or a builder labels -> ScoreModel, "
                        f"got {type(model).__name__}")
    built = model(class_labels)
    if not isinstance(built, ScoreModel):
        raise TypeError(f"{loss}: the model builder returned {type(built).__name__}, not a ScoreModel")
    return built


def _noise(x0: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)


def _uniform(x0: Tensor, generator: torch.Generator | None) -> Tensor:
    """One U[0, 1) draw per sample, shape (B,)."""
    return torch.rand(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)


def _eps_loss(model: ScoreModel, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """``|ε_θ(x_t, t) − ε|²`` summed over dims, with ``x_t = s(t)·x0 + std(t)·ε``; shape (B,).

    ``|ε_θ − ε|² = std²·|score_θ + ε/std|²``: the ε-form of denoising score matching."""
    mean, std = model.sde.marginal(x0, t)
    return batch_sq_norm(model.predict(mean + std * eps, t, "eps") - eps)


class DSMLoss:
    """Continuous-time denoising score matching (Song et al. 2021, eq. 7).

    ``t ~ U[t_min, T]``, ``x_t = s(t)·x0 + std(t)·ε`` and the per-sample loss is
    ``λ(t)·|score_θ(x_t, t) + ε/std(t)|²`` summed over dims, where ``−ε/std`` is the score of the
    perturbation kernel q(x_t | x0). Weightings:

    * ``"std2"``: ``λ = std(t)²``, so the loss is ``|std·score_θ + ε|² = |ε_θ − ε|²`` (Song et al.'s
      default ``λ ∝ 1/E|∇log q|²``; Ho et al.'s L_simple in continuous time).
    * ``"likelihood"``: ``λ = g(t)²`` (Song, Durkan, Murray & Ermon 2021, thm. 1 and its denoising form):
      then ``(T − t_min)/2 · E[loss]``, plus the prior's KL and θ-independent terms, bounds the negative
      log-likelihood.

    ``importance_sampling=True`` (likelihood weighting only) draws t from the density proportional to
    ``g(t)²/std(t)²`` (the importance sampling of t of Song, Durkan et al. 2021, there for VP). For every SDE
    of scoresde, ``g² = s²·dσ²/dt`` (Karras et al. 2022, eq. 4 inverted), so ``g²/std² = d log σ²/dt``: that proposal
    is *uniform in log σ(t)* between σ(t_min) and σ(T), and t = t(σ). The importance weight is then the
    constant ``Z/(T − t_min)``, ``Z = 2·log(σ(T)/σ(t_min))``, and the returned loss
    ``Z/(T − t_min)·|ε_θ − ε|²`` has the same expectation as the uniform-t likelihood loss, with a far
    smaller variance under VP (where g²/std² ~ 1/t near t = 0).

    Args:
        weighting: ``"std2"`` or ``"likelihood"``.
        t_min: smallest training time; the SDE's ``t_min`` when None.
        importance_sampling: see above.
    """

    def __init__(self, weighting: str = "std2", t_min: float | None = None, importance_sampling: bool = False):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"DSMLoss: unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        if importance_sampling and weighting != "likelihood":
            raise ValueError("DSMLoss: importance_sampling applies to weighting='likelihood' only "
                             f"(got weighting={weighting!r})")
        if t_min is not None and not t_min > 0:
            raise ValueError(f"DSMLoss: t_min must be > 0, got {t_min}")
        self.weighting, self.t_min, self.importance_sampling = weighting, t_min, importance_sampling

    def time_range(self, sde: SDE) -> tuple[float, float]:
        """The training interval [t_min, T] under ``sde``."""
        t_min = sde.t_min if self.t_min is None else self.t_min
        if not t_min < sde.T:
            raise ValueError(f"DSMLoss: t_min={t_min} must be < T={sde.T} of the {sde.name} SDE")
        return t_min, sde.T

    def _log_sigma_range(self, sde: SDE) -> tuple[float, float]:
        t_min, t_max = self.time_range(sde)
        ends = sde.sigma(torch.tensor([t_min, t_max], dtype=torch.float64)).log()
        return float(ends[0]), float(ends[1])

    def sample_t(self, sde: SDE, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Training times, shape (B,): uniform on [t_min, T], or uniform in log σ(t) with importance sampling."""
        t_min, t_max = self.time_range(sde)
        u = _uniform(x0, generator)
        if not self.importance_sampling:
            return t_min + (t_max - t_min) * u
        lo, hi = self._log_sigma_range(sde)
        return sde.t_of_sigma(torch.exp(lo + (hi - lo) * u)).clamp(t_min, t_max)

    def weight(self, sde: SDE, t: Tensor, sampled: bool) -> Tensor:
        """The factor in front of ``|ε_θ − ε|²``: 1 (std²), g²/std² (likelihood), or the importance weight."""
        if self.weighting == "std2":
            return torch.ones_like(t)
        if sampled and self.importance_sampling:
            t_min, t_max = self.time_range(sde)
            lo, hi = self._log_sigma_range(sde)
            return torch.full_like(t, 2 * (hi - lo) / (t_max - t_min))
        return (sde.g(t) / sde.std(t)) ** 2

    def __call__(self, model: ModelArg, x0: Tensor, generator: torch.Generator | None = None,
                 class_labels: Tensor | None = None, t: Tensor | float | None = None) -> Tensor:
        """Per-sample loss, shape (B,), for ``x0`` of shape (B, ...). A given ``t`` (scalar or (B,)) fixes
        the time: the loss is then the integrand ``λ(t)·|score_θ + ε/std|²`` (no importance weight)."""
        model = _bind("DSMLoss", model, class_labels)
        sampled = t is None
        t = self.sample_t(model.sde, x0, generator) if sampled else as_time(t, x0)
        eps = _noise(x0, generator)
        return self.weight(model.sde, t, sampled) * _eps_loss(model, x0, t, eps)


class DDPMLoss:
    """Ho et al. 2020, eq. 14 (L_simple), on the discrete chain of the model's SDE.

    ``i ~ U{1, …, N}``, ``ᾱ_i`` from ``sde.ddpm_schedule(N)``, and the model is evaluated at the continuous
    time ``t_i = sde.t_of_alpha_bar(ᾱ_i)``, where ``s(t_i)² = ᾱ_i``: the chain view on the same model as the
    SDE losses. The input is the SDE's marginal at ``t_i``, ``x = s(t_i)·x0 + std(t_i)·ε``; under VP and the
    cosine VP (std² = 1 − s²) this is exactly Ho's ``√ᾱ_i x0 + √(1 − ᾱ_i) ε``. (Under sub-VP the chain's
    times are used with the sub-VP marginal, std = 1 − ᾱ_i, so the network is trained on its own
    marginals.) The loss is ``|ε_θ(x, t_i) − ε|²`` summed over dims.

    With VP's defaults and N = 1000 the late ᾱ_i are below s(T)², so t_i runs slightly past T (to ≈ 1.0034,
    see README): the model is evaluated there, as the ``ddpm`` sampling grid does.

    Args:
        num_steps: N, the number of steps of the chain.
    """

    def __init__(self, num_steps: int = 1000):
        if num_steps < 2:
            raise ValueError(f"DDPMLoss: num_steps must be >= 2, got {num_steps}")
        self.num_steps = int(num_steps)

    def times(self, sde: SDE) -> Tensor:
        """``t_i`` for i = 1 … N (float64, shape (N,)): the times whose s(t_i)² is the chain's ᾱ_i."""
        if not (hasattr(sde, "ddpm_schedule") and hasattr(sde, "t_of_alpha_bar")):
            raise ValueError(f"DDPMLoss: the {sde.name} SDE ({type(sde).__name__}) has no discrete DDPM chain "
                             "(ddpm_schedule and t_of_alpha_bar); use a VP-family SDE (vp, subvp, cosine) "
                             "or DSMLoss / EDMLoss")
        _, alpha_bar = sde.ddpm_schedule(self.num_steps)
        return sde.t_of_alpha_bar(alpha_bar)

    def __call__(self, model: ModelArg, x0: Tensor, generator: torch.Generator | None = None,
                 class_labels: Tensor | None = None, step: Tensor | int | None = None) -> Tensor:
        """Per-sample loss, shape (B,). A given ``step`` (an int or (B,) ints in 1 … N) fixes i."""
        model = _bind("DDPMLoss", model, class_labels)
        times = self.times(model.sde)
        if step is None:
            i = torch.randint(self.num_steps, (x0.shape[0],), generator=generator, device=x0.device)
        else:
            i = torch.as_tensor(step, device=x0.device).long().expand(x0.shape[0]) - 1
            if bool(((i < 0) | (i >= self.num_steps)).any()):
                raise ValueError(f"DDPMLoss: step must lie in 1 … {self.num_steps}")
        t = times.to(x0.device)[i].to(x0.dtype)
        return _eps_loss(model, x0, t, _noise(x0, generator))


class EDMLoss:
    """Karras et al. 2022, eq. 8 with Table 1's training choices, on any SDE.

    ``ln σ ~ N(P_mean, P_std²)``, ``λ(σ) = (σ² + σ_d²)/(σ·σ_d)²`` and the loss is
    ``λ(σ)·|D_θ(x0 + σε; σ) − x0|²`` summed over dims. Under a general SDE the noisy input is
    ``x_t = s(t)·(x0 + σε)`` at ``t = sde.t_of_sigma(σ)``, and ``D_θ = model.predict(x_t, t, "x0")``; with the
    EDM SDE (s = 1, t = σ) this is EDM's loss exactly.

    σ beyond the SDE's range: the log-normal puts mass outside [σ(t_min), σ(T)] (under VE with σ_min = 0.01,
    about 0.2 % below; under EDM's SDE, σ > 80 has probability ~2e-6). EDM itself trains with σ unbounded
    (σ_max = 80 bounds only the sampler), and every SDE of scoresde has closed-form s(t), σ(t) and t(σ) that
    extend past its interval (VP: t > T; VE: t < 0 below σ_min; EDM: t = σ; cosine: t < 1 for all σ).
    So by default (``clamp=False``) σ is used as drawn and the model is evaluated at t(σ), possibly outside
    [t_min, T] — the same as EDM. ``clamp=True`` clamps σ to [σ(t_min), σ(T)] instead, which keeps the
    network's time input inside the sampler's range but puts point masses at both ends (a deviation from
    EDM's σ distribution, documented here rather than hidden).

    Args:
        P_mean, P_std: mean and std of ln σ (EDM: −1.2, 1.2).
        sigma_data: σ_d, the data's standard deviation (EDM: 0.5 for images in [−1, 1]).
        clamp: clamp σ to the SDE's [σ(t_min), σ(T)] (see above).
    """

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5, clamp: bool = False):
        if not P_std > 0:
            raise ValueError(f"EDMLoss: P_std must be > 0, got {P_std}")
        if not sigma_data > 0:
            raise ValueError(f"EDMLoss: sigma_data must be > 0, got {sigma_data}")
        self.P_mean, self.P_std, self.sigma_data, self.clamp = float(P_mean), float(P_std), float(sigma_data), clamp

    def sample_sigma(self, sde: SDE, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Noise levels, shape (B,): log-normal, clamped to the SDE's range when ``clamp``."""
        z = torch.randn(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)
        sigma = torch.exp(self.P_mean + self.P_std * z)
        if self.clamp:
            ends = sde.sigma(torch.tensor([sde.t_min, sde.T], dtype=torch.float64))
            sigma = sigma.clamp(float(ends[0]), float(ends[1]))
        return sigma

    def weight(self, sigma: Tensor) -> Tensor:
        """λ(σ) = (σ² + σ_d²)/(σ·σ_d)² (Karras et al. 2022, Table 1)."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def __call__(self, model: ModelArg, x0: Tensor, generator: torch.Generator | None = None,
                 class_labels: Tensor | None = None, sigma: Tensor | float | None = None) -> Tensor:
        """Per-sample loss, shape (B,). A given ``sigma`` (scalar or (B,), > 0) fixes the noise level."""
        model = _bind("EDMLoss", model, class_labels)
        sde = model.sde
        sigma = self.sample_sigma(sde, x0, generator) if sigma is None else as_time(sigma, x0)
        if not bool((sigma > 0).all()):
            raise ValueError("EDMLoss: sigma must be > 0")
        t = sde.t_of_sigma(sigma)
        x_t = append_dims(sde.s(t), x0.ndim) * (x0 + append_dims(sigma, x0.ndim) * _noise(x0, generator))
        return self.weight(sigma) * batch_sq_norm(model.predict(x_t, t, "x0") - x0)


TIME_SAMPLINGS: tuple[str, ...] = ("uniform", "logit_normal")


class FlowMatchingLoss:
    """Conditional flow matching (Lipman et al. 2023, eq. 23 with σ_min = 0, their time reversed; rectified flow,
    Liu et al. 2023, eq. 1) on any SDE.

    ``τ`` is drawn on the interpolant's time axis, ``x_τ = (1 − τ)·x0 + τ·ε``, and the per-sample loss is
    ``|u_θ(x_τ, τ) − (ε − x0)|²`` summed over dims. Under the flow SDE τ is the SDE time t itself. Under another
    SDE the same point is reached at the same noise level: ``σ = τ/(1 − τ)``, ``t = sde.t_of_sigma(σ)``,
    ``x_t = s(t)·(x0 + σε)`` (= ``s(t)/(1 − τ)·x_τ``), and ``u_θ = model.predict(x_t, t, "velocity")`` (the velocity
    in x̂ units, see :mod:`scoresde.models.parametrization`); so, as for the other losses, every parametrization
    trains under every SDE. In ε-terms ``|u_θ − u|² = (1 + σ)²|ε_θ − ε|²``: the DSM ε-loss weighted by
    ``1/(1 − τ)²`` (Esser et al. 2024, §2–3.1, where every such loss is an ε-loss with a weight of τ).

    Time distributions (Esser et al. 2024, §3.1, "SD3"):

    * ``"uniform"``: τ ~ U[τ_lo, τ_hi] (Lipman et al.; Liu et al.);
    * ``"logit_normal"``: ``logit τ ~ N(loc, scale²)`` (Esser et al. 2024, §3.1 "logit-normal sampling"; their
      best: loc 0, scale 1),
      truncated to [τ_lo, τ_hi] exactly, by inverting its CDF on a uniform draw.

    [τ_lo, τ_hi] is the interpolant time of the SDE's [t_min, T] (``τ = σ/(1 + σ)``; under the flow SDE just
    [t_min, T]), or of the ``t_min`` given here, so the model is never evaluated outside its SDE's range.

    Args:
        time_sampling: ``"uniform"`` or ``"logit_normal"``.
        loc, scale: mean and std of logit τ (logit-normal only).
        t_min: smallest training time (SDE time); the SDE's ``t_min`` when None.
    """

    def __init__(self, time_sampling: str = "uniform", loc: float = 0.0, scale: float = 1.0,
                 t_min: float | None = None):
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"FlowMatchingLoss: unknown time_sampling {time_sampling!r}; choose one of "
                             f"{', '.join(TIME_SAMPLINGS)}")
        if not scale > 0:
            raise ValueError(f"FlowMatchingLoss: scale must be > 0, got {scale}")
        if t_min is not None and not t_min > 0:
            raise ValueError(f"FlowMatchingLoss: t_min must be > 0, got {t_min}")
        self.time_sampling, self.loc, self.scale, self.t_min = time_sampling, float(loc), float(scale), t_min

    def tau_range(self, sde: SDE) -> tuple[float, float]:
        """[τ_lo, τ_hi]: the interpolant times of the SDE's training interval [t_min, T]."""
        t_min = sde.t_min if self.t_min is None else self.t_min
        if not t_min < sde.T:
            raise ValueError(f"FlowMatchingLoss: t_min={t_min} must be < T={sde.T} of the {sde.name} SDE")
        sigma = sde.sigma(torch.tensor([t_min, sde.T], dtype=torch.float64))
        tau = sigma / (1 + sigma)
        return float(tau[0]), float(tau[1])

    def sample_tau(self, sde: SDE, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Interpolant times τ, shape (B,), from the chosen distribution on [τ_lo, τ_hi]."""
        lo, hi = self.tau_range(sde)
        u = _uniform(x0, generator)
        if self.time_sampling == "uniform":
            return lo + (hi - lo) * u
        normal = torch.distributions.Normal(0.0, 1.0)
        z = torch.tensor([lo, hi], dtype=torch.float64).logit()
        c_lo, c_hi = normal.cdf((z - self.loc) / self.scale).tolist()
        p = (c_lo + (c_hi - c_lo) * u.double()).clamp(1e-300, 1 - 1e-16)
        return torch.sigmoid(self.loc + self.scale * normal.icdf(p)).clamp(lo, hi).to(x0.dtype)

    def __call__(self, model: ModelArg, x0: Tensor, generator: torch.Generator | None = None,
                 class_labels: Tensor | None = None, t: Tensor | float | None = None) -> Tensor:
        """Per-sample loss, shape (B,). A given SDE time ``t`` (scalar or (B,)) fixes the time."""
        model = _bind("FlowMatchingLoss", model, class_labels)
        sde = model.sde
        if t is None:
            tau = self.sample_tau(sde, x0, generator)
            t = sde.t_of_sigma(tau / (1 - tau))
        else:
            t = as_time(t, x0)
        eps = _noise(x0, generator)
        mean, std = sde.marginal(x0, t)
        return batch_sq_norm(model.predict(mean + std * eps, t, "velocity") - (eps - x0))


LOSSES: dict[str, type] = {"dsm": DSMLoss, "ddpm": DDPMLoss, "edm": EDMLoss, "flow_matching": FlowMatchingLoss}


def get_loss(name: str, **kwargs: float | str | bool | None) -> DSMLoss | DDPMLoss | EDMLoss | FlowMatchingLoss:
    """Build a loss by name (``dsm``, ``ddpm``, ``edm``, ``flow_matching``)."""
    if name not in LOSSES:
        raise UnknownNameError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[name](**kwargs)


__all__ = ["DSMLoss", "DDPMLoss", "EDMLoss", "FlowMatchingLoss", "LOSSES", "WEIGHTINGS", "TIME_SAMPLINGS", "get_loss"]
