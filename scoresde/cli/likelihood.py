"""``scoresde-likelihood``: log-likelihood or bits/dim through the probability-flow ODE, beside the DDPM bound.

A Hydra app (``configs/likelihood.yaml``) that evaluates one of two things:

- **a checkpoint** (``ckpt=<file, run dir or shipped name>``, loaded with :func:`scoresde.models.loader.load_model`,
  EMA weights by default; ``ckpt=diffusers:<dir>`` or ``pretrained=diffusers:<dir>``: a local diffusers model
  directory under the SDE of its scheduler's ᾱ table, ``data=`` required) on a dataset:
  ``data=<digits|fashion_mnist|mnist|cifar10|ring|...>`` (default: the checkpoint's training data), the first ``n``
  images of split ``split``
  (default ``test``), or ``n`` points of a 2-D toy. The SDE is the checkpoint's. A class-conditional model is
  evaluated with the null class (its unconditional model) unless ``labels=true``, which feeds each image's label.
- **an exact-score testbed** (no ``ckpt``): ``testbed=...`` under ``sde=...``; every testbed is a Gaussian mixture,
  so its exact ``log p_{t_min}`` is printed beside the ODE's.

For each it prints the mean ± its standard error across samples of the ODE result
(:func:`scoresde.evaluation.likelihood.ode_log_likelihood`), the Hutchinson probes' share of that error
(``√Σ se_i² / n``) when the divergence is estimated, the NFE and the seconds, and the DDPM variational bound
(Ho et al. 2020, eq. 5; :func:`scoresde.evaluation.ddpm_bound.ddpm_bound`) of the same model when its SDE is a
continuous-time DDPM chain (VP, cosine VP). ``ddpm_bound.sde=vp`` evaluates the chain of another SDE with the same
network instead (a preconditioned network sees only σ, so a checkpoint is a model under every SDE).

Units. Vector data report nats. Image data report bits/dim of the *discrete* data: data on the grid
``2k/(L − 1) − 1`` (L levels: 256 for 8-bit images, 17 for the 8×8 digits, whose pixels are 0..16) are dequantized
with bins of width ``2/(L − 1)`` centred on the data points (``centered=true``, the bins of Ho et al.'s discretized
decoder, so that ODE and chain measure the same discrete distribution; ``log P(k) ≥ E_u log p(x̃) + D log(2/(L−1))``)
or, with ``centered=false``, with the usual ``x̃ = 2(k + u)/L − 1`` (Song et al. 2021, offset ``log₂(L/2)``, 7 bits
for L = 256; see :func:`scoresde.evaluation.likelihood.bits_per_dim`). Rescaling the digits to 8 bits would invent
239 unused levels and make the number measure the dequantization noise, so their bits/dim lie in [0, log₂ 17].
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from tqdm.auto import tqdm

import scoresde
from scoresde.cli.common import (
    app_main,
    bool_option,
    float_option,
    generator,
    int_option,
    make_dir,
    named,
    one_line,
    torch_threads,
)
from scoresde.data import IMAGE_DATASETS, TOYS, load_image_dataset, make_toy
from scoresde.distributed import resolve_device
from scoresde.errors import ConfigError, UserError
from scoresde.evaluation.ddpm_bound import VARIANCES, ddpm_bound, has_ddpm_chain
from scoresde.evaluation.likelihood import DIVERGENCES, PROBE_NOISES, Dequantization, ode_log_likelihood
from scoresde.models.loader import load_model
from scoresde.models.score_model import ScoreModel
from scoresde.sde.base import SDE
from scoresde.solvers.ode import torchdiffeq_methods

DTYPES = {"float32": torch.float32, "float64": torch.float64}
AUTO_EXACT_MAX_DIM = 16  # divergence=auto: the exact trace up to this many dimensions, Hutchinson above
SPLITS = ("train", "test", "all")


@dataclass
class Source:
    """What is evaluated: the SDE, the data (n, ...) with labels for the model (or None: the null class), a score
    model per batch of labels, the dequantization of image data, and the exact ``log p_t`` of a testbed."""

    title: str
    sde: SDE
    x: Tensor
    labels: Tensor | None
    model_for: Callable[[SDE, Tensor | None], ScoreModel]
    deq: Dequantization | None
    exact: Callable[[Tensor, float], Tensor] | None = None
    log_p0: Callable[[Tensor], Tensor] | None = None


@dataclass(frozen=True)
class Options:
    """The run's settings, each read and checked once (:func:`read_options`); a bad one names its key."""

    n: int
    batch: int
    probes: int
    seed: int
    dtype: torch.dtype
    divergence: str
    noise: str
    method: str
    rtol: float
    atol: float
    t_min: float | None
    levels: int | None
    centered: bool
    ema: bool
    labels: bool
    split: str | None
    progress: bool
    bound: bool
    bound_sde: str | None
    bound_steps: int
    bound_variance: str
    bound_timesteps: int | None


