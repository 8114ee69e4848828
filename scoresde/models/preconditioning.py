"""Turn a network ``F(x, c_noise, class_labels)`` into a :class:`~scoresde.ScoreModel` of any SDE.

The network never sees SDE time (DESIGN.md boundary 3): :class:`Preconditioned` maps ``t`` to
``σ = sde.sigma(t)`` and ``s = sde.s(t)`` and gives the network only ``c_noise = c_noise_fn(σ)``.

Two families:

* ``"edm"`` (Karras et al. 2022, Table 1 and eq. 7), on the unscaled input ``x̂ = x/s``:
  ``c_skip = σ_d²/(σ²+σ_d²)``, ``c_out = σσ_d/√(σ²+σ_d²)``, ``c_in = 1/√(σ²+σ_d²)``, ``c_noise = ln(σ)/4``;
  ``D(x̂; σ) = c_skip·x̂ + c_out·F(c_in·x̂, c_noise)`` is the x₀ prediction.
* plain heads ``"eps"``, ``"x0"``, ``"v"``, ``"score"``: the network gets the state ``x`` itself (or, with
  ``normalize_input=True``, the VP-normalized ``x·α/s`` with ``α = 1/√(1+σ²)``, which equals ``x`` under the
  VP SDE and has unit-order scale under VE/EDM) and ``c_noise``, and its output *is* that prediction, in the
  conventions of :mod:`scoresde.models.parametrization`.
* the plain head ``"velocity"`` (flow matching, Lipman et al. 2023; Liu et al. 2023): the output is the
  velocity ``u = ε − x₀``, as in the flow-matching networks ``v_θ(x_t, t)``. The input is the state ``x``, or,
  with ``normalize_input=True``, the flow-normalized ``x/(s·(1+σ)) = x̂/(1+σ)``: the state of the linear
  interpolant ``(1 − τ)x₀ + τε`` at the same σ (τ = σ/(1+σ)), which equals ``x`` under the flow SDE, so a
  velocity network trained there runs unchanged under any other SDE. ``c_noise="flow"`` gives it the
  interpolant time ``τ = σ/(1+σ)`` ∈ [0, 1), the network input of the flow-matching papers (SD3 feeds 1000·τ).

``c_noise`` choices (a function of σ only, so the same network runs under every SDE):
``"log"``: ``ln(σ)/4`` (EDM; default); ``"ve"``: ``ln(σ/2)`` (NCSN++/EDM's VE preconditioning);
``"ddpm"``: ``999·t_VP(σ)``, the time of the default VP SDE (β_min = 0.1, β_max = 20) at which it has noise σ,
scaled to Ho et al.'s step index (EDM's VP preconditioning); ``"flow"``: ``σ/(1+σ)``, the time of the flow SDE at
noise σ (flow matching's t); or any callable ``σ (B,) -> (B,)``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from scoresde.models.parametrization import check_prediction
from scoresde.models.score_model import ScoreModel
from scoresde.sde.base import SDE
from scoresde.utils import append_dims, as_time


def _ddpm_c_noise(sigma: Tensor, beta_min: float = 0.1, beta_max: float = 20.0, steps: int = 1000) -> Tensor:
    """``(steps−1)·t`` where the default VP SDE has ``σ(t) = σ`` (inverse of ``σ² = exp(∫β) − 1``)."""
    b_d = beta_max - beta_min
    t = (torch.sqrt(beta_min**2 + 2 * b_d * torch.log1p(sigma**2)) - beta_min) / b_d
    return (steps - 1) * t


C_NOISE: dict[str, Callable[[Tensor], Tensor]] = {
    "log": lambda sigma: sigma.log() / 4,
    "ve": lambda sigma: (0.5 * sigma).log(),
    "ddpm": _ddpm_c_noise,
    "flow": lambda sigma: sigma / (1 + sigma),
}


def edm_coefficients(sigma: Tensor, sigma_data: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) of Karras et al. 2022, Table 1 ("ours"), each shaped like ``sigma``."""
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / total.sqrt(), total.rsqrt(), sigma.log() / 4


