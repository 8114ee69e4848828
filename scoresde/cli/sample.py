"""``scoresde-sample``: draw samples from a training checkpoint (Hydra app, ``configs/sample.yaml``).

``ckpt`` is loaded by the one model loader (:func:`scoresde.models.loader.load_model`: the network from the
allowlist, the digest verified) with the EMA weights (``ema=true``, the default) or the raw
ones, and sampled with any registered solver from ``configs/solver/`` (its registry
name, default grid and options; ``grid=...`` and ``options.X=...`` override them; an option the solver does not
take is refused with the list of its options) with a fixed seed.
``ckpt`` is a checkpoint file, a folder of checkpoints, or a run dir (``<dir>/checkpoints``); a folder gives
its latest checkpoint that loads (:func:`scoresde.training.checkpoint.latest_checkpoint`).
``ckpt=diffusers:<dir>`` (or ``pretrained=diffusers:<dir>``, the same key under the name issue 16 gives it) samples
a local diffusers model directory (:func:`scoresde.models.loader.load_diffusers`) on the SDE of its scheduler's
ᾱ table, with any solver.

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
from scoresde.cli.common import (
    app_main,
    bool_option,
    float_option,
    int_option,
    make_output_dir,
    one_line,
    plain,
    torch_threads,
)
from scoresde.cli.solver_options import build_solver
from scoresde.distributed import DistContext, cat_results, init_distributed, resolve_device, run_sharded, shutdown
from scoresde.errors import ConfigError
from scoresde.models import Preconditioned
from scoresde.models.loader import LoadedModel, diffusers_dir, load_model, resolve_source
from scoresde.solvers.grids import GRIDS
from scoresde.training.labels import fixed_labels
from scoresde.training.trainer import image_grid, scatter_figure

DEVICES = ("cpu", "cuda", "auto")


def pick_device(name: Any) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available): :func:`~scoresde.distributed.resolve_device`;
    a device that cannot be had is a ConfigError naming ``device``."""
    try:
        return resolve_device(name)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(str(e)) from None


def check_options(cfg: DictConfig) -> None:
    """Every number and switch of the config, checked by its key before anything is loaded (a ConfigError naming
    the key and the value)."""
    int_option(cfg, "n", 64, minimum=1)
    int_option(cfg, "steps", 18, minimum=1)
    int_option(cfg, "seed", 0, minimum=0)
    for key in ("batch_size", "nrow"):
        if cfg.get(key) is not None:
            int_option(cfg, key, None, minimum=1)
    float_option(cfg, "rho", 7.0, minimum=0, open_below=True)
    float_option(cfg, "dist_timeout_s", 1800, minimum=0, open_below=True)
    for key in ("ema", "denoise", "progress"):
        bool_option(cfg, key, True)
    shape = plain(cfg.get("shape"))
    if shape is not None and (not isinstance(shape, list) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)):
        raise ConfigError(f"shape must be a non-empty list of positive sizes (e.g. [1,8,8]) or null, got "
                          f"shape={shape!r}")
    pick_device(cfg.get("device"))


def with_key(key: str, value: Any, error: BaseException) -> BaseException:
    """``error`` with ``key=value:`` in front of its message, of the same type when it can be rebuilt so."""
    message = f"{key}={value}: {one_line(error)}"
    try:
        return type(error)(message)
    except Exception:
        return ConfigError(message)


def source_key(cfg: DictConfig) -> tuple[str, Any]:
    """``(key, value)`` of the model to sample: ``ckpt``, or its alias ``pretrained`` (one of them, not both)."""
    ckpt, pretrained = cfg.get("ckpt"), cfg.get("pretrained")
    if pretrained is not None and ckpt is not None:
        raise ConfigError(f"give ckpt= or pretrained=, not both (got ckpt={ckpt} and pretrained={pretrained})")
    return ("ckpt", ckpt) if pretrained is None else ("pretrained", pretrained)


def load_ckpt(cfg: DictConfig, path: Path, device: torch.device) -> LoadedModel:
    """:func:`load_model` of ``ckpt`` (resolved to ``path``); a refused or unreadable file names ``ckpt``."""
    key, value = source_key(cfg)
    try:
        source = value if diffusers_dir(value) is not None else path  # a diffusers dir keeps its prefix
        return load_model(source, bool_option(cfg, "ema", True), device, plain(cfg.get("shape")))
    except (OSError, ValueError) as e:
        raise with_key(key, value, e) from e


