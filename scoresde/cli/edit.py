"""``scoresde-edit``: guidance, SDEdit, inpainting, anagrams, hybrids and forward-process views with a
pretrained model (Hydra app, ``configs/edit.yaml``). Every mode writes one image grid ``<mode>.png``:

* ``guidance``: one row per CFG scale in ``scales``; one column per class (``class_label=null``) or ``n`` samples.
* ``sdedit``: the inputs, then one row per strength in ``strengths`` (conditioned on ``class_label`` with ``scale``).
* ``inpaint``: the inputs, the masked inputs (unknown pixels grey), then replacement and/or RePaint results.
* ``anagram``: ``n`` anagrams, then the same seen through ``view``.
* ``hybrid``: ``n`` hybrids, their low-pass (seen from afar), their high-pass (seen up close, + 0 offset).
* ``forward``: the first input noised to each of ``times`` (columns), then Tweedie, iterative and blur denoising.

The sampler is ``solver=<name>`` (``scoresde.SOLVERS``) with ``steps``, ``grid`` and its constructor options as
``options.<name>=<value>`` (no ``+`` needed). Every value is checked before the model runs; a wrong one is refused
in one line that names the key (:func:`scoresde.cli.common.app_main`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

import scoresde
from scoresde import editing
from scoresde.cli.common import (
    app_main,
    bool_option,
    float_option,
    int_option,
    make_dir,
    one_line,
    output_dir,
    plain,
    torch_threads,
)
from scoresde.cli.solver_options import build_solver
from scoresde.distributed import resolve_device
from scoresde.errors import ConfigError, UserError
from scoresde.guidance import classifier_free_guidance
from scoresde.models.loader import LoadedModel, load_model
from scoresde.training.trainer import image_grid

MODES = ("guidance", "sdedit", "inpaint", "anagram", "hybrid", "forward")
MASKS = ("left_half", "right_half", "top_half", "bottom_half", "center")
INPAINT_METHODS = (*editing.METHODS, "both")
MAX_UPSCALE = 64
DATASET_INPUT = re.compile(r"fashion_mnist:(\d+)(?:-(\d+))?")


@dataclass(frozen=True)
class Settings:
    """The values of the config, each read and checked once (:func:`read_settings`); a bad one names its key."""

    mode: str
    sampler: dict[str, Any]  # solver (name), options (its constructor's), steps, grid
    seed: int
    n: int
    scale: float
    scales: list[float]
    strengths: list[float]
    method: str
    jump_length: int
    resamplings: int
    view: str
    blur_sigma: float
    times: list[float]
    upscale: int
    invert: bool


def choice(cfg: Any, key: str, choices: Any) -> str:
    """``cfg[key]`` as one of ``choices``; a ConfigError naming the key and the choices otherwise."""
    value = cfg.get(key)
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {key}={value!r}")
    return value


def float_list(cfg: DictConfig, key: str, **bounds: Any) -> list[float]:
    """``cfg[key]``: a non-empty list of finite numbers within ``bounds`` (:func:`float_option`'s); one number
    counts as a list of one."""
    values = plain(cfg.get(key))
    values = values if isinstance(values, list) else [values]
    if not values:
        raise ConfigError(f"{key} must be a non-empty list of numbers, got {key}=[]")
    return [float_option({key: v}, key, **bounds) for v in values]


def sampler_settings(cfg: DictConfig) -> dict[str, Any]:
    """The solver (``solver=<name>`` from configs/solver/, its options merged with ``options``), ``steps`` and
    ``grid`` (null: the solver config's), checked by building the solver once: an option the solver does not take
    lists the options it does."""
    entries, options = plain(cfg.get("solvers")) or {}, plain(cfg.get("options")) or {}
    if not isinstance(entries, dict) or len(entries) != 1 or not isinstance(next(iter(entries.values())), dict):
        raise ConfigError(f"choose one solver with solver=<name> (configs/solver/), got solvers={entries!r}")
    entry = next(iter(entries.values()))
    name = entry.get("name")
    if not isinstance(options, dict):
        raise ConfigError(f"options must be a mapping of solver options (options.<name>=<value>), got "
                          f"options={options!r}")
    if not isinstance(name, str) or name not in scoresde.SOLVERS:
        raise ConfigError(f"solver must be one of {', '.join(sorted(scoresde.SOLVERS))}, got solver={name!r}")
    options = {**(entry.get("options") or {}), **options}
    build_solver(name, options, "options")  # an option the solver does not take lists the ones it does
    grid = cfg.get("grid") if cfg.get("grid") is not None else entry.get("grid", "karras")
    if grid not in scoresde.GRIDS:
        raise ConfigError(f"grid must be one of {', '.join(scoresde.GRIDS)}, got grid={grid!r}")
    return {"solver": name, "options": options, "steps": int_option(cfg, "steps", minimum=1), "grid": grid}


def sampler(st: Settings) -> dict[str, Any]:
    """The samplers' keyword arguments: a fresh solver built with its options (so that no solver option can
    collide with an editing function's own arguments, such as inpaint's ``method``), ``steps`` and ``grid``."""
    return {"solver": scoresde.get_solver(st.sampler["solver"], **st.sampler["options"]),
            "steps": st.sampler["steps"], "grid": st.sampler["grid"]}


def read_settings(cfg: DictConfig) -> Settings:
    """Every setting the app reads, checked before the model is loaded."""
    upscale = int_option(cfg, "upscale", minimum=1)
    if upscale > MAX_UPSCALE:
        raise ConfigError(f"upscale must be an integer in [1, {MAX_UPSCALE}], got upscale={upscale}")
    return Settings(
        mode=choice(cfg, "mode", MODES), sampler=sampler_settings(cfg), seed=int_option(cfg, "seed", minimum=0),
        n=int_option(cfg, "n", minimum=1), scale=float_option(cfg, "scale"), scales=float_list(cfg, "scales"),
        strengths=float_list(cfg, "strengths", minimum=0, maximum=1),
        method=choice(cfg, "method", INPAINT_METHODS), jump_length=int_option(cfg, "jump_length", minimum=1),
        resamplings=int_option(cfg, "resamplings", minimum=1), view=choice(cfg, "view", editing.VIEWS),
        blur_sigma=float_option(cfg, "blur_sigma", minimum=0, open_below=True),
        times=float_list(cfg, "times", minimum=0, open_below=True), upscale=upscale,
        invert=bool_option(cfg, "invert"))


def class_of(pre: LoadedModel, label: Any, key: str = "class_label") -> int | None:
    """A class index from an index or a class name (None stays None: unconditional); errors name ``key``."""
    if label is None:
        return None
    if isinstance(label, bool) or not isinstance(label, int | str):
        raise ConfigError(f"{key} must be a class index or name, got {key}={label!r}")
    try:
        return pre.class_index(label)
    except (UserError, ValueError) as e:
        raise ConfigError(f"{key}={label}: {one_line(e)}") from None


def guided(pre: LoadedModel, label: int | None, scale: float) -> scoresde.ScoreModel:
    """The model for ``label`` with CFG ``scale`` (unconditional for None; scale 1 is the plain conditional)."""
    if label is None or float(scale) == 1.0:
        return pre.score_model(label)
    return classifier_free_guidance(pre.model, pre.sde, label, scale)


def draw(model: scoresde.ScoreModel, pre: LoadedModel, n: int, st: Settings, seed: int) -> Tensor:
    kw = sampler(st)
    return scoresde.sample(model, kw.pop("solver"), kw.pop("steps"), (n, *pre.shape), seed=seed, denoise=True,
                           device=next(pre.model.parameters()).device, **kw)


def dataset_images(src: str) -> Tensor:
    """Fashion-MNIST test images ``i..j`` of ``input=fashion_mnist:<i>`` or ``fashion_mnist:<i>-<j>``."""
    match = DATASET_INPUT.fullmatch(src)
    if match is None or (match[2] is not None and int(match[2]) < int(match[1])):
        raise ConfigError(f"input={src}: use fashion_mnist:<i> or fashion_mnist:<i>-<j> (test images i..j, "
                          "0 <= i <= j)")
    from scoresde.data import load_fashion_mnist
    try:
        images, _ = load_fashion_mnist("test")
    except OSError as e:
        raise UserError(f"input={src}: {one_line(e)}") from None
    first, last = int(match[1]), int(match[2] or match[1])
    if last >= len(images):
        raise ConfigError(f"input={src}: the Fashion-MNIST test set has images 0..{len(images) - 1}")
    return images[first:last + 1]


def inputs(pre: LoadedModel, cfg: DictConfig, st: Settings) -> Tensor:
    """The images to edit: an image file, ``fashion_mnist:<i>`` or ``fashion_mnist:<i>-<j>`` (test-set images
    i..j), or ``n`` model samples (clipped to the data range [-1, 1], as their PNG is)."""
    src, device = cfg.get("input"), next(pre.model.parameters()).device
    if src is None:
        model = guided(pre, class_of(pre, cfg.class_label), st.scale)  # samples as images: clipped to [-1, 1]
        return draw(model, pre, st.n, st, st.seed + 1000).clamp(-1, 1)
    src = str(src)
    if src.startswith("fashion_mnist:"):
        return dataset_images(src).to(device)
    try:
        return editing.load_image(src, pre.shape, invert=st.invert).to(device)
    except (UserError, ValueError, OSError) as e:
        raise UserError(f"input={src}: {one_line(e)}") from None


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
    elif isinstance(spec, str) and Path(spec).suffix:
        try:
            mask = editing.load_image(spec, (1, h, w))[0, 0] > 0
        except (ValueError, OSError) as e:
            raise UserError(f"mask={spec}: {one_line(e)}") from None
    else:
        raise ConfigError(f"unknown mask {spec!r}; use one of {', '.join(MASKS)} or an image file (white = known), "
                          f"got mask={spec!r}")
    return mask


def run_guidance(pre: LoadedModel, cfg: DictConfig, st: Settings) -> list[Tensor]:
    label = class_of(pre, cfg.class_label)
    labels = torch.arange(pre.num_classes or 0) if label is None else torch.full((st.n,), label)
    if not len(labels):
        raise ConfigError("mode=guidance needs a class-conditional model (this one has no classes); "
                          "use mode=sdedit or another pretrained=")
    return [draw(classifier_free_guidance(pre.model, pre.sde, labels, w), pre, len(labels), st, st.seed)
            for w in st.scales]


def run_sdedit(pre: LoadedModel, cfg: DictConfig, st: Settings) -> list[Tensor]:
    x, model = inputs(pre, cfg, st), guided(pre, class_of(pre, cfg.class_label), st.scale)
    return [x] + [editing.sdedit(model, x, s, seed=st.seed, shape=pre.shape, **sampler(st)) for s in st.strengths]


def run_inpaint(pre: LoadedModel, cfg: DictConfig, st: Settings) -> list[Tensor]:
    mask = make_mask(cfg.mask, pre.shape)
    x, model = inputs(pre, cfg, st), guided(pre, class_of(pre, cfg.class_label), st.scale)
    mask = mask.to(x.device)
    methods = editing.METHODS if st.method == "both" else (st.method,)
    rows = [x, torch.where(mask, x, torch.zeros_like(x))]
    for method in methods:
        rows.append(editing.inpaint(model, x, mask, method=method, jump_length=st.jump_length,
                                    resamplings=st.resamplings, seed=st.seed, shape=pre.shape, **sampler(st)))
    return rows


def two_classes(pre: LoadedModel, cfg: DictConfig) -> tuple[int, int]:
    a, b = class_of(pre, cfg.class_label), class_of(pre, cfg.class_b, "class_b")
    if a is None or b is None:
        raise ConfigError(f"mode={cfg.mode} needs two classes: set class_label=... and class_b=... "
                          f"(one of {', '.join(pre.class_names) or 'the class indices'})")
    return a, b


def run_anagram(pre: LoadedModel, cfg: DictConfig, st: Settings) -> list[Tensor]:
    a, b = two_classes(pre, cfg)
    model = editing.anagram_model(pre.model, pre.sde, a, b, st.view, st.scale)
    x = draw(model, pre, st.n, st, st.seed)
    return [x, editing.get_view(st.view).forward(x)]


def run_hybrid(pre: LoadedModel, cfg: DictConfig, st: Settings) -> list[Tensor]:
    a, b = two_classes(pre, cfg)
    sigma = st.blur_sigma
    x = draw(editing.hybrid_model(pre.model, pre.sde, a, b, sigma, st.scale), pre, st.n, st, st.seed)
    return [x, editing.gaussian_blur(x, sigma), editing.high_pass(sigma)(x)]


def run_forward(pre: LoadedModel, cfg: DictConfig, st: Settings) -> list[Tensor]:
    for t in st.times:
        if not pre.sde.t_min <= t <= pre.sde.T:
            raise ConfigError(f"times must lie in the {pre.sde.name} SDE's [{pre.sde.t_min:g}, {pre.sde.T:g}], "
                              f"got times={[float(v) for v in st.times]}")
    x0, model = inputs(pre, cfg, st)[:1], pre.score_model()
    results = [editing.compare_denoisers(model, x0, t, seed=st.seed, **sampler(st)) for t in st.times]
    return [torch.cat([r[key] for r in results]) for key in ("noisy", "tweedie", "iterative", "blur")]


RUNNERS = {"guidance": run_guidance, "sdedit": run_sdedit, "inpaint": run_inpaint, "anagram": run_anagram,
           "hybrid": run_hybrid, "forward": run_forward}


def save_rows(rows: list[Tensor], path: Path, upscale: int) -> Path:
    """Rows of images (each (n, C, H, W) in [-1, 1]) as one PNG grid."""
    n = max(len(r) for r in rows)
    grid = image_grid(torch.cat([r.float().cpu() for r in rows]), nrow=n)
    return editing.save_image(grid * 2 - 1, path, scale=upscale)


def png_path(cfg: DictConfig, mode: str) -> Path:
    """Where the grid goes (``out``, else ``<out_dir>/<mode>.png``), its folder created now, so that a path that
    cannot hold it fails before the work."""
    key = "out" if cfg.get("out") else "out_dir"
    path = Path(str(cfg.out)).expanduser() if key == "out" else output_dir(cfg) / f"{mode}.png"
    if path.suffix.lower() != ".png":
        raise ConfigError(f"out must name a .png file, got out={cfg.out}")
    make_dir(path.parent, key, cfg.get(key))
    if path.is_dir():
        raise ConfigError(f"{key}={cfg.get(key)}: {path} is a folder, not a file")
    return path


def device_of(cfg: DictConfig) -> torch.device:
    try:
        return resolve_device(cfg.get("device", "cpu"))
    except (ValueError, RuntimeError) as e:  # the message names device=
        raise ConfigError(one_line(e)) from None


def edit(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured mode; returns ``{"png", "rows"}``."""
    st, device = read_settings(cfg), device_of(cfg)
    path = png_path(cfg, st.mode)
    with torch_threads(cfg.get("threads")):
        try:
            pre = load_model(str(cfg.pretrained), device=device)
        except (UserError, OSError) as e:
            raise UserError(f"pretrained={cfg.pretrained}: {one_line(e)}") from e
        if len(pre.shape) != 3:
            raise ConfigError(f"pretrained={cfg.pretrained}: scoresde-edit edits images (C, H, W); this model's "
                              f"samples have shape {pre.shape}")
        with torch.no_grad():
            rows = RUNNERS[st.mode](pre, cfg, st)
        try:
            save_rows(rows, path, st.upscale)
        except OSError as e:
            key = "out" if cfg.get("out") else "out_dir"
            raise UserError(f"{key}={cfg.get(key)}: cannot write {path}: {e.strerror or e}") from None
    print(f"scoresde-edit mode={st.mode}: wrote {path}")
    return {"png": path, "rows": rows}


main = app_main("edit", edit, "edit", option_keys=("options",))


if __name__ == "__main__":
    main()
