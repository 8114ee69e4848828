"""Checkpoint files: atomic writes, ``weights_only`` loads, and finding the latest one in a folder.

A checkpoint is a plain nested dict of tensors, dicts, lists and primitives (what ``torch.load(path,
weights_only=True)`` accepts); :class:`scoresde.training.Trainer` decides what goes in it (model, EMA,
optimizer, step, every RNG state, the resolved config). Files are named ``ckpt_{step:08d}.pt``.

Writes are atomic: the state is written to a hidden temporary file in the same folder (``.tmp-*.partial``,
never matching the checkpoint pattern), flushed and fsync'ed, then moved over the final name with
``os.replace`` (atomic on POSIX within one file system), and the folder is fsync'ed. A crash at any point
leaves either the old file or the complete new one, never a truncated file named like a checkpoint.

Loads are ``torch.load(weights_only=True)``: a file that would run code when unpickled (a pickle whose
``__reduce__`` calls ``os.system``, a pickled class instance) is refused with :class:`UnsafeCheckpointError`
before anything in it runs, and a truncated or otherwise unreadable file raises :class:`CorruptCheckpointError`;
both name the file. :func:`latest_checkpoint` only returns a checkpoint that loads: when the newest one is
broken (copied in half, corrupted on disk, or not weights-only), it warns, naming the file and why, and falls
back to the newest one that loads, so ``resume=true`` continues from the last good state rather than crashing
or silently starting over (``verify=False`` skips the check and just returns the highest step).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scoresde.errors import UserError

CHECKPOINT_PATTERN = re.compile(r"^ckpt_(\d+)\.pt$")
_PLAIN = (bool, int, float, str, type(None))


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be loaded; the message names the file."""


class UnsafeCheckpointError(CheckpointError):
    """The file is not a weights-only checkpoint: unpickling it would construct objects or run code."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated or corrupt (not a readable torch checkpoint)."""


class IntegrityError(CorruptCheckpointError):
    """The file reads, but its content does not match the sha256 digest stored in it."""


INTEGRITY_KEY = "integrity"


def _feed(h: Any, obj: Any, path: str) -> None:
    """Hash ``obj`` under its key path: dict keys in sorted order, tensors as dtype, shape and raw bytes."""
    h.update(f"\0{path}\0{type(obj).__name__}\0".encode())
    if isinstance(obj, Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        for key in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _feed(h, obj[key], f"{path}/{key!s}")
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            _feed(h, value, f"{path}[{i}]")
    else:
        h.update(repr(obj).encode())


def state_digest(state: dict[str, Any]) -> str:
    """The sha256 (hex) of every tensor and value of ``state`` except its ``integrity`` entry."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != INTEGRITY_KEY}, "")
    return h.hexdigest()


def verify_integrity(state: dict[str, Any], path: str | Path) -> None:
    """Raise :class:`IntegrityError` when ``state``'s stored digest does not match its content; warn when it has
    none (a file written before digests existed)."""
    stored = state.get(INTEGRITY_KEY)
    if stored is None:
        warnings.warn(f"checkpoint {path} has no integrity digest (written by an older version): it cannot be "
                      "verified", UserWarning, stacklevel=3)
        return
    if not isinstance(stored, dict) or stored.get("algorithm") != "sha256" or not isinstance(stored.get("digest"), str):
        raise IntegrityError(f"checkpoint {path} has a malformed integrity entry: {stored!r}")
    actual = state_digest(state)
    if actual != stored["digest"]:
        raise IntegrityError(f"checkpoint {path} fails its integrity check: its content does not match the sha256 "
                             f"digest stored in it (stored {stored['digest'][:12]}..., computed {actual[:12]}...); "
                             "the file was modified or corrupted after it was written")


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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    """Write ``state`` with its sha256 digest (``integrity``) to ``path`` atomically (temporary file in the same
    folder, fsync, ``os.replace``). A failed write (a full disk) leaves the previous file at ``path`` intact and
    raises an OSError that names the file."""
    check_plain(state)
    state = {**{k: v for k, v in state.items() if k != INTEGRITY_KEY},
             INTEGRITY_KEY: {"algorithm": "sha256", "digest": state_digest(state)}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".partial")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; a checkpoint gets the usual mode
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, f"could not write checkpoint {path} ({e.strerror or e}); the previous file there, "
                      "if any, is intact") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(path, weights_only=True)`` (no pickled code is executed).

    Raises FileNotFoundError (no such file), :class:`UnsafeCheckpointError` (the pickle asks for anything
    beyond tensors and plain containers, e.g. a ``__reduce__`` that calls ``os.system``: refused, nothing
    run) or :class:`CorruptCheckpointError` (truncated or corrupt), each naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if _looks_truncated(path, e):
            raise CorruptCheckpointError(f"checkpoint {path} is truncated or corrupt: {_first_line(e)}") from e
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it is not a weights-only checkpoint (unpickling it would construct "
            f"arbitrary objects or run code; torch.load(weights_only=True) said: {_first_line(e)}). Only load "
            "files you trust; scoresde checkpoints hold tensors, dicts, lists and primitives only") from e
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, IndexError, KeyError) as e:
        raise CorruptCheckpointError(f"checkpoint {path} is truncated or corrupt "
                                     f"({type(e).__name__}: {_first_line(e)})") from e
    if not isinstance(state, dict):
        raise CorruptCheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    verify_integrity(state, path)
    return state


def _first_line(e: BaseException) -> str:
    """The informative line of an error (torch's weights-only message names the refused global)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "Unsupported" in ln or "global" in ln.lower():
            return ln[:300]
    return lines[0][:300] if lines else type(e).__name__


def _looks_truncated(path: Path, e: BaseException) -> bool:
    """An UnpicklingError from a cut-off legacy (non-zip) pickle, rather than from a forbidden global."""
    text = str(e)
    return "Weights only load failed" not in text and ("truncated" in text or "ran out of input" in text.lower())


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``ckpt_*.pt`` in ``directory``, sorted by step (empty if it does not exist)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return sorted(found)


def latest_checkpoint(directory: str | Path, verify: bool = True) -> Path | None:
    """The checkpoint with the highest step in ``directory`` that loads, or None when there is none.

    With ``verify`` (the default) each candidate, newest first, is loaded (weights-only, on the CPU); one
    that fails is skipped with a :class:`UserWarning` naming it and the reason, so a resumed run continues
    from the newest *good* checkpoint. ``verify=False``: the highest step, unchecked."""
    found = list_checkpoints(directory)
    if not verify:
        return found[-1][1] if found else None
    for _, path in reversed(found):
        try:
            load_checkpoint(path)
        except (CheckpointError, FileNotFoundError) as e:
            warnings.warn(f"skipping checkpoint {path}: {e}", UserWarning, stacklevel=2)
            continue
        return path
    return None


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` latest checkpoints (``keep <= 0`` keeps all)."""
    if keep <= 0:
        return
    for _, path in list_checkpoints(directory)[:-keep]:
        path.unlink(missing_ok=True)


__all__ = ["CheckpointError", "UnsafeCheckpointError", "CorruptCheckpointError", "IntegrityError", "state_digest",
           "verify_integrity",
           "CHECKPOINT_PATTERN", "checkpoint_path", "check_plain", "save_checkpoint", "load_checkpoint",
           "list_checkpoints", "latest_checkpoint", "prune_checkpoints"]
