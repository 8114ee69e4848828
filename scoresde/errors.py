"""The project's user-facing errors: what a wrong input raises, so that an app can tell it from a bug.

- :class:`UserError` (a ``ValueError``): a value, name or file the user gave cannot work; the message names it.
- :class:`UnknownNameError` (also a ``KeyError``, so ``except KeyError`` keeps working): a name that is not in a
  registry (solver, SDE, grid, loss, testbed, dataset, network); the message lists the known names.
- :class:`ConfigError`: a config that cannot work, found before any work starts.

The apps (:func:`scoresde.cli.common.app_main`) print these as one line, ``scoresde-<app>: error: <message>``, and
exit with status 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(ValueError):
    """A wrong input: the message names the parameter (or file) and the value."""


class UnknownNameError(UserError, KeyError):
    """A name not found in a registry. ``str()`` is the message itself (a plain KeyError would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(UserError):
    """A config that cannot work, found before work starts; the message names the setting."""


__all__ = ["UserError", "UnknownNameError", "ConfigError"]
