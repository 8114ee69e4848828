"""Learning-rate schedules: linear warmup, then constant or a cosine decay to a floor.

Cosine decay as in SGDR (Loshchilov & Hutter 2017, eq. 5) without restarts, as used after warmup by
Nichol & Dhariwal (2021) and many diffusion codebases: after warmup the rate falls from ``lr`` along half a
cosine to ``lr_min``, reached by the last step of the run.
"""
from __future__ import annotations

import math

LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")


def check_schedule(schedule: str, lr: float, lr_min: float) -> None:
    """Raise ValueError for an unknown schedule name or a floor outside [0, lr]."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if not 0 <= lr_min <= lr:
        raise ValueError(f"lr_min must lie in [0, lr={lr}], got lr_min={lr_min}")


def lr_at(step: int, lr: float, warmup_steps: int = 0, total_steps: int = 1, schedule: str = "constant",
          lr_min: float = 0.0) -> float:
    """The learning rate of the update after ``step`` previous updates (update ``step + 1`` of ``total_steps``).

    Warmup: ``lr·min(1, (step+1)/warmup_steps)``. Then ``constant``: ``lr``; ``cosine``:
    ``lr_min + (lr − lr_min)·½(1 + cos(π·p))`` with ``p = (step+1 − warmup_steps)/(total_steps − warmup_steps)``
    clipped to [0, 1], so the first update after warmup uses ``lr`` and the last one ``lr_min``."""
    if warmup_steps and step + 1 < warmup_steps:
        return lr * ((step + 1) / warmup_steps)
    if schedule == "constant":
        return lr
    if schedule != "cosine":
        raise ValueError(f"unknown lr_schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    p = min(1.0, max(0.0, (step + 1 - warmup_steps) / max(total_steps - warmup_steps, 1)))
    return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * p))


__all__ = ["LR_SCHEDULES", "check_schedule", "lr_at"]
