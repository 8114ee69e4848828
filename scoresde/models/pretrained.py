"""Pretrained models: the names this module has always exported, now served by the one loader
(:mod:`scoresde.models.loader`; the file format is described there)."""
from scoresde.models.loader import (
    DIGITS_CLASSES,
    FASHION_MNIST_CLASSES,
    FORMAT,
    PRETRAINED,
    WEIGHTS_DIR,
    LoadedModel,
    Pretrained,
    export_pretrained,
    load_model,
    load_pretrained,
)
from scoresde.models.registry import NETWORKS

__all__ = ["DIGITS_CLASSES", "FASHION_MNIST_CLASSES", "FORMAT", "PRETRAINED", "WEIGHTS_DIR", "LoadedModel",
           "Pretrained", "export_pretrained", "load_model", "load_pretrained", "NETWORKS"]
