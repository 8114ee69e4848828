"""The probability-flow ODE (Song et al. 2021, eq. 13) solved with torchdiffeq's ``odeint``.

What each torchdiffeq method is comes from torchdiffeq's own solver classes, never a retyped table: a
``FixedGridODESolver`` steps through the time grid and declares its global ``order``; an
``AdaptiveStepsizeODESolver`` picks its own steps to meet ``rtol``/``atol`` (an ``RKAdaptiveStepsizeODESolver``
declares its ``order``). The options a method takes are the parameters of its class's constructor.

An adaptive solve is set up as score_sde's (scipy's ``solve_ivp``) is: the whole batch is one state under one RMS
error norm, the state is float64 while the model sees the input's dtype, and the next step follows Hairer, Nørsett
& Wanner §II.4 (:mod:`scoresde.solvers.step_control`).
"""
from __future__ import annotations

import inspect
import sys
from functools import cache
from typing import Any

import torch
from torch import Tensor
from torchdiffeq import odeint
from torchdiffeq._impl.solvers import AdaptiveStepsizeODESolver, FixedGridODESolver

from scoresde.models.score_model import ScoreModel
from scoresde.sde.reverse import ProbabilityFlowODE
from scoresde.solvers.base import Callback, Solver, StepInfo, TimeGrid, check_start, register
from scoresde.solvers.noise import NoiseSource
from scoresde.solvers.step_control import CONTROLS, odeint_controlled

STATE_DTYPES = {"auto": None, "input": None, "float32": torch.float32, "float64": torch.float64}

RESERVED = {"func", "y0", "rtol", "atol", "step_size", "grid_constructor", "step_t", "implicit", "perturb"}


def torchdiffeq_methods() -> dict[str, type]:
    """torchdiffeq's method table (its own ``SOLVERS``), less the methods that are neither fixed-grid nor
    adaptive torchdiffeq solvers (``scipy_solver``)."""
    import torchdiffeq._impl.odeint  # noqa: F401  (the module, shadowed by the function of the same name)
    table = sys.modules["torchdiffeq._impl.odeint"].SOLVERS
    kinds = (FixedGridODESolver, AdaptiveStepsizeODESolver)
    return {name: cls for name, cls in table.items() if issubclass(cls, kinds)}


def is_adaptive(method: str) -> bool:
    """Whether a torchdiffeq method picks its own steps (an ``AdaptiveStepsizeODESolver``)."""
    return issubclass(torchdiffeq_methods()[method], AdaptiveStepsizeODESolver)