def solver_entry(cfg: DictConfig) -> dict[str, Any]:
    """The one ``solvers`` entry (from ``solver=<name>``) with ``grid`` and ``options`` overrides applied."""
    entries = plain(cfg.get("solvers")) or {}
    if len(entries) != 1:
        raise ValueError(f"choose exactly one solver (solver=<name> from configs/solver/), got {sorted(entries)}")
    (entry,) = entries.values()
    if not isinstance(entry, dict) or "name" not in entry:
        raise ValueError(f"the solver config must be a mapping with a name, got {entry!r}")
    options = plain(cfg.get("options")) or {}
    if not isinstance(options, dict):
        raise ConfigError(f"options must be a mapping of solver options (options.X=...), got options={options!r}")
    grid = str(cfg.get("grid") or entry.get("grid") or "uniform")
    if grid not in GRIDS:
        raise ConfigError(f"unknown grid {grid!r}; known grids: {', '.join(GRIDS)}")
    return {"name": str(entry["name"]), "grid": grid, "options": {**(entry.get("options") or {}), **options}}


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
    return int_option(cfg, "n", 64) if value is None else int_option(cfg, "batch_size")


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
    solver = build_solver(entry["name"], entry["options"])  # unknown names: the registry's KeyError
    n, seed = int_option(cfg, "n", 64), int_option(cfg, "seed", 0)

    labels = class_labels_of(cfg, model, n, class_names)

    def one_batch(seeds: list[int]) -> tuple[Tensor, int]:
        batch_labels = None if labels is None else labels[[s - seed for s in seeds]].to(ctx.device)
        score_model = model.score_model(sde, batch_labels)  # a fresh NFE counter per batch
        x = scoresde.sample(score_model, solver, int_option(cfg, "steps"), (len(seeds), *shape), grid=entry["grid"],
                            seed=seeds, device=ctx.device, rho=float_option(cfg, "rho", 7.0),
                            denoise=bool_option(cfg, "denoise", True),
                            progress=bool_option(cfg, "progress", True) and ctx.is_main)
        return x.float().cpu(), score_model.nfe

    with torch.no_grad():
        return run_sharded(one_batch, range(seed, seed + n), batch_size_of(cfg), ctx)


def write_outputs(cfg: DictConfig, x: Tensor, nfes: list[int], seconds: float, path: Path, step: int,
                  entry: dict[str, Any], ctx: DistContext, weights: str | None = None) -> dict[str, Any]:
    """``samples.png`` and ``samples.npz`` in the output folder; the summary :func:`sample_checkpoint` returns.
    ``weights``: which weights the model holds ("EMA" or "raw"; None: as ``ema`` asked)."""
    nfe = nfes[0] if len(set(nfes)) == 1 else sum(nfes) / len(nfes)  # NFE per batch (mean when they differ)
    out = make_output_dir(cfg)
    if str(source_key(cfg)[1]).startswith("diffusers:"):
        weights = "diffusers"
    elif weights is None:
        weights = "EMA" if bool_option(cfg, "ema", True) else "raw"
    save_png(x, out / "samples.png", f"{entry['name']}, {cfg.steps} steps, NFE {nfe:g}, {weights} weights, "
             f"step {step}", cfg.get("nrow"))
    np.savez(out / "samples.npz", samples=x.numpy(), nfe=nfe, nfe_per_batch=np.array(nfes), seconds=seconds,
             step=step, seed=int_option(cfg, "seed", 0), solver=entry["name"], grid=entry["grid"], steps=int(cfg.steps),
             ema=bool_option(cfg, "ema", True), checkpoint=str(path), batch_size=batch_size_of(cfg),
             world_size=ctx.world_size)
    print(f"{len(x)} samples from {path} (step {step}, {weights} weights) with {entry['name']} on "
          f"{ctx.world_size} process(es): NFE {nfe:g}, {seconds:.2f} s; wrote {out / 'samples.png'} and "
          f"{out / 'samples.npz'}")
    return {"checkpoint": str(path), "nfe": nfe, "nfe_per_batch": nfes, "seconds": seconds, "samples": x,
            "png": out / "samples.png", "npz": out / "samples.npz", "rank": ctx.rank, "world_size": ctx.world_size}


def sample_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """Load, sample (sharded over the ranks under torchrun), write ``samples.png`` and ``samples.npz`` on
    rank 0; returns the paths, NFE, seconds and samples there (``{"rank", "world_size"}`` elsewhere)."""
    check_options(cfg)
    entry = solver_entry(cfg)
    build_solver(entry["name"], entry["options"])  # an unknown solver or option fails before any process group
    key, value = source_key(cfg)
    if value is None:
        raise ConfigError("ckpt must name a checkpoint file, a run dir, a checkpoints folder, a shipped model "
                          "(fashion_mnist) or a diffusers model directory (diffusers:<dir>), got ckpt=null")
    try:
        path = resolve_source(value)
    except (OSError, ValueError) as e:
        raise with_key(key, value, e) from e
    with torch_threads(cfg.get("threads")):
        ctx = init_distributed(cfg.get("device"), float_option(cfg, "dist_timeout_s", 1800))
        try:
            if ctx.is_main:
                make_output_dir(cfg)  # a folder that cannot be written fails now, not after the sampling
            loaded = load_ckpt(cfg, path, ctx.device)
            model, sde, shape, step, names = loaded.model, loaded.sde, loaded.shape, loaded.step, loaded.class_names
            tick = time.perf_counter()
            parts = draw_batches(cfg, ctx, model, sde, shape, entry, names)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            seconds = time.perf_counter() - tick
        finally:
            shutdown(ctx)
    if parts is None:
        return {"checkpoint": str(path), "rank": ctx.rank, "world_size": ctx.world_size}
    x, nfes = cat_results([p[0] for p in parts]), [int(p[1]) for p in parts]
    weights = {"ema": "EMA", "raw": "raw"}.get(str(loaded.provenance.get("weights")))  # what the file holds
    return write_outputs(cfg, x, nfes, seconds, path, step, entry, ctx, weights)


main = app_main("sample", sample_checkpoint, "sample", option_keys=("options",))


if __name__ == "__main__":
    main()
