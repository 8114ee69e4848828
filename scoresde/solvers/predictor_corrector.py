"""The Langevin corrector and predictor–corrector sampling (Song et al. 2021, Alg. 2–5)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from scoresde.solvers.base import NOISE_TYPES, Solver, StepContext, TimeGrid, get_solver, register
from scoresde.utils import append_dims

NORMS = ("batch", "sample")


def langevin_correct(x: Tensor, ctx: StepContext, n_steps: int, snr: float, norm: str) -> Tensor:
    """``n_steps`` Langevin MCMC steps at t_i with the signal-to-noise step rule (Song et al. 2021, Alg. 4–5):
    ``ε = 2α(r‖z‖/‖∇log p‖)²``, ``x ← x + ε∇log p + √(2ε) z``, with α = α_i = a² of the forward kernel
    (1 for VE, DDPM's α_i for VP and sub-VP, as score_sde).

    ``norm="batch"`` (default) averages the norms over the batch, as score_sde does: stable, but a
    sample then depends on the rest of its batch. ``norm="sample"`` uses each sample's own norms, as
    Alg. 4–5 are written, so a sample does not depend on its batch; in very low dimension a sample
    near a mode has a tiny ‖∇log p‖ and takes huge steps, so keep it for image-sized data."""
    alpha = ctx.grid.kernel(ctx.i)[0] ** 2
    for _ in range(n_steps):
        grad = ctx.predict(x, "score")
        z = ctx.noise(x)
        grad_norm = grad.reshape(x.shape[0], -1).norm(dim=1)
        z_norm = z.reshape(x.shape[0], -1).norm(dim=1)
        if norm == "batch":
            grad_norm, z_norm = grad_norm.mean().expand_as(grad_norm), z_norm.mean().expand_as(z_norm)
        step = append_dims(2 * alpha * (snr * z_norm / grad_norm) ** 2, x.ndim)
        x = x + step * grad + torch.sqrt(2 * step) * z
    return x


@register
class PredictorCorrector(Solver):
    """Predictor–corrector sampler (Song et al. 2021, Alg. 1): at every grid point, ``corrector_steps``
    Langevin steps at t_i, then one step of any registered predictor to t_{i+1}. ``predictor="none"``
    gives annealed Langevin dynamics (the corrector alone, NCSN).

    Strong order: with corrector steps, 0 for every noise type. The Langevin step size (Alg. 4–5) is set by
    the SNR rule and does not shrink with the grid, and its noise is fresh, so the samples do not converge
    pathwise to the reverse SDE's solution (only in distribution). Without them, pc is its predictor."""

    name = "pc"

    def __init__(self, predictor: str = "reverse_diffusion", corrector_steps: int = 1, snr: float = 0.16,
                 norm: str = "batch", predictor_options: dict | None = None):
        if predictor == self.name:
            raise ValueError("pc: the predictor cannot itself be pc")
        self.predictor = None if predictor == "none" else get_solver(predictor, **(predictor_options or {}))
        if not isinstance(corrector_steps, int) or corrector_steps < 0:
            raise ValueError(f"pc: corrector_steps must be an integer >= 0, got {corrector_steps!r}")
        if not (snr > 0 and math.isfinite(snr)):
            raise ValueError(f"pc: snr must be a positive number, got {snr}")
        if norm not in NORMS:
            raise ValueError(f"pc: unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
        self.predictor_name, self.corrector_steps, self.snr, self.norm = predictor, corrector_steps, float(snr), norm
        self.predictor_options = dict(predictor_options or {})

    def options(self) -> dict:
        return {"predictor": self.predictor_name, "corrector_steps": self.corrector_steps, "snr": self.snr,
                "norm": self.norm, "predictor_options": self.predictor_options}

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.corrector_steps > 0 or self.predictor is None or self.predictor.stochastic

    @property
    def strong_orders(self) -> dict[str, float]:  # type: ignore[override]
        if self.corrector_steps == 0 and self.predictor is not None:
            return dict(self.predictor.strong_orders)
        return {noise_type: 0.0 for noise_type in NOISE_TYPES}

    @property
    def order(self) -> float:  # type: ignore[override]
        if self.stochastic:
            return self.strong_order()
        return self.predictor.order  # type: ignore[union-attr]

    @property
    def uses(self) -> str:  # type: ignore[override]
        """The predictor's: a denoiser predictor is given the σ-space term (the corrector asks for the score)."""
        return self.predictor.uses if self.predictor is not None else "score"

    @property
    def order_steps(self) -> tuple[int, int]:  # type: ignore[override]
        return self.predictor.order_steps if self.predictor is not None else Solver.order_steps

    @property
    def nfe_per_step(self) -> int | None:  # type: ignore[override]
        predictor = self.predictor.nfe_per_step if self.predictor is not None else 0
        return None if predictor is None else self.corrector_steps + predictor

    @property
    def reaches_data(self) -> bool:  # type: ignore[override]
        return self.predictor is not None and self.predictor.reaches_data

    def declared_nfe(self, grid: TimeGrid) -> int | None:
        predictor = self.predictor.declared_nfe(grid) if self.predictor is not None else int(grid.ends_at_data)
        return None if predictor is None else self.corrector_steps * grid.steps + predictor

    def advance(self, x: Tensor, ctx: StepContext) -> Tensor:
        x = langevin_correct(x, ctx, self.corrector_steps, self.snr, self.norm)
        if self.predictor is None:
            return super().advance(x, ctx)
        return self.predictor.advance(x, ctx)

    def step(self, x: Tensor, ctx: StepContext) -> Tensor:
        return x  # predictor "none": the corrector alone moves x