def _parameters(cls: type) -> set[str]:
    """The keyword options ``cls`` accepts: its constructor's, and up the MRO while one passes ``**kwargs``."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def takes_tolerances(method: str) -> bool:
    """A method takes rtol/atol when its own constructor names them: the adaptive methods, and implicit
    Adams (its corrector iterates to them); the other fixed-grid methods ignore them."""
    return "rtol" in inspect.signature(torchdiffeq_methods()[method]).parameters


@cache
def fixed_grid_nfe(method: str, steps: int, max_order: int | None = None) -> int | None:
    """Evaluations a fixed-grid method makes on ``steps`` intervals, counted on a scalar ODE (explicit Adams
    warms up with RK4, so its cost is not a multiple of the steps). None where the count depends on the problem
    (a method that iterates to a tolerance)."""
    if takes_tolerances(method):
        return None
    calls = [0]

    def f(t: Tensor, y: Tensor) -> Tensor:
        calls[0] += 1
        return -y

    odeint(f, torch.ones(1, dtype=torch.float64), torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64),
           method=method, options=None if max_order is None else {"max_order": max_order})
    return calls[0]


@register
class ProbabilityFlow(Solver):
    """Probability-flow ODE through torchdiffeq: a fixed-grid method (``euler``, ``midpoint``, ``rk4``,
    ``explicit_adams`` …) steps through the time grid; an adaptive one (``dopri5`` …) ignores the inner grid
    points and picks its own steps to meet ``rtol``/``atol`` (default 1e-5). ``options`` go to the method
    (e.g. ``max_order`` of Adams, ``first_step`` of dopri5); a tolerance or option the method does not take
    is an error.

    The state stays on the model's device (no host copy per step). Every model call is counted,
    rejected steps included. Adaptive steps are clipped at t_min (torchdiffeq's ``step_t``), and the
    drift clamps t to [t_min, T], so no evaluation ever falls below t_min, where σ(t) of VP is NaN.

    ``control``: ``"hairer"`` (default) picks an adaptive method's next step by Hairer–Nørsett–Wanner eq. (4.13),
    as scipy's ``solve_ivp`` does, and estimates dopri5's error with Dormand & Prince's embedding; with it dopri5
    takes the step sequence of score_sde's ``solve_ivp(method="RK45")``. ``"torchdiffeq"`` keeps torchdiffeq's
    own controller (more rejected steps near t_min). Fixed-grid methods ignore it.
    ``state_dtype``: the dtype the solver integrates in (the model always sees the input's dtype, the result
    comes back in it). ``"auto"``: float64 for adaptive methods (as scipy does; the input's dtype on MPS, which
    has no float64), the input's dtype for fixed-grid ones; or ``"input"``, ``"float32"``, ``"float64"``.
    After an adaptive solve with ``control="hairer"``, ``stats`` holds its accepted and rejected step counts.
    """

    name = "ode"

    def __init__(self, method: str = "dopri5", rtol: float | None = None, atol: float | None = None,
                 options: dict[str, Any] | None = None, control: str = "hairer", state_dtype: str = "auto"):
        known = torchdiffeq_methods()
        if method not in known:
            raise ValueError(f"ode: unknown torchdiffeq method {method!r}; choose one of {', '.join(known)}")
        cls = known[method]
        self.adaptive = issubclass(cls, AdaptiveStepsizeODESolver)
        given = {k: v for k, v in (("rtol", rtol), ("atol", atol)) if v is not None}
        if given and not takes_tolerances(method):
            raise ValueError(f"ode: method {method!r} steps through the grid and takes no "
                             f"{' or '.join(given)}; use an adaptive method (dopri5 …) or leave them out")
        rtol, atol = (1e-5 if rtol is None else rtol), (1e-5 if atol is None else atol)
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"ode: rtol and atol must be > 0, got rtol={rtol}, atol={atol}")
        self.options_ = dict(options or {})
        bad = sorted(set(self.options_) - (_parameters(cls) - RESERVED))
        if bad:
            raise ValueError(f"ode: method {method!r} takes no option {', '.join(map(repr, bad))}; it takes "
                             f"{', '.join(sorted(_parameters(cls) - RESERVED)) or 'none'}")
        if control not in CONTROLS:
            raise ValueError(f"ode: unknown control {control!r}; choose one of {', '.join(CONTROLS)}")
        if state_dtype not in STATE_DTYPES:
            raise ValueError(f"ode: unknown state_dtype {state_dtype!r}; choose one of {', '.join(STATE_DTYPES)}")
        self.control, self.state_dtype = control, state_dtype
        self.method, self.rtol, self.atol = method, float(rtol), float(atol)
        self.stats: dict[str, int] = {}
        self.tolerances = bool(given) or takes_tolerances(method)
        self.order = float(getattr(cls, "order", 1.0))
        if "max_order" in _parameters(cls):
            # Adams runs at order min(history, max_order − 1), and torchdiffeq's default max_order (12) climbs to
            # an unstable 11th order: hold it to the order its class declares unless asked for another
            self.options_.setdefault("max_order", int(self.order) + 1)
            self.order = max(self.order, float(self.options_["max_order"] - 1))
        self.nfe_per_step = None

    def options(self) -> dict:
        out: dict[str, Any] = {"method": self.method}
        if self.tolerances:
            out.update(rtol=self.rtol, atol=self.atol)
        if self.options_:
            out["options"] = self.options_
        if self.control != "hairer":
            out["control"] = self.control
        if self.state_dtype != "auto":
            out["state_dtype"] = self.state_dtype
        return out

    def _dtype(self, x: Tensor) -> torch.dtype:
        """The dtype the ODE state is integrated in (see ``state_dtype``)."""
        if self.state_dtype == "auto":
            return torch.float64 if self.adaptive and x.device.type != "mps" else x.dtype
        return STATE_DTYPES[self.state_dtype] or x.dtype

    def declared_nfe(self, grid: TimeGrid) -> int | None:
        if self.adaptive:
            return None
        n = grid.steps - int(grid.ends_at_data)
        cost = fixed_grid_nfe(self.method, n, self.options_.get("max_order"))
        return None if cost is None else cost + int(grid.ends_at_data)

    def step(self, x: Tensor, ctx) -> Tensor:  # pragma: no cover - sample() is overridden
        raise NotImplementedError("ode integrates the whole grid at once")

    def sample(self, model: ScoreModel, x: Tensor, grid: TimeGrid, noise: NoiseSource | None = None,
               callback: Callback | None = None) -> Tensor:
        check_start(x, grid, model)
        n = grid.steps - int(grid.ends_at_data)  # intervals solved as an ODE
        if n == 0:
            raise ValueError("ode: the grid holds only the final denoising step; with denoise=True use steps >= 2 "
                             "(an adaptive method ignores the inner points)")
        t_start, t_end = grid.t_list[0], grid.t_list[n]
        ts = grid.t[: n + 1] if not self.adaptive else torch.tensor([t_start, t_end], dtype=torch.float64)
        ts = ts.to(x.device)
        flow = ProbabilityFlowODE(model.sde, model.score)
        last_t = [ts[0]]

        dtype, state = x.dtype, self._dtype(x)

        def drift(t: Tensor, y: Tensor) -> Tensor:
            last_t[0] = t
            return flow.drift(y.to(dtype), t.clamp(t_end, t_start).to(dtype)).to(state)

        options = dict(self.options_)
        if self.adaptive:
            options["step_t"] = torch.tensor([t_end], dtype=torch.float64)
        tolerances = {"rtol": self.rtol, "atol": self.atol} if self.tolerances else {}
        try:
            if self.adaptive and self.control == "hairer":
                path, run = odeint_controlled(drift, x.to(state), ts, torchdiffeq_methods()[self.method],
                                              options=options, dense=False, **tolerances)
                self.stats = {"accepted": run.accepted, "rejected": run.rejected}
            else:
                path = odeint(drift, x.to(state), ts, method=self.method, options=options or None, **tolerances)
            path = path.to(dtype)
        except AssertionError as err:  # torchdiffeq reports non-finite states and dt underflow this way
            raise FloatingPointError(f"ode ({self.method}): the solve failed near t={float(last_t[0]):.6g}: {err}. "
                                     "Check the model's output there, or loosen rtol/atol.") from None
        bad = ~torch.isfinite(path.reshape(len(ts), -1)).all(dim=1)
        if bool(bad.any()):
            k = int(bad.nonzero()[0])
            raise FloatingPointError(f"ode ({self.method}): non-finite values at output {k} of {len(ts) - 1}, "
                                     f"t={float(ts[k]):.6g}")
        x = path[-1]
        if callback is not None:
            for k in range(1, len(ts)):
                callback(StepInfo(k - 1, len(ts) - 1, float(ts[k - 1]), float(ts[k]), path[k]))
        if grid.ends_at_data:
            x = model.x0(x, torch.full((x.shape[0],), t_end, device=x.device, dtype=x.dtype))
        return x


# Adaptive methods by name, derived (scoresde.evaluation.likelihood reads it).
ADAPTIVE = tuple(name for name in torchdiffeq_methods() if is_adaptive(name))
