"""Model interface (parametrizations, the score-model wrapper, NFE counting), networks, preconditioning, EMA, and
the one model loader (:func:`load_model`). The network classes (``MLP``, ``UNet``, ...) are imported on first use,
so that ``import scoresde`` does not build their modules."""
from __future__ import annotations

import importlib
from typing import Any

from scoresde.models.ema import EMA
from scoresde.models.parametrization import PREDICTIONS, convert, to_x0_eps
from scoresde.models.preconditioning import C_NOISE, Preconditioned, edm_coefficients
from scoresde.models.registry import NETWORKS, build_network, register_network
from scoresde.models.score_model import CountingModel, ScoreModel

_LAZY = {"MLP": "scoresde.models.networks", "UNet": "scoresde.models.networks",
         "cifar10_unet": "scoresde.models.networks", "tiny_unet": "scoresde.models.networks",
         "load_model": "scoresde.models.loader", "LoadedModel": "scoresde.models.loader"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PREDICTIONS", "convert", "to_x0_eps", "CountingModel", "ScoreModel", "EMA", "MLP", "UNet",
           "cifar10_unet", "tiny_unet", "Preconditioned", "edm_coefficients", "C_NOISE", "NETWORKS",
           "build_network", "register_network", "load_model", "LoadedModel"]
