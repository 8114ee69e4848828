"""A registered solver built from a config's name and options, with a wrong option or value named in one line.

Shared by every app that takes a solver and its options (``scoresde-sample`` and ``scoresde-edit``: ``options.X=...``;
``scoresde-train``: ``sample.options.X=...``; ``scoresde-bench``/``scoresde-compare``: ``options.X=...`` and
``solvers.<label>.options.X=...``; :func:`scoresde.cli.common.app_main` lets these be given without a ``+``).
The solvers themselves are untouched: an option a solver's
constructor does not take (its ``TypeError``) becomes a :class:`~scoresde.errors.ConfigError` that lists the
options its class accepts (from :func:`inspect.signature`), and a number option given a string or a bool is refused
before the solver sees it.
"""
from __future__ import annotations

import inspect
import math
import numbers
from typing import Any

import scoresde
from scoresde.errors import ConfigError


def solver_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The keyword options solver ``name`` takes: its constructor's, up the class hierarchy while a constructor
    passes ``**kwargs`` on (empty when it cannot be inspected)."""
    found: dict[str, inspect.Parameter] = {}
    for klass in getattr(scoresde.SOLVERS.get(name), "__mro__", ()):
        if "__init__" not in vars(klass):
            continue
        try:
            params = list(inspect.signature(klass.__init__).parameters.values())[1:]
        except (TypeError, ValueError):
            break
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                found.setdefault(p.name, p)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return found


def _is_number_default(default: Any) -> bool:
    return isinstance(default, numbers.Real) and not isinstance(default, bool)


def check_option_values(name: str, options: dict[str, Any], key: str) -> None:
    """Refuse a string, bool or NaN given to an option whose default is a number, naming ``<key>.<option>``."""
    params = solver_parameters(name)
    for option, value in options.items():
        param = params.get(option)
        if param is None or not _is_number_default(param.default) or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(float(value)):
            raise ConfigError(f"{key}.{option} of solver {name!r} must be a number, got {key}.{option}={value!r}")


def build_solver(name: str, options: dict[str, Any] | None, key: str = "options") -> scoresde.Solver:
    """``scoresde.get_solver(name, **options)``; an unknown option names the solver's accepted ones (``key``: the
    config key of the options, for the message), a bad value names the option."""
    options = dict(options or {})
    if name not in scoresde.SOLVERS:
        scoresde.get_solver(name)  # the registry's UnknownNameError, listing the solvers
    unknown = sorted(set(options) - set(solver_parameters(name)))
    if unknown:
        accepted = ", ".join(solver_parameters(name))
        takes = f"its options: {accepted}" if accepted else "it takes no options"
        raise ConfigError(f"{key}.{unknown[0]}: solver {name!r} takes no option {unknown[0]!r}; {takes}")
    check_option_values(name, options, key)
    try:
        return scoresde.get_solver(name, **options)
    except TypeError as e:  # a constructor that takes **kwargs and refuses one later, or a wrong type
        accepted = ", ".join(solver_parameters(name)) or "none"
        raise ConfigError(f"{key}: {e}; solver {name!r} takes: {accepted}") from None
    except ValueError as e:  # the solver's own check of a value (names the option)
        raise ConfigError(f"{key} of solver {name!r}: {e}") from None


__all__ = ["build_solver", "check_option_values", "solver_parameters"]
