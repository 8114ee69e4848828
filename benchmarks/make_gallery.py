"""Make the README's editing gallery (benchmarks/figures/gallery_*.png) with the shipped Fashion-MNIST model.

Each image is one ``scoresde-edit`` command; this script composes the same Hydra config, runs it, and prints
the command and its wall time. ``--pretrained`` takes a shipped model name, a pretrained file, or a
``scoresde-train`` checkpoint / run dir (e.g. ``/work/runs/fmnist`` for a run in progress)::

    python benchmarks/make_gallery.py                          # the shipped model
    python benchmarks/make_gallery.py --pretrained runs/fmnist --only guidance anagram
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from scoresde.cli.common import CONFIG_DIR
from scoresde.cli.edit import edit

FIGURES = Path(__file__).resolve().parent / "figures"
GALLERY: dict[str, list[str]] = {
    "guidance": ["mode=guidance", "scales=[0,1,2,4]"],
    "sdedit": ["mode=sdedit", "input=fashion_mnist:0-7", "strengths=[0.2,0.4,0.6,0.8]"],
    "sdedit_class": ["mode=sdedit", "input=fashion_mnist:0-7", "strengths=[0.4,0.6,0.8]",
                     "class_label=Bag", "scale=2"],
    "inpaint": ["mode=inpaint", "input=fashion_mnist:0-7", "mask=right_half", "method=both"],
    "anagram": ["mode=anagram", "class_label=Trouser", "class_b=Dress", "view=flip_ud", "scale=3"],
    "hybrid": ["mode=hybrid", "class_label=Bag", "class_b=Sneaker", "blur_sigma=2", "scale=3"],
    "forward": ["mode=forward", "input=fashion_mnist:0", "times=[0.1,0.3,1,3,10]"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", default="fashion_mnist", help="model name, pretrained file or checkpoint")
    parser.add_argument("--out", type=Path, default=FIGURES, help="folder for gallery_<name>.png")
    parser.add_argument("--only", nargs="*", choices=sorted(GALLERY), help="make only these images")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    total = time.perf_counter()
    for name in args.only or GALLERY:
        out = args.out / f"gallery_{name}.png"
        overrides = [f"pretrained={args.pretrained}", *GALLERY[name]]
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            cfg = compose(config_name="edit", overrides=[*overrides, f"out={out}"])
        tick = time.perf_counter()
        edit(cfg)
        print(f"  {time.perf_counter() - tick:6.1f} s  scoresde-edit {' '.join(overrides)} out={out.name}")
    print(f"gallery done in {time.perf_counter() - total:.1f} s")


if __name__ == "__main__":
    main()
