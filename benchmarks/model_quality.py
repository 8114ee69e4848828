"""Sample quality of a Fashion-MNIST model in the shipped classifier's feature space.

Draws ``--n-per-class`` samples of every class (seeds ``seed .. seed + N - 1``, classes in blocks), with one solver at
one or more step counts, and reports per step count: the Fréchet distance to ``--n-test`` test images (and the floor,
the same number of training images to the same test images), k-NN precision and recall (k = 3), and the fraction the
shipped classifier assigns to the requested class; with the measured NFE and seconds. Prints a markdown table and
writes ``--out`` (JSON).

    python benchmarks/model_quality.py --model fashion_mnist --solver unipc --steps 20
    python benchmarks/model_quality.py --model runs/fmnist_flow --solver euler --grid uniform --steps 5 10 20

Needs Fashion-MNIST (``apt-get install -y dataset-fashion-mnist``).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import scoresde as sd
from scoresde.data import load_fashion_mnist
from scoresde.evaluation.features import feature_extractor, load_classifier
from scoresde.evaluation.metrics import frechet_distance_from_features, precision_recall
from scoresde.training.labels import fixed_labels


def quality(model: sd.models.LoadedModel, solver: str, steps: int, grid: str, n_per_class: int, seed: int,
            batch: int, features, classifier, test_feats: torch.Tensor) -> dict:
    """Samples of every class with ``solver`` at ``steps`` steps, scored against ``test_feats``."""
    k = model.num_classes or 1
    labels = fixed_labels(n_per_class * k, k) if model.num_classes else None
    xs, nfe, tick = [], 0, time.perf_counter()
    with torch.no_grad():
        for start in range(0, n_per_class * k, batch):
            seeds = list(range(seed + start, seed + min(start + batch, n_per_class * k)))
            part = None if labels is None else labels[start:start + len(seeds)]
            score = model.score_model(part)
            xs.append(sd.sample(score, solver, steps, (len(seeds), *model.shape), grid=grid, seed=seeds))
            nfe = score.nfe
    seconds = time.perf_counter() - tick
    x = torch.cat(xs).clamp(-1, 1)
    fake = features(x)
    pr = precision_recall(test_feats, fake)
    row = {"solver": solver, "grid": grid, "steps": steps, "nfe": nfe, "seconds": seconds,
           "fd": frechet_distance_from_features(test_feats, fake), "precision": pr.precision, "recall": pr.recall}
    if labels is not None:
        row["class_accuracy"] = float((classifier(x).argmax(1) == labels).float().mean())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fashion_mnist", help="shipped name, pretrained file, checkpoint, run dir")
    parser.add_argument("--solver", default="unipc")
    parser.add_argument("--grid", default=None, help="default: the solver config's grid")
    parser.add_argument("--steps", type=int, nargs="+", default=[20])
    parser.add_argument("--n-per-class", type=int, default=100)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = sd.load_model(args.model)
    grid = args.grid or {"unipc": "logsnr", "dpmpp_2m": "logsnr", "heun": "karras"}.get(args.solver, "uniform")
    features, classifier = feature_extractor("fashion_mnist"), load_classifier("fashion_mnist")
    test, _ = load_fashion_mnist("test")
    train, _ = load_fashion_mnist("train")
    test_feats = features(test[:args.n_test])
    train_feats = features(train[:args.n_test])
    floor = frechet_distance_from_features(test_feats, train_feats)
    rows = [quality(model, args.solver, s, grid, args.n_per_class, args.seed, args.batch, features, classifier,
                    test_feats) for s in args.steps]
    print(f"model {args.model} (step {model.step}, {type(model.sde).__name__}); FD floor (train vs test, "
          f"{args.n_test} each) {floor:.2f}")
    print("| solver | grid | steps | NFE | FD | precision | recall | class acc. | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['solver']} | {r['grid']} | {r['steps']} | {r['nfe']} | {r['fd']:.2f} | {r['precision']:.3f} | "
              f"{r['recall']:.3f} | {r.get('class_accuracy', float('nan')):.3f} | {r['seconds']:.1f} |")
    if args.out:
        info = {"model": args.model, "step": model.step, "sde": type(model.sde).__name__, "floor_fd": floor,
                "n_per_class": args.n_per_class, "n_test": args.n_test, "seed": args.seed, "threads": args.threads,
                "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows}
        args.out.write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
