"""The model interface every solver drives: a function ``fn(x, t)`` of any batch shape, a declared
prediction kind, and the SDE that gives t its meaning. NFE is measured by a counting wrapper."""
from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from scoresde.models.parametrization import check_prediction, convert, to_x0_eps
from scoresde.sde.base import SDE
from scoresde.utils import append_dims, as_time

ModelFn = Callable[[Tensor, Tensor], Tensor]


class CountingModel:
    """Wraps ``fn(x, t)`` and counts its calls: one call on a batch is one network evaluation (NFE)."""

    def __init__(self, fn: ModelFn):
        self.fn = fn
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.fn(x, t)

    def reset(self) -> None:
        self.nfe = 0


class ScoreModel:
    """A score model of the SDE ``sde`` whose network predicts ``prediction`` (score, eps, x0, v or velocity).

    ``"velocity"`` is the flow-matching target ``u = ε − x₀`` (Lipman et al. 2023; Liu et al. 2023); under the
    flow SDE it is the probability-flow ODE's drift, under any other SDE the same ``ε − x₀`` of x̂ = x/s (see
    :mod:`scoresde.models.parametrization`).

    ``fn(x, t)`` takes ``x`` of shape (B, ...) (2-D points and images alike) and SDE time ``t`` of shape
    (B,), and returns a tensor shaped like ``x``. Every method below is one counted evaluation; solvers
    ask for whichever quantity they are written in, so every solver drives every parametrization.
    """

    def __init__(self, fn: ModelFn, sde: SDE, prediction: str = "score"):
        check_prediction(prediction)
        self.counter = fn if isinstance(fn, CountingModel) else CountingModel(fn)
        self.sde, self.prediction = sde, prediction

    @property
    def nfe(self) -> int:
        """Network evaluations counted so far."""
        return self.counter.nfe

    def reset_nfe(self) -> None:
        self.counter.reset()

    def __call__(self, x: Tensor, t: Tensor | float) -> Tensor:
        """The raw prediction, checked for shape."""
        t = as_time(t, x)
        out = self.counter(x, t)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"the model's {self.prediction} output has shape {got}, expected {tuple(x.shape)} "
                             "(the shape of x)")
        return out

    def predict(self, x: Tensor, t: Tensor | float, kind: str, s: float | None = None,
                sigma: float | None = None) -> Tensor:
        """One evaluation converted to ``kind`` (score, eps, x0, v or velocity). Solvers pass the grid point's
        ``s`` and ``sigma`` as floats, which spares recomputing them per call."""
        t = as_time(t, x)
        out = self(x, t)
        if kind == self.prediction:
            return out
        if s is None or sigma is None:
            s, sigma = self.sde.s(t), self.sde.sigma(t)
        return convert(out, self.prediction, kind, x, s, sigma)

    def score(self, x: Tensor, t: Tensor | float) -> Tensor:
        """∇ₓ log p_t(x)."""
        return self.predict(x, t, "score")

    def x0(self, x: Tensor, t: Tensor | float) -> Tensor:
        """The denoiser E[x₀ | x_t] (Tweedie), in data space."""
        return self.predict(x, t, "x0")

    def eps(self, x: Tensor, t: Tensor | float) -> Tensor:
        return self.predict(x, t, "eps")

    def velocity(self, x: Tensor, t: Tensor | float) -> Tensor:
        """The flow-matching velocity ``E[ε − x₀ | x_t]`` (the PF-ODE drift under the flow SDE)."""
        return self.predict(x, t, "velocity")

    def x0_eps(self, x: Tensor, t: Tensor | float, s: float | None = None,
               sigma: float | None = None) -> tuple[Tensor, Tensor]:
        """(x₀, ε) from one evaluation."""
        t = as_time(t, x)
        out = self(x, t)
        if s is None or sigma is None:
            s, sigma = self.sde.s(t), self.sde.sigma(t)
        return to_x0_eps(out, self.prediction, x, s, sigma)

    def denoiser(self, x_hat: Tensor, sigma: Tensor | float) -> Tensor:
        """EDM's ``D(x̂; σ)`` on the unscaled variable ``x̂ = x/s``."""
        sigma = as_time(sigma, x_hat)
        s = self.sde.s_of_sigma(sigma)
        return self.x0(x_hat * append_dims(s, x_hat.ndim), self.sde.t_of_sigma(sigma))


__all__ = ["CountingModel", "ScoreModel"]
