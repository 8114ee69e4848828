"""Helpers shared by the Hydra apps: where the configs are, plain config values, output directory, seeds."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

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
        raise ValueError(f"the {what} config must be a mapping with a name, e.g. {what}=... from configs/{what}/")
    return node


def output_dir(cfg: DictConfig) -> Path:
    """``out_dir`` if set, else the Hydra run directory."""
    if cfg.get("out_dir"):
        return Path(str(cfg.out_dir))
    from hydra.core.hydra_config import HydraConfig
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise ValueError("set out_dir: there is no Hydra run directory outside a Hydra app")


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
