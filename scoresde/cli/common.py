"""Helpers shared by the Hydra apps: where the configs are, the console entry that turns a user error into one
line, typed config values that name their key, the output directory, seeds and the thread count."""
from __future__ import annotations

import fnmatch
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scoresde.distributed import RankFailure
from scoresde.errors import ConfigError, UserError

# What an app reports as one line (exit status 2) instead of a traceback: the project's own errors (a bad value, an
# unknown name, a refused or unreadable checkpoint, a diverging run), a file the user named that is missing or
# cannot be written, and Hydra's / OmegaConf's errors about the command line and the config. Anything else is a
# bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, OSError, FloatingPointError,
                                                OmegaConfBaseException)


def _hydra_errors() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException, MissingConfigException
    return (HydraException, MissingConfigException)


def one_line(error: BaseException) -> str:
    """The error's message on one line: a KeyError's quotes, blank lines, Hydra's config search path and its advice
    to set HYDRA_FULL_ERROR dropped; an override of a key the config does not have is called an unknown key."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    unknown = re.search(r"Could not override '([^']+)'.*Key '[^']+' is not in struct", text, re.S)
    if unknown:
        return (f"unknown config key '{unknown.group(1)}' (check its spelling; the keys are in this app's config in "
                f"{CONFIG_DIR})")
    text = text.split("Config search path:")[0]
    parts = [ln.strip() for ln in text.splitlines() if ln.strip()]
    parts = [p for p in parts if not p.startswith("Set the environment variable HYDRA_FULL_ERROR")]
    return "; ".join(parts) or type(error).__name__


def _report(app: str, error: BaseException, show_traceback: bool) -> None:
    """Print a user error as one line and exit (2; 1 for a failed torchrun rank), or re-raise it."""
    if show_traceback:
        raise error
    if isinstance(error, RankFailure):
        print(f"scoresde-{app}: {one_line(error)}", file=sys.stderr)
        sys.exit(1)
    print(f"scoresde-{app}: error: {one_line(error)}", file=sys.stderr)
    sys.exit(2)


def open_key_overrides(args: list[str], option_keys: tuple[str, ...]) -> list[str]:
    """Command-line overrides ``K.X=v`` whose parent ``K`` matches one of ``option_keys`` (fnmatch patterns, e.g.
    ``options``, ``solvers.*.options``) in Hydra's add-or-override form ``++K.X=v``: a solver's options are not
    listed in the config, and Hydra adds a key only with a ``+``. Every other argument passes unchanged."""
    out = []
    for arg in args:
        key = arg.split("=", 1)[0]
        if "=" in arg and "." in key and not key.startswith(("+", "~")) and \
                any(fnmatch.fnmatchcase(key.rsplit(".", 1)[0], pattern) for pattern in option_keys):
            arg = "++" + arg
        out.append(arg)
    return out


def app_main(app: str, task: Callable[[DictConfig], Any], config_name: str, option_keys: tuple[str, ...] = ()
             ) -> Callable[[], None]:
    """The console entry of ``scoresde-<app>``: the Hydra app (``configs/<config_name>.yaml``) running ``task``.
    Overrides under ``option_keys`` (solver options) need no ``+`` (:func:`open_key_overrides`).

    A user error (:data:`USER_ERRORS`, Hydra's own errors about the command line and the config) is printed as
    ``scoresde-<app>: error: <message>`` on stderr with exit status 2; a failed torchrun rank as one line with
    status 1; anything else is a bug and keeps its traceback. ``HYDRA_FULL_ERROR=1`` (Hydra's convention) shows the
    traceback of a user error too."""
    import hydra
    show_traceback = [False]  # read when main() starts

    def run(cfg: DictConfig) -> None:
        try:
            task(cfg)
        except (RankFailure, *USER_ERRORS) as e:
            _report(app, e, show_traceback[0])

    hydra_main = hydra.main(version_base=None, config_path=CONFIG_DIR, config_name=config_name)(run)

    def main() -> None:
        sys.argv[1:] = open_key_overrides(sys.argv[1:], option_keys)
        show_traceback[0] = os.environ.get("HYDRA_FULL_ERROR") == "1"
        os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises its own errors, so that they reach this function
        try:
            hydra_main()
        except (RankFailure, *USER_ERRORS, *_hydra_errors()) as e:
            _report(app, e, show_traceback[0])
        finally:
            if not show_traceback[0]:
                os.environ.pop("HYDRA_FULL_ERROR", None)

    main.__doc__ = f"Console entry point ``scoresde-{app}`` (Hydra overrides on the command line)."
    return main


def _value(cfg: Any, key: str, default: Any) -> Any:
    node = cfg
    for part in key.split("."):
        node = node.get(part) if node is not None and hasattr(node, "get") else None
        if node is None:
            return default
    return node


def int_option(cfg: Any, key: str, default: Any = None, minimum: int | None = None) -> int:
    """``cfg[key]`` (dotted keys allowed) as an int >= ``minimum``; a ConfigError that names the key otherwise."""
    value = _value(cfg, key, default)
    bound = f" >= {minimum}" if minimum is not None else ""
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).lstrip("-").isdigit():
        raise ConfigError(f"{key} must be an integer{bound}, got {key}={value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key} must be an integer{bound}, got {key}={value}")
    return value


def float_option(cfg: Any, key: str, default: Any = None, minimum: float | None = None,
                 maximum: float | None = None, open_below: bool = False) -> float:
    """``cfg[key]`` as a finite float in [minimum, maximum] (``open_below``: > minimum); a ConfigError naming the
    key otherwise."""
    value = _value(cfg, key, default)
    lo = "" if minimum is None else f" {'>' if open_below else '>='} {minimum:g}"
    hi = "" if maximum is None else f" <= {maximum:g}"
    want = f"{key} must be a finite number{lo}{' and' if lo and hi else ''}{hi}, got {key}={value!r}"
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        raise ConfigError(want) from None
    if not math.isfinite(number) or (minimum is not None and (number <= minimum if open_below else number < minimum)) \
            or (maximum is not None and number > maximum):
        raise ConfigError(want)
    return number


def bool_option(cfg: Any, key: str, default: Any = None) -> bool:
    """``cfg[key]`` as a bool (true/false, also as strings); a ConfigError naming the key otherwise."""
    value = _value(cfg, key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"{key} must be true or false, got {key}={value!r}")


@contextmanager
def torch_threads(n: Any) -> Iterator[None]:
    """Run the block with ``n`` torch threads (None / 0: unchanged) and restore the previous count after it."""
    previous = torch.get_num_threads()
    if n:
        if isinstance(n, bool) or not str(n).isdigit() or int(n) < 1:
            raise ConfigError(f"threads must be an integer >= 1, got threads={n!r}")
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)

# The repository's top-level configs/, found from this file. An absolute path, because Hydra resolves a
# relative config_path against the *package* (pkg://scoresde.cli) when an app is started as a console
# script, and configs/ is not a Python package.
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def plain(node: Any) -> Any:
    """A config node as plain Python containers (resolved); anything else unchanged."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def named(node: Any, what: str) -> dict[str, Any]:
    """A config group's node, checked to be a mapping with a ``name``."""
    node = plain(node)
    if not isinstance(node, dict) or "name" not in node:
        raise ConfigError(f"the {what} config must be a mapping with a name, e.g. {what}=... from configs/{what}/")
    return node


def output_dir(cfg: DictConfig) -> Path:
    """``out_dir`` if set, else the Hydra run directory."""
    if cfg.get("out_dir"):
        return Path(str(cfg.out_dir))
    from hydra.core.hydra_config import HydraConfig
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise ConfigError("set out_dir: there is no Hydra run directory outside a Hydra app")


def make_dir(path: Path, key: str, value: Any = None) -> Path:
    """Create the folder ``path`` now (before any work) and check it is writable; a ConfigError naming the config
    ``key`` (and its ``value``, default the path) otherwise."""
    shown = f"{key}={path if value is None else value}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{shown}: cannot create the folder {path} ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{shown}: the folder {path} is not writable")
    return path


def make_output_dir(cfg: DictConfig) -> Path:
    """:func:`output_dir`, created now and checked writable (:func:`make_dir`; the key named is ``out_dir``, or
    ``hydra.run.dir`` when the Hydra run directory is used)."""
    return make_dir(output_dir(cfg), "out_dir" if cfg.get("out_dir") else "hydra.run.dir")


def generator(seed: Any) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (an integer; a ConfigError naming ``seed`` otherwise)."""
    return torch.Generator().manual_seed(int_option({"seed": seed}, "seed", minimum=0))
