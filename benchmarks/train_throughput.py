"""Training throughput of the default Fashion-MNIST model: optimizer steps/s and samples/s.

The model is ``configs/model/small_unet.yaml`` (a class-conditional U-Net, EDM preconditioning) on 28×28×1 with
10 classes, trained with ``configs/loss/edm.yaml`` under ``configs/sde/vp.yaml`` by :class:`scoresde.training.Trainer`
(label dropout 0.1, AdamW, EMA, gradient clipping: the full training step). Real Fashion-MNIST is used when it is
installed; otherwise random tensors of the same shape and labels (the table says which: throughput does not depend
on the pixel values). Runs on CPU, and on CUDA when available, in fp32 and with bf16 autocast.

    python benchmarks/train_throughput.py --steps 20 --batch 64
    python benchmarks/train_throughput.py --device cuda --steps 200 --batch 256 --model tiny_unet
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import scoresde
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


def measure(model_name: str, device: str, bf16: bool, steps: int, batch: int, warmup: int) -> dict[str, float]:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="train", overrides=["data=fashion_mnist", f"model={model_name}", "loss=edm"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    if not model.num_classes:
        raise SystemExit(f"model={model_name} is not class-conditional; set model.num_classes in its config")
    x, y, _ = load(max(batch * 4, 1024))
    trainer = Trainer(model, scoresde.get_sde(**named(cfg.sde, "sde")), get_loss(**named(cfg.loss, "loss")), x,
                      labels=y, label_dropout=float(cfg.label_dropout), batch_size=batch, lr=float(cfg.lr),
                      ema=EMA(model, decay=0.999), total_steps=warmup + steps, device=device, bf16=bf16,
                      progress=False, log_every=0)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    trainer.train(warmup)
    sync()
    start = time.perf_counter()
    trainer.train(steps)
    sync()
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    return {"steps_per_s": steps / seconds, "samples_per_s": steps * batch / seconds, "params": params,
            "ms_per_step": 1000 * seconds / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cpu, and cuda when available)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per setting")
    parser.add_argument("--batch", type=int, default=64, help="batch size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--model", default="small_unet", help="a configs/model/ entry (class-conditional)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    settings = [(d, bf16) for d in devices for bf16 in ((False, True) if d.startswith("cuda") else (False,))]
    source = load(1)[2]
    rows = []
    for device, bf16 in settings:
        r = measure(args.model, device, bf16, args.steps, args.batch, args.warmup)
        name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
        rows.append(f"| {device} ({name}) | {'bf16' if bf16 else 'fp32'} | {args.batch} | {args.steps} | "
                    f"{r['ms_per_step']:.1f} | {r['steps_per_s']:.2f} | {r['samples_per_s']:.0f} |")
    print(f"Machine: {cpu_name()}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), "
          f"torch {torch.__version__}, Python {platform.python_version()}")
    print(f"Model: configs/model/{args.model}.yaml, {r['params']:,} parameters, 10 classes, 28x28x1, EDM loss, "
          f"VP SDE, label dropout; data: {source}")
    print()
    print("| device | precision | batch | timed steps | ms/step | steps/s | samples/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
