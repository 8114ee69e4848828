"""A small CNN classifier whose penultimate layer is the feature space for FID, KID and precision/recall.

Inception features (Heusel et al. 2017) make no sense on 8×8 digits or 28×28 grey images, so scoresde ships one
small classifier per dataset, trained by ``python -m scoresde.evaluation.train_classifier`` (commands, seeds,
accuracies in ``weights/README.md``). Weights are state_dicts saved with ``torch.save`` and loaded offline with
``torch.load(weights_only=True)`` from ``scoresde/evaluation/weights/<dataset>.pt`` (package data pattern
``evaluation/weights/*.pt``). Features from different datasets' classifiers are not comparable.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from scoresde.errors import UnknownNameError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# dataset name -> image side; the architecture only differs by an early pooling for images larger than 16 px
IMAGE_SIZES = {"digits": 8, "fashion_mnist": 28}
FEATURE_DIM = 128
NUM_CLASSES = 10


class ClassifierCNN(nn.Module):
    """Three 3×3 conv layers (32, 64, 64 channels, each with batch norm and ReLU; 2×2 max-pooling down to ≤ 7×7),
    average pooling to 2×2 (keeps the coarse layout), a 128-unit fully connected ReLU layer — the features — and
    a linear 10-way head; ~90k parameters. Batch-norm statistics are frozen in eval mode, so features of a sample
    do not depend on its batch.

    Args:
        image_size: side of the (1, H, H) input images; H > 16 adds a 2×2 max-pool after the first conv.
    Input: (N, 1, H, H) in [-1, 1]. ``forward`` gives logits (N, 10); ``features`` the penultimate (N, 128).
    """

    def __init__(self, image_size: int, num_classes: int = NUM_CLASSES, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.image_size = image_size

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        early_pool = [nn.MaxPool2d(2)] if image_size > 16 else []
        self.body = nn.Sequential(
            *block(1, 32), *early_pool, *block(32, 64), nn.MaxPool2d(2), *block(64, 64),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64 * 4, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def _check(self, x: Tensor) -> None:
        want = (1, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"expected images of shape (N, {', '.join(map(str, want))}), got {tuple(x.shape)}")

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features, (N, 1, H, H) → (N, 128)."""
        self._check(x)
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _check_dataset(dataset: str) -> None:
    if dataset not in IMAGE_SIZES:
        raise UnknownNameError(f"no feature classifier for {dataset!r}; known: {', '.join(sorted(IMAGE_SIZES))}")


def weights_path(dataset: str) -> Path:
    """Where the shipped weights of ``dataset``'s classifier live."""
    _check_dataset(dataset)
    return WEIGHTS_DIR / f"{dataset}.pt"


def load_classifier(dataset: str, device: torch.device | str = "cpu", path: str | Path | None = None
                    ) -> ClassifierCNN:
    """The trained classifier of ``dataset`` ("digits" or "fashion_mnist") in eval mode on ``device``, loaded
    offline from the shipped weights (or from ``path``) with ``torch.load(weights_only=True)``, their sha256
    digest verified (:func:`scoresde.training.checkpoint.load_checkpoint`)."""
    from scoresde.training.checkpoint import INTEGRITY_KEY, load_checkpoint
    _check_dataset(dataset)
    path = Path(path) if path is not None else weights_path(dataset)
    if not path.is_file():
        raise FileNotFoundError(f"classifier weights {path} are missing; train them with `python -m "
                                f"scoresde.evaluation.train_classifier --dataset {dataset} --out {path}`")
    model = ClassifierCNN(IMAGE_SIZES[dataset])
    state = load_checkpoint(path, map_location="cpu")
    model.load_state_dict({k: v for k, v in state.items() if k != INTEGRITY_KEY})
    return model.to(device).eval().requires_grad_(False)


def feature_extractor(dataset: str, batch_size: int = 1000, path: str | Path | None = None
                      ) -> Callable[[Tensor], Tensor]:
    """``f(x) -> (N, 128)`` float32 features of images x (N, 1, H, H) in [-1, 1], on x's device, computed in
    batches of ``batch_size`` without gradients. The network follows x to its device (one copy per device)."""
    cpu_model = load_classifier(dataset, "cpu", path)
    per_device: dict[torch.device, ClassifierCNN] = {torch.device("cpu"): cpu_model}

    @torch.no_grad()
    def extract(x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"feature extractor expects a tensor, got {type(x).__name__}")
        cpu_model._check(x)
        if x.device not in per_device:
            per_device[x.device] = load_classifier(dataset, x.device, path)
        model = per_device[x.device]
        x = x.detach().to(torch.float32)
        return torch.cat([model.features(chunk) for chunk in x.split(batch_size)]) if len(x) else x.new_zeros(
            0, FEATURE_DIM)

    return extract


__all__ = ["ClassifierCNN", "FEATURE_DIM", "IMAGE_SIZES", "WEIGHTS_DIR", "feature_extractor", "load_classifier",
           "weights_path"]