def choice(cfg: Any, key: str, choices: Any, default: Any = None) -> str:
    """``cfg[key]`` (dotted keys allowed) as one of ``choices``; a ConfigError naming the key and the choices."""
    value = OmegaConf.select(cfg, key, default=default) if OmegaConf.is_config(cfg) else cfg.get(key, default)
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {key}={value!r}")
    return value


def _optional_int(cfg: DictConfig, key: str, minimum: int) -> int | None:
    return None if OmegaConf.select(cfg, key) is None else int_option(cfg, key, minimum=minimum)


def read_options(cfg: DictConfig) -> Options:
    """Every setting of the config, checked: integers, finite positive tolerances, names from their lists."""
    bound_sde = OmegaConf.select(cfg, "ddpm_bound.sde")
    if bound_sde is not None:
        try:
            scoresde.get_sde(str(bound_sde))
        except (UserError, TypeError) as e:
            raise ConfigError(f"ddpm_bound.sde={bound_sde!r}: {one_line(e)}") from None
    return Options(
        n=int_option(cfg, "n", minimum=1), batch=int_option(cfg, "batch", minimum=1),
        probes=int_option(cfg, "probes", minimum=1), seed=int_option(cfg, "seed", 0, minimum=0),
        dtype=DTYPES[choice(cfg, "dtype", DTYPES, "float64")],
        divergence=choice(cfg, "divergence", ("auto", *DIVERGENCES)),
        noise=choice(cfg, "noise", PROBE_NOISES, "rademacher"),
        method=choice(cfg, "method", torchdiffeq_methods(), "dopri5"),
        rtol=float_option(cfg, "rtol", minimum=0, maximum=1, open_below=True),
        atol=float_option(cfg, "atol", minimum=0, open_below=True),
        t_min=None if cfg.get("t_min") is None else float_option(cfg, "t_min", minimum=0, open_below=True),
        levels=_optional_int(cfg, "levels", minimum=2), centered=bool_option(cfg, "centered", True),
        ema=bool_option(cfg, "ema", True), labels=bool_option(cfg, "labels", False),
        split=None if cfg.get("split") is None else choice(cfg, "split", SPLITS),
        progress=bool_option(cfg, "progress", True),
        bound=bool_option(cfg, "ddpm_bound.enabled", True), bound_sde=None if bound_sde is None else str(bound_sde),
        bound_steps=int_option(cfg, "ddpm_bound.steps", 1000, minimum=2),
        bound_variance=choice(cfg, "ddpm_bound.variance", VARIANCES, "beta"),
        bound_timesteps=_optional_int(cfg, "ddpm_bound.timesteps", minimum=1))


def _seeds(seed: int) -> dict[str, int]:
    keys = ("data", "ode", "ddpm")
    return dict(zip(keys, (int(s) for s in np.random.SeedSequence(seed).generate_state(len(keys)))))


def _dequantization(opt: Options, name: str, x: Tensor) -> Dequantization:
    """The dequantization of image data ``x``: ``levels`` (default: the data set's) checked against the data."""
    levels = opt.levels or (IMAGE_DATASETS[name].levels if name in IMAGE_DATASETS else None)
    if levels is None:
        raise ConfigError(f"image data {name!r}: set levels= (the number of quantization levels of its pixels)")
    deq = Dequantization(int(levels), centered=opt.centered)
    if opt.levels is not None:
        try:
            deq.levels_of(x)
        except ValueError as e:
            raise ConfigError(f"levels={opt.levels}: {one_line(e)} (the {name} data)") from None
    return deq


def _group(cfg: DictConfig, key: str, build: Callable[..., Any]) -> Any:
    """``build(**cfg[key])`` for a config group (sde, testbed); its errors name the group."""
    spec = named(cfg.get(key), key)
    try:
        return build(**spec)
    except (UserError, TypeError, ValueError) as e:
        raise ConfigError(f"{key}={spec['name']}: {one_line(e)}") from None


