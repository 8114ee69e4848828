"""Train the feature classifier of ``features.py`` on CPU and save its weights (a state_dict, weights only).

    python -m scoresde.evaluation.train_classifier --dataset digits --out scoresde/evaluation/weights/digits.pt
    python -m scoresde.evaluation.train_classifier --dataset fashion_mnist \\
        --out scoresde/evaluation/weights/fashion_mnist.pt

Adam (Kingma & Ba 2015) with a cosine learning-rate decay and cross-entropy; seeded (``--seed``, default 0) for
the initialization and the shuffling. Digits train on the fixed 1438-image train split of
``scoresde.data.load_digits`` and report accuracy on its 359-image test split; Fashion-MNIST trains on its 60000
training images and reports accuracy on the 10000 test images. This is a command-line entry point: like the
CLI, it is allowed to touch the filesystem.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from scoresde.data import load_digits, load_fashion_mnist
from scoresde.errors import UnknownNameError
from scoresde.evaluation.features import IMAGE_SIZES, ClassifierCNN, weights_path
from scoresde.training.checkpoint import save_checkpoint

DEFAULTS = {"digits": {"epochs": 40, "batch_size": 64, "lr": 2e-3},
            "fashion_mnist": {"epochs": 6, "batch_size": 128, "lr": 2e-3}}


def load_split(dataset: str, split: str) -> tuple[Tensor, Tensor]:
    """(images, labels) of the split the classifier of ``dataset`` trains ("train") or is tested ("test") on."""
    if dataset == "digits":
        return load_digits(split)
    if dataset == "fashion_mnist":
        return load_fashion_mnist(split)
    raise UnknownNameError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(IMAGE_SIZES))}")


@torch.no_grad()
def accuracy(model: ClassifierCNN, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``."""
    model.eval()
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(batch_size), y.split(batch_size)))
    return correct / len(y)


def train(dataset: str, epochs: int, batch_size: int, lr: float, seed: int = 0, log: bool = True) -> ClassifierCNN:
    """Train a fresh ``ClassifierCNN`` on ``dataset``'s train split; returns it in eval mode."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = load_split(dataset, "train")
    model = ClassifierCNN(IMAGE_SIZES[dataset])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for idx in perm.split(batch_size):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if log:
            print(f"epoch {epoch + 1}/{epochs}  train loss {total / len(x):.4f}", flush=True)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(IMAGE_SIZES), required=True)
    parser.add_argument("--out", type=Path, default=None, help="weights file (default: the shipped location)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    args = parser.parse_args(argv)
    cfg = dict(DEFAULTS[args.dataset])
    cfg.update({k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr))
                if v is not None})
    start = time.perf_counter()
    model = train(args.dataset, seed=args.seed, **cfg)
    elapsed = time.perf_counter() - start
    x_test, y_test = load_split(args.dataset, "test")
    acc = accuracy(model, x_test, y_test)
    out = args.out if args.out is not None else weights_path(args.dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({k: v.detach().contiguous() for k, v in model.state_dict().items()}, out)  # with its digest
    print(f"dataset={args.dataset} seed={args.seed} {cfg} train_time={elapsed:.1f}s "
          f"threads={torch.get_num_threads()} test_accuracy={acc:.4f} ({len(y_test)} images) "
          f"saved {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
