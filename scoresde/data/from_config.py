"""The data set a ``data`` config describes (``configs/data/``): a 2-D toy or an image data set with labels."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from scoresde.data.datasets import IMAGE_DATASETS, load_image_dataset
from scoresde.data.toys import TOYS, make_toy
from scoresde.errors import ConfigError


def load_data_config(cfg: Mapping[str, Any], seed: int) -> tuple[Tensor, Tensor | None]:
    """``(x, labels)`` of a plain ``data`` config: a toy's ``n`` points (n, 2) drawn with ``seed`` and no labels,
    or an image data set's split (N, C, H, W) in [-1, 1] with its class labels (N,)."""
    if not isinstance(cfg, Mapping) or "name" not in cfg:
        raise ConfigError(f"the data config must be a mapping with a name (data=... from configs/data/), got {cfg!r}")
    name = cfg["name"]
    if name in TOYS:
        n = cfg.get("n", 20000)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"data.n must be an integer >= 1, got data.n={n!r}")
        return make_toy(name, n, torch.Generator().manual_seed(seed)), None
    if name in IMAGE_DATASETS:
        return load_image_dataset(name, cfg.get("split", "train"), cfg.get("root"))
    raise ConfigError(f"unknown data {name!r}; choose a toy ({', '.join(TOYS)}) or one of "
                      f"{', '.join(IMAGE_DATASETS)}")


__all__ = ["load_data_config"]
