"""One trainer per run directory: a lock file that holds the owner's pid and host.

:class:`RunLock` creates ``<run dir>/.scoresde-train.lock`` with ``O_CREAT | O_EXCL`` (atomic on POSIX) and writes
``{"pid", "host"}`` into it; it is removed when the lock is released. A second trainer on the same run directory
finds the file and is refused with a :class:`RunLockedError` naming the other process. A lock left by a process
that no longer runs (same host, pid gone: the trainer was killed) is stale: it is taken over with a warning. A lock
of another host cannot be checked from here, so it is respected; the message says which file to delete.
"""
from __future__ import annotations

import json
import os
import socket
import warnings
from pathlib import Path
from types import TracebackType

from scoresde.errors import UserError

LOCK_NAME = ".scoresde-train.lock"


class RunLockedError(UserError):
    """Another live process holds the run directory's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """Exclusive ownership of a run directory while a trainer writes into it (a context manager)."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / LOCK_NAME
        self.held = False

    def _owner(self) -> dict:
        try:
            owner = json.loads(self.path.read_text())
            return owner if isinstance(owner, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunLock:
        """Take the lock, or take over a stale one (warning); raise :class:`RunLockedError` if a live process has
        it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                pid, host = owner.get("pid"), owner.get("host")
                if pid == me["pid"] and host == me["host"]:
                    raise RunLockedError(f"run directory {self.path.parent} is already locked by this process "
                                         f"(pid {pid})") from None
                if host == me["host"] and isinstance(pid, int) and not _alive(pid):
                    warnings.warn(f"taking over the stale lock {self.path} of process {pid} on {host}, which no "
                                  "longer runs", UserWarning, stacklevel=2)
                    self.path.unlink(missing_ok=True)
                    continue
                if not owner:  # being written by its owner right now, or garbage: give it a moment
                    import time
                    time.sleep(0.2)
                    if not self._owner():
                        raise RunLockedError(f"run directory {self.path.parent} is locked ({self.path} exists but "
                                             "names no process); delete it if no trainer runs there") from None
                    continue
                raise RunLockedError(f"run directory {self.path.parent} is in use by another scoresde-train (pid "
                                     f"{pid} on {host}); use another hydra.run.dir, or stop that process (if it is "
                                     f"gone, delete {self.path})") from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return self
        raise RunLockedError(f"could not take the lock {self.path}")

    def release(self) -> None:
        """Remove the lock file, if this process holds it."""
        if self.held and self._owner().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


__all__ = ["RunLock", "RunLockedError", "LOCK_NAME"]
