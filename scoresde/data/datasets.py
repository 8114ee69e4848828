"""Image datasets scaled to [-1, 1] (DESIGN.md: ``x0`` is data in [-1, 1]), shape (N, 1, H, W), with int64 labels.

- ``load_digits``: scikit-learn's 8×8 handwritten digits (1797 images, values 0..16, shipped with scikit-learn),
  mapped by ``x/8 − 1`` exactly as the ``digits`` testbed does.
- ``load_fashion_mnist``: Fashion-MNIST (Xiao, Rasul & Vollgraf 2017), 28×28, values 0..255 mapped by
  ``x/127.5 − 1``, read from the IDX files that the Debian package ``dataset-fashion-mnist`` installs in
  ``/usr/share/datasets/fashion-mnist`` (``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``); uncompressed
  files with the same names minus ``.gz`` are read as well.
- ``load_mnist``: MNIST (LeCun et al. 1998), 28×28, the IDX files torchvision stores under ``<root>/MNIST/raw/``
  (or directly in ``<root>``), gzip-compressed or not.
- ``load_cifar10``: CIFAR-10 (Krizhevsky 2009), 3×32×32, the python pickle batches torchvision stores under
  ``<root>/cifar-10-batches-py/``, read with an unpickler that accepts only NumPy arrays.

``load_image_dataset(name, split, root)`` dispatches on the registry ``IMAGE_DATASETS``, which records each
dataset's sample shape, quantization levels, classes and default root. Nothing is downloaded at run time: a missing
file raises :class:`FileNotFoundError` naming the expected path and how to obtain it.
"""
from __future__ import annotations

import gzip
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from scoresde.errors import UnknownNameError

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL = "apt-get install -y dataset-fashion-mnist"
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0

# IDX type codes (LeCun's MNIST format): 0x08 unsigned byte, 0x09 signed byte, 0x0B short, 0x0C int, 0x0D float,
# 0x0E double; multi-byte values are big-endian.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _check_split(split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {', '.join(map(repr, allowed))}, got {split!r}")


def digits_split_indices(split: str, n: int = 1797) -> Tensor:
    """Indices of the fixed digits split: a permutation seeded ``DIGITS_SPLIT_SEED``; its first round(0.2·n) (359 of
    1797) is the test split, the rest (1438) the train split; ``"all"`` is ``arange(n)``."""
    _check_split(split, ("train", "test", "all"))
    if split == "all":
        return torch.arange(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    n_test = int(round(DIGITS_TEST_FRACTION * n))
    return perm[:n_test].sort().values if split == "test" else perm[n_test:].sort().values


def load_digits(split: str = "all") -> tuple[Tensor, Tensor]:
    """scikit-learn's 8×8 digits as ``(images, labels)``: float32 (N, 1, 8, 8) in [-1, 1] and int64 (N,).

    Args:
        split: ``"all"`` (1797 images, the order of ``sklearn.datasets.load_digits``, which the ``digits``
            testbed uses), or the fixed ``"train"`` (1438) / ``"test"`` (359) split of ``digits_split_indices``
            that the shipped digits classifier was trained and evaluated on.
    """
    _check_split(split, ("train", "test", "all"))
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as err:
        raise ImportError("load_digits needs scikit-learn: pip install scikit-learn") from err
    bunch = sk_load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32) / 8.0 - 1.0
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    idx = digits_split_indices(split, len(labels))
    return images[idx, None].contiguous(), labels[idx].contiguous()


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not, judged by its magic bytes) into a NumPy array of its shape."""
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    expected = offset + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX header says {dims} of {dtype} ({expected} bytes), file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims)


def _find(roots: list[Path], stem: str, missing: str) -> Path:
    """The first of ``<root>/<stem>.gz``, ``<root>/<stem>`` over ``roots``; else FileNotFoundError(… + missing)."""
    for root in roots:
        for name in (stem + ".gz", stem):
            if (root / name).is_file():
                return root / name
    where = " or ".join(str(r / stem) + "[.gz]" for r in roots)
    raise FileNotFoundError(f"{where} not found. {missing}")


def _idx_pair(roots: list[Path], prefix: str, what: str, missing: str) -> tuple[Tensor, Tensor]:
    """(images (N, 1, H, W) in [-1, 1], labels (N,)) from the IDX pair ``<prefix>-{images-idx3,labels-idx1}-ubyte``;
    8-bit values k map to ``k/127.5 − 1`` (= 2k/255 − 1)."""
    images = read_idx(_find(roots, f"{prefix}-images-idx3-ubyte", missing))
    labels = read_idx(_find(roots, f"{prefix}-labels-idx1-ubyte", missing))
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise ValueError(f"{what} files in {roots[0]} disagree: images {images.shape}, labels {labels.shape}")
    x = torch.from_numpy(images.astype(np.float32)) / 127.5 - 1.0
    return x[:, None].contiguous(), torch.from_numpy(labels.astype(np.int64))


def load_fashion_mnist(split: str = "train", root: str | Path = FASHION_MNIST_ROOT) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST as ``(images, labels)``: float32 (N, 1, 28, 28) in [-1, 1] and int64 (N,).

    Args:
        split: ``"train"`` (60000 images) or ``"test"`` (10000, the ``t10k`` files).
        root: folder with the IDX files; defaults to where ``apt-get install -y dataset-fashion-mnist`` puts them.
    Raises:
        FileNotFoundError: naming the install line, when the files are missing.
    """
    _check_split(split, ("train", "test"))
    missing = (f"On Debian/Ubuntu install Fashion-MNIST with `{FASHION_MNIST_INSTALL}` (files land in "
               f"{FASHION_MNIST_ROOT}), or pass root= a folder holding the four IDX files of "
               "github.com/zalandoresearch/fashion-mnist")
    return _idx_pair([Path(root).expanduser()], "train" if split == "train" else "t10k", "Fashion-MNIST", missing)


