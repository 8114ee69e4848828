"""``scoresde-sample``: draw samples from a training checkpoint (Hydra app, ``configs/sample.yaml``).

``ckpt`` is loaded by the one model loader (:func:`scoresde.models.loader.load_model`: the network from the
allowlist, the digest verified) with the EMA weights (``ema=true``, the default) or the raw
ones, and sampled with any registered solver from ``configs/solver/`` (its registry
name, default grid and options; ``grid=...`` and ``options.X=...`` override them) with a fixed seed.
``ckpt`` is a checkpoint file, a folder of checkpoints, or a run dir (``<dir>/checkpoints``); a folder gives
its latest checkpoint that loads (:func:`scoresde.training.checkpoint.latest_checkpoint`).

Writes ``samples.png`` (an image grid of (N, C, H, W) samples in [-1, 1], or a scatter plot of 2-D points)
and ``samples.npz`` (``samples``, the measured ``nfe``, ``seconds``, ``step`` and the solver settings) into
``out_dir`` or the Hydra run directory, and prints the NFE and seconds.

Sample ``i`` has seed ``seed + i``; the seeds are cut into consecutive batches of ``batch_size``. Under
``torchrun --nproc_per_node N -m scoresde.cli.sample ...`` rank ``r`` draws batches ``r, r+N, …`` and rank 0
gathers them and writes the files (:func:`scoresde.distributed.run_sharded`, as EDM's ``generate.py``): the
samples are bitwise those of one process with the same ``n``, ``seed`` and ``batch_size``, adaptive solvers
included (no rank waits on another inside a batch).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

import scoresde
from scoresde.cli.common import app_main, output_dir, plain
from scoresde.distributed import DistContext, cat_results, init_distributed, resolve_device, run_sharded, shutdown
from scoresde.models import Preconditioned
from scoresde.models.loader import load_model, resolve_source
from scoresde.training.labels import fixed_labels
from scoresde.training.trainer import image_grid, scatter_figure

DEVICES = ("cpu", "cuda", "auto")


def pick_device(name: Any) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available): :func:`~scoresde.distributed.resolve_device`."""
    return resolve_device(name)


def solver_entry(cfg: DictConfig) -> dict[str, Any]:
    """The one ``solvers`` entry (from ``solver=<name>``) with ``grid`` and ``options`` overrides applied."""
    entries = plain(cfg.get("solvers")) or {}
    if len(entries) != 1:
        raise ValueError(f"choose exactly one solver (solver=<name> from configs/solver/), got {sorted(entries)}")
    (entry,) = entries.values()
    if not isinstance(entry, dict) or "name" not in entry:
        raise ValueError(f"the solver config must be a mapping with a name, got {entry!r}")
    return {"name": str(entry["name"]), "grid": str(cfg.get("grid") or entry.get("grid") or "uniform"),
            "options": {**(entry.get("options") or {}), **(plain(cfg.get("options")) or {})}}


