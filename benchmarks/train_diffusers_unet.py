"""Train a small diffusers ``UNet2DModel`` on Fashion-MNIST with diffusers' own DDPM recipe, for issue 16 §4: a model
that neither scoresde nor diffusers' samplers were written for, sampled by both.

What it trains: ``UNet2DModel(sample_size=28, in/out 1 channel, block_out_channels=(16, 32, 64),
layers_per_block=1)``, plain ``DownBlock2D``/``UpBlock2D`` with one attention block (``AttnDownBlock2D`` /
``AttnUpBlock2D``) at the lowest resolution (7×7), 686 769 parameters (2.8 MB of float32 safetensors); (32, 64, 64)
ran at 1.4 s/step on the shared CPU, too few steps for a 50-minute budget. Data: the 60000 Fashion-MNIST training
images scaled to [-1, 1] (``scoresde.data.load_image_dataset``, ``x/127.5 − 1``). Loss: the ε-loss of Ho et al. 2020,
Algorithm 1 — ``DDPMScheduler(num_train_timesteps=1000)`` (linear β from 1e-4 to 0.02), t uniform on {0, …, 999},
``x_t = scheduler.add_noise(x₀, ε, t)`` (eq. 4: √ᾱ_t·x₀ + √(1−ᾱ_t)·ε) and ``‖ε − ε_θ(x_t, t)‖²`` averaged over
pixels. Adam (lr 5e-4 after a linear warm-up of 200 steps, gradient norm clipped to 1), batch 64, a fixed seed, EMA
of the weights (``scoresde.models.EMA``) with diffusers' warm-up (``diffusers.training_utils.EMAModel`` without
``use_ema_warmup``): β_k = min(0.999, (1 + k)/(10 + k)) at step k, so the average forgets the random initialization
(a constant 0.999 would keep 0.999^k of it: 5 % after 3000 steps); the EMA weights are saved.

Output: a pipeline-layout directory that ``scoresde.models.external.from_diffusers`` reads —
``<out>/unet/`` (``UNet2DModel.save_pretrained``: config.json + safetensors) and ``<out>/scheduler/``
(``DDPMScheduler.save_pretrained``: scheduler_config.json) — plus ``<out>/training.json`` (the settings, steps,
seconds, losses). The directory is rewritten every ``--save-minutes`` and at the end, so a stopped run leaves a model.

    python benchmarks/train_diffusers_unet.py --minutes 50 --threads 1 --out benchmarks/models/diffusers_fashion_mnist
    scoresde-sample pretrained=diffusers:benchmarks/models/diffusers_fashion_mnist solver=dpmpp_2m steps=20 n=64

Measured (2-core Intel Xeon CPU, torch 2.13.0+cpu, diffusers 0.42.1, ``--threads 1``, load average 3–4.2 from
other jobs, 2026-12-04): with ``--minutes 44`` the run was stopped by hand after its 32-minute save: 2183 steps in
1921.6 s (0.88 s/step), loss 0.051 (mean of the last 100 steps); ``benchmarks/models/diffusers_fashion_mnist/``
holds it (``training.json``: every 100-step mean). At that point the ε error at t ≈ 999 is still too large for
σ_max ≈ 157 (most samples saturate; benchmarks/RESULTS.md, "Your own model: a diffusers UNet trained with
diffusers' DDPM loss").
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

INSTALL = {"fashion_mnist": "apt-get install -y dataset-fashion-mnist"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="benchmarks/models/diffusers_fashion_mnist", help="output directory")
    p.add_argument("--dataset", default="fashion_mnist", help="a scoresde image dataset (fashion_mnist, digits, ...)")
    p.add_argument("--root", default=None, help="the dataset's folder (default: where its package installs it)")
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    p.add_argument("--channels", default="16,32,64", help="block_out_channels, comma-separated")
    p.add_argument("--layers", type=int, default=1, help="layers_per_block")
    p.add_argument("--no-attention", action="store_true", help="no attention block at the lowest resolution")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200, help="linear learning-rate warm-up steps")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights (after warm-up)")
    p.add_argument("--steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--minutes", type=float, default=None, help="stop after this much wall clock (training only)")
    p.add_argument("--save-minutes", type=float, default=10.0, help="rewrite the output this often")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.steps is None and args.minutes is None:
        p.error("give --steps and/or --minutes")
    return args


def load_images(name: str, root: str | None, limit: int | None) -> torch.Tensor:
    """(N, C, H, W) float32 in [-1, 1]; a missing dataset exits 2 with one line naming how to install it."""
    from scoresde.data import IMAGE_DATASETS, load_image_dataset
    from scoresde.errors import UserError
    if name not in IMAGE_DATASETS:
        sys.exit(f"error: unknown --dataset {name!r}; choose one of {', '.join(IMAGE_DATASETS)}")
    try:
        images, _ = load_image_dataset(name, "train", root)
    except (FileNotFoundError, UserError):
        where = root or IMAGE_DATASETS[name].default_root
        how = f"install it with `{INSTALL[name]}`" if name in INSTALL else "see scoresde.data for where it is read"
        print(f"error: {name} not found in {where}; {how} (or pass --root)", file=sys.stderr)
        sys.exit(2)
    return images[:limit] if limit else images


def build_unet(size: int, channels_in: int, channels: tuple[int, ...], layers: int, attention: bool) -> Any:
    """The UNet2DModel: plain ResNet down/up blocks, optionally attention at the lowest resolution only."""
    from diffusers import UNet2DModel
    last_down, first_up = ("AttnDownBlock2D", "AttnUpBlock2D") if attention else ("DownBlock2D", "UpBlock2D")
    groups = math.gcd(*channels, 32)
    return UNet2DModel(sample_size=size, in_channels=channels_in, out_channels=channels_in,
                       block_out_channels=channels, layers_per_block=layers, norm_num_groups=groups,
                       down_block_types=("DownBlock2D",) * (len(channels) - 1) + (last_down,),
                       up_block_types=(first_up,) + ("UpBlock2D",) * (len(channels) - 1))


def save(out: Path, unet: Any, ema: Any, scheduler: Any, info: dict[str, Any]) -> None:
    """EMA weights into a copy of the UNet → ``out/unet``; the scheduler → ``out/scheduler``; ``training.json``."""
    import copy
    averaged = copy.deepcopy(unet)
    ema.copy_to(averaged)
    averaged.save_pretrained(out / "unet", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    (out / "training.json").write_text(json.dumps(info, indent=1) + "\n")


def train(args: argparse.Namespace) -> dict[str, Any]:
    """The training loop (Ho et al. 2020, Algorithm 1, with diffusers' ``add_noise``); returns the run's record."""
    import diffusers
    from diffusers import DDPMScheduler
    from tqdm import tqdm

    from scoresde.models import EMA
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images = load_images(args.dataset, args.root, args.limit)
    channels = tuple(int(c) for c in args.channels.split(","))
    unet = build_unet(images.shape[-1], images.shape[1], channels, args.layers, not args.no_attention).train()
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    ema = EMA(unet, decay=args.ema)
    opt = torch.optim.Adam(unet.parameters(), lr=args.lr)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / max(args.warmup, 1)))
    gen = torch.Generator().manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {
        "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]) if sys.argv[0].endswith(".py") else None,
        "settings": {k: v for k, v in vars(args).items() if k != "quiet"},
        "images": len(images), "parameters": sum(p.numel() for p in unet.parameters()),
        "torch": torch.__version__, "diffusers": diffusers.__version__, "machine": platform.processor() or
        platform.machine(), "threads": torch.get_num_threads(), "loss_every_100": []}
    order, pos, step, losses = torch.randperm(len(images), generator=gen), 0, 0, []
    start = last_save = time.perf_counter()
    bar = tqdm(total=args.steps, disable=args.quiet, unit="step", dynamic_ncols=True)
    while True:
        elapsed = time.perf_counter() - start
        out_of_time = args.minutes is not None and elapsed >= 60 * args.minutes
        if out_of_time or (args.steps is not None and step >= args.steps):
            break
        if pos + args.batch > len(order):  # a new epoch: a new permutation
            order, pos = torch.randperm(len(images), generator=gen), 0
        x0 = images[order[pos:pos + args.batch]]
        pos += args.batch
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen)
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        warm.step()
        ema.decay = min(args.ema, (1 + step) / (10 + step))  # diffusers' EMA warm-up (see the docstring)
        ema.update(unet)
        step += 1
        losses.append(loss.item())
        if step % 100 == 0:
            info["loss_every_100"].append(round(sum(losses[-100:]) / 100, 5))
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-100:]) / len(losses[-100:]):.4f}")
        if time.perf_counter() - last_save >= 60 * args.save_minutes:
            info.update(steps=step, seconds=round(time.perf_counter() - start, 1), finished=False)
            save(out, unet, ema, scheduler, info)
            last_save = time.perf_counter()
    bar.close()
    tail = losses[-500:] or [float("nan")]
    info.update(steps=step, seconds=round(time.perf_counter() - start, 1), finished=True,
                final_loss_mean_last_500=round(sum(tail) / len(tail), 5))
    save(out, unet, ema, scheduler, info)
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import diffusers  # noqa: F401
    except ImportError:
        print("error: this script needs the diffusers package (pip install diffusers)", file=sys.stderr)
        return 2
    info = train(args)
    print(f"{info['steps']} steps in {info['seconds']} s, loss (mean of the last 500 steps) "
          f"{info['final_loss_mean_last_500']}; saved to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