# torchvision's usual root=: MNIST lands in data/MNIST/raw, CIFAR-10 in data/cifar-10-batches-py (relative to the cwd)
TORCHVISION_ROOT = "data"


def _torchvision_hint(dataset: str, root: Path) -> str:
    return (f"Nothing is downloaded at run time: on a machine with network run `python -c \"import torchvision; "
            f"torchvision.datasets.{dataset}('{root}', download=True)\"` and copy the folder here, or pass root= "
            "the folder that holds it")


def load_mnist(split: str = "train", root: str | Path = TORCHVISION_ROOT) -> tuple[Tensor, Tensor]:
    """MNIST as ``(images, labels)``: float32 (N, 1, 28, 28) in [-1, 1] (``k/127.5 − 1``) and int64 (N,).

    Args:
        split: ``"train"`` (60000) or ``"test"`` (10000, the ``t10k`` files).
        root: torchvision's root: the IDX files are looked for in ``<root>/MNIST/raw/``, then in ``<root>``
            itself, each as ``<name>.gz`` or ``<name>``.
    Raises:
        FileNotFoundError: naming the expected paths and the torchvision command that fetches them.
    """
    _check_split(split, ("train", "test"))
    root = Path(root).expanduser()
    return _idx_pair([root / "MNIST" / "raw", root], "train" if split == "train" else "t10k", "MNIST",
                     _torchvision_hint("MNIST", root))