class Preconditioned(nn.Module):
    """A network wrapped with a preconditioning; an ``nn.Module`` so parameters, EMA and state_dict see it.

    Args:
        net: ``net(x, c_noise (B,), class_labels) -> tensor shaped like x`` (e.g. UNet, MLP).
        kind: ``"edm"`` or a plain head ``"eps"``, ``"x0"``, ``"v"``, ``"score"``, ``"velocity"``.
        sigma_data: σ_d of the data (EDM only; 0.5 for images in [-1, 1]).
        c_noise: ``"log"``, ``"ve"``, ``"ddpm"``, ``"flow"`` or a callable of σ (plain heads; EDM always uses ln(σ)/4
            unless a different one is given explicitly).
        normalize_input: plain heads only: feed ``x·α/s`` (``x/(s(1+σ))`` for ``"velocity"``) instead of ``x``
            (see the module docstring).

    ``forward(x, sigma, s=None, class_labels=None)`` takes the state ``x`` (B, ...), per-sample σ and s (B,)
    (or floats; s defaults to 1) and returns the prediction of kind :attr:`prediction`.
    """

    def __init__(self, net: nn.Module, kind: str = "edm", sigma_data: float = 0.5,
                 c_noise: str | Callable[[Tensor], Tensor] | None = None, normalize_input: bool = False):
        super().__init__()
        if kind != "edm":
            check_prediction(kind)
        if isinstance(c_noise, str) and c_noise not in C_NOISE:
            raise ValueError(f"unknown c_noise {c_noise!r}; choose one of {', '.join(C_NOISE)} or pass a callable")
        self.net, self.kind, self.sigma_data, self.normalize_input = net, kind, sigma_data, normalize_input
        self.c_noise_fn = C_NOISE[c_noise or "log"] if not callable(c_noise) else c_noise

    @property
    def prediction(self) -> str:
        """What :meth:`forward` returns, as a ScoreModel prediction kind."""
        return "x0" if self.kind == "edm" else self.kind

    @property
    def num_classes(self) -> int | None:
        """Classes the network is conditioned on (its ``cond.num_classes``), or None for an unconditional one.
        The null class (classifier-free guidance) is label ``num_classes``."""
        return getattr(getattr(self.net, "cond", None), "num_classes", None) or None

    def forward(self, x: Tensor, sigma: Tensor | float, s: Tensor | float | None = None,
                class_labels: Tensor | int | None = None) -> Tensor:
        sigma = as_time(sigma, x)
        s = torch.ones_like(sigma) if s is None else as_time(s, x)
        c_noise = self.c_noise_fn(sigma)
        if self.kind == "edm":
            c_skip, c_out, c_in, _ = (append_dims(c, x.ndim) for c in edm_coefficients(sigma, self.sigma_data))
            x_hat = x / append_dims(s, x.ndim)
            return c_skip * x_hat + c_out * self.net(c_in * x_hat, c_noise, class_labels)
        if self.normalize_input:
            scale = 1 / (1 + sigma) if self.kind == "velocity" else torch.rsqrt(1 + sigma**2)
            x = x * append_dims(scale / s, x.ndim)
        return self.net(x, c_noise, class_labels)

    def predict(self, x: Tensor, t: Tensor | float, sde: SDE, class_labels: Tensor | int | None = None) -> Tensor:
        """The prediction at SDE time ``t``: the only place where ``t`` becomes (σ, s)."""
        t = as_time(t, x)
        return self(x, sde.sigma(t), sde.s(t), class_labels)

    def score_model(self, sde: SDE, class_labels: Tensor | int | None = None) -> ScoreModel:
        """A counted :class:`ScoreModel` of ``sde`` for the solvers (``fn(x, t)``, prediction kind declared).
        ``class_labels`` is fixed for every call (None = the null class)."""
        return ScoreModel(lambda x, t: self.predict(x, t, sde, class_labels), sde, self.prediction)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, sigma_data={self.sigma_data}"


__all__ = ["Preconditioned", "edm_coefficients", "C_NOISE"]
