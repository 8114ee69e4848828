"""Pretrained score models that ship with the package, and export of a training checkpoint into that format.

A pretrained file is a weights-only dict (``torch.load(weights_only=True)`` reads it; nothing in it runs code)::

    {"format": "scoresde-pretrained", "version": 1,
     "net": {"class": "UNet", "kwargs": {...}},              # a network of NETWORKS and its constructor arguments
     "preconditioning": {"kind": "edm", "sigma_data": 0.5, "c_noise": None, "normalize_input": False},
     "sde": {"name": "edm", ...},                             # scoresde.get_sde(**sde)
     "shape": [1, 28, 28], "class_names": [...],
     "state_dict": {...},                                     # the EMA weights of the Preconditioned model
     "provenance": {"command": ..., "step": ..., "config": {...}, ...}}

The network is rebuilt from a fixed table of network classes (no import by name, no Hydra), so the file
stays loadable offline and safe. :func:`load_pretrained` also accepts a ``scoresde-train`` checkpoint file or
run directory (it reads the resolved config the checkpoint holds and takes its EMA weights).

Shipped models (``scoresde/models/weights/``):

- ``fashion_mnist``: a class-conditional U-Net (10 classes + the null class 10 for classifier-free guidance)
  on 28×28 Fashion-MNIST in [-1, 1], EDM preconditioning and the EDM SDE (σ = t); the command, step count and
  training time are in the file's ``provenance`` and in the README.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scoresde.data import IMAGE_DATASETS
from scoresde.models.networks import MLP, UNet, cifar10_unet, tiny_unet
from scoresde.models.preconditioning import Preconditioned
from scoresde.models.score_model import ScoreModel
from scoresde.sde import SDE, get_sde

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PRETRAINED = {"fashion_mnist": "fashion_mnist.pt"}
NETWORKS = {"UNet": UNet, "MLP": MLP, "tiny_unet": tiny_unet, "cifar10_unet": cifar10_unet}
FORMAT = "scoresde-pretrained"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
DIGITS_CLASSES = [str(k) for k in range(10)]
_CLASS_NAMES = {"fashion_mnist": FASHION_MNIST_CLASSES, "digits": DIGITS_CLASSES, "mnist": DIGITS_CLASSES}


@dataclass
class Pretrained:
    """A loaded model: ``model`` (a :class:`Preconditioned` in eval mode, gradients off), its ``sde``, the
    ``shape`` of one sample, the ``class_names`` (index = label; the null class is ``len(class_names)``)."""

    model: Preconditioned
    sde: SDE
    shape: tuple[int, ...]
    class_names: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int | None:
        return self.model.num_classes

    def score_model(self, class_labels: Tensor | int | None = None) -> ScoreModel:
        """The :class:`ScoreModel` of ``model`` under ``sde`` for ``class_labels`` (None: unconditional)."""
        return self.model.score_model(self.sde, class_labels)

    def class_index(self, label: int | str) -> int:
        """A class label from its index or name; unknown names and out-of-range indices raise ValueError."""
        if isinstance(label, str) and not label.lstrip("-").isdigit():
            if label not in self.class_names:
                raise ValueError(f"unknown class {label!r}; classes: {', '.join(self.class_names)}")
            return self.class_names.index(label)
        index, k = int(label), self.num_classes or 0
        if not 0 <= index < k:
            raise ValueError(f"class label {index} out of range: the model has {k} classes (0..{k - 1})")
        return index


def _network(spec: dict[str, Any]) -> torch.nn.Module:
    name = spec.get("class")
    if name not in NETWORKS:
        raise ValueError(f"unknown network class {name!r} in pretrained file; known: {', '.join(NETWORKS)}")
    return NETWORKS[name](**spec.get("kwargs", {}))


def _spec_from_training_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The pretrained-format fields (net, preconditioning, sde, shape, class_names) of a resolved
    ``scoresde-train`` config."""
    model = cfg["model"]
    net = dict(model["net"])
    target = str(net.pop("_target_", ""))
    kwargs = {k: v for k, v in net.items() if not k.startswith("_")}
    if model.get("num_classes"):
        kwargs["num_classes"] = int(model["num_classes"])
    data = cfg.get("data") or {}
    precond = {"kind": model.get("kind", "edm"), "sigma_data": float(model.get("sigma_data", 0.5)),
               "c_noise": model.get("c_noise"), "normalize_input": bool(model.get("normalize_input", False))}
    image = IMAGE_DATASETS.get(data.get("name"))
    shape = list(image.shape) if image is not None else [int(data.get("dim", 2))]
    return {"net": {"class": target.rsplit(".", 1)[-1], "kwargs": kwargs}, "preconditioning": precond,
            "sde": dict(cfg["sde"]), "shape": shape, "class_names": _CLASS_NAMES.get(data.get("name"), [])}


