"""Training throughput of the default Fashion-MNIST model: optimizer steps/s and samples/s.

The model is ``configs/model/small_unet.yaml`` (a class-conditional U-Net, EDM preconditioning) on 28×28×1 with
10 classes, trained with ``configs/loss/edm.yaml`` under ``configs/sde/vp.yaml`` by :class:`scoresde.training.Trainer`
(label dropout 0.1, AdamW, EMA, gradient clipping: the full training step). Real Fashion-MNIST is used when it is
installed; otherwise random tensors of the same shape and labels (the table says which: throughput does not depend
on the pixel values). Runs on CPU, and on CUDA when available, in fp32 and with bf16 autocast.

Timing goes through :mod:`scoresde.bench.timing`: the thread count is pinned (``--threads``, else torch's default,
recorded), denormals flushed where supported, every setting trains on the same data tensors, and the settings run
interleaved — ``--repeats`` rounds of ``--steps`` optimizer steps each, after ``--warmup`` untimed steps — so the
table gives the median and interquartile range of ms/step, with the load average before and after.

    python benchmarks/train_throughput.py --steps 5 --repeats 9 --batch 64
    python benchmarks/train_throughput.py --device cuda --steps 50 --repeats 9 --batch 256 --model tiny_unet
"""
from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import scoresde
from scoresde.bench.timing import MAX_SPREAD, Comparison, Conditions, compare, pin_conditions
from scoresde.cli.common import CONFIG_DIR, named
from scoresde.cli.train import build_model
from scoresde.data import FASHION_MNIST_ROOT, load_fashion_mnist
from scoresde.models import EMA
from scoresde.training import Trainer, get_loss


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load(n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(images, labels, source): the first ``n`` Fashion-MNIST training images, or random stand-ins."""
    try:
        x, y = load_fashion_mnist("train", FASHION_MNIST_ROOT)
        return x[:n], y[:n], "Fashion-MNIST"
    except FileNotFoundError:
        g = torch.Generator().manual_seed(0)
        return (torch.rand(n, 1, 28, 28, generator=g) * 2 - 1, torch.randint(10, (n,), generator=g),
                "random tensors (Fashion-MNIST not installed)")


def make_trainer(model_name: str, device: str, bf16: bool, data: tuple[torch.Tensor, torch.Tensor], batch: int,
                 total_steps: int) -> tuple[Trainer, int]:
    """A fresh model (seed 0) and its full training step on ``data`` (the same tensors for every setting)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="train", overrides=["data=fashion_mnist", f"model={model_name}", "loss=edm"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    if not model.num_classes:
        raise SystemExit(f"model={model_name} is not class-conditional; set model.num_classes in its config")
    x, y = data
    trainer = Trainer(model, scoresde.get_sde(**named(cfg.sde, "sde")), get_loss(**named(cfg.loss, "loss")), x,
                      labels=y, label_dropout=float(cfg.label_dropout), batch_size=batch, lr=float(cfg.lr),
                      ema=EMA(model, decay=0.999), total_steps=total_steps, device=device, bf16=bf16,
                      progress=False, log_every=0)
    return trainer, sum(p.numel() for p in model.parameters())


def measure(args: argparse.Namespace, settings: list[tuple[str, bool]], conditions: Conditions
            ) -> tuple[Comparison, int]:
    """Every setting's trainer, ``--warmup`` untimed steps each, then ``--repeats`` interleaved rounds of
    ``--steps`` optimizer steps per setting (:func:`scoresde.bench.timing.compare`; CUDA-synchronised)."""
    x, y, _ = load(max(args.batch * 4, 1024))
    total = args.warmup + args.steps * args.repeats
    trainers, params = {}, 0
    for device, bf16 in settings:
        trainers[label(device, bf16)], params = make_trainer(args.model, device, bf16, (x, y), args.batch, total)
    for trainer in trainers.values():
        trainer.train(args.warmup)
    impls = {name: (lambda t=trainer: t.train(args.steps)) for name, trainer in trainers.items()}
    device = "cuda" if any(d.startswith("cuda") for d, _ in settings) else "cpu"
    result = compare(impls, repeats=args.repeats, warmup=0, device=device, conditions=conditions)
    return result, params


def label(device: str, bf16: bool) -> str:
    """The row name of a setting, e.g. ``cpu fp32``."""
    return f"{device} {'bf16' if bf16 else 'fp32'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cpu, and cuda when available)")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per timed round and setting")
    parser.add_argument("--repeats", type=int, default=9, help="timed interleaved rounds")
    parser.add_argument("--batch", type=int, default=64, help="batch size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per setting first")
    parser.add_argument("--model", default="small_unet", help="a configs/model/ entry (class-conditional)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, recorded)")
    args = parser.parse_args()
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    settings = [(d, bf16) for d in devices for bf16 in ((False, True) if d.startswith("cuda") else (False,))]
    conditions = pin_conditions(args.threads, devices[-1])
    source = load(1)[2]
    result, params = measure(args, settings, conditions)
    rows = []
    for device, bf16 in settings:
        name = label(device, bf16)
        ms = result.summary(name, 1e3 / args.steps)
        gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
        rows.append(f"| {device} ({gpu}) | {'bf16' if bf16 else 'fp32'} | {args.batch} | {args.repeats}×{args.steps} | "
                    f"{ms.fmt('.1f')} | {1e3 / ms.median:.2f} | {1e3 * args.batch / ms.median:.0f} |")
    print(f"Machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, Python "
          f"{platform.python_version()}; {conditions.describe()}")
    print(f"Model: configs/model/{args.model}.yaml, {params:,} parameters, 10 classes, 28x28x1, EDM loss, "
          f"VP SDE, label dropout; data: {source}")
    print(f"ms/step: median [IQR] over {args.repeats} interleaved rounds of {args.steps} steps per setting, after "
          f"{args.warmup} warm-up steps; steps/s and samples/s from the median")
    print()
    print("| device | precision | batch | timed rounds × steps | ms/step | steps/s | samples/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    reasons = result.too_noisy()
    if reasons:
        print(f"\n# not steady enough to quote (IQR/median above {MAX_SPREAD:.0%}): " + "; ".join(reasons))


if __name__ == "__main__":
    main()
