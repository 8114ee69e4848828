"""The reverse-time SDE through torchsde's ``sdeint``, on a Brownian path that comes from the noise source."""
from __future__ import annotations

from functools import cache
from types import SimpleNamespace

import torch
import torchsde
from torch import Tensor
from torchsde._brownian.brownian_base import BaseBrownian
from torchsde._core.methods import select

from scoresde.models.score_model import ScoreModel
from scoresde.sde.reverse import ReverseSDE
from scoresde.solvers.base import Callback, FiniteGuard, Solver, StepInfo, TimeGrid, check_start, register
from scoresde.solvers.noise import NoiseSource, StackedBrownian, as_noise

# torchsde's Itô methods offered here, with their drift evaluations per step (their cost; orders are read below)
METHODS = {"euler": 1, "milstein": 1, "srk": 10}
LEVY = {"srk": "space-time"}  # the Lévy area a method needs from the Brownian path


@cache
def torchsde_strong_orders(method: str) -> dict[str, float]:
    """Strong order per noise type, read from torchsde's own solver class: an instance is built against a
    stub SDE of each noise type the class supports (torchsde sets e.g. Euler's order from the noise type)."""
    cls = select(method, "ito")
    bm = SimpleNamespace(levy_area_approximation=LEVY.get(method, "none"), shape=(1, 1))
    orders = {}
    for noise_type in cls.noise_types:
        sde = SimpleNamespace(sde_type="ito", noise_type=noise_type)
        solver = cls(sde=sde, bm=bm, dt=1.0, adaptive=False, rtol=0.0, atol=0.0, dt_min=0.0, options={})
        orders[noise_type] = float(solver.strong_order)
    return orders


class _ReverseInU(torch.nn.Module):
    """The reverse SDE in forward time u = t_start − t, flattened to (B, D) as torchsde wants. Its noise is
    additive; torchsde is told "diagonal" (a vector g, no (D, D) matrix), which reduces to the same scheme."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, reverse: ReverseSDE, shape: torch.Size, t_start: float):
        super().__init__()
        self.reverse, self.shape, self.t_start = reverse, shape, t_start

    def _t(self, u: Tensor, y: Tensor) -> Tensor:
        return (self.t_start - u).to(device=y.device, dtype=y.dtype).expand(y.shape[0])

    def f(self, u: Tensor, y: Tensor) -> Tensor:
        x = y.reshape(self.shape)
        return -self.reverse.drift(x, self._t(u, y)).reshape(y.shape)

    def g(self, u: Tensor, y: Tensor) -> Tensor:
        return self.reverse.sde.g(self._t(u, y))[:, None].expand_as(y)


@register
class TorchSDE(Solver):
    """Reverse SDE (Song et al. 2021, eq. 6) through ``torchsde.sdeint`` with Itô ``euler``, ``milstein``
    or ``srk``, on a uniform grid in t (step dt = (T − t_min)/steps), driven by a Brownian path.

    The path comes from the noise source (``noise.brownian``): per-sample seeds give one interval per sample
    (batch-size independent), a :class:`~scoresde.solvers.noise.BrownianNoise` gives the one path every
    solver and step count shares. ``sample(..., bm=...)`` takes a ready torchsde Brownian motion instead.
    Strong orders per noise type are torchsde's (Euler: 1.0 for additive noise)."""

    name = "torchsde"
    stochastic = True

    def __init__(self, method: str = "euler"):
        if method not in METHODS:
            raise ValueError(f"torchsde: unknown method {method!r}; choose one of {', '.join(METHODS)}")
        self.method = method
        self.nfe_per_step = METHODS[method]
        self.strong_orders = torchsde_strong_orders(method)

    def options(self) -> dict:
        return {"method": self.method}

    def declared_nfe(self, grid: TimeGrid) -> int | None:
        """The steps' cost plus one: ``sdeint`` evaluates the drift once up front to check shapes."""
        base = super().declared_nfe(grid)
        return None if base is None else base + 1

    def step(self, x: Tensor, ctx) -> Tensor:  # pragma: no cover - sample() is overridden
        raise NotImplementedError("torchsde integrates the whole grid at once")

    def sample(self, model: ScoreModel, x: Tensor, grid: TimeGrid, noise: NoiseSource | None = None,
               callback: Callback | None = None, bm: BaseBrownian | None = None) -> Tensor:
        check_start(x, grid, model)
        n = grid.steps - int(grid.ends_at_data)
        t = grid.t[: n + 1]
        if n > 1 and not torch.allclose(t[:-1] - t[1:], (t[0] - t[n]) / n, rtol=1e-6, atol=0):
            raise ValueError(f"torchsde steps with a fixed dt, so it needs a uniform grid; got the {grid.kind} grid")
        t_start, t_end = grid.t_list[0], grid.t_list[n]
        us = (t_start - t).to(device=x.device)  # every grid point, in float64, so callbacks see each step
        duration = float(us[-1])
        if bm is None:
            bm = as_noise(noise).brownian(x, t_start, t_end, LEVY.get(self.method, "none"))
        sde = _ReverseInU(ReverseSDE(model.sde, model.score), x.shape, t_start)
        ys = torchsde.sdeint(sde, x.reshape(x.shape[0], -1), us, bm=bm, method=self.method,
                             dt=duration / n * (1 + 1e-12))  # time in float64: exactly n steps
        guard = FiniteGuard()
        for k in range(1, n + 1):
            guard.update(ys[k], k - 1)
        guard.check(f"torchsde ({self.method})", grid)
        if callback is not None:
            for k in range(1, n + 1):
                callback(StepInfo(k - 1, grid.steps, grid.t_list[k - 1], grid.t_list[k], ys[k].reshape(x.shape)))
        x = ys[-1].reshape(x.shape)
        if grid.ends_at_data:
            x = model.x0(x, torch.full((x.shape[0],), t_end, device=x.device, dtype=x.dtype))
        return x


__all__ = ["TorchSDE", "StackedBrownian", "torchsde_strong_orders"]
