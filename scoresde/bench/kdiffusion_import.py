"""k-diffusion's samplers without k-diffusion's package ``__init__``.

``import k_diffusion.sampling`` runs ``k_diffusion/__init__.py`` first, which imports ``augmentation``,
``evaluation``, ``models``, ``layers``, … and with them scikit-image, clean-fid, kornia, CLIP and torchvision. None
of that is needed to sample, and torchvision cannot be installed next to this project's CPU torch (PyPI's
torchvision 0.29 pulls a CUDA torch 2.14; 0.28 fails to load: "operator torchvision::nms does not exist"), so the
wheel (k-diffusion 0.1.1.post1) is installed with ``pip install --no-deps`` and the normal import fails.

``k_diffusion/sampling.py`` itself imports only math, scipy, torch, torchdiffeq, torchsde, tqdm and
``from . import utils``, and uses exactly one name of ``utils``: ``append_dims`` (in ``to_d``). :func:`load_sampling`
therefore

1. tries the normal ``import k_diffusion.sampling`` and returns it when it works (nothing substituted);
2. otherwise finds the installed distribution's ``k_diffusion/sampling.py`` (``importlib.util.find_spec`` on the
   top-level name, which locates the package without executing its ``__init__``; ``importlib.metadata`` as a
   fallback) and executes that file, unmodified, as ``_scoresde_kdiffusion.sampling``: a module of a stand-in
   parent package ``_scoresde_kdiffusion`` whose ``utils`` holds only :func:`append_dims`, k-diffusion's own
   definition (trailing singleton dimensions; ValueError when ``target_dims < x.ndim``). Any other ``utils``
   attribute raises AttributeError naming the stand-in, so a future sampling.py that needs more fails loudly.

The substitution is the package's ``__init__`` (skipped) and its ``utils`` module (one function, same definition);
every sampler, noise sampler and σ schedule is k-diffusion's own code. ``sys.modules`` gains only the two
``_scoresde_kdiffusion*`` names; entries named ``k_diffusion*`` are never written or removed.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from torch import Tensor

STANDIN = "_scoresde_kdiffusion"


def append_dims(x: Tensor, target_dims: int) -> Tensor:
    """k-diffusion's ``utils.append_dims``: append trailing singleton dimensions until ``x`` has ``target_dims``."""
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]


def sampling_path() -> Path | None:
    """The installed ``k_diffusion/sampling.py``, located without executing the package (None: not installed)."""
    try:
        spec = importlib.util.find_spec("k_diffusion")  # a top-level name: located, not executed
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        if (Path(folder) / "sampling.py").is_file():
            return Path(folder) / "sampling.py"
    try:
        located = Path(str(importlib.metadata.distribution("k-diffusion").locate_file("k_diffusion/sampling.py")))
    except importlib.metadata.PackageNotFoundError:
        return None
    return located if located.is_file() else None


def _standin_utils() -> ModuleType:
    utils = ModuleType(f"{STANDIN}.utils", "scoresde's stand-in for k_diffusion.utils: append_dims only")
    utils.append_dims = append_dims  # type: ignore[attr-defined]

    def __getattr__(name: str) -> None:
        raise AttributeError(f"{STANDIN}.utils provides only append_dims (k-diffusion's sampling.py asked for "
                             f"utils.{name}; install k-diffusion with its dependencies to use it)")

    utils.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return utils


def load_standalone(path: Path) -> ModuleType:
    """Execute k-diffusion's ``sampling.py`` at ``path`` as ``_scoresde_kdiffusion.sampling`` (see module doc)."""
    name = f"{STANDIN}.sampling"
    if name in sys.modules:
        return sys.modules[name]
    package = ModuleType(STANDIN, "scoresde's stand-in parent package of k-diffusion's sampling.py")
    package.__path__ = []  # a package (for the relative import), with nothing to find on disk
    package.utils = _standin_utils()  # type: ignore[attr-defined]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load k-diffusion's sampling module from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[STANDIN], sys.modules[f"{STANDIN}.utils"], sys.modules[name] = package, package.utils, module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for key in (name, f"{STANDIN}.utils", STANDIN):
            sys.modules.pop(key, None)
        raise
    package.sampling = module  # type: ignore[attr-defined]
    return module


@functools.cache
def load_sampling() -> ModuleType | None:
    """k-diffusion's ``sampling`` module: the real import if it works, else the standalone load; None if the
    distribution is not installed or its sampling.py does not load."""
    try:
        import k_diffusion.sampling as sampling
        return sampling
    except Exception:  # noqa: BLE001 - the package __init__ imports many optional extras (see module doc)
        pass
    path = sampling_path()
    if path is None:
        return None
    try:
        return load_standalone(path)
    except Exception:  # noqa: BLE001 - e.g. torchsde or torchdiffeq missing: the peer is unavailable
        return None


def is_standalone(module: ModuleType) -> bool:
    """Whether ``module`` came from :func:`load_standalone` (k-diffusion's package ``__init__`` skipped)."""
    return module.__name__.startswith(STANDIN)
