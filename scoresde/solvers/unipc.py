"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models"): the multistep predictor UniP-p and the corrector UniC on the data prediction, Algorithms 1–3."""
from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from scoresde.solvers.base import StepContext, register
from scoresde.solvers.sigma_term import SigmaSolver

VARIANTS = ("bh1", "bh2")


def unipc_coefficients(h: float, rks: list[float], order: int, variant: str) -> tuple[float, float, np.ndarray,
                                                                                        np.ndarray]:
    """(φ₁ = e^{−h} − 1, B(h), R, b) of UniPC with data prediction (hh = −h in the paper's notation).

    ``R[i, k] = r_k^i`` (i = 0..p−1, with r_p = 1 for the newest point) and
    ``b_i = h·φ_{i+1}(h)·i! / B(h)`` with ``φ_{k+1}(h) = φ_k(h)/h − 1/k!`` (paper eq. 8 and Appendix C);
    ``B(h) = −h`` (B₁, "bh1") or ``e^{−h} − 1`` (B₂, "bh2")."""
    hh = -h
    phi_1 = math.expm1(hh)
    phi_k = phi_1 / hh - 1.0
    b_h = hh if variant == "bh1" else math.expm1(hh)
    R, b, factorial = [], [], 1
    for i in range(1, order + 1):
        R.append([r ** (i - 1) for r in rks])
        b.append(phi_k * factorial / b_h)
        factorial *= i + 1
        phi_k = phi_k / hh - 1.0 / factorial
    return phi_1, b_h, np.array(R, dtype=np.float64), np.array(b, dtype=np.float64)


def _weighted(weights: np.ndarray, tensors: list[Tensor]) -> Tensor:
    out = float(weights[0]) * tensors[0]
    for w, t in zip(weights[1:], tensors[1:]):
        out = out + float(w) * t
    return out


@register
class UniPC(SigmaSolver):
    """UniPC with data prediction: after each network evaluation at the predicted point, the corrector UniC
    refines that point with the new evaluation (no extra NFE), then the predictor UniP-p extrapolates.

    In the state x̂ = x/s and λ = −log σ (α_t of the paper cancels), from x̂_i at σ_i to σ_{i+1},
    h = λ_{i+1} − λ_i, D_k = (x̂₀(k) − x̂₀(i))/r_k with r_k = (λ_k − λ_i)/h for earlier points k:

    ``x̂_{i+1} = (σ_{i+1}/σ_i)·x̂_i − φ₁·x̂₀(i) − B(h)·Σ_k ρ_k D_k``   (UniP, ρ from R ρ = b without the
    newest row; ρ = ½ at p = 2), and UniC redoes the same step with the evaluation x̂₀(i+1) at the
    predicted point as the newest difference (ρ^c from the full system; ρ^c = ½ at p = 1), raising the
    order by one. Warm-up uses lower orders; ``lower_order_final`` lowers the last steps' order (as the
    reference implementation does), and a step into σ = 0 returns the denoised x̂₀. One NFE per step.
    Order p + 1 with the corrector, p without."""

    name = "unipc"

    def __init__(self, order: int = 2, variant: str = "bh2", corrector: bool = True, lower_order_final: bool = True):
        if not isinstance(order, int) or isinstance(order, bool) or not 1 <= order <= 3:
            raise ValueError(f"unipc: order must be 1, 2 or 3, got {order!r}")
        if variant not in VARIANTS:
            raise ValueError(f"unipc: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.solver_order, self.variant = order, variant
        self.corrector, self.lower_order_final = bool(corrector), bool(lower_order_final)
        self.order = float(order + 1 if corrector else order)

    def options(self) -> dict:
        return {"order": self.solver_order, "variant": self.variant, "corrector": self.corrector,
                "lower_order_final": self.lower_order_final}

    def _update(self, x_hat: Tensor, history: list[tuple[Tensor, float]], lam_next: float, sigma_ratio: float,
                order: int, newest: Tensor | None = None) -> Tensor:
        """UniP (``newest`` None) or UniC (``newest`` = x̂₀ at the step's end) from the last history point."""
        m0, lam0 = history[-1]
        h = lam_next - lam0
        older = history[-order:-1][::-1] if order > 1 else []
        rks = [(lam_k - lam0) / h for _, lam_k in older] + [1.0]
        diffs = [(m_k - m0) / r for (m_k, _), r in zip(older, rks)]
        phi_1, b_h, R, b = unipc_coefficients(h, rks, order, self.variant)
        out = sigma_ratio * x_hat - phi_1 * m0
        if newest is None:
            if not diffs:
                return out
            rhos = np.array([0.5]) if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
            return out - b_h * _weighted(rhos, diffs)
        rhos = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
        return out - b_h * _weighted(rhos, diffs + [newest - m0])

    def step_hat(self, x_hat: Tensor, ctx: StepContext) -> Tensor:
        term, i, state = ctx.term, ctx.i, ctx.state
        denoised = term.denoise(x_hat, i)
        if term.sigma(i + 1) == 0:
            return denoised
        lam = term.lam(i)
        history: list[tuple[Tensor, float]] = state.setdefault("history", [])
        if self.corrector and history:
            x_hat = self._update(state["x_hat"], history, lam, term.sigma(i) / term.sigma(i - 1), state["order"],
                                 denoised)
        history.append((denoised, lam))
        del history[:-self.solver_order]
        final = ctx.grid.steps - i if self.lower_order_final else self.solver_order
        order = min(self.solver_order, len(history), final)
        state.update(x_hat=x_hat, order=order)
        return self._update(x_hat, history, term.lam(i + 1), term.sigma(i + 1) / term.sigma(i), order)
