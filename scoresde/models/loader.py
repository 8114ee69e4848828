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

A diffusers model (``diffusers:<dir>``: a local ``save_pretrained`` model directory with its
``scheduler_config.json``, or a pipeline directory with ``unet/`` and ``scheduler/``) is loaded by
:func:`scoresde.models.external.from_diffusers`: diffusers' own ``from_pretrained`` with ``local_files_only=True``
(safetensors, or a ``.bin`` read weights-only) for the allowlisted classes ``UNet2DModel`` / ``UNet2DConditionModel``
only, and the scheduler config read as checked JSON. Its :class:`ExternalModel` gives the apps the interface of a
:class:`Preconditioned` (``score_model(sde, class_labels)``, ``num_classes``, ``.to``); its SDE is the
:class:`~scoresde.sde.discrete.DiscreteVPSDE` of the scheduler's ᾱ table; its shape the UNet's ``sample_size``.

Shipped models (``scoresde/models/weights/``): ``fashion_mnist``, a class-conditional U-Net (10 classes + the null
class 10 for classifier-free guidance) on 28×28 Fashion-MNIST in [-1, 1], EDM preconditioning and the EDM SDE.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from scoresde.errors import UserError
from scoresde.models.preconditioning import Preconditioned
from scoresde.models.registry import UnsafeConfigError, build_network, network_spec, preconditioning_spec, sde_spec
from scoresde.models.score_model import ScoreModel
from scoresde.sde import SDE, get_sde

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PRETRAINED = {"fashion_mnist": "fashion_mnist.pt", "fashion_mnist_flow": "fashion_mnist_flow.pt"}
FORMAT = "scoresde-pretrained"
DIFFUSERS_PREFIX = "diffusers:"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
DIGITS_CLASSES = [str(k) for k in range(10)]
_CLASS_NAMES = {"fashion_mnist": FASHION_MNIST_CLASSES, "digits": DIGITS_CLASSES, "mnist": DIGITS_CLASSES}


class ExternalModel(nn.Module):
    """A network of another library (a :class:`~scoresde.models.external.DiffusersNetwork`) behind the interface the
    apps use of a :class:`Preconditioned`: ``score_model(sde, class_labels)``, ``num_classes``, ``prediction``,
    ``.to()`` / ``.eval()``. As with a Preconditioned, ``class_labels=None`` on a class-conditional model is the null
    class (label ``num_classes``, the UNet's last class embedding)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    @property
    def num_classes(self) -> int | None:
        return getattr(self.network, "num_classes", None) or None

    @property
    def prediction(self) -> str:
        return self.network.prediction

    @property
    def sde(self) -> SDE:
        """The network's own SDE (the scheduler's ᾱ table)."""
        return self.network.sde

    def score_model(self, sde: SDE | None = None, class_labels: Tensor | int | None = None) -> ScoreModel:
        """A counted :class:`ScoreModel` of ``sde`` (default: the network's own) for fixed ``class_labels``."""
        if class_labels is None and self.num_classes:
            class_labels = self.num_classes
        return self.network.score_model(sde, class_labels)

    def forward(self, x: Tensor, t: Tensor, sde: SDE | None = None, class_labels: Tensor | int | None = None
                ) -> Tensor:
        """The network's prediction (kind :attr:`prediction`) at time t of ``sde`` (default: its own)."""
        labels = self.num_classes if class_labels is None and self.num_classes else class_labels
        return self.network.predict(x, t, self.sde if sde is None else sde, labels)


@dataclass
class LoadedModel:
    """A loaded model: ``model`` (a :class:`Preconditioned` in eval mode, gradients off), its ``sde``, the
    ``shape`` of one sample, the ``class_names`` (index = label; the null class is ``len(class_names)``), and the
    ``provenance`` (``step``, the training ``config`` of a checkpoint, the ``checkpoint`` path, ...)."""

    model: Preconditioned | ExternalModel
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


def diffusers_dir(source: Any) -> Path | None:
    """The directory of a ``diffusers:<dir>`` source (checked to exist), or None for any other source."""
    name = str(source) if isinstance(source, str | Path) else ""
    if not name.startswith(DIFFUSERS_PREFIX):
        return None
    rest = name[len(DIFFUSERS_PREFIX):].strip()
    if not rest:
        raise UserError("diffusers: needs a directory: diffusers:<a save_pretrained model or pipeline directory>")
    path = Path(rest).expanduser()
    if not path.is_dir():
        raise UserError(f"no diffusers model directory at {path}"
                        + (" (it is a file; give its folder)" if path.is_file() else ""))
    return path


def resolve_source(source: str | Path) -> Path:
    """The file a shipped model name, a pretrained file, a checkpoint file or a run directory names (the directory
    of a ``diffusers:<dir>`` source)."""
    folder = diffusers_dir(source)
    if folder is not None:
        return folder
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
    Offline: shipped weights are package data. ``diffusers:<dir>``: a local diffusers model directory
    (:func:`load_diffusers`; ``ema`` does not apply)."""
    folder = diffusers_dir(source)
    if folder is not None:
        return load_diffusers(folder, device, shape)
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


def load_diffusers(folder: str | Path, device: str | torch.device = "cpu", shape: Any = None) -> LoadedModel:
    """A diffusers model directory (:func:`scoresde.models.external.from_diffusers`: the allowlisted UNet classes,
    local files only, the scheduler config as checked JSON) as a :class:`LoadedModel` whose ``model`` is an
    :class:`ExternalModel`; ``shape`` defaults to the UNet's ``(in_channels, sample_size, sample_size)``."""
    from scoresde.models.external import from_diffusers
    folder = Path(folder).expanduser()
    score_model, sde = from_diffusers(folder, device=device)
    network = score_model.network
    model = ExternalModel(network).eval().requires_grad_(False)
    if shape is not None:
        found = _check_shape(list(shape), "shape")
    elif network.sample_shape is not None:
        found = _check_shape(list(network.sample_shape), f"{folder}: sample_size and in_channels")
    else:
        raise UserError(f"cannot tell the sample shape of the model in {folder} (its config has no sample_size); "
                        "give shape=[C,H,W]")
    config = getattr(network.unet, "config", {})
    provenance = {"source": f"{DIFFUSERS_PREFIX}{folder}", "format": "diffusers",
                  "class": type(network.unet).__name__, "prediction": network.prediction,
                  "num_train_timesteps": sde.num_train_timesteps,
                  "sample_size": config.get("sample_size"), "in_channels": config.get("in_channels")}
    return LoadedModel(model, sde, found, [], provenance)


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


__all__ = ["LoadedModel", "Pretrained", "ExternalModel", "load_model", "load_diffusers", "diffusers_dir",
           "DIFFUSERS_PREFIX", "load_pretrained", "export_pretrained", "resolve_checkpoint",
           "resolve_source", "read_spec", "spec_from_training_config", "data_shape", "PRETRAINED", "WEIGHTS_DIR",
           "FORMAT", "FASHION_MNIST_CLASSES", "DIGITS_CLASSES"]
