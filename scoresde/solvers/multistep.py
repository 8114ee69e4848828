"""Shared pieces of the multistep σ-space solvers (iPNDM, DEIS, DPM-Solver++ 2M/3M and their SDE variants):
the slope history, weighted sums of stored evaluations, and the integrals of Lagrange bases that give the
multistep weights.

Every one of these solvers advances ``x̂_{i+1} = x̂_i + ∫_{σ_i}^{σ_{i+1}} ε̂ dσ`` (the shared σ-space term) with ε̂
(or D) replaced by the polynomial through the last few evaluations, written in some variable ``v`` of σ: ``v = σ``
(Adams–Bashforth, iPNDM and DEIS's ρAB), ``v = t`` (DEIS's tAB) or ``v = log σ``. Its weights are
``C_j = ∫_{σ_i}^{σ_{i+1}} ℓ_j(v(σ)) dσ`` for the Lagrange basis ℓ_j of the nodes (Zhang & Chen 2023, §4).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import Tensor

QUADRATURE_NODES = 32
_GL_X, _GL_W = np.polynomial.legendre.leggauss(QUADRATURE_NODES)


def adams_bashforth_weights(taus: list[float]) -> list[float]:
    """Weights w_j of ``∫₀¹ p(τ) dτ = Σ_j w_j p(τ_j)`` for the polynomial p through the nodes τ_j: the
    Adams–Bashforth weights in the step variable ``τ = (σ − σ_i)/(σ_{i+1} − σ_i)`` (DEIS's ρAB, with the
    Lagrange basis ℓ_j; closed form: each ℓ_j integrated exactly as a polynomial). Equal steps, ``τ_j = −j``,
    give 1; 3/2, −1/2; 23/12, −16/12, 5/12; 55/24, −59/24, 37/24, −9/24 (Hairer, Nørsett & Wanner, §III.1)."""
    if len(taus) == 1:
        return [1.0]
    weights = []
    for j, tau_j in enumerate(taus):
        others = [tau for k, tau in enumerate(taus) if k != j]
        basis = np.polynomial.Polynomial.fromroots(others) / math.prod(tau_j - tau for tau in others)
        integral = basis.integ()
        weights.append(float(integral(1.0) - integral(0.0)))
    return weights


def lagrange_basis(nodes: Sequence[float], v: np.ndarray) -> np.ndarray:
    """ℓ_j(v) for every node j: array of shape (len(nodes), len(v))."""
    out = np.ones((len(nodes), len(v)))
    for j, v_j in enumerate(nodes):
        for k, v_k in enumerate(nodes):
            if k != j:
                out[j] *= (v - v_k) / (v_j - v_k)
    return out


def sigma_integrals(nodes: Sequence[float], sigma: float, sigma_next: float,
                    v_of_sigma: Callable[[np.ndarray], np.ndarray]) -> list[float]:
    """``C_j = ∫_σ^{σ_next} ℓ_j(v(σ')) dσ'`` for the Lagrange basis of ``nodes`` (values of v) and 0 < σ_next < σ.

    Integrated by Gauss–Legendre with :data:`QUADRATURE_NODES` = 32 nodes in ``u = log σ'`` (``dσ' = e^u du``):
    exact where ``ℓ_j(v(e^u))·e^u`` is a polynomial of degree ≤ 63 in u, and otherwise converging geometrically
    because the integrand is analytic in a strip around the step: ``v = t`` of VP is analytic in log σ up to
    ``|Im u| = π/2`` (σ² = −1), so a step of h = log(σ/σ_next) ≤ 4 is integrated to ~1e-14 (tested against
    adaptive quadrature). With one node the weight is the step σ_next − σ exactly.
    """
    if len(nodes) == 1:
        return [sigma_next - sigma]
    u0, u1 = math.log(sigma), math.log(sigma_next)
    half = 0.5 * (u1 - u0)
    u = 0.5 * (u0 + u1) + half * _GL_X
    w = half * _GL_W * np.exp(u)
    basis = lagrange_basis(nodes, v_of_sigma(np.exp(u)))
    return [float(x) for x in basis @ w]


def combine(weights: Sequence[float], tensors: Sequence[Tensor]) -> Tensor:
    """``Σ_j w_j·tensors[j]`` (float weights)."""
    out = float(weights[0]) * tensors[0]
    for w, t in zip(weights[1:], tensors[1:]):
        out = out + float(w) * t
    return out


def remember(state: dict[str, Any], key: str, item: Any, keep: int) -> list[Any]:
    """Put ``item`` first in the history ``state[key]`` (newest first) and keep the ``keep`` newest."""
    history: list[Any] = state.setdefault(key, [])
    history.insert(0, item)
    del history[keep:]
    return history


__all__ = ["QUADRATURE_NODES", "adams_bashforth_weights", "combine", "lagrange_basis", "remember", "sigma_integrals"]
