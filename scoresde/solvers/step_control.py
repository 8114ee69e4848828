"""Step-size control for torchdiffeq's adaptive Runge–Kutta methods, as the textbook and scipy do it.

torchdiffeq's own controller differs from Hairer, Nørsett & Wanner (*Solving ODEs I*, §II.4) in two ways that cost
evaluations on the probability-flow ODE: an accepted step never shrinks the next one (its factor is held ≥ 1), and
the step retried after a rejection may grow again (up to ×10), so near t_min it alternates accept, reject, accept …
Its ``dopri5`` also estimates the error with Shampine's 4th-order embedding, where Dormand & Prince (1980),
Hairer's ``dopri5.f`` and scipy's ``RK45`` use the original one.

``control="hairer"`` runs torchdiffeq's own Runge–Kutta step, initial step (HNW §II.4, the same rule as scipy's
``select_initial_step``), error norm (RMS of ``err / (atol + rtol·max(|y₀|, |y₁|))`` over the whole state) and dense
output, and replaces only the choice of the next step, HNW eq. (4.13):

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
from torchdiffeq._impl.misc import _check_inputs
from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver

CONTROLS = ("hairer", "torchdiffeq")

# b − b̂ of Dormand & Prince (1980): the 5th-order weights less their 4th-order embedding (scipy's RK45.E, negated)
DORMAND_PRINCE_ERROR = torch.tensor([71 / 57600, 0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40],
                                    dtype=torch.float64)


class HairerControl:
    """Mixin for an ``RKAdaptiveStepsizeODESolver``: after torchdiffeq's step, set the next step by HNW eq. (4.13).

    It reads the attempted (clipped) step from torchdiffeq's ``callback_accept_step`` / ``callback_reject_step``
    and the error ratio from the norm, so torchdiffeq's step, clipping at ``step_t``/``jump_t`` and ``min_step``/
    ``max_step`` handling stay its own."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        norm = self.norm

        def recorded(tensor: Tensor) -> Tensor:
            self._ratio = norm(tensor)
            return self._ratio

        self.norm = recorded
        for name, accepted in (("callback_accept_step", True), ("callback_reject_step", False)):
            inner = getattr(self.func, name)

            def attempt(t0: Tensor, y0: Tensor, dt: Tensor, inner=inner, accepted=accepted) -> Any:
                self._attempt = (dt, accepted)
                return inner(t0, y0, dt)

            setattr(self.func, name, attempt)
        self._after_reject = False
        self.accepted = self.rejected = 0
        self.dense = True

    def _interp_fit(self, y0: Tensor, y1: Tensor, k: Tensor, dt: Tensor) -> list[Tensor]:
        """torchdiffeq's dense-output fit, or, with ``dense`` off (every output time is the end of a step), the
        constant ``y1``: the output is the step's own result, and the fit's work per step is saved."""
        if self.dense:
            return super()._interp_fit(y0, y1, k, dt)
        return [y1, y1.new_zeros(())]

    def _adaptive_step(self, rk_state):
        state = super()._adaptive_step(rk_state)
        dt, accepted = self._attempt
        ratio = torch.as_tensor(self._ratio, dtype=dt.dtype, device=dt.device)
        factor = self.safety * ratio.clamp_min(1e-300) ** (-1.0 / self.order)
        if accepted:
            factor = factor.clamp(max=1.0 if self._after_reject else self.ifactor)
            self.accepted += 1
        else:
            factor = factor.clamp(min=self.dfactor)
            self.rejected += 1
        self._after_reject = not accepted
        return state._replace(dt=(dt * factor).clamp(self.min_step, self.max_step))


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
