"""``scoresde-train``: train a preconditioned score network (Hydra app, ``configs/train.yaml``).

The only code that reads the training config and calls ``hydra.utils.instantiate`` (for the network,
``model.net._target_``). The SDE (``configs/sde/``) and the loss (``configs/loss/``) are built by name with
:func:`scoresde.get_sde` and :func:`scoresde.training.get_loss`; the data (``configs/data/``) is a 2-D toy
(:func:`scoresde.data.make_toy`), the digits or Fashion-MNIST. Training itself is
:class:`scoresde.training.Trainer`, writing tensorboard events to ``<run dir>/tb`` and checkpoints to
``<run dir>/checkpoints``.

Resuming: run again in the same run directory with ``resume=true``, e.g.
``scoresde-train steps=2000 hydra.run.dir=runs/x resume=true``: the latest checkpoint there restores the
model, EMA, optimizer, step, data order and every RNG, and training continues exactly up to ``steps``.
"""
from __future__ import annotations

from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

import scoresde
from scoresde.cli.common import CONFIG_DIR, named, output_dir, plain
from scoresde.data import TOYS, load_digits, load_fashion_mnist, make_toy
from scoresde.models import EMA, Preconditioned
from scoresde.training import Trainer, get_loss

IMAGE_DATA = ("digits", "fashion_mnist")


def load_data(node: Any, seed: int) -> Tensor:
    """The training tensor the ``data`` config describes: a toy (n, 2) or images (N, 1, H, W) in [-1, 1]."""
    cfg = named(node, "data")
    name = cfg["name"]
    if name in TOYS:
        return make_toy(name, int(cfg.get("n", 20000)), torch.Generator().manual_seed(seed))
    if name == "digits":
        return load_digits(cfg.get("split", "train"))[0]
    if name == "fashion_mnist":
        kwargs = {"root": cfg["root"]} if cfg.get("root") else {}
        return load_fashion_mnist(cfg.get("split", "train"), **kwargs)[0]
    raise ValueError(f"unknown data {name!r}; choose a toy ({', '.join(TOYS)}) or one of {', '.join(IMAGE_DATA)}")


def build_model(node: Any) -> Preconditioned:
    """``Preconditioned(instantiate(model.net), kind, sigma_data, c_noise, normalize_input)``."""
    cfg = plain(node)
    if not isinstance(cfg, dict) or "net" not in cfg:
        raise ValueError("the model config needs a net with a _target_, e.g. model=mlp from configs/model/")
    net = hydra.utils.instantiate(cfg["net"])
    return Preconditioned(net, kind=cfg.get("kind", "edm"), sigma_data=float(cfg.get("sigma_data", 0.5)),
                          c_noise=cfg.get("c_noise"), normalize_input=bool(cfg.get("normalize_input", False)))


def build_ema(node: Any, model: Preconditioned, batch_size: int) -> EMA:
    cfg = {k: v for k, v in (plain(node) or {}).items() if v is not None}
    if "half_life_kimg" in cfg:
        cfg.setdefault("batch_size", batch_size)
    return EMA(model, **cfg)


def build_trainer(cfg: DictConfig) -> Trainer:
    """Everything the config describes, assembled into a :class:`Trainer` (nothing is trained yet)."""
    seed = int(cfg.get("seed", 0))
    seeds = [int(s) for s in np.random.SeedSequence([seed, 1]).generate_state(2)]
    torch.manual_seed(seeds[0])  # model initialization (and dropout, whose RNG state checkpoints keep)
    sde = scoresde.get_sde(**named(cfg.get("sde"), "sde"))
    loss = get_loss(**named(cfg.get("loss"), "loss"))
    data = load_data(cfg.get("data"), seeds[1])
    model = build_model(cfg.get("model"))
    out, sample = output_dir(cfg), cfg.get("sample") or {}
    return Trainer(model, sde, loss, data, batch_size=cfg.batch_size, lr=float(cfg.lr),
                   weight_decay=float(cfg.weight_decay), warmup_steps=cfg.warmup_steps, grad_clip=cfg.grad_clip,
                   ema=build_ema(cfg.get("ema"), model, cfg.batch_size), total_steps=cfg.steps, log_dir=out / "tb",
                   ckpt_dir=out / "checkpoints", ckpt_every=cfg.ckpt_every, log_every=cfg.log_every,
                   sample_every=sample.get("every", 0), sample_solver=sample.get("solver", "heun"),
                   sample_steps=sample.get("steps", 18), sample_grid=sample.get("grid", "karras"),
                   sample_options=plain(sample.get("options")), n_samples=sample.get("n", 1000), seed=seed,
                   device=str(cfg.get("device", "cpu")), bf16=bool(cfg.get("bf16", False)),
                   keep_checkpoints=cfg.get("keep_checkpoints", 0), config=plain(cfg),
                   progress=bool(cfg.get("progress", True)))


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build the trainer, resume when ``resume=true``, train to ``steps``; returns ``{"step", "loss", ...}``."""
    threads = torch.get_num_threads()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    try:
        trainer = build_trainer(cfg)
        resumed = trainer.resume() if cfg.get("resume") else None
        if resumed is not None:
            print(f"resumed from {resumed} at step {trainer.step}")
        elif cfg.get("resume"):
            print(f"resume=true but no checkpoint in {trainer.ckpt_dir}: starting from step 0")
        try:
            result = trainer.train()
        finally:
            trainer.close()
    finally:
        torch.set_num_threads(threads)
    print(f"step {result['step']}: loss {result['loss']:.4f}; tensorboard: {trainer.log_dir}, "
          f"checkpoints: {trainer.ckpt_dir}")
    return {**result, "resumed_from": str(resumed) if resumed else None, "ckpt_dir": str(trainer.ckpt_dir),
            "log_dir": str(trainer.log_dir)}


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    """Console entry point ``scoresde-train`` (Hydra overrides on the command line)."""
    train(cfg)


if __name__ == "__main__":
    main()