def save_png(x: Tensor, path: Path, title: str, nrow: int | None = None) -> None:
    """An image grid of (N, C, H, W) samples in [-1, 1], or a scatter plot of (N, 2) points."""
    if x.ndim == 4:
        import matplotlib.image
        grid = image_grid(x, nrow=nrow).permute(1, 2, 0).numpy()
        if grid.shape[2] == 1:
            matplotlib.image.imsave(path, grid[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0)
        else:
            matplotlib.image.imsave(path, grid.clip(0.0, 1.0))
    elif x.ndim == 2 and x.shape[1] == 2:
        scatter_figure(x, title).savefig(path, dpi=120)
    else:
        raise ValueError(f"can plot images (N, C, H, W) or 2-D points (N, 2), got shape {tuple(x.shape)}")


def batch_size_of(cfg: DictConfig) -> int:
    """``batch_size``, or ``n`` (one batch) when it is null."""
    value = cfg.get("batch_size")
    return int(cfg.get("n", 64)) if value is None else value


def class_labels_of(cfg: DictConfig, model: Preconditioned, n: int, names: list[str] | tuple[str, ...] = ()
                    ) -> Tensor | None:
    """Labels of the n samples from ``class_label``: null (unconditional; a conditional model's null class), an
    index or a class name (every sample), or ``rows`` (classes in blocks: row k of the grid is class k)."""
    choice = cfg.get("class_label")
    if choice is None:
        return None
    k = model.num_classes
    if not k:
        raise ValueError(f"class_label={choice!r} needs a class-conditional model; this one has no classes")
    if str(choice) == "rows":
        return fixed_labels(n, k)
    if isinstance(choice, str) and not choice.lstrip("-").isdigit():
        if choice not in names:
            raise ValueError(f"unknown class {choice!r}; classes: {', '.join(names) or f'0..{k - 1}'}")
        choice = names.index(choice)
    if not 0 <= int(choice) < k:
        raise ValueError(f"class_label {choice} out of range: the model has {k} classes (0..{k - 1})")
    return torch.full((n,), int(choice), dtype=torch.long)


def draw_batches(cfg: DictConfig, ctx: DistContext, model: Preconditioned, sde: scoresde.SDE,
                 shape: tuple[int, ...], entry: dict[str, Any], class_names: list[str] | tuple[str, ...] = ()
                 ) -> list[tuple[Tensor, int]] | None:
    """``(samples, NFE)`` of every seed batch in order on rank 0 (None on the others); this rank draws its share."""
    solver = scoresde.get_solver(entry["name"], **entry["options"])  # unknown names: the registry's KeyError
    n, seed = int(cfg.get("n", 64)), int(cfg.seed)

    labels = class_labels_of(cfg, model, n, class_names)

    def one_batch(seeds: list[int]) -> tuple[Tensor, int]:
        batch_labels = None if labels is None else labels[[s - seed for s in seeds]].to(ctx.device)
        score_model = model.score_model(sde, batch_labels)  # a fresh NFE counter per batch
        x = scoresde.sample(score_model, solver, int(cfg.steps), (len(seeds), *shape), grid=entry["grid"], seed=seeds,
                            device=ctx.device, rho=float(cfg.get("rho", 7.0)), denoise=bool(cfg.get("denoise", True)),
                            progress=bool(cfg.get("progress", True)) and ctx.is_main)
        return x.float().cpu(), score_model.nfe

    with torch.no_grad():
        return run_sharded(one_batch, range(seed, seed + n), batch_size_of(cfg), ctx)


def write_outputs(cfg: DictConfig, x: Tensor, nfes: list[int], seconds: float, path: Path, step: int,
                  entry: dict[str, Any], ctx: DistContext) -> dict[str, Any]:
    """``samples.png`` and ``samples.npz`` in the output folder; the summary :func:`sample_checkpoint` returns."""
    nfe = nfes[0] if len(set(nfes)) == 1 else sum(nfes) / len(nfes)  # NFE per batch (mean when they differ)
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    weights = "EMA" if cfg.get("ema", True) else "raw"
    save_png(x, out / "samples.png", f"{entry['name']}, {cfg.steps} steps, NFE {nfe:g}, {weights} weights, "
             f"step {step}", cfg.get("nrow"))
    np.savez(out / "samples.npz", samples=x.numpy(), nfe=nfe, nfe_per_batch=np.array(nfes), seconds=seconds,
             step=step, seed=int(cfg.seed), solver=entry["name"], grid=entry["grid"], steps=int(cfg.steps),
             ema=bool(cfg.get("ema", True)), checkpoint=str(path), batch_size=batch_size_of(cfg),
             world_size=ctx.world_size)
    print(f"{len(x)} samples from {path} (step {step}, {weights} weights) with {entry['name']} on "
          f"{ctx.world_size} process(es): NFE {nfe:g}, {seconds:.2f} s; wrote {out / 'samples.png'} and "
          f"{out / 'samples.npz'}")
    return {"checkpoint": str(path), "nfe": nfe, "nfe_per_batch": nfes, "seconds": seconds, "samples": x,
            "png": out / "samples.png", "npz": out / "samples.npz", "rank": ctx.rank, "world_size": ctx.world_size}


def sample_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """Load, sample (sharded over the ranks under torchrun), write ``samples.png`` and ``samples.npz`` on
    rank 0; returns the paths, NFE, seconds and samples there (``{"rank", "world_size"}`` elsewhere)."""
    path = resolve_source(cfg.get("ckpt"))
    entry = solver_entry(cfg)
    scoresde.get_solver(entry["name"], **entry["options"])  # an unknown solver fails before any process group
    n = int(cfg.get("n", 64))
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    pick_device(cfg.get("device"))
    ctx = init_distributed(cfg.get("device"), float(cfg.get("dist_timeout_s") or 1800))
    threads = torch.get_num_threads()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    try:
        loaded = load_model(path, bool(cfg.get("ema", True)), ctx.device, plain(cfg.get("shape")))
        model, sde, shape, step, names = loaded.model, loaded.sde, loaded.shape, loaded.step, loaded.class_names
        tick = time.perf_counter()
        parts = draw_batches(cfg, ctx, model, sde, shape, entry, names)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        seconds = time.perf_counter() - tick
    finally:
        torch.set_num_threads(threads)
        shutdown(ctx)
    if parts is None:
        return {"checkpoint": str(path), "rank": ctx.rank, "world_size": ctx.world_size}
    x, nfes = cat_results([p[0] for p in parts]), [int(p[1]) for p in parts]
    return write_outputs(cfg, x, nfes, seconds, path, step, entry, ctx)


main = app_main("sample", sample_checkpoint, "sample")


if __name__ == "__main__":
    main()
