"""Sample quality of Fashion-MNIST models in the shipped classifier's feature space, several models in one run.

Draws ``--n-per-class`` samples of every class (seeds ``seed .. seed + N - 1``, classes in blocks; the same seeds and
labels for every model), with each solver at each step count (``--steps``) or NFE budget (``--nfe``: the step count
whose declared NFE on the solver's grid is closest, as ``scoresde-bench`` picks it), and reports per run: the Fréchet
distance to ``--n-test`` test images (and the floor: as many training images as samples, to the same test images),
k-NN precision and recall (k = 3), the fraction the shipped classifier assigns to the requested class, the measured
NFE and seconds. Runs are interleaved (step count or NFE, solver, then model), so a change in machine load hits
every model alike. Prints a markdown table per run, a side-by-side FD table when several models are given, and
writes ``--out`` (JSON, rewritten after every run).

    python benchmarks/model_quality.py --model fashion_mnist --solver unipc --grid logsnr --steps 20
    python benchmarks/model_quality.py --model fashion_mnist fashion_mnist_flow \\
        --solver euler heun dpmpp_2m unipc ipndm --nfe 5 10 20 50 --denoise --n-per-class 25 --threads 1

Each solver runs on ``--grid`` if given, else on its own configured grid and options (``configs/solver/<name>.yaml``,
the entries ``scoresde-bench`` runs). Needs Fashion-MNIST (``apt-get install -y dataset-fashion-mnist``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml

import scoresde as sd
from scoresde.bench.planning import SweepSettings, steps_for_budget
from scoresde.data import load_fashion_mnist
from scoresde.evaluation.features import feature_extractor, load_classifier
from scoresde.evaluation.metrics import frechet_distance_from_features, precision_recall
from scoresde.training.labels import fixed_labels

SOLVER_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "solver"


def configured(name: str) -> tuple[str, dict[str, Any]]:
    """(grid, options) of solver ``name``'s entry in configs/solver (uniform and no options if it has none)."""
    path = SOLVER_CONFIGS / f"{name}.yaml"
    entry = (yaml.safe_load(path.read_text()) or {}).get(name, {}) if path.exists() else {}
    return entry.get("grid", "uniform"), dict(entry.get("options") or {})


def plan(solver: sd.Solver, sde: sd.SDE, grid: str, count: int, by_nfe: bool, denoise: bool) -> sd.TimeGrid:
    """The grid of one run: ``count`` steps, or the step count whose declared NFE is closest to ``count``."""
    if by_nfe:
        return steps_for_budget(solver, sde, grid, count, SweepSettings(denoise=denoise))[1]
    return sd.make_grid(sde, count, grid, denoise=denoise)


def quality(model: sd.models.LoadedModel, solver: sd.Solver, grid: sd.TimeGrid, n_per_class: int, seed: int,
            batch: int, features, classifier, test_feats: torch.Tensor) -> dict:
    """Samples of every class with ``solver`` on ``grid``, scored against ``test_feats``."""
    k = model.num_classes or 1
    labels = fixed_labels(n_per_class * k, k) if model.num_classes else None
    xs, nfe, tick = [], 0, time.perf_counter()
    with torch.no_grad():
        for start in range(0, n_per_class * k, batch):
            seeds = list(range(seed + start, seed + min(start + batch, n_per_class * k)))
            part = None if labels is None else labels[start:start + len(seeds)]
            score = model.score_model(part)
            xs.append(sd.sample(score, solver, grid=grid, shape=(len(seeds), *model.shape), seed=seeds))
            nfe = score.nfe
    seconds = time.perf_counter() - tick
    x = torch.cat(xs).clamp(-1, 1)
    fake = features(x)
    pr = precision_recall(test_feats, fake)
    row = {"steps": grid.steps, "nfe": nfe, "seconds": seconds,
           "fd": frechet_distance_from_features(test_feats, fake), "precision": pr.precision, "recall": pr.recall}
    if labels is not None:
        row["class_accuracy"] = float((classifier(x).argmax(1) == labels).float().mean())
    return row


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["fashion_mnist"],
                        help="shipped names, pretrained files, checkpoints or run dirs")
    parser.add_argument("--solver", nargs="+", default=["unipc"])
    parser.add_argument("--grid", default=None, help="default: each solver config's grid")
    counts = parser.add_mutually_exclusive_group()
    counts.add_argument("--steps", type=int, nargs="+", default=None, help="step counts (default: 20)")
    counts.add_argument("--nfe", type=int, nargs="+", default=None, help="NFE budgets instead of step counts")
    parser.add_argument("--denoise", action="store_true", help="end each grid with the step into sigma = 0")
    parser.add_argument("--n-per-class", type=int, default=100)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


