"""``scoresde-edit``: guidance, SDEdit, inpainting, anagrams, hybrids and forward-process views with a
pretrained model (Hydra app, ``configs/edit.yaml``). Every mode writes one image grid ``<mode>.png``:

* ``guidance``: one row per CFG scale in ``scales``; one column per class (``class_label=null``) or ``n`` samples.
* ``sdedit``: the inputs, then one row per strength in ``strengths`` (conditioned on ``class_label`` with ``scale``).
* ``inpaint``: the inputs, the masked inputs (unknown pixels grey), then replacement and/or RePaint results.
* ``anagram``: ``n`` anagrams, then the same seen through ``view``.
* ``hybrid``: ``n`` hybrids, their low-pass (seen from afar), their high-pass (seen up close, + 0 offset).
* ``forward``: the first input noised to each of ``times`` (columns), then Tweedie, iterative and blur denoising.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torch import Tensor

import scoresde
from scoresde import editing
from scoresde.cli.common import CONFIG_DIR, output_dir, plain
from scoresde.cli.sample import pick_device
from scoresde.guidance import classifier_free_guidance
from scoresde.models.pretrained import Pretrained, load_pretrained
from scoresde.training.trainer import image_grid

MODES = ("guidance", "sdedit", "inpaint", "anagram", "hybrid", "forward")
MASKS = ("left_half", "right_half", "top_half", "bottom_half", "center")


def class_of(pre: Pretrained, label: Any) -> int | None:
    """A class index from an index or a class name (None stays None: unconditional)."""
    return None if label is None else pre.class_index(label)


def guided(pre: Pretrained, label: int | None, scale: float) -> scoresde.ScoreModel:
    """The model for ``label`` with CFG ``scale`` (unconditional for None; scale 1 is the plain conditional)."""
    if label is None or float(scale) == 1.0:
        return pre.score_model(label)
    return classifier_free_guidance(pre.model, pre.sde, label, scale)


def sample_kw(cfg: DictConfig) -> dict[str, Any]:
    return {"solver": str(cfg.solver), "steps": int(cfg.steps), "grid": str(cfg.grid), **(plain(cfg.options) or {})}


def draw(model: scoresde.ScoreModel, pre: Pretrained, n: int, cfg: DictConfig, seed: int) -> Tensor:
    kw = sample_kw(cfg)
    return scoresde.sample(model, kw.pop("solver"), kw.pop("steps"), (n, *pre.shape), seed=seed, denoise=True,
                           device=next(pre.model.parameters()).device, **kw)


def inputs(pre: Pretrained, cfg: DictConfig) -> Tensor:
    """The images to edit: an image file, ``fashion_mnist:<i>`` or ``fashion_mnist:<i>-<j>`` (test-set images
    i..j), or ``n`` model samples."""
    src, device = cfg.get("input"), next(pre.model.parameters()).device
    if src is None:
        model = guided(pre, class_of(pre, cfg.class_label), float(cfg.scale))
        return draw(model, pre, int(cfg.n), cfg, int(cfg.seed) + 1000)
    src = str(src)
    if src.startswith("fashion_mnist:"):
        from scoresde.data import load_fashion_mnist
        images, _ = load_fashion_mnist("test")
        first, _, last = src.split(":", 1)[1].partition("-")
        return images[int(first):int(last or first) + 1].to(device)
    return editing.load_image(src, pre.shape, invert=bool(cfg.invert)).to(device)


def make_mask(spec: Any, shape: tuple[int, ...]) -> Tensor:
    """A (H, W) boolean mask (True = known) by name, or from an image file (white = known)."""
    h, w = shape[-2:]
    mask = torch.zeros(h, w, dtype=torch.bool)
    regions = {"left_half": (slice(None), slice(0, w // 2)), "right_half": (slice(None), slice(w - w // 2, w)),
               "top_half": (slice(0, h // 2), slice(None)), "bottom_half": (slice(h - h // 2, h), slice(None))}
    if spec == "center":
        mask[:] = True
        mask[h // 4:h - h // 4, w // 4:w - w // 4] = False
    elif spec in regions:
        mask[regions[spec]] = True
        mask = ~mask  # the named region is the hole
    elif Path(str(spec)).suffix:
        mask = editing.load_image(str(spec), (1, h, w))[0, 0] > 0
    else:
        raise ValueError(f"unknown mask {spec!r}; use one of {', '.join(MASKS)} or an image file (white = known)")
    return mask


def run_guidance(pre: Pretrained, cfg: DictConfig) -> list[Tensor]:
    label = class_of(pre, cfg.class_label)
    labels = torch.arange(pre.num_classes) if label is None else torch.full((int(cfg.n),), label)
    return [draw(classifier_free_guidance(pre.model, pre.sde, labels, float(w)), pre, len(labels), cfg,
                 int(cfg.seed)) for w in plain(cfg.scales)]


def run_sdedit(pre: Pretrained, cfg: DictConfig) -> list[Tensor]:
    x, model = inputs(pre, cfg), guided(pre, class_of(pre, cfg.class_label), float(cfg.scale))
    kw = sample_kw(cfg)
    return [x] + [editing.sdedit(model, x, float(s), seed=int(cfg.seed), **kw) for s in plain(cfg.strengths)]


def run_inpaint(pre: Pretrained, cfg: DictConfig) -> list[Tensor]:
    x, model = inputs(pre, cfg), guided(pre, class_of(pre, cfg.class_label), float(cfg.scale))
    mask = make_mask(cfg.mask, pre.shape).to(x.device)
    methods = editing.METHODS if cfg.method == "both" else (str(cfg.method),)
    rows = [x, torch.where(mask, x, torch.zeros_like(x))]
    for method in methods:
        rows.append(editing.inpaint(model, x, mask, method=method, jump_length=int(cfg.jump_length),
                                    resamplings=int(cfg.resamplings), seed=int(cfg.seed), **sample_kw(cfg)))
    return rows


def two_classes(pre: Pretrained, cfg: DictConfig) -> tuple[int, int]:
    a, b = class_of(pre, cfg.class_label), class_of(pre, cfg.class_b)
    if a is None or b is None:
        raise ValueError(f"mode={cfg.mode} needs two classes: set class_label=... and class_b=... "
                         f"(one of {', '.join(pre.class_names) or 'the class indices'})")
    return a, b


def run_anagram(pre: Pretrained, cfg: DictConfig) -> list[Tensor]:
    a, b = two_classes(pre, cfg)
    model = editing.anagram_model(pre.model, pre.sde, a, b, str(cfg.view), float(cfg.scale))
    x = draw(model, pre, int(cfg.n), cfg, int(cfg.seed))
    return [x, editing.get_view(str(cfg.view)).forward(x)]


def run_hybrid(pre: Pretrained, cfg: DictConfig) -> list[Tensor]:
    a, b = two_classes(pre, cfg)
    sigma = float(cfg.blur_sigma)
    x = draw(editing.hybrid_model(pre.model, pre.sde, a, b, sigma, float(cfg.scale)), pre, int(cfg.n), cfg,
             int(cfg.seed))
    return [x, editing.gaussian_blur(x, sigma), editing.high_pass(sigma)(x)]


def run_forward(pre: Pretrained, cfg: DictConfig) -> list[Tensor]:
    x0, model, times = inputs(pre, cfg)[:1], pre.score_model(), plain(cfg.times)
    results = [editing.compare_denoisers(model, x0, float(t), seed=int(cfg.seed), **sample_kw(cfg)) for t in times]
    return [torch.cat([r[key] for r in results]) for key in ("noisy", "tweedie", "iterative", "blur")]


RUNNERS = {"guidance": run_guidance, "sdedit": run_sdedit, "inpaint": run_inpaint, "anagram": run_anagram,
           "hybrid": run_hybrid, "forward": run_forward}


def save_rows(rows: list[Tensor], path: Path, upscale: int) -> Path:
    """Rows of images (each (n, C, H, W) in [-1, 1]) as one PNG grid."""
    n = max(len(r) for r in rows)
    grid = image_grid(torch.cat([r.float().cpu() for r in rows]), nrow=n)
    return editing.save_image(grid * 2 - 1, path, scale=upscale)


def edit(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured mode; returns ``{"png", "rows"}``."""
    if cfg.mode not in RUNNERS:
        raise ValueError(f"unknown mode {cfg.mode!r}; choose one of {', '.join(MODES)}")
    pre = load_pretrained(str(cfg.pretrained), device=pick_device(cfg.get("device")))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    with torch.no_grad():
        rows = RUNNERS[str(cfg.mode)](pre, cfg)
    path = Path(str(cfg.out)) if cfg.get("out") else output_dir(cfg) / f"{cfg.mode}.png"
    save_rows(rows, path, int(cfg.upscale))
    print(f"scoresde-edit mode={cfg.mode}: wrote {path}")
    return {"png": path, "rows": rows}


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="edit")
def main(cfg: DictConfig) -> None:
    """Console entry point ``scoresde-edit`` (Hydra overrides on the command line)."""
    edit(cfg)


if __name__ == "__main__":
    main()