def _read(path: Path, ema: bool = True) -> dict[str, Any]:
    """A pretrained-format dict from a pretrained file, or from a training checkpoint (file or run dir; its EMA
    weights, or the raw ones with ``ema=False``)."""
    from scoresde.training.checkpoint import latest_checkpoint, load_checkpoint
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = latest_checkpoint(folder)
        if found is None:
            raise FileNotFoundError(f"no loadable checkpoint in {folder}")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"no pretrained model or checkpoint at {path}")
    state = load_checkpoint(path, map_location="cpu")
    if state.get("format") == FORMAT:
        return state
    if not isinstance(state.get("config"), dict) or "ema" not in state:
        raise ValueError(f"{path} is neither a {FORMAT} file nor a scoresde-train checkpoint")
    spec = _spec_from_training_config(state["config"])
    spec.update(state_dict=state["ema"]["shadow"] if ema else state["model"],
                provenance={"checkpoint": str(path), "step": int(state.get("step", -1)), "config": state["config"],
                            "weights": "ema" if ema else "raw"})
    return spec


def load_pretrained(name_or_path: str | Path = "fashion_mnist", device: str | torch.device = "cpu") -> Pretrained:
    """Load a shipped model by name (``PRETRAINED``), a pretrained file, or a ``scoresde-train`` checkpoint
    file / run directory (EMA weights). Offline: shipped weights are package data."""
    name = str(name_or_path)
    if name in PRETRAINED:
        path = WEIGHTS_DIR / PRETRAINED[name]
        if not path.is_file():
            raise FileNotFoundError(f"the shipped weights {path} are missing from this installation")
    elif Path(name).expanduser().exists():
        path = Path(name).expanduser()
    else:
        raise ValueError(f"unknown pretrained model {name!r}: not one of {', '.join(PRETRAINED)} and not a path")
    spec = _read(path)
    model = Preconditioned(_network(spec["net"]), **spec["preconditioning"])
    model.load_state_dict(spec["state_dict"])
    model = model.to(device).eval().requires_grad_(False)
    return Pretrained(model, get_sde(**spec["sde"]), tuple(int(s) for s in spec["shape"]),
                      list(spec.get("class_names", [])), dict(spec.get("provenance", {})))


def export_pretrained(checkpoint: str | Path, out: str | Path, provenance: dict[str, Any] | None = None,
                      ema: bool = True) -> Path:
    """Write the EMA (or, ``ema=False``, raw) weights and model description of a ``scoresde-train`` checkpoint
    (file or run dir) as a pretrained file at ``out`` (atomically; float32 weights, no optimizer state)."""
    from scoresde.training.checkpoint import save_checkpoint
    spec = _read(Path(checkpoint).expanduser(), ema)
    spec["state_dict"] = {k: v.float().contiguous() if v.is_floating_point() else v
                          for k, v in spec["state_dict"].items()}
    spec["provenance"] = {**spec.get("provenance", {}), **(provenance or {})}
    spec.update(format=FORMAT, version=1)
    return save_checkpoint(spec, out)
