"""The probability-flow ODE (Song et al. 2021, eq. 13) solved with torchdiffeq's ``odeint``."""
from __future__ import annotations

import sys

import torch
from torch import Tensor
from torchdiffeq import odeint

from scoresde.models.score_model import ScoreModel
from scoresde.sde.reverse import ProbabilityFlowODE
from scoresde.solvers.base import Callback, Solver, StepInfo, TimeGrid, check_start, register
from scoresde.solvers.noise import NoiseSource

# torchdiffeq's fixed-grid methods: (evaluations per step, global order).
FIXED = {"euler": (1, 1.0), "midpoint": (2, 2.0), "heun2": (2, 2.0), "heun3": (3, 3.0), "rk4": (4, 4.0)}
ADAPTIVE = {"dopri5": 5.0, "dopri8": 8.0, "bosh3": 3.0, "fehlberg2": 2.0, "adaptive_heun": 2.0}


def _torchdiffeq_methods() -> list[str]:
    import torchdiffeq._impl.odeint  # noqa: F401  (the module, shadowed by the function of the same name)
    return list(sys.modules["torchdiffeq._impl.odeint"].SOLVERS)


@register
class ProbabilityFlow(Solver):
    """Probability-flow ODE through torchdiffeq: a fixed-grid method steps through the time grid
    (``euler``, ``midpoint``, ``heun2``, ``heun3``, ``rk4``); an adaptive one (``dopri5`` …) ignores the
    inner grid points and picks its own steps to meet ``rtol``/``atol``.

    The state stays on the model's device (no host copy per step). Every model call is counted,
    rejected steps included. Adaptive steps are clipped at t_min (torchdiffeq's ``step_t``), and the
    drift clamps t to [t_min, T], so no evaluation ever falls below t_min, where σ(t) of VP is NaN.
    """

    name = "ode"

    def __init__(self, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5):
        known = _torchdiffeq_methods()
        if method not in known or method == "scipy_solver":
            raise ValueError(f"ode: unknown torchdiffeq method {method!r}; choose one of "
                             f"{', '.join(m for m in known if m != 'scipy_solver')}")
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"ode: rtol and atol must be > 0, got rtol={rtol}, atol={atol}")
        self.method, self.rtol, self.atol = method, float(rtol), float(atol)
        self.adaptive = method not in FIXED
        self.nfe_per_step, self.order = FIXED.get(method, (None, ADAPTIVE.get(method, 1.0)))

    def options(self) -> dict:
        return {"method": self.method, "rtol": self.rtol, "atol": self.atol}

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

        def drift(t: Tensor, y: Tensor) -> Tensor:
            last_t[0] = t
            return flow.drift(y, t.clamp(t_end, t_start).to(y.dtype))

        options = {"step_t": torch.tensor([t_end], dtype=torch.float64)} if self.adaptive else None
        try:
            path = odeint(drift, x, ts, method=self.method, rtol=self.rtol, atol=self.atol, options=options)
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
