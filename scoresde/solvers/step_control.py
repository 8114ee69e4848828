"""Step-size control for torchdiffeq's adaptive Runge–Kutta methods, as the textbook and scipy do it.

torchdiffeq's own controller differs from Hairer, Nørsett & Wanner (*Solving ODEs I*, §II.4) in two ways that cost
evaluations on the probability-flow ODE: an accepted step never shrinks the next one (its factor is held ≥ 1), and
the step retried after a rejection may grow again (up to ×10), so near t_min it alternates accept, reject, accept …
Its ``dopri5`` also estimates the error with Shampine's 4th-order embedding, where Dormand & Prince (1980),
Hairer's ``dopri5.f`` and scipy's ``RK45`` use the original one.

``control="hairer"`` keeps torchdiffeq's tableau, initial step (HNW §II.4, the same rule as scipy's
``select_initial_step``), error norm (RMS of ``err / (atol + rtol·max(|y₀|, |y₁|))`` over the whole state) and dense
output; it takes the Runge–Kutta step itself (the same arithmetic, stored for speed: :class:`HairerControl`) and
chooses the next step by HNW eq. (4.13):

    h_new = h · min(facmax, max(facmin, fac · err^(−1/q)))   (q: the method's order, 5 for dopri5)

with fac = ``safety`` (0.9), facmax = ``ifactor`` (10), facmin = ``dfactor`` (0.2), and facmax = 1 for the step
that follows a rejection (HNW p. 168; scipy's ``RungeKutta._step_impl``). For ``dopri5`` it uses Dormand & Prince's
error estimator (scipy's ``RK45.E``). With these, on the same float64 state, torchdiffeq's dopri5 takes scipy's
``solve_ivp(method="RK45")`` step sequence exactly (see tests/test_adaptive_ode.py).
``control="torchdiffeq"`` leaves torchdiffeq's solver as it is.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import torch
from torch import Tensor
from torchdiffeq._impl.dopri5 import Dopri5Solver
from torchdiffeq._impl.misc import Perturb, _check_inputs
from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver, _compute_error_ratio, _RungeKuttaState
from torchdiffeq._impl.rk_common import _runge_kutta_step as torchdiffeq_rk_step

CONTROLS = ("hairer", "torchdiffeq")

# b − b̂ of Dormand & Prince (1980): the 5th-order weights less their 4th-order embedding (scipy's RK45.E, negated)
DORMAND_PRINCE_ERROR = torch.tensor([71 / 57600, 0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40],
                                    dtype=torch.float64)


class HairerControl:
    """Mixin for an ``RKAdaptiveStepsizeODESolver``: torchdiffeq's solver (initial step, error norm, ``step_t``
    clipping, ``min_step``/``max_step``, dense output, its ``integrate`` loop) with its own Runge–Kutta step and the
    next step chosen by HNW eq. (4.13).

    The step (:meth:`_runge_kutta_step`) computes what torchdiffeq's ``_runge_kutta_step`` computes, stage times and
    ``Perturb`` flags included, with the stages kept as the rows of one contiguous (stages, n) matrix, so each stage
    is one matrix-vector product (``y₀ + (Kᵀβᵢ)·h``, scipy's ``RK45`` form) instead of a strided product and sum
    over a trailing stage axis, an autograd ``Function`` per stored stage and tensor-valued step arithmetic: on a
    free model that was most of torchdiffeq's cost per evaluation (RESULTS.md §6). The stages are stored in place,
    so when the state or the model's output carries a graph (a network with gradients on) the step is torchdiffeq's
    own, which keeps it differentiable. ``jump_t`` is not taken."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        if self.jump_t is not None and len(self.jump_t):
            raise ValueError("control='hairer' does not take jump_t")
        tableau = self.tableau
        self._alphas = [float(a) for a in tableau.alpha]
        self._fsal = bool(tableau.c_sol[-1] == 0 and (tableau.c_sol[:-1] == tableau.beta[-1]).all())
        self._after_reject = False
        self.accepted = self.rejected = 0
        self.dense = True

    def _interp_fit(self, y0: Tensor, y1: Tensor, k: Tensor, dt: Tensor) -> list[Tensor]:
        """torchdiffeq's dense-output fit, or, with ``dense`` off (every output time is the end of a step), the
        constant ``y1``: the output is the step's own result, and the fit's work per step is saved."""
        if self.dense:
            return super()._interp_fit(y0, y1, k, dt)
        return [y1, y1.new_zeros(())]

    def _runge_kutta_step(self, y0: Tensor, f0: Tensor, t0: Tensor, dt: Tensor,
                          t1: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One explicit Runge–Kutta step of the tableau: ``(y₁, f₁ = the last stage, error estimate, stages)``, the
        stages as torchdiffeq lays them out, ``(*y.shape, stages)`` (a view of the (stages, n) matrix)."""
        if torch.is_grad_enabled() and (y0.requires_grad or f0.requires_grad):  # a graph to keep: torchdiffeq's step
            return torchdiffeq_rk_step(self.func, y0, f0, t0, dt, t1, tableau=self.tableau)
        tableau, like = self.tableau, y0.dtype  # torchdiffeq evaluates the stage times in the state's dtype
        t0, dt, t1 = t0.to(like), dt.to(like), t1.to(like)
        h = float(dt)
        flat = y0.reshape(-1)
        stages = flat.new_empty((len(self._alphas) + 1, flat.numel()))
        stages[0] = f0.reshape(-1)
        y = flat
        for i, (alpha, beta) in enumerate(zip(self._alphas, tableau.beta)):
            t, perturb = (t1, Perturb.PREV) if alpha == 1.0 else (t0 + alpha * dt, Perturb.NONE)
            y = flat + torch.mv(stages[: i + 1].T, beta).mul_(h)  # scipy's RK45: y + (Kᵀa)·h
            stages[i + 1] = self.func(t, y.view_as(y0), perturb=perturb).reshape(-1)
        if not self._fsal:
            y = flat + torch.mv(stages.T, tableau.c_sol).mul_(h)
        error = torch.mv(stages.T, tableau.c_error).mul_(h)
        return y.view_as(y0), stages[-1].view_as(y0), error.view_as(y0), stages.T.reshape(*y0.shape, -1)

    def _adaptive_step(self, rk_state):
        """torchdiffeq's adaptive step (its checks, ``step_t`` clipping, error ratio, accept rule and callbacks) on
        :meth:`_runge_kutta_step`, with the next step from HNW eq. (4.13): facmax = 1 after a rejection."""
        y0, f0, _, t0, dt, interp_coeff = rk_state
        if not torch.isfinite(dt):
            dt = self.min_step
        dt = dt.clamp(self.min_step, self.max_step)
        self.func.callback_step(t0, y0, dt)
        if not t0 + dt > t0:  # the messages torchdiffeq's own step asserts (scoresde.solvers.ode reports them)
            raise AssertionError(f"underflow in dt {dt.item()}")
        if not bool(torch.isfinite(y0).all()):
            raise AssertionError(f"non-finite values in state `y`: {y0}")
        t1, on_step_t = t0 + dt, False
        if len(self.step_t):
            next_step_t = self.step_t[self.next_step_index]
            on_step_t = bool(t0 < next_step_t < t1)
            if on_step_t:
                t1, dt = next_step_t, next_step_t - t0
        y1, f1, error, stages = self._runge_kutta_step(y0, f0, t0, dt, t1)
        ratio = _compute_error_ratio(error, self.rtol, self.atol, y0, y1, self.norm)
        accepted = bool(ratio <= 1)
        if dt > self.max_step:
            accepted = False
        if dt <= self.min_step:
            accepted = True
        factor = self.safety * ratio.to(dt.dtype).clamp_min(1e-300) ** (-1.0 / self.order)
        if accepted:
            self.func.callback_accept_step(t0, y0, dt)
            interp_coeff = self._interp_fit(y0, y1, stages, dt)
            if on_step_t and self.next_step_index != len(self.step_t) - 1:
                self.next_step_index += 1
            t_next, y_next, f_next = t1, y1, f1
            factor = factor.clamp(max=1.0 if self._after_reject else self.ifactor)
            self.accepted += 1
        else:
            self.func.callback_reject_step(t0, y0, dt)
            t_next, y_next, f_next = t0, y0, f0
            factor = factor.clamp(min=self.dfactor)
            self.rejected += 1
        self._after_reject = not accepted
        dt_next = (dt * factor).clamp(self.min_step, self.max_step)
        return _RungeKuttaState(y_next, f_next, t0, t_next, dt_next, interp_coeff)


@cache
def controlled(cls: type) -> type:
    """``cls`` with :class:`HairerControl`, and Dormand & Prince's error estimator when ``cls`` is dopri5 (a class
    that already has the control, or a method that is not an adaptive Runge–Kutta one, passes through)."""
    if issubclass(cls, HairerControl) or not issubclass(cls, RKAdaptiveStepsizeODESolver):
        return cls
    body: dict[str, Any] = {"__doc__": f"{cls.__name__} with HNW §II.4 step-size control."}
    if issubclass(cls, Dopri5Solver):
        body["tableau"] = cls.tableau._replace(c_error=DORMAND_PRINCE_ERROR)
    return type(f"Hairer{cls.__name__}", (HairerControl, cls), body)


def odeint_controlled(func: Callable[[Tensor, Tensor], Tensor], y0: Tensor, t: Tensor, cls: type, *,
                      rtol: float, atol: float, options: dict[str, Any] | None = None,
                      dense: bool = True) -> tuple[Tensor, Any]:
    """torchdiffeq's ``odeint`` (input checks, time reversal, norm) run with ``controlled(cls)``; returns the
    solution at ``t`` and the solver (its ``accepted``/``rejected`` step counts). ``dense=False`` skips the
    dense-output fit, which needs every output time after ``t[0]`` to be one of ``options["step_t"]``."""
    if not dense:
        ends = torch.as_tensor((options or {}).get("step_t", []), dtype=torch.float64).cpu()
        if not bool(torch.isin(t[1:].to("cpu", torch.float64), ends).all()):
            raise ValueError("odeint_controlled: dense=False needs every output time in options['step_t']")
    solver_cls = controlled(cls)
    _, func, y0, t, rtol, atol, method, options, _, _ = _check_inputs(
        func, y0, t, rtol, atol, "method", dict(options or {}), None, {"method": solver_cls})
    solver = solver_cls(func=func, y0=y0, rtol=rtol, atol=atol, **options)
    solver.dense = dense
    return solver.integrate(t), solver
