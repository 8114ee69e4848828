"""Image datasets read from the files torchvision stores (MNIST IDX, CIFAR-10 pickle batches) without torchvision:
tiny synthetic files in the real formats, exact pixel values and labels, the registry, and missing-file errors."""
from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from scoresde.data import IMAGE_DATASETS, load_cifar10, load_image_dataset, load_mnist


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    """An IDX file (unsigned bytes, big-endian dimensions), gzip-compressed when asked."""
    raw = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes() + array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def fake_mnist(folder, prefix: str, n: int, compress: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    images, labels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return images, labels


def fake_cifar(root, n: int = 4, byte_keys: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10's python batches: pickled dicts with data (n, 3072) uint8 (R, G, B planes) and a list of labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {}
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        rng = np.random.default_rng(i)
        data, labels = rng.integers(0, 256, (n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, 10, n)]
        batch = {"batch_label": f"batch {i}", "data": data, "labels": labels, "filenames": ["x.png"] * n}
        if byte_keys:
            batch = {k.encode(): v for k, v in batch.items()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        out[name] = (data, np.array(labels))
    return out


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("layout", ["torchvision", "flat"])
def test_mnist_reads_idx_files_exactly(tmp_path, compress, layout):
    folder = tmp_path / "MNIST" / "raw" if layout == "torchvision" else tmp_path
    images, labels = fake_mnist(folder, "t10k", 5, compress)
    x, y = load_mnist("test", root=tmp_path)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[:, 0], torch.from_numpy(images).float() / 127.5 - 1)
    assert torch.equal(y, torch.from_numpy(labels).long())
    assert torch.equal(((x + 1) * 127.5).round(), torch.from_numpy(images).float()[:, None])  # 0 → −1, 255 → 1


@pytest.mark.parametrize("byte_keys", [False, True])
def test_cifar10_reads_pickle_batches_exactly(tmp_path, byte_keys):
    batches = fake_cifar(tmp_path, byte_keys=byte_keys)
    x, y = load_cifar10("train", root=tmp_path)
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    data, labels = batches["data_batch_2"]
    img = x[4]  # the first image of the second batch
    assert torch.equal(((img + 1) * 127.5).round(), torch.from_numpy(data[0]).float().reshape(3, 32, 32))
    assert round((float(img[1, 0, 1]) + 1) * 127.5) == data[0, 1024 + 1]  # green plane, row 0, column 1
    assert int(y[4]) == labels[0]
    xt, yt = load_cifar10("test", root=tmp_path)
    assert torch.equal(yt, torch.from_numpy(batches["test_batch"][1]).long()) and xt.shape == (4, 3, 32, 32)


def test_cifar10_refuses_a_pickle_that_would_run_code(tmp_path):
    fake_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load .*print"):
        load_cifar10("test", root=tmp_path)


def test_missing_files_name_the_path_and_the_torchvision_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MNIST/raw/train-images-idx3-ubyte\[\.gz\].*torchvision\.datasets"
                                                r"\.MNIST\('.*', download=True\)"):
        load_mnist("train", root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py/data_batch_1 not found.*"
                                                r"torchvision\.datasets\.CIFAR10\('.*', download=True\)"):
        load_cifar10("train", root=tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_cifar10("validation", root=tmp_path)


def test_registry_and_dispatcher(tmp_path):
    assert set(IMAGE_DATASETS) == {"digits", "fashion_mnist", "mnist", "cifar10"}
    assert IMAGE_DATASETS["cifar10"].shape == (3, 32, 32) and IMAGE_DATASETS["digits"].levels == 17
    fake_cifar(tmp_path)
    x, _ = load_image_dataset("cifar10", "test", root=tmp_path)
    assert torch.equal(x, load_cifar10("test", root=tmp_path)[0])
    images, _ = fake_mnist(tmp_path / "MNIST" / "raw", "train", 3, True)
    x, _ = load_image_dataset("mnist", root=tmp_path)
    assert torch.equal(x[:, 0], torch.from_numpy(images).float() / 127.5 - 1)
    x, y = load_image_dataset("digits", "test")
    assert x.shape == (359, 1, 8, 8) and bool(((x + 1) * 8 == ((x + 1) * 8).round()).all())  # 17 levels, k/8 − 1
    with pytest.raises(KeyError, match="unknown image dataset 'svhn'.*cifar10"):
        load_image_dataset("svhn")
    with pytest.raises(ValueError, match="take no root"):
        load_image_dataset("digits", root=tmp_path)
