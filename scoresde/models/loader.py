"""The one model loader: a shipped model name, a pretrained file, a ``scoresde-train`` checkpoint or run directory
becomes a :class:`LoadedModel` (network in its preconditioning, SDE, sample shape, class names, provenance).

Every app and the Python API load through :func:`load_model`. Nothing read from a file can make it run code:

- files are read with ``torch.load(weights_only=True)`` and their sha256 digest is verified
  (:func:`scoresde.training.checkpoint.load_checkpoint`);
- the network is built from the allowlist of :mod:`scoresde.models.registry` (registry name + checked constructor
  arguments), never by a name the file contains; the SDE by its registry name with number arguments; the
  preconditioning from checked values. A file that names anything else is refused with the key and the value.

A pretrained file (``format: scoresde-pretrained``) is a weights-only dict::

    {"format": "scoresde-pretrained", "version": 1,
     "net": {"class": "UNet", "kwargs": {...}},              # registry form (scoresde.models.registry)
     "preconditioning": {"kind": "edm", "sigma_data": 0.5, "c_noise": None, "normalize_input": False},
     "sde": {"name": "edm", ...},                             # scoresde.get_sde(**sde)
     "shape": [1, 28, 28], "class_names": [...],
     "state_dict": {...},                                     # the weights of the Preconditioned model
     "provenance": {"command": ..., "step": ..., "config": {...}, ...}}

A training checkpoint holds the resolved training config; its ``model``, ``sde`` and ``data`` entries give the same
fields, and its EMA weights (or, ``ema=False``, the raw ones) the state dict.

Shipped models (``scoresde/models/weights/``): ``fashion_mnist``, a class-conditional U-Net (10 classes + the null
class 10 for classifier-free guidance) on 28×28 Fashion-MNIST in [-1, 1], EDM preconditioning and the EDM SDE.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scoresde.errors import UserError
from scoresde.models.preconditioning import Preconditioned
from scoresde.models.registry import UnsafeConfigError, build_network, network_spec, preconditioning_spec, sde_spec
from scoresde.models.score_model import ScoreModel
from scoresde.sde import SDE, get_sde

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PRETRAINED = {"fashion_mnist": "fashion_mnist.pt"}
FORMAT = "scoresde-pretrained"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
DIGITS_CLASSES = [str(k) for k in range(10)]
_CLASS_NAMES = {"fashion_mnist": FASHION_MNIST_CLASSES, "digits": DIGITS_CLASSES, "mnist": DIGITS_CLASSES}


@dataclass
class LoadedModel:
    """A loaded model: ``model`` (a :class:`Preconditioned` in eval mode, gradients off), its ``sde``, the
    ``shape`` of one sample, the ``class_names`` (index = label; the null class is ``len(class_names)``), and the
    ``provenance`` (``step``, the training ``config`` of a checkpoint, the ``checkpoint`` path, ...)."""

    model: Preconditioned
    sde: SDE
    shape: tuple[int, ...]
    class_names: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int | None:
        return self.model.num_classes

    @property
    def step(self) -> int:
        """The training step of the weights (-1 when unknown)."""
        return int(self.provenance.get("step", -1))

    @property
    def training_config(self) -> dict[str, Any]:
        """The resolved training config the file holds (empty when it holds none). Data, never instantiated."""
        config = self.provenance.get("config")
        return config if isinstance(config, dict) else {}

    def score_model(self, class_labels: Tensor | int | None = None) -> ScoreModel:
        """The :class:`ScoreModel` of ``model`` under ``sde`` for ``class_labels`` (None: unconditional)."""
        return self.model.score_model(self.sde, class_labels)

    def class_index(self, label: int | str) -> int:
        """A class label from its index or name; unknown names and out-of-range indices raise ValueError."""
        if isinstance(label, str) and not label.lstrip("-").isdigit():
            if label not in self.class_names:
                raise UserError(f"unknown class {label!r}; classes: {', '.join(self.class_names)}")
            return self.class_names.index(label)
        index, k = int(label), self.num_classes or 0
        if not 0 <= index < k:
            raise UserError(f"class label {index} out of range: the model has {k} classes (0..{k - 1})")
        return index


Pretrained = LoadedModel  # the name this class had when only shipped models were loaded through it


def resolve_checkpoint(ckpt: Any) -> Path:
    """The checkpoint file ``ckpt`` names: a file, or the latest good checkpoint of a folder / run dir
    (``<dir>/checkpoints``; :func:`scoresde.training.checkpoint.latest_checkpoint` skips broken ones)."""
    from scoresde.training.checkpoint import latest_checkpoint, list_checkpoints
    if ckpt is None or str(ckpt) in ("", "???"):
        raise UserError("set ckpt=<checkpoint file, run dir, or shipped model name>")
    path = Path(str(ckpt)).expanduser()
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint file or run directory at {path}")
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = latest_checkpoint(folder)
    if found is None:
        what = "no loadable checkpoint" if list_checkpoints(folder) else "no checkpoint (ckpt_*.pt)"
        raise FileNotFoundError(f"{what} in {folder}")
    return found


def resolve_source(source: str | Path) -> Path:
    """The file a shipped model name, a pretrained file, a checkpoint file or a run directory names."""
    name = str(source)
    if name in PRETRAINED:
        path = WEIGHTS_DIR / PRETRAINED[name]
        if not path.is_file():
            raise FileNotFoundError(f"the shipped weights {path} are missing from this installation")
        return path
    if not Path(name).expanduser().exists() and "/" not in name and not name.endswith(".pt"):
        raise UserError(f"unknown model {name!r}: not a shipped model ({', '.join(PRETRAINED)}) and not a path")
    return resolve_checkpoint(name)


def data_shape(data: Any) -> tuple[int, ...] | None:
    """The shape of one sample of a training ``data`` config: an image data set's (C, H, W), a toy's (dim,);
    None when the name is neither."""
    from scoresde.data import IMAGE_DATASETS, TOYS
    if not isinstance(data, dict):
        return None
    name = data.get("name")
    if name in IMAGE_DATASETS:
        return tuple(IMAGE_DATASETS[name].shape)
    if name in TOYS:
        dim = data.get("dim", 2)
        return (int(dim),) if isinstance(dim, int) and not isinstance(dim, bool) and dim >= 1 else None
    return None


def spec_from_training_config(cfg: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """The pretrained-format fields (net, preconditioning, sde, shape, class_names) of a stored training config,
    each checked against the allowlist (:mod:`scoresde.models.registry`)."""
    model = cfg.get("model")
    if not isinstance(model, dict) or "net" not in model or "sde" not in cfg:
        raise UserError(f"{where} holds no model and sde (not written by scoresde-train?); cannot rebuild its model")
    net = network_spec(model["net"], f"{where}.model.net")
    num_classes = model.get("num_classes")
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise UnsafeConfigError(f"{where}.model.num_classes={num_classes!r}: must be an integer >= 0 or null")
        if num_classes:
            net["kwargs"]["num_classes"] = num_classes
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    shape = data_shape(data)
    return {"net": net, "preconditioning": preconditioning_spec(model, f"{where}.model"),
            "sde": sde_spec(cfg["sde"], f"{where}.sde"), "shape": list(shape) if shape else None,
            "class_names": _CLASS_NAMES.get(data.get("name"), [])}


def read_spec(path: Path, ema: bool = True) -> dict[str, Any]:
    """The pretrained-format dict of a pretrained file or a training checkpoint file (its EMA weights, or the raw
    ones with ``ema=False``), read weights-only, digest verified, descriptions checked."""
    from scoresde.training.checkpoint import load_checkpoint
    state = load_checkpoint(path, map_location="cpu")
    if state.get("format") == FORMAT:
        spec = {key: state.get(key) for key in ("net", "shape", "class_names", "state_dict", "provenance")}
        spec.update(net=network_spec(state.get("net"), f"{path}: net"),
                    preconditioning=preconditioning_spec(state.get("preconditioning"), f"{path}: preconditioning"),
                    sde=sde_spec(state.get("sde"), f"{path}: sde"))
        return spec
    if not isinstance(state.get("config"), dict) or "ema" not in state or "model" not in state:
        raise UserError(f"{path} is neither a {FORMAT} file nor a scoresde-train checkpoint")
    spec = spec_from_training_config(state["config"], f"{path}: config")
    spec.update(state_dict=state["ema"]["shadow"] if ema else state["model"],
                provenance={"checkpoint": str(path), "step": int(state.get("step", -1)), "config": state["config"],
                            "weights": "ema" if ema else "raw"})
    return spec


def _check_shape(shape: Any, what: str) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or not shape or \
            not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise UserError(f"{what} must be a non-empty list of positive sizes, got {shape!r}")
    return tuple(shape)


def load_model(source: str | Path = "fashion_mnist", ema: bool = True, device: str | torch.device = "cpu",
               shape: Any = None) -> LoadedModel:
    """Load a shipped model by name (:data:`PRETRAINED`), a pretrained file, or a ``scoresde-train`` checkpoint
    file / run directory (its latest good checkpoint; EMA weights unless ``ema=False``), on ``device``, in eval
    mode with gradients off. ``shape``: the shape of one sample, when the file cannot tell it (or to override it).
    Offline: shipped weights are package data."""
    path = resolve_source(source)
    spec = read_spec(path, ema)
    if shape is not None:
        spec["shape"] = _check_shape(list(shape), "shape")
    elif spec.get("shape") is None:
        raise UserError(f"cannot tell the sample shape of {path}; give shape=[C,H,W] or [dim]")
    model = Preconditioned(build_network(spec["net"]), **spec["preconditioning"])
    try:
        model.load_state_dict(spec["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: the stored weights do not fit the stored network: {str(e).splitlines()[0]}") from e
    model = model.to(device).eval().requires_grad_(False)
    provenance = spec.get("provenance") if isinstance(spec.get("provenance"), dict) else {}
    return LoadedModel(model, get_sde(**spec["sde"]), _check_shape(spec["shape"], f"{path}: shape"),
                       [str(c) for c in spec.get("class_names") or []], {"source": str(path), **provenance})


def load_pretrained(name_or_path: str | Path = "fashion_mnist", device: str | torch.device = "cpu") -> LoadedModel:
    """:func:`load_model` with EMA weights (the name the loader had when it served shipped models)."""
    return load_model(name_or_path, device=device)


def export_pretrained(checkpoint: str | Path, out: str | Path, provenance: dict[str, Any] | None = None,
                      ema: bool = True) -> Path:
    """Write the EMA (or, ``ema=False``, raw) weights and model description of a ``scoresde-train`` checkpoint
    (file or run dir) as a pretrained file at ``out`` (atomically, with its digest; float32 weights, no optimizer
    state)."""
    from scoresde.training.checkpoint import save_checkpoint
    spec = read_spec(resolve_checkpoint(checkpoint), ema)
    spec["state_dict"] = {k: v.float().contiguous() if v.is_floating_point() else v
                          for k, v in spec["state_dict"].items()}
    spec["provenance"] = {**spec.get("provenance", {}), **(provenance or {})}
    spec.update(format=FORMAT, version=1)
    return save_checkpoint(spec, out)


__all__ = ["LoadedModel", "Pretrained", "load_model", "load_pretrained", "export_pretrained", "resolve_checkpoint",
           "resolve_source", "read_spec", "spec_from_training_config", "data_shape", "PRETRAINED", "WEIGHTS_DIR",
           "FORMAT", "FASHION_MNIST_CLASSES", "DIGITS_CLASSES"]
