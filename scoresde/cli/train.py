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

Bad configs fail before training starts with a :class:`ConfigError` that names the setting and the value (every
number and switch through the typed getters of :mod:`scoresde.cli.common`, ``ema.*``, ``sample.*`` including the
solver's options, unknown sde/loss/data/solver/grid names, a run directory that cannot be created, a network that
cannot take the data's shape); a loss that diverges names ``lr``; the console
app prints it as one line and exits with status 2. One trainer per run directory: a second one on the same
directory is refused (:class:`scoresde.training.run_lock.RunLock`).

Resuming: run again in the same run directory with ``resume=true``, e.g.
``scoresde-train steps=2000 hydra.run.dir=runs/x resume=true``: the latest checkpoint there restores the
model, EMA, optimizer, step, data order and every RNG, and training continues exactly up to ``steps``.

Several processes: ``torchrun --nproc_per_node N -m scoresde.cli.train hydra.run.dir=runs/x ...`` (or
``torchrun --nproc_per_node N --no-python scoresde-train ...``) trains the same config data-parallel
(:func:`scoresde.distributed.init_distributed`: NCCL on CUDA, gloo on CPU). ``batch_size`` is the global
batch (each rank takes ``batch_size/N``), so ``lr`` needs no rescaling; rank 0 alone writes tensorboard
events and checkpoints, into its run directory, which every rank uses. A rank that crashes makes the
others fail within seconds (its connection closes), one that hangs after ``dist_timeout_s``, with a
:class:`scoresde.distributed.RankFailure` printed as one line (exit status 1).
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
from scoresde.cli.common import (
    app_main,
    bool_option,
    float_option,
    int_option,
    make_output_dir,
    named,
    output_dir,
    plain,
    torch_threads,
)
from scoresde.cli.solver_options import build_solver
from scoresde.data.from_config import load_data_config
from scoresde.distributed import DistContext, broadcast_object, init_distributed, resolve_device, shutdown
from scoresde.errors import ConfigError
from scoresde.models import EMA, Preconditioned
from scoresde.models.registry import build_network, network_spec, preconditioning_spec
from scoresde.solvers.grids import GRIDS
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
    """The :class:`EMA` of the ``ema`` config; a value EMA refuses is a ConfigError naming ``ema.<key>``."""
    if not isinstance(plain(node), dict | None):
        raise ConfigError(f"ema must be a mapping (decay, or half_life_kimg and rampup_ratio), got ema={node!r}")
    cfg = {k: v for k, v in (plain(node) or {}).items() if v is not None}
    if "half_life_kimg" in cfg:
        cfg.setdefault("batch_size", batch_size)
    try:
        return EMA(model, **cfg)
    except TypeError as e:
        raise ConfigError(f"ema: {e}; the options are decay, half_life_kimg, rampup_ratio") from None
    except ValueError as e:
        named_keys = [k for k in cfg if k in str(e)]
        key = f"ema.{named_keys[0]}" if len(named_keys) == 1 else "ema"
        value = f"={cfg[named_keys[0]]!r}" if len(named_keys) == 1 else ""
        raise ConfigError(f"{key}{value}: {e}") from None


def check_scalars(cfg: DictConfig) -> None:
    """Every top-level number and switch, checked by its key (a ConfigError naming the key and the value), and
    the sample settings, before anything is built."""
    int_option(cfg, "steps", 400, minimum=1)
    int_option(cfg, "batch_size", 256, minimum=1)
    lr = float_option(cfg, "lr", None, minimum=0, open_below=True)
    float_option(cfg, "weight_decay", 0.0, minimum=0)
    int_option(cfg, "warmup_steps", 0, minimum=0)
    float_option(cfg, "lr_min", 0.0, minimum=0, maximum=lr)
    if cfg.get("grad_clip") is not None:
        float_option(cfg, "grad_clip", None, minimum=0)
    below_one(cfg, "label_dropout", 0.0)
    int_option(cfg, "seed", 0, minimum=0)
    int_option(cfg, "log_every", 25, minimum=0)
    if int_option(cfg, "ckpt_every", 100) < 1:  # 0 used to mean "only at the end"; say how to get that
        raise ConfigError(f"ckpt_every must be an integer >= 1, got ckpt_every={cfg.get('ckpt_every')} (a checkpoint "
                          "is always written at the end: ckpt_every=<steps> gives only that one)")
    int_option(cfg, "keep_checkpoints", 0, minimum=0)
    float_option(cfg, "dist_timeout_s", 1800, minimum=0, open_below=True)
    for key in ("bf16", "resume", "progress"):
        bool_option(cfg, key, False)
    check_data_switches(cfg)
    check_ema(cfg)
    check_sample(cfg)


def below_one(cfg: DictConfig, key: str, default: Any = None) -> float:
    """``cfg[key]`` (dotted) as a finite number in [0, 1); a ConfigError naming the key otherwise."""
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if hasattr(node, "get") else None
    value = default if node is None else node
    want = ConfigError(f"{key} must be a finite number in [0, 1), got {key}={value!r}")
    try:
        number = float_option({"v": value}, "v", minimum=0, maximum=1)
    except ConfigError:
        raise want from None
    if number >= 1:
        raise want
    return number


def check_data_switches(cfg: DictConfig) -> None:
    data = cfg.get("data")
    if data is not None and hasattr(data, "get") and data.get("hflip") is not None:
        bool_option(cfg, "data.hflip")


def check_ema(cfg: DictConfig) -> None:
    """``ema.decay`` in [0, 1), ``ema.half_life_kimg`` and ``ema.rampup_ratio`` > 0 (when set)."""
    ema = cfg.get("ema")
    if ema is None or not hasattr(ema, "get"):
        return
    if ema.get("decay") is not None:
        below_one(cfg, "ema.decay")
    for key in ("half_life_kimg", "rampup_ratio"):
        if ema.get(key) is not None:
            float_option(cfg, f"ema.{key}", None, minimum=0, open_below=True)


def check_sample(cfg: DictConfig) -> None:
    """``sample.every`` >= 0, ``sample.steps`` and ``sample.n`` >= 1, a known ``sample.solver`` taking
    ``sample.options``, a known ``sample.grid``."""
    sample = cfg.get("sample") or {}
    int_option(cfg, "sample.every", 0, minimum=0)
    int_option(cfg, "sample.steps", 18, minimum=1)
    int_option(cfg, "sample.n", 1000, minimum=1)
    solver = sample.get("solver", "heun")
    if solver not in scoresde.SOLVERS:
        raise ConfigError(f"unknown sample.solver {solver!r}; known solvers: {', '.join(sorted(scoresde.SOLVERS))}")
    options = plain(sample.get("options")) or {}
    if not isinstance(options, dict):
        raise ConfigError(f"sample.options must be a mapping of solver options, got sample.options={options!r}")
    build_solver(str(solver), options, "sample.options")
    grid = sample.get("grid", "karras")
    if str(grid) not in GRIDS:
        raise ConfigError(f"unknown sample.grid {grid!r}; known grids: {', '.join(GRIDS)}")


def by_name(build: Any, node: Any, what: str) -> Any:
    """``build(**config)``, with the library's KeyError (unknown name) or TypeError (bad option) as a ConfigError."""
    try:
        return build(**named(node, what))
    except KeyError as e:
        raise ConfigError(f"{what}: {e.args[0]}") from None
    except TypeError as e:
        raise ConfigError(f"{what}: bad option in {plain(node)}: {e}") from None
    except ValueError as e:  # a value the SDE or loss refuses (sde.t_min=2, ...)
        raise ConfigError(f"{what}: {e}") from None


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
    grad_clip = None if cfg.get("grad_clip") is None else float_option(cfg, "grad_clip")
    return dict(batch_size=int_option(cfg, "batch_size"), lr=float_option(cfg, "lr"),
                weight_decay=float_option(cfg, "weight_decay", 0.0), warmup_steps=int_option(cfg, "warmup_steps", 0),
                lr_schedule=str(cfg.get("lr_schedule", "constant")), lr_min=float_option(cfg, "lr_min", 0.0),
                grad_clip=grad_clip, total_steps=int_option(cfg, "steps"), ckpt_every=int_option(cfg, "ckpt_every"),
                log_every=int_option(cfg, "log_every", 25), sample_every=int_option(cfg, "sample.every", 0),
                sample_solver=sample.get("solver", "heun"), sample_steps=int_option(cfg, "sample.steps", 18),
                sample_grid=sample.get("grid", "karras"), sample_options=plain(sample.get("options")),
                n_samples=int_option(cfg, "sample.n", 1000), seed=int_option(cfg, "seed", 0),
                bf16=bool_option(cfg, "bf16", False), keep_checkpoints=int_option(cfg, "keep_checkpoints", 0),
                config=stored_config(cfg), hflip=bool_option(cfg, "data.hflip", False))


def stored_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as checkpoints store it: plain data, the network in registry form."""
    return {**plain(cfg), "model": stored_model_config(cfg.get("model"))}


def build_trainer(cfg: DictConfig, ctx: DistContext | None = None) -> Trainer:
    """Everything the config describes, checked and assembled into a :class:`Trainer` (nothing is trained yet).
    ``ctx``: the torchrun context (default: one process on the config's device). Raises :class:`ConfigError`
    for a config that cannot work."""
    check_scalars(cfg)
    ctx = ctx or DistContext(device=pick_device(cfg))
    seed = int_option(cfg, "seed", 0, minimum=0)
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
    if int_option(cfg, "batch_size") > len(data):
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {len(data)} training samples of "
                          f"data={named(cfg.get('data'), 'data')['name']}")
    if model.num_classes and labels is None:
        raise ConfigError(f"model {model_name!r} is class-conditional (num_classes={model.num_classes}), but "
                          f"data={named(cfg.get('data'), 'data')['name']} has no labels")
    label_dropout = float_option(cfg, "label_dropout", 0.0) if model.num_classes else 0.0
    out = Path(broadcast_object(str(output_dir(cfg)), ctx, "agreeing on the run directory"))  # rank 0's
    try:  # the Trainer's own checks (label range, warmup, intervals, ...) are config errors here too
        return Trainer(model, sde, loss, data, labels=labels if model.num_classes else None,
                       label_dropout=label_dropout, ema=build_ema(cfg.get("ema"), model, int_option(cfg, "batch_size")),
                       log_dir=out / "tb", ckpt_dir=out / "checkpoints", device=ctx.device,
                       progress=bool_option(cfg, "progress", True), distributed=ctx, **trainer_options(cfg))
    except ValueError as e:
        raise ConfigError(str(e)) from e


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build the trainer, resume when ``resume=true``, train to ``steps``; returns ``{"step", "loss", ...}``.
    Under torchrun (``WORLD_SIZE > 1``) it joins the process group first and leaves it at the end."""
    check_scalars(cfg)
    pick_device(cfg)  # a device that cannot be had is a config error, before joining any process group
    resume = bool_option(cfg, "resume", False)
    with torch_threads(cfg.get("threads")):
        ctx = init_distributed(cfg.get("device", "cpu"), float_option(cfg, "dist_timeout_s", 1800))
        say = print if ctx.is_main else (lambda *a, **k: None)
        lock = RunLock(make_output_dir(cfg) if ctx.is_main else output_dir(cfg))
        try:
            if ctx.is_main:  # rank 0 writes the run directory; a second trainer there is refused
                lock.acquire()
            trainer = build_trainer(cfg, ctx)
            resumed = trainer.resume() if resume else None
            if resumed is not None:
                say(f"resumed from {resumed} at step {trainer.step}")
            elif resume:
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


# ``scoresde-train``: a bad config prints one line, ``scoresde-train: error: ...``, and exits with status 2; a failed
# rank under torchrun, one line and status 1; ``sample.options.X=...`` sets an option of the sample-grid solver.
main = app_main("train", train, "train", option_keys=("sample.options",))


if __name__ == "__main__":
    main()
