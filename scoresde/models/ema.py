"""Exponential moving average of a model's weights (Polyak averaging; Song et al. 2021 use decay 0.9999,
Karras et al. 2022 appendix D.2 a half-life in images with a ramp-up)."""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


class EMA:
    """Keeps an average ``ema ← β·ema + (1−β)·θ`` of every floating-point parameter and buffer of a model
    (integer buffers, e.g. BatchNorm's counters, are copied).

    Two ways to set β (give at most one; the default is ``decay=0.9999``):
      * ``decay=d``: constant β = d (Song et al. 2021: 0.9999; Ho et al. 2020: 0.9999).
      * ``half_life_kimg=h, batch_size=B`` (EDM): β = 0.5^(B/(1000·h)), so the weight of an update halves after
        h thousand images; with ``rampup_ratio=r`` the half-life is ``min(1000·h, step·B·r)`` images, where
        ``step`` counts optimizer steps before this one (step 0 copies the model, as in EDM's training loop).
    """

    def __init__(self, model: nn.Module, decay: float | None = None, half_life_kimg: float | None = None,
                 rampup_ratio: float | None = None, batch_size: int | None = None):
        if decay is None and half_life_kimg is None:
            decay = 0.9999
        self._set_options(decay, half_life_kimg, rampup_ratio, batch_size)
        self.shadow: dict[str, Tensor] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def _set_options(self, decay: float | None, half_life_kimg: float | None, rampup_ratio: float | None,
                     batch_size: int | None) -> None:
        """Check the options (a ValueError names the one that is wrong) and store them."""
        if decay is not None and half_life_kimg is not None:
            raise ValueError("give one of decay and half_life_kimg, not both")
        if decay is not None:
            decay = _number("decay", decay, "in [0, 1)", lambda v: 0 <= v < 1)
        if half_life_kimg is not None:
            half_life_kimg = _number("half_life_kimg", half_life_kimg, "> 0", lambda v: v > 0)
            if batch_size is None:
                raise ValueError("the half-life form (half_life_kimg) needs batch_size")
        if rampup_ratio is not None:
            if half_life_kimg is None:
                raise ValueError(f"EMA rampup_ratio={rampup_ratio!r} needs the half-life form (half_life_kimg); "
                                 "a constant decay has no ramp-up")
            rampup_ratio = _number("rampup_ratio", rampup_ratio, "> 0", lambda v: v > 0)
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
                raise ValueError(f"EMA batch_size must be a positive integer, got {batch_size!r}")
        self.decay, self.half_life_kimg, self.rampup_ratio = decay, half_life_kimg, rampup_ratio
        self.batch_size = None if batch_size is None else int(batch_size)

    def beta(self, step: int | None = None) -> float:
        """The decay β used by the update after ``step`` previous optimizer steps."""
        if self.decay is not None:
            return self.decay
        half_life = self.half_life_kimg * 1000
        if self.rampup_ratio is not None:
            if step is None:
                raise ValueError("an EMA with rampup_ratio needs the step in update(model, step)")
            half_life = min(half_life, step * self.batch_size * self.rampup_ratio)
        return 0.5 ** (self.batch_size / max(half_life, 1e-8))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """Fold the model's current weights into the average."""
        beta = self.beta(step)
        for name, value in model.state_dict().items():
            avg = self.shadow[name]
            if avg.is_floating_point():
                avg.lerp_(value.detach().to(avg.dtype), 1 - beta)
            else:
                avg.copy_(value)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` (e.g. a copy used for sampling)."""
        model.load_state_dict(self.shadow)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": {k: v.clone() for k, v in self.shadow.items()}, "decay": self.decay,
                "half_life_kimg": self.half_life_kimg, "rampup_ratio": self.rampup_ratio,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state does not match the model: {sorted(missing)[:5]}")
        self._set_options(state["decay"], state["half_life_kimg"], state["rampup_ratio"], state["batch_size"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


def _number(name: str, value: Any, what: str, ok: Callable[[float], bool]) -> float:
    """``value`` as a finite float satisfying ``ok``, or a ValueError naming ``name`` and the value."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, (bool, str)) or not math.isfinite(number) or not ok(number):
        raise ValueError(f"EMA {name} must be a finite number {what}, got {value!r}")
    return number


__all__ = ["EMA"]
