"""The allowlist of networks a stored config may name, and the checks that turn a stored description into one.

A checkpoint or pretrained file describes its network as data, in *registry form*::

    {"class": "UNet", "kwargs": {"img_resolution": 28, "channel_mult": [1, 2, 2], ...}}

``class`` is a name of :data:`NETWORKS` (the project's own network classes; nothing is imported by a name read
from a file) and ``kwargs`` are constructor arguments: each must be a parameter of that constructor, and each
value a number, string, bool, None, or a list of those (no mappings, so no nested ``_target_``). Older
checkpoints stored the Hydra form ``{"_target_": "scoresde.models.UNet", ...}``: it is accepted when its
``_target_`` is the dotted name of a registered network, and translated to registry form; any other target is
refused with a :class:`UnsafeConfigError` that names the key and the value, and nothing runs.

The same checks apply to the stored SDE (a name of :data:`scoresde.sde.SDES` with number arguments) and to the
preconditioning (:func:`preconditioning_spec`).
"""
from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from scoresde.errors import ConfigError

# name -> (module, attribute): the project's own network builders. Resolved when a network is built, so that
# ``import scoresde`` does not build the network modules.
NETWORKS: dict[str, tuple[str, str]] = {
    "UNet": ("scoresde.models.networks.unet", "UNet"),
    "MLP": ("scoresde.models.networks.mlp", "MLP"),
    "tiny_unet": ("scoresde.models.networks.unet", "tiny_unet"),
    "cifar10_unet": ("scoresde.models.networks.unet", "cifar10_unet"),
}
_HYDRA_META = {"_convert_", "_recursive_"}  # Hydra keys with no effect on what is built; dropped
_PLAIN = (bool, int, float, str, type(None))
_PRECOND_KINDS = ("edm", "eps", "x0", "v", "score", "velocity")


class UnsafeConfigError(ConfigError):
    """A stored config names something outside the allowlist (or a value of a type it may not hold)."""


def register_network(name: str, builder: Callable[..., nn.Module]) -> None:
    """Allow ``builder`` (a network class or factory, importable by its module and name) under ``name``."""
    NETWORKS[name] = (builder.__module__, builder.__qualname__)


def network_builder(name: str) -> Callable[..., nn.Module]:
    """The registered builder called ``name``."""
    if name not in NETWORKS:
        raise UnsafeConfigError(f"unknown network class {name!r}; known: {', '.join(NETWORKS)}")
    module, attr = NETWORKS[name]
    return getattr(importlib.import_module(module), attr)


def _dotted_names() -> dict[str, str]:
    """Every dotted name an older config may use for a registered network -> its registry name."""
    names = {}
    for name, (module, attr) in NETWORKS.items():
        for prefix in (module, "scoresde.models", "scoresde.models.networks"):
            names[f"{prefix}.{attr}"] = name
    return names


def _check_value(value: Any, where: str) -> Any:
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, _PLAIN) for v in value):
        return list(value)
    raise UnsafeConfigError(f"{where}={value!r}: a stored network argument must be a number, string, bool, None or "
                            "a list of those")