def testbed_source(cfg: DictConfig, opt: Options, seeds: dict[str, int]) -> Source:
    """An exact-score testbed under ``sde=``; finite datasets (digits) give their first n points."""
    sde, testbed = _group(cfg, "sde", scoresde.get_sde), _group(cfg, "testbed", scoresde.get_testbed)
    if bool((testbed.stds == 0).all()):  # a finite dataset: its points are the data
        if opt.n > len(testbed.means):
            raise ConfigError(f"n={opt.n} exceeds the {len(testbed.means)} points of {testbed.name}")
        x = testbed.means[:opt.n].reshape((opt.n, *testbed.event_shape)).to(opt.dtype)
    else:
        x = testbed.sample(opt.n, generator=generator(seeds["data"]), dtype=opt.dtype)
    deq = _dequantization(opt, testbed.name, x) if len(testbed.event_shape) > 1 else None
    return Source(repr(testbed), sde, x, None, lambda s, _: testbed.model(s), deq,
                  exact=lambda pts, t: testbed.marginal_log_prob(pts, t, sde), log_p0=testbed.log_prob)


def _dataset(opt: Options, data: dict[str, Any], seed: int) -> tuple[Tensor, Tensor | None]:
    """The first n images of the split (with labels), or n points of a toy drawn from ``seed``."""
    name, n = data["name"], opt.n
    if name in TOYS:
        return make_toy(name, n, generator(seed)), None
    if name not in IMAGE_DATASETS:
        raise ConfigError(f"data.name must be one of {', '.join([*IMAGE_DATASETS, *TOYS])}, got data.name={name!r}")
    split = str(opt.split or data.get("split", "test"))
    try:
        x, labels = load_image_dataset(name, split, data.get("root"))
    except (UserError, KeyError, OSError) as e:
        raise UserError(f"data={name} split={split}: {one_line(e)}") from None
    if n > len(x):
        raise ConfigError(f"n={n} exceeds the {len(x)} images of {name}")
    return x[:n], labels[:n]


def _device(cfg: DictConfig) -> torch.device:
    try:
        return resolve_device(cfg.get("device", "auto"))
    except (ValueError, RuntimeError) as e:  # the message names device=
        raise ConfigError(one_line(e)) from None


def checkpoint_source(cfg: DictConfig, opt: Options, seeds: dict[str, int]) -> Source:
    """A trained checkpoint on ``data=`` (default: its training data), with the checkpoint's SDE."""
    device = _device(cfg)  # checked first: a device that cannot work fails before the checkpoint is read
    key, value = model_key(cfg)
    try:
        loaded = load_model(str(value), opt.ema)
    except (UserError, OSError) as e:
        raise UserError(f"{key}={value}: {one_line(e)}") from e
    path, net, sde, train_cfg = loaded.provenance["source"], loaded.model, loaded.sde, loaded.training_config
    net.to(device=device, dtype=opt.dtype)
    if cfg.get("data") is None and not train_cfg.get("data"):
        raise ConfigError(f"ckpt={path} does not say what it was trained on; give data=<name>")
    data = named(cfg.data if cfg.get("data") is not None else train_cfg.get("data"), "data")
    x, labels = _dataset(opt, data, seeds["data"])
    if tuple(x.shape[1:]) != loaded.shape:
        trained = (train_cfg.get("data") or {}).get("name")
        raise ConfigError(f"data {data['name']!r} has samples of shape {tuple(x.shape[1:])}, but the checkpoint's "
                          f"model takes samples of shape {loaded.shape}"
                          + (f" (it was trained on {trained!r})" if trained else ""))
    if opt.labels:
        if not net.num_classes or labels is None:
            raise ConfigError("labels=true needs a class-conditional checkpoint and labelled data; this checkpoint "
                              f"has num_classes={net.num_classes} and data {data['name']!r} "
                              f"{'has no' if labels is None else 'has'} labels")
        labels = labels.to(device)
    else:
        labels = None
    deq = _dequantization(opt, data["name"], x) if data["name"] in IMAGE_DATASETS else None
    weights = "a diffusers model" if loaded.provenance.get("format") == "diffusers" else \
        f"step {loaded.step}, {'EMA' if opt.ema else 'raw'} weights"
    title = f"{path} ({weights}) on " \
            f"{data['name']}{'' if deq is None else ' ' + str(opt.split or data.get('split', 'test'))}" \
            f"{', true labels' if labels is not None else ', null class' if net.num_classes else ''}"
    return Source(title, sde, x.to(device=device, dtype=opt.dtype), labels,
                  lambda s, lb: net.score_model(s, lb), deq)


