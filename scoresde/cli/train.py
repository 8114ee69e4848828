"""``scoresde-train``: train a preconditioned score network (Hydra app, ``configs/train.yaml``).

The network (``model.net``) is built from the allowlist of :mod:`scoresde.models.registry`: its ``_target_`` must
name one of the project's registered networks, and the checkpoint stores it in registry form
(``{"class": "UNet", "kwargs": {...}}``), so that loading a checkpoint never builds anything by a name it holds. The
SDE (``configs/sde/``) and the loss (``configs/loss/``) are built by name with
:func:`scoresde.get_sde` and :func:`scoresde.training.get_loss`; the data (``configs/data/``) is a 2-D toy
(:func:`scoresde.data.make_toy`), the digits or Fashion-MNIST. Training itself is
:class:`scoresde.training.Trainer`, writing tensorboard events to ``<run dir>/tb`` and checkpoints to
``<run dir>/checkpoints``.

Class-conditional training: a model config with ``num_classes`` (``model=small_unet`` on Fashion-MNIST or the
digits) trains on the data's labels, with ``label_dropout`` (classifier-free guidance's null class).

Bad configs fail before training starts with a :class:`ConfigError` that names the setting (lr, steps,
batch size, unknown sde/loss/data/solver names, a network that cannot take the data's shape); the console
app prints it as one line and exits with status 2. One trainer per run directory: a second one on the same
directory is refused (:class:`scoresde.training.run_lock.RunLock`).

Resuming: run again in the same run directory with ``resume=true``, e.g.
``scoresde-train steps=2000 hydra.run.dir=runs/x resume=true``: the latest checkpoint there restores the
model, EMA, optimizer, step, data order and every RNG, and training continues exactly up to ``steps``.

Several processes: ``torchrun --nproc_per_node N -m scoresde.cli.train hydra.run.dir=runs/x ...`` (or
``torchrun --nproc_per_node N --no-python scoresde-train ...``) trains the same config data-parallel
(:func:`scoresde.distributed.init_distributed`: NCCL on CUDA, gloo on CPU). ``batch_size`` is the global
batch (each rank takes ``batch_size/N``), so ``lr`` needs no rescaling; rank 0 alone writes tensorboard
events and checkpoints, into its run directory, which every rank uses. A rank that crashes or hangs makes
the others fail after ``dist_timeout_s`` with a :class:`scoresde.distributed.RankFailure` (exit status 1).
Presets: ``scoresde-train train=fashion_mnist`` (``configs/train/``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

import scoresde
from scoresde.cli.common import app_main, named, output_dir, plain, torch_threads
from scoresde.data.from_config import load_data_config
from scoresde.distributed import DistContext, broadcast_object, init_distributed, resolve_device, shutdown
from scoresde.errors import ConfigError
from scoresde.models import EMA, Preconditioned
from scoresde.models.registry import build_network, network_spec, preconditioning_spec
from scoresde.training import Trainer, get_loss
from scoresde.training.run_lock import RunLock


def load_labeled_data(node: Any, seed: int) -> tuple[Tensor, Tensor | None]:
    """``(x, labels)`` of the ``data`` config (:func:`scoresde.data.from_config.load_data_config`)."""
    return load_data_config(named(node, "data"), seed)


def load_data(node: Any, seed: int) -> Tensor:
    """The training tensor the ``data`` config describes (labels dropped; see :func:`load_labeled_data`)."""
    return load_labeled_data(node, seed)[0]


def stored_model_config(node: Any) -> dict[str, Any]:
    """The ``model`` config as the checkpoint stores it: ``net`` in registry form (``{"class", "kwargs"}``,
    checked against the allowlist), the preconditioning values checked."""
    cfg = plain(node)
    if not isinstance(cfg, dict) or "net" not in cfg:
        raise ConfigError("the model config needs a net with a _target_, e.g. model=mlp from configs/model/")
    return {**cfg, "net": network_spec(cfg["net"], "model.net"), **preconditioning_spec(cfg, "model")}


def build_model(node: Any) -> Preconditioned:
    """``Preconditioned(network, kind, sigma_data, c_noise, normalize_input)`` of a ``model`` config; the network
    is one of the registered ones (:mod:`scoresde.models.registry`) with ``num_classes`` added when set."""
    cfg = stored_model_config(node)
    extra = {"num_classes": int(cfg["num_classes"])} if cfg.get("num_classes") else {}
    try:
        net = build_network(cfg["net"], **extra)
    except (TypeError, ValueError) as e:  # a constructor argument the network refuses
        raise ConfigError(f"cannot build model {cfg.get('name', '')!r} ({cfg['net']['class']}): {e}") from e
    return Preconditioned(net, **preconditioning_spec(cfg, "model"))


def build_ema(node: Any, model: Preconditioned, batch_size: int) -> EMA:
    cfg = {k: v for k, v in (plain(node) or {}).items() if v is not None}
    if "half_life_kimg" in cfg:
        cfg.setdefault("batch_size", batch_size)
    return EMA(model, **cfg)


def check_scalars(cfg: DictConfig) -> None:
    """lr > 0, steps >= 1, batch_size >= 1 and a known sample solver, before anything is built."""
    lr, steps, batch = cfg.get("lr"), cfg.get("steps"), cfg.get("batch_size")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise ConfigError(f"lr must be a number > 0, got lr={lr!r}")
    for key, value in (("steps", steps), ("batch_size", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be an integer >= 1, got {key}={value!r}")
    solver = (cfg.get("sample") or {}).get("solver", "heun")
    if solver not in scoresde.SOLVERS:
        raise ConfigError(f"unknown sample.solver {solver!r}; known solvers: {', '.join(sorted(scoresde.SOLVERS))}")


def by_name(build: Any, node: Any, what: str) -> Any:
    """``build(**config)``, with the library's KeyError (unknown name) or TypeError (bad option) as a ConfigError."""
    try:
        return build(**named(node, what))
    except KeyError as e:
        raise ConfigError(f"{what}: {e.args[0]}") from None
    except TypeError as e:
        raise ConfigError(f"{what}: bad option in {plain(node)}: {e}") from None


