"""Every random state a training run depends on, as checkpoint-safe tensors and lists, and back.

Torch's global RNG (dropout), Python's and NumPy's global RNGs, CUDA's per-device RNGs and the trainer's
loss generator (times, noise, label dropout). These are per process: under ``torchrun`` each rank's are
saved (see :class:`scoresde.training.Trainer`). The data generator is shared by all ranks and saved once.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng(loss_gen: torch.Generator) -> dict[str, Any]:
    """``{"torch", "loss", "python", "numpy"[, "cuda"]}`` of this process."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "loss": loss_gen.get_state(), "python": random.getstate()}
    np_state = np.random.get_state()
    rng["numpy"] = [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any], loss_gen: torch.Generator) -> None:
    """Set every state :func:`capture_rng` saved (CUDA only when the device count matches)."""
    torch.set_rng_state(rng["torch"])
    loss_gen.set_state(rng["loss"])
    random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
    np_state = rng["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


def derived_seed(*entropy: int) -> int:
    """A 32-bit seed from integers, through NumPy's SeedSequence (independent streams for distinct inputs)."""
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0])


__all__ = ["capture_rng", "restore_rng", "derived_seed"]