def model_key(cfg: DictConfig) -> tuple[str, Any]:
    """``(key, value)`` of the model evaluated: ``ckpt`` or its alias ``pretrained`` (not both); value None: a
    testbed."""
    ckpt, pretrained = cfg.get("ckpt"), cfg.get("pretrained")
    if ckpt is not None and pretrained is not None:
        raise ConfigError(f"give ckpt= or pretrained=, not both (got ckpt={ckpt} and pretrained={pretrained})")
    return ("ckpt", ckpt) if pretrained is None else ("pretrained", pretrained)


def _out_dir(cfg: DictConfig) -> Path | None:
    """``out_dir`` (created now, so that a path that cannot hold it fails before the work), or None."""
    if not cfg.get("out_dir"):
        return None
    return make_dir(Path(str(cfg.out_dir)).expanduser(), "out_dir", cfg.out_dir)


def likelihood(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation the config describes, print it and return the numbers: ``mean``, ``std_error`` (across
    samples), ``probe_std_error``, ``nfe``, ``seconds``, ``exact`` (testbeds), ``values`` (per sample, CPU),
    ``points`` (the points whose density was computed: the data, dequantized for images) and ``ddpm`` (the bound's
    mean, std_error, nfe, seconds; or None). With ``out_dir`` also writes them (less the points) to
    ``<out_dir>/likelihood.json``."""
    opt = read_options(cfg)
    _device(cfg)  # a device name that cannot work is refused for testbeds too (they run on the CPU)
    seeds, out_dir = _seeds(opt.seed), _out_dir(cfg)
    with torch_threads(cfg.get("threads")):
        src = (checkpoint_source if model_key(cfg)[1] is not None else testbed_source)(cfg, opt, seeds)
        t_min = float(src.sde.t_min if opt.t_min is None else opt.t_min)
        if not t_min < src.sde.T:
            raise ConfigError(f"t_min must be below the {src.sde.name} SDE's T={src.sde.T:g}, got t_min={t_min:g}")
        _bound_sde(opt, src.sde)  # checked before the ODE runs
        ode = _ode(opt, src, t_min, seeds["ode"])
        bound = _bound(opt, src, seeds["ddpm"])
    out = {"source": src.title, "sde": repr(src.sde), "n": len(src.x), "t_min": t_min,
           "unit": "nats" if src.deq is None else "bits/dim", **ode, "ddpm": bound}
    print(format_report(out, opt))
    if out_dir is not None:
        record = {k: v for k, v in out.items() if k != "points"}
        record["values"] = out["values"].tolist()
        (out_dir / "likelihood.json").write_text(json.dumps(record, indent=1))
    return out


def _batches(src: Source, batch: int) -> list[tuple[Tensor, Tensor | None]]:
    labels = [None] * math.ceil(len(src.x) / batch) if src.labels is None else src.labels.split(batch)
    return list(zip(src.x.split(batch), labels))


def _ode(opt: Options, src: Source, t_min: float, seed: int) -> dict[str, Any]:
    """ODE log-likelihood (nats) or bits/dim per sample over batches, with the Hutchinson error of the mean."""
    dim = math.prod(src.x.shape[1:])
    divergence = opt.divergence
    if divergence == "auto":
        divergence = "exact" if dim <= AUTO_EXACT_MAX_DIM else "hutchinson"
    per_unit = 1.0 if src.deq is None else 1 / (dim * math.log(2))  # d(bits/dim)/d(log p) = −1/(D ln 2)
    values, points, exact, probe_var, nfe, seconds, gen = [], [], [], [], 0, 0.0, generator(seed)
    bar = tqdm(_batches(src, opt.batch), desc="scoresde-likelihood", disable=not opt.progress)
    for xb, lb in bar:
        r = ode_log_likelihood(src.model_for(src.sde, lb), xb, divergence=divergence, probes=opt.probes,
                               noise=opt.noise, method=opt.method, rtol=opt.rtol, atol=opt.atol, t_min=t_min,
                               generator=gen, dequantization=src.deq)
        nfe, seconds = nfe + r.nfe, seconds + r.seconds
        bar.set_postfix(nfe=nfe)
        values.append(r.log_likelihood if src.deq is None else r.bits_per_dim)
        points.append(r.x)
        if r.std_error is not None:
            probe_var.append((r.std_error * per_unit).pow(2))
        if src.exact is not None:
            ll = src.exact(r.x, t_min)  # at the same (dequantized) points
            exact.append(ll if src.deq is None else src.deq.bits_per_dim(ll, r.log_q, dim))
    values = torch.cat(values)
    mean, se = _mean_se(values)
    probe = float(torch.cat(probe_var).sum().sqrt() / len(src.x)) if probe_var and opt.probes > 1 else None
    return {"mean": mean, "std_error": se, "probe_std_error": probe, "divergence": divergence, "nfe": nfe,
            "seconds": seconds, "exact": float(torch.cat(exact).mean()) if exact else None,
            "values": values.detach().cpu(), "points": torch.cat(points).detach().cpu()}


def _mean_se(v: Tensor) -> tuple[float, float]:
    return float(v.mean()), float(v.std() / math.sqrt(len(v))) if len(v) > 1 else math.nan


def _bound_sde(opt: Options, evaluated: SDE) -> SDE | None:
    """The SDE whose DDPM chain gives the bound (None: no bound), its ``ddpm_bound.steps`` checked."""
    sde = evaluated if opt.bound_sde is None else scoresde.get_sde(opt.bound_sde)
    if not opt.bound or not has_ddpm_chain(sde):
        return None
    try:
        sde.ddpm_schedule(opt.bound_steps)
    except ValueError as e:
        raise ConfigError(f"ddpm_bound.steps={opt.bound_steps}: {one_line(e)}") from None
    return sde


def _bound(opt: Options, src: Source, seed: int) -> dict[str, Any] | None:
    """Ho et al.'s bound of the same model (bits/dim, or a lower bound on log p in nats), or None."""
    sde = _bound_sde(opt, src.sde)
    if sde is None:
        return None
    gen, parts, nfe, seconds = generator(seed), [], 0, 0.0
    for xb, lb in _batches(src, opt.batch):
        r = ddpm_bound(src.model_for(sde, lb), xb, opt.bound_steps, variance=opt.bound_variance,
                       decoder="continuous" if src.deq is None else "discrete",
                       levels=256 if src.deq is None else src.deq.levels, timesteps=opt.bound_timesteps,
                       generator=gen)
        parts.append(-r.nats if src.deq is None else r.bits_per_dim)  # nats: a lower bound on log p
        nfe, seconds = nfe + r.nfe, seconds + r.seconds
    mean, se = _mean_se(torch.cat(parts))
    return {"mean": mean, "std_error": se, "steps": opt.bound_steps, "sde": repr(sde), "nfe": nfe,
            "seconds": seconds,
            "exact_log_p0": float(src.log_p0(src.x).mean()) if src.log_p0 and src.deq is None else None}


def format_report(out: dict[str, Any], opt: Options) -> str:
    unit = out["unit"]
    what = "bits/dim" if unit == "bits/dim" else "mean log-likelihood [nats]"
    probes = "" if out["divergence"] == "exact" else f", {opt.probes} {opt.noise} probes"
    probe = "" if out["probe_std_error"] is None else f" (Hutchinson share {out['probe_std_error']:.4f})"
    lines = [f"{out['source']} under {out['sde']}: {what} of {out['n']} samples at t_min={out['t_min']:.3g}",
             f"  ODE ({opt.method}, rtol={opt.rtol:.0e}, {out['divergence']} divergence{probes}): "
             f"{out['mean']:.4f} ± {out['std_error']:.4f}{probe} {unit}; NFE {out['nfe']}, {out['seconds']:.2f} s"]
    if out["exact"] is not None:
        lines.append(f"  exact: {out['exact']:.4f} {unit}")
    b = out["ddpm"]
    if b is not None:
        sign = "≥" if unit == "bits/dim" else "≤"
        kind = "bits/dim" if unit == "bits/dim" else "nats, bound on log p_0 (continuous decoder)"
        lines.append(f"  DDPM bound (N={b['steps']}, {b['sde']}): {sign} {b['mean']:.4f} ± {b['std_error']:.4f} "
                     f"{kind}; NFE {b['nfe']}, {b['seconds']:.2f} s"
                     + ("" if b["exact_log_p0"] is None else f"; exact log p_0: {b['exact_log_p0']:.4f}"))
    return "\n".join(lines)


main = app_main("likelihood", likelihood, "likelihood")


if __name__ == "__main__":
    main()