def check_model_takes(model: Preconditioned, x: Tensor, name: str) -> None:
    """One forward pass on a zero sample shaped like the data, so that an image size the network cannot take
    (a U-Net needs H, W divisible by 2^(levels−1)) or a wrong ``dim`` fails now, with the shapes named."""
    levels = getattr(model.net, "levels", None)
    if levels and x.ndim == 4 and (x.shape[-1] % 2 ** (levels - 1) or x.shape[-2] % 2 ** (levels - 1)):
        raise ConfigError(f"model {name!r}: a U-Net with {levels} levels needs an image size divisible by "
                          f"2^{levels - 1} = {2 ** (levels - 1)}, but the data is {tuple(x.shape[-2:])}; "
                          "use fewer levels in model.net.channel_mult or other data")
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(torch.zeros_like(x[:1]), torch.ones(1))
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"model {name!r} cannot take the data's samples of shape {tuple(x.shape[1:])}: {e}") from e


def pick_device(cfg: DictConfig) -> torch.device:
    """``device`` of the config (``auto``: CUDA when available), as a ConfigError when it cannot be had."""
    try:
        return resolve_device(cfg.get("device", "cpu"))
    except (ValueError, RuntimeError) as e:
        raise ConfigError(str(e)) from None


def trainer_options(cfg: DictConfig) -> dict[str, Any]:
    """The Trainer's keyword arguments that come straight from top-level settings."""
    sample = cfg.get("sample") or {}
    return dict(batch_size=cfg.batch_size, lr=float(cfg.lr), weight_decay=float(cfg.weight_decay),
                warmup_steps=cfg.warmup_steps, lr_schedule=str(cfg.get("lr_schedule", "constant")),
                lr_min=float(cfg.get("lr_min", 0.0) or 0.0), grad_clip=cfg.grad_clip, total_steps=cfg.steps,
                ckpt_every=cfg.ckpt_every, log_every=cfg.log_every, sample_every=sample.get("every", 0),
                sample_solver=sample.get("solver", "heun"), sample_steps=sample.get("steps", 18),
                sample_grid=sample.get("grid", "karras"), sample_options=plain(sample.get("options")),
                n_samples=sample.get("n", 1000), seed=int(cfg.get("seed", 0)), bf16=bool(cfg.get("bf16", False)),
                keep_checkpoints=cfg.get("keep_checkpoints", 0), config=stored_config(cfg),
                hflip=bool((plain(cfg.get("data")) or {}).get("hflip", False)))