def network_spec(node: Any, where: str = "model.net") -> dict[str, Any]:
    """The registry form ``{"class", "kwargs"}`` of a stored (or user-written) network description, checked.

    Accepts registry form or the Hydra form with a ``_target_`` naming a registered network. Raises
    :class:`UnsafeConfigError` naming the key and value for anything else: an unknown class or target, a nested
    mapping (e.g. a nested ``_target_``), an argument the constructor does not take, a value of another type."""
    if not isinstance(node, Mapping):
        raise UnsafeConfigError(f"{where} must be a mapping describing a network, got {node!r}")
    node = dict(node)
    if "_target_" in node:
        target = node.pop("_target_")
        name = _dotted_names().get(str(target)) if isinstance(target, str) else None
        if name is None:
            raise UnsafeConfigError(f"{where}._target_={target!r} is not a registered network (allowed: "
                                    f"{', '.join('scoresde.models.' + n for n in NETWORKS)}); refusing to build it")
        kwargs = {k: v for k, v in node.items() if k not in _HYDRA_META}
    else:
        unknown = sorted(set(node) - {"class", "kwargs"})
        if unknown:
            raise UnsafeConfigError(f"{where}.{unknown[0]}: a stored network has only 'class' and 'kwargs'")
        name, kwargs = node.get("class"), node.get("kwargs") or {}
        if not isinstance(name, str) or name not in NETWORKS:
            raise UnsafeConfigError(f"{where}.class={name!r} is not a registered network (known: "
                                    f"{', '.join(NETWORKS)}); refusing to build it")
        if not isinstance(kwargs, Mapping):
            raise UnsafeConfigError(f"{where}.kwargs must be a mapping, got {kwargs!r}")
    params = inspect.signature(network_builder(name)).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    checked = {}
    for key, value in kwargs.items():
        if not isinstance(key, str) or key.startswith("_") or (key not in params and not takes_any):
            raise UnsafeConfigError(f"{where}.{key}: not an argument of network {name} (its arguments: "
                                    f"{', '.join(k for k in params if k not in ('self', 'kwargs'))})")
        checked[key] = _check_value(value, f"{where}.{key}")
    return {"class": name, "kwargs": checked}


def build_network(spec: Any, where: str = "model.net", **extra: Any) -> nn.Module:
    """The network a (checked) description names, built with its arguments plus ``extra`` (e.g. num_classes)."""
    spec = network_spec(spec, where)
    return network_builder(spec["class"])(**spec["kwargs"], **extra)


def sde_spec(node: Any, where: str = "sde") -> dict[str, Any]:
    """A stored SDE description ``{"name", **number arguments}``, checked (the name is looked up in the registry
    by :func:`scoresde.get_sde`)."""
    if not isinstance(node, Mapping) or not isinstance(node.get("name"), str):
        raise UnsafeConfigError(f"{where} must be a mapping with a name, got {node!r}")
    for key, value in node.items():
        if key != "name" and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise UnsafeConfigError(f"{where}.{key}={value!r}: an SDE argument must be a number")
    return dict(node)


def preconditioning_spec(node: Any, where: str = "model") -> dict[str, Any]:
    """The preconditioning arguments ``{kind, sigma_data, c_noise, normalize_input}`` of a stored model, checked:
    a known kind, a finite positive σ_data, a c_noise name of :data:`scoresde.models.C_NOISE` or None."""
    from scoresde.models.preconditioning import C_NOISE
    node = dict(node) if isinstance(node, Mapping) else {}
    kind, sigma_data = node.get("kind", "edm"), node.get("sigma_data", 0.5)
    c_noise, normalize = node.get("c_noise"), node.get("normalize_input", False)
    if kind not in _PRECOND_KINDS:
        raise UnsafeConfigError(f"{where}.kind={kind!r}: not one of {', '.join(_PRECOND_KINDS)}")
    if isinstance(sigma_data, bool) or not isinstance(sigma_data, int | float) or not math.isfinite(sigma_data) \
            or sigma_data <= 0:
        raise UnsafeConfigError(f"{where}.sigma_data={sigma_data!r}: must be a finite number > 0")
    if c_noise is not None and c_noise not in C_NOISE:
        raise UnsafeConfigError(f"{where}.c_noise={c_noise!r}: not one of {', '.join(C_NOISE)} or null")
    if not isinstance(normalize, bool):
        raise UnsafeConfigError(f"{where}.normalize_input={normalize!r}: must be true or false")
    return {"kind": kind, "sigma_data": float(sigma_data), "c_noise": c_noise, "normalize_input": normalize}


def check_stored_config(config: Any, where: str = "checkpoint config") -> None:
    """Check the network and SDE descriptions a stored training config holds (what is there), so that a resumed
    run refuses a checkpoint that no loader would take."""
    if not isinstance(config, Mapping):
        return
    model = config.get("model")
    if isinstance(model, Mapping) and "net" in model:
        network_spec(model["net"], f"{where}.model.net")
    if "sde" in config:
        sde_spec(config["sde"], f"{where}.sde")


__all__ = ["check_stored_config", "NETWORKS", "UnsafeConfigError", "register_network", "network_builder",
           "network_spec", "build_network", "sde_spec", "preconditioning_spec"]
