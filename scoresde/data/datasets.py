"""Image datasets scaled to [-1, 1] (DESIGN.md: ``x0`` is data in [-1, 1]), shape (N, 1, H, W), with int64 labels.

- ``load_digits``: scikit-learn's 8×8 handwritten digits (1797 images, values 0..16, shipped with scikit-learn),
  mapped by ``x/8 − 1`` exactly as the ``digits`` testbed does.
- ``load_fashion_mnist``: Fashion-MNIST (Xiao, Rasul & Vollgraf 2017), 28×28, values 0..255 mapped by
  ``x/127.5 − 1``, read from the IDX files that the Debian package ``dataset-fashion-mnist`` installs in
  ``/usr/share/datasets/fashion-mnist`` (``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``); uncompressed
  files with the same names minus ``.gz`` are read as well.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

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


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"Fashion-MNIST file {stem}[.gz] not found in {root}. On Debian/Ubuntu install it with "
                            f"`{FASHION_MNIST_INSTALL}` (files land in {FASHION_MNIST_ROOT}), or pass root= a folder "
                            f"holding the four IDX files of github.com/zalandoresearch/fashion-mnist")


def load_fashion_mnist(split: str = "train", root: str | Path = FASHION_MNIST_ROOT) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST as ``(images, labels)``: float32 (N, 1, 28, 28) in [-1, 1] and int64 (N,).

    Args:
        split: ``"train"`` (60000 images) or ``"test"`` (10000, the ``t10k`` files).
        root: folder with the IDX files; defaults to where ``apt-get install -y dataset-fashion-mnist`` puts them.
    Raises:
        FileNotFoundError: naming the install line, when the files are missing.
    """
    _check_split(split, ("train", "test"))
    root = Path(root)
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise ValueError(f"Fashion-MNIST files in {root} disagree: images {images.shape}, labels {labels.shape}")
    x = torch.from_numpy(images.astype(np.float32)) / 127.5 - 1.0
    return x[:, None].contiguous(), torch.from_numpy(labels.astype(np.int64))


__all__ = ["FASHION_MNIST_ROOT", "FASHION_MNIST_INSTALL", "digits_split_indices", "load_digits",
           "load_fashion_mnist", "read_idx"]
