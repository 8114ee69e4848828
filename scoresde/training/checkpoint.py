"""Checkpoint files: atomic writes, ``weights_only`` loads, and finding the latest one in a folder.

A checkpoint is a plain nested dict of tensors, dicts, lists and primitives (what ``torch.load(path,
weights_only=True)`` accepts); :class:`scoresde.training.Trainer` decides what goes in it (model, EMA,
optimizer, step, every RNG state, the resolved config). Files are named ``ckpt_{step:08d}.pt``.

Writes are atomic: the state is written to a hidden temporary file in the same folder (``.tmp-*.partial``,
never matching the checkpoint pattern), flushed and fsync'ed, then moved over the final name with
``os.replace`` (atomic on POSIX within one file system), and the folder is fsync'ed. A crash at any point
leaves either the old file or the complete new one, never a truncated file named like a checkpoint.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

CHECKPOINT_PATTERN = re.compile(r"^ckpt_(\d+)\.pt$")
_PLAIN = (bool, int, float, str, type(None))


def checkpoint_path(directory: str | Path, step: int) -> Path:
    """``directory/ckpt_{step:08d}.pt``."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return Path(directory) / f"ckpt_{step:08d}.pt"


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError if ``obj`` holds anything that ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(obj, (Tensor, *_PLAIN)):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str | int):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}; use str or int keys")
            check_plain(v, f"{where}.{k}")
        return
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__name__}; a checkpoint holds only tensors, dicts, lists and "
                    "primitives (so that torch.load(weights_only=True) can read it)")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, fsync, ``os.replace``)."""
    check_plain(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(path, weights_only=True)`` (no pickled code is executed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``ckpt_*.pt`` in ``directory``, sorted by step (empty if it does not exist)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``directory``, or None."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` latest checkpoints (``keep <= 0`` keeps all)."""
    if keep <= 0:
        return
    for _, path in list_checkpoints(directory)[:-keep]:
        path.unlink(missing_ok=True)


__all__ = ["CHECKPOINT_PATTERN", "checkpoint_path", "check_plain", "save_checkpoint", "load_checkpoint",
           "list_checkpoints", "latest_checkpoint", "prune_checkpoints"]
