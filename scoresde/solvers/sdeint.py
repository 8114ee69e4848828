"""The reverse-time SDE through torchsde's ``sdeint`` and a Brownian motion shared across solvers."""
from __future__ import annotations

import torch
import torchsde
from torch import Tensor
from torchsde._brownian.brownian_base import BaseBrownian

from scoresde.models.score_model import ScoreModel
from scoresde.sde.reverse import ReverseSDE
from scoresde.solvers.base import Callback, FiniteGuard, Solver, TimeGrid, check_start, register
from scoresde.solvers.noise import NoiseSource, PerSampleNoise

# torchsde's Itô methods for diagonal noise: (drift evaluations per step, strong order).
METHODS = {"euler": (1, 0.5), "milstein": (1, 1.0), "srk": (10, 1.5)}  # srk: measured, diagonal-noise SRI


class StackedBrownian(BaseBrownian):
    """One ``BrownianInterval`` per sample, stacked along the batch: sample i's path depends only on
    its own seed, so results do not depend on the batch size."""

    def __init__(self, t0: float, t1: float, dim: int, seeds: list[int], dtype: torch.dtype,
                 device: torch.device | str, levy_area_approximation: str = "none"):
        self.intervals = [torchsde.BrownianInterval(t0=t0, t1=t1, size=(1, dim), dtype=dtype, device=device,
                                                    entropy=seed, levy_area_approximation=levy_area_approximation)
                          for seed in seeds]
        self._shape = (len(seeds), dim)

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        parts = [bm(ta, tb, return_U=return_U, return_A=return_A) for bm in self.intervals]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(p, dim=0) for p in zip(*parts))
        return torch.cat(parts, dim=0)

    def __repr__(self) -> str:
        return f"StackedBrownian(batch={self._shape[0]}, dim={self._shape[1]})"

    @property
    def dtype(self):
        return self.intervals[0].dtype

    @property
    def device(self):
        return self.intervals[0].device

    @property
    def shape(self):
        return self._shape

    @property
    def levy_area_approximation(self):
        return self.intervals[0].levy_area_approximation


class _ReverseInU(torch.nn.Module):
    """The reverse SDE in forward time u = t_start − t, flattened to (B, D) as torchsde wants."""

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
    or ``srk``, on a uniform grid in t (step dt = (T − t_min)/steps), driven by a Brownian interval.

    ``sample(..., bm=...)`` accepts a Brownian motion built by :meth:`brownian`, so different methods
    and step counts can be driven by one path. By default the path comes from the noise source:
    per-sample seeds give a :class:`StackedBrownian`."""

    name = "torchsde"
    stochastic = True

    def __init__(self, method: str = "euler"):
        if method not in METHODS:
            raise ValueError(f"torchsde: unknown method {method!r}; choose one of {', '.join(METHODS)}")
        self.method = method
        self.nfe_per_step, self.order = METHODS[method]

    def options(self) -> dict:
        return {"method": self.method}

    def declared_nfe(self, grid: TimeGrid) -> int | None:
        """The steps' cost plus one: ``sdeint`` evaluates the drift once up front to check shapes."""
        base = super().declared_nfe(grid)
        return None if base is None else base + 1

    def step(self, x: Tensor, ctx) -> Tensor:  # pragma: no cover - sample() is overridden
        raise NotImplementedError("torchsde integrates the whole grid at once")

    def brownian(self, x: Tensor, duration: float, noise: NoiseSource | None = None) -> BaseBrownian:
        """A Brownian path on [0, duration] for a batch shaped like ``x``: per-sample intervals for
        :class:`PerSampleNoise` (batch-size independent), else one batched interval seeded from the
        noise source's generator (fast)."""
        levy = "space-time" if self.method == "srk" else "none"
        if isinstance(noise, PerSampleNoise):
            return StackedBrownian(0.0, duration, x[0].numel(), noise.seeds, x.dtype, x.device, levy)
        entropy = int(torch.randint(2**62, (1,), generator=getattr(noise, "generator", None)))
        return torchsde.BrownianInterval(t0=0.0, t1=duration, size=(x.shape[0], x[0].numel()), dtype=x.dtype,
                                         device=x.device, entropy=entropy, levy_area_approximation=levy)

    def sample(self, model: ScoreModel, x: Tensor, grid: TimeGrid, noise: NoiseSource | None = None,
               callback: Callback | None = None, bm: BaseBrownian | None = None) -> Tensor:
        check_start(x, grid, model)
        n = grid.steps - int(grid.ends_at_data)
        t = grid.t[: n + 1]
        if n > 1 and not torch.allclose(t[:-1] - t[1:], (t[0] - t[n]) / n, rtol=1e-6, atol=0):
            raise ValueError(f"torchsde steps with a fixed dt, so it needs a uniform grid; got the {grid.kind} grid")
        t_start, t_end = grid.t_list[0], grid.t_list[n]
        us = torch.tensor([0.0, t_start - t_end], dtype=torch.float64, device=x.device)
        duration = float(us[-1])
        if bm is None:
            bm = self.brownian(x, duration, noise)
        sde = _ReverseInU(ReverseSDE(model.sde, model.score), x.shape, t_start)
        ys = torchsde.sdeint(sde, x.reshape(x.shape[0], -1), us, bm=bm, method=self.method,
                             dt=duration / n * (1 + 1e-12))  # time in float64: exactly n steps
        x = ys[-1].reshape(x.shape)
        guard = FiniteGuard()
        guard.update(x, n - 1)
        guard.check(f"torchsde ({self.method})", grid)
        if grid.ends_at_data:
            x = model.x0(x, torch.full((x.shape[0],), t_end, device=x.device, dtype=x.dtype))
        return x


__all__ = ["TorchSDE", "StackedBrownian"]