# The globals a CIFAR-10 batch (a pickled dict of NumPy arrays and lists) may name; anything else is refused, so a
# tampered file cannot run code when it is read (numpy 1 writes numpy.core, numpy 2 numpy._core).
_PICKLE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                   ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR-10 batch holds only arrays")
        with warnings.catch_warnings():  # numpy 2 warns when numpy.core is imported
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, 3, 32, 32), labels (N,)) of one python-version CIFAR-10 batch file."""
    with open(path, "rb") as fh:
        batch = _ArrayUnpickler(fh, encoding="latin1").load()
    if not isinstance(batch, dict):
        raise ValueError(f"{path} is not a CIFAR-10 batch (a pickled dict), got {type(batch).__name__}")
    data, labels = (batch.get(k, batch.get(k.encode())) for k in ("data", "labels"))
    data, labels = np.asarray(data), np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise ValueError(f"{path}: expected uint8 data (N, 3072) and N labels, got data {data.dtype} {data.shape} "
                         f"and labels {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels  # rows are 1024 red, 1024 green, 1024 blue values, row-major


def load_cifar10(split: str = "train", root: str | Path = TORCHVISION_ROOT) -> tuple[Tensor, Tensor]:
    """CIFAR-10 as ``(images, labels)``: float32 (N, 3, 32, 32) in [-1, 1] (``k/127.5 − 1``) and int64 (N,).

    Args:
        split: ``"train"`` (``data_batch_1`` … ``data_batch_5``, 50000) or ``"test"`` (``test_batch``, 10000).
        root: torchvision's root; the batches are read from ``<root>/cifar-10-batches-py/``.
    Raises:
        FileNotFoundError: naming the expected path and the torchvision command that fetches it.
    """
    _check_split(split, ("train", "test"))
    folder = Path(root).expanduser() / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    for name in names:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"CIFAR-10 batch {folder / name} not found. "
                                    f"{_torchvision_hint('CIFAR10', Path(root).expanduser())}")
    images, labels = zip(*(_cifar_batch(folder / name) for name in names))
    x = torch.from_numpy(np.concatenate(images).astype(np.float32)) / 127.5 - 1.0
    return x.contiguous(), torch.from_numpy(np.concatenate(labels).astype(np.int64))


@dataclass(frozen=True)
class ImageDataset:
    """One entry of ``IMAGE_DATASETS``: the loader ``load(split, root)``, the shape (C, H, W) of a sample, the
    number of 8-bit-style quantization levels of its pixels (data sit on ``2k/(levels − 1) − 1``), the classes,
    and the default root (None: shipped with a package)."""

    name: str
    shape: tuple[int, int, int]
    levels: int
    num_classes: int
    default_root: str | None
    load: Callable[[str, str | Path | None], tuple[Tensor, Tensor]]


def _digits(split: str, root: str | Path | None) -> tuple[Tensor, Tensor]:
    if root is not None:
        raise ValueError(f"the digits ship with scikit-learn and take no root, got root={root!r}")
    return load_digits(split)


IMAGE_DATASETS: dict[str, ImageDataset] = {
    "digits": ImageDataset("digits", (1, 8, 8), 17, 10, None, _digits),
    "fashion_mnist": ImageDataset("fashion_mnist", (1, 28, 28), 256, 10, FASHION_MNIST_ROOT,
                                  lambda split, root: load_fashion_mnist(split, root or FASHION_MNIST_ROOT)),
    "mnist": ImageDataset("mnist", (1, 28, 28), 256, 10, TORCHVISION_ROOT,
                          lambda split, root: load_mnist(split, root or TORCHVISION_ROOT)),
    "cifar10": ImageDataset("cifar10", (3, 32, 32), 256, 10, TORCHVISION_ROOT,
                            lambda split, root: load_cifar10(split, root or TORCHVISION_ROOT)),
}


def load_image_dataset(name: str, split: str = "train", root: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """``(images, labels)`` of a registered image dataset: float32 (N, C, H, W) in [-1, 1] and int64 (N,).

    Args:
        name: a key of ``IMAGE_DATASETS`` (digits, fashion_mnist, mnist, cifar10).
        split: ``"train"`` or ``"test"`` (the digits also ``"all"``).
        root: where the files are; None: the entry's ``default_root``.
    """
    if name not in IMAGE_DATASETS:
        raise UnknownNameError(f"unknown image dataset {name!r}; known: {', '.join(IMAGE_DATASETS)}")
    entry = IMAGE_DATASETS[name]
    x, labels = entry.load(split, root)
    if tuple(x.shape[1:]) != entry.shape:
        raise ValueError(f"{name}: expected images of shape (N, {', '.join(map(str, entry.shape))}), "
                         f"got {tuple(x.shape)}")
    return x, labels


__all__ = ["FASHION_MNIST_ROOT", "FASHION_MNIST_INSTALL", "IMAGE_DATASETS", "ImageDataset", "TORCHVISION_ROOT",
           "digits_split_indices", "load_cifar10", "load_digits", "load_fashion_mnist", "load_image_dataset",
           "load_mnist", "read_idx"]