def print_tables(info: dict) -> None:
    print("| model | solver | grid | steps | NFE | FD | precision | recall | class acc. | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in info["rows"]:
        print(f"| {r['model']} | {r['solver']} | {r['grid']} | {r['steps']} | {r['nfe']} | {r['fd']:.2f} | "
              f"{r['precision']:.3f} | {r['recall']:.3f} | {r.get('class_accuracy', float('nan')):.3f} | "
              f"{r['seconds']:.1f} |")
    models = [m["name"] for m in info["models"]]
    if len(models) < 2:
        return
    print(f"\n| solver (grid) | {info['by']} | " + " | ".join(f"FD {m} (NFE)" for m in models) + " |")
    print("|---|---|" + "---|" * len(models))
    keys = dict.fromkeys((r["solver"], r["grid"], r["count"]) for r in info["rows"])
    for solver, grid, count in keys:
        cells = {r["model"]: f"{r['fd']:.2f} ({r['nfe']})" for r in info["rows"]
                 if (r["solver"], r["grid"], r["count"]) == (solver, grid, count)}
        print(f"| {solver} ({grid}) | {count} | " + " | ".join(cells.get(m, "") for m in models) + " |")


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    by_nfe, counts = args.nfe is not None, args.nfe or args.steps or [20]
    models = {name: sd.load_model(name) for name in args.model}
    features, classifier = feature_extractor("fashion_mnist"), load_classifier("fashion_mnist")
    test, _ = load_fashion_mnist("test")
    train, _ = load_fashion_mnist("train")
    n_samples = args.n_per_class * max(m.num_classes or 1 for m in models.values())
    test_feats = features(test[:args.n_test])
    floor = frechet_distance_from_features(test_feats, features(train[:n_samples]))
    info = {"models": [{"name": n, "step": m.step, "sde": type(m.sde).__name__} for n, m in models.items()],
            "floor_fd": floor, "n_samples": n_samples, "n_per_class": args.n_per_class, "n_test": args.n_test,
            "seed": args.seed, "threads": args.threads, "denoise": args.denoise, "by": "nfe" if by_nfe else "steps",
            "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load_before": os.getloadavg(),
            "rows": []}
    print(f"FD floor ({n_samples} training vs {args.n_test} test images) {floor:.2f}; load {os.getloadavg()}",
          flush=True)
    solvers = {name: ((args.grid, {}) if args.grid else configured(name)) for name in args.solver}
    for count in counts:  # cheapest first: a run stopped early has every solver at the smaller counts
        for name, (grid_kind, options) in solvers.items():
            solver = sd.get_solver(name, **options)
            for model_name, model in models.items():
                grid = plan(solver, model.sde, grid_kind, count, by_nfe, args.denoise)
                row = quality(model, solver, grid, args.n_per_class, args.seed, args.batch, features, classifier,
                              test_feats)
                info["rows"].append({"model": model_name, "solver": name, "grid": grid_kind, "count": count, **row})
                print(f"{model_name} {name} ({grid_kind}) {count}: NFE {row['nfe']} FD {row['fd']:.2f} "
                      f"({row['seconds']:.0f} s)", flush=True)
                if args.out:
                    args.out.write_text(json.dumps(info, indent=2))
    info["load_after"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(info, indent=2))
    print_tables(info)


if __name__ == "__main__":
    main()