def stored_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as checkpoints store it: plain data, the network in registry form."""
    return {**plain(cfg), "model": stored_model_config(cfg.get("model"))}


def build_trainer(cfg: DictConfig, ctx: DistContext | None = None) -> Trainer:
    """Everything the config describes, checked and assembled into a :class:`Trainer` (nothing is trained yet).
    ``ctx``: the torchrun context (default: one process on the config's device). Raises :class:`ConfigError`
    for a config that cannot work."""
    check_scalars(cfg)
    ctx = ctx or DistContext(device=pick_device(cfg))
    seed = int(cfg.get("seed", 0))
    seeds = [int(s) for s in np.random.SeedSequence([seed, 1]).generate_state(2)]
    torch.manual_seed(seeds[0])  # model initialization (and dropout, whose RNG state checkpoints keep)
    sde = by_name(scoresde.get_sde, cfg.get("sde"), "sde")
    loss = by_name(get_loss, cfg.get("loss"), "loss")
    data, labels = load_labeled_data(cfg.get("data"), seeds[1])
    if (plain(cfg.get("data")) or {}).get("hflip") and data.ndim != 4:
        raise ConfigError(f"data.hflip needs images (N, C, H, W), but data={named(cfg.get('data'), 'data')['name']} "
                          f"has shape {tuple(data.shape)}")
    model = build_model(cfg.get("model"))
    model_name = (plain(cfg.get("model")) or {}).get("name", "?")
    check_model_takes(model, data, model_name)
    if cfg.batch_size > len(data):
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {len(data)} training samples of "
                          f"data={named(cfg.get('data'), 'data')['name']}")
    if model.num_classes and labels is None:
        raise ConfigError(f"model {model_name!r} is class-conditional (num_classes={model.num_classes}), but "
                          f"data={named(cfg.get('data'), 'data')['name']} has no labels")
    label_dropout = float(cfg.get("label_dropout") or 0.0) if model.num_classes else 0.0
    out = Path(broadcast_object(str(output_dir(cfg)), ctx, "agreeing on the run directory"))  # rank 0's
    try:  # the Trainer's own checks (label range, warmup, intervals, ...) are config errors here too
        return Trainer(model, sde, loss, data, labels=labels if model.num_classes else None,
                       label_dropout=label_dropout, ema=build_ema(cfg.get("ema"), model, cfg.batch_size),
                       log_dir=out / "tb", ckpt_dir=out / "checkpoints", device=ctx.device,
                       progress=bool(cfg.get("progress", True)), distributed=ctx, **trainer_options(cfg))
    except ValueError as e:
        raise ConfigError(str(e)) from e


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build the trainer, resume when ``resume=true``, train to ``steps``; returns ``{"step", "loss", ...}``.
    Under torchrun (``WORLD_SIZE > 1``) it joins the process group first and leaves it at the end."""
    pick_device(cfg)  # a device that cannot be had is a config error, before joining any process group
    with torch_threads(cfg.get("threads")):
        ctx = init_distributed(cfg.get("device", "cpu"), float(cfg.get("dist_timeout_s") or 1800))
        say = print if ctx.is_main else (lambda *a, **k: None)
        lock = RunLock(output_dir(cfg))
        try:
            if ctx.is_main:  # rank 0 writes the run directory; a second trainer there is refused
                lock.acquire()
            trainer = build_trainer(cfg, ctx)
            resumed = trainer.resume() if cfg.get("resume") else None
            if resumed is not None:
                say(f"resumed from {resumed} at step {trainer.step}")
            elif cfg.get("resume"):
                say(f"resume=true but no checkpoint in {trainer.ckpt_dir}: starting from step 0")
            try:
                result = trainer.train()
            finally:
                trainer.close()
        finally:
            lock.release()
            shutdown(ctx)
    say(f"step {result['step']}: loss {result['loss']:.4f}; tensorboard: {trainer.log_dir}, "
        f"checkpoints: {trainer.ckpt_dir}")
    return {**result, "resumed_from": str(resumed) if resumed else None, "ckpt_dir": str(trainer.ckpt_dir),
            "log_dir": str(trainer.log_dir), "rank": ctx.rank, "world_size": ctx.world_size}


main = app_main("train", train, "train")


if __name__ == "__main__":
    main()
