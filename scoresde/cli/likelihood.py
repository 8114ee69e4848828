"""``scoresde-likelihood``: log-likelihood or bits/dim through the probability-flow ODE, beside the DDPM bound.

A Hydra app (``configs/likelihood.yaml``) that evaluates one of two things:

- **a checkpoint** (``ckpt=<file, run dir or shipped name>``, loaded with :func:`scoresde.models.loader.load_model`,
  EMA weights by default) on a dataset: ``data=<digits|fashion_mnist|mnist|
  cifar10|ring|...>`` (default: the checkpoint's training data), the first ``n`` images of split ``split``
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

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor
from tqdm.auto import tqdm

import scoresde
from scoresde.cli.common import CONFIG_DIR, generator, named
from scoresde.cli.sample import pick_device
from scoresde.data import IMAGE_DATASETS, TOYS, load_image_dataset, make_toy
from scoresde.evaluation.ddpm_bound import ddpm_bound, has_ddpm_chain
from scoresde.evaluation.likelihood import DIVERGENCES, Dequantization, ode_log_likelihood
from scoresde.models.loader import load_model
from scoresde.models.score_model import ScoreModel
from scoresde.sde.base import SDE

DTYPES = {"float32": torch.float32, "float64": torch.float64}
AUTO_EXACT_MAX_DIM = 16  # divergence=auto: the exact trace up to this many dimensions, Hutchinson above


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


def _seeds(seed: int) -> dict[str, int]:
    keys = ("data", "ode", "ddpm")
    return dict(zip(keys, (int(s) for s in np.random.SeedSequence(seed).generate_state(len(keys)))))


def _positive_int(cfg: DictConfig, key: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a positive integer, got {key}={value!r}")
    return value


def _check(cfg: DictConfig) -> None:
    for key in ("n", "batch", "probes"):
        _positive_int(cfg, key)
    if str(cfg.get("dtype", "float64")) not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.get('dtype')!r}")
    if str(cfg.divergence) not in (*DIVERGENCES, "auto"):
        raise ValueError(f"divergence must be auto, {' or '.join(DIVERGENCES)}, got {cfg.divergence!r}")


def _dequantization(cfg: DictConfig, name: str) -> Dequantization:
    levels = cfg.get("levels") or (IMAGE_DATASETS[name].levels if name in IMAGE_DATASETS else None)
    if levels is None:
        raise ValueError(f"image data {name!r}: set levels= (the number of quantization levels of its pixels)")
    return Dequantization(int(levels), centered=bool(cfg.get("centered", True)))


def testbed_source(cfg: DictConfig, seeds: dict[str, int], dtype: torch.dtype) -> Source:
    """An exact-score testbed under ``sde=``; finite datasets (digits) give their first n points."""
    sde = scoresde.get_sde(**named(cfg.get("sde"), "sde"))
    testbed = scoresde.get_testbed(**named(cfg.get("testbed"), "testbed"))
    if bool((testbed.stds == 0).all()):  # a finite dataset: its points are the data
        if cfg.n > len(testbed.means):
            raise ValueError(f"n={cfg.n} exceeds the {len(testbed.means)} points of {testbed.name}")
        x = testbed.means[:cfg.n].reshape((cfg.n, *testbed.event_shape)).to(dtype)
    else:
        x = testbed.sample(cfg.n, generator=generator(seeds["data"]), dtype=dtype)
    deq = _dequantization(cfg, testbed.name) if len(testbed.event_shape) > 1 else None
    return Source(repr(testbed), sde, x, None, lambda s, _: testbed.model(s), deq,
                  exact=lambda pts, t: testbed.marginal_log_prob(pts, t, sde), log_p0=testbed.log_prob)


def _dataset(cfg: DictConfig, data: dict[str, Any], seed: int) -> tuple[Tensor, Tensor | None]:
    """The first n images of the split (with labels), or n points of a toy drawn from ``seed``."""
    name, n = data["name"], int(cfg.n)
    if name in TOYS:
        return make_toy(name, n, generator(seed)), None
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown data {name!r}; choose one of {', '.join([*IMAGE_DATASETS, *TOYS])}")
    x, labels = load_image_dataset(name, str(cfg.get("split") or data.get("split", "test")), data.get("root"))
    if n > len(x):
        raise ValueError(f"n={n} exceeds the {len(x)} images of {name}")
    return x[:n], labels[:n]


def checkpoint_source(cfg: DictConfig, seeds: dict[str, int], dtype: torch.dtype) -> Source:
    """A trained checkpoint on ``data=`` (default: its training data), with the checkpoint's SDE."""
    loaded = load_model(cfg.ckpt, bool(cfg.get("ema", True)))
    path, net, sde, train_cfg = loaded.provenance["source"], loaded.model, loaded.sde, loaded.training_config
    device = pick_device(cfg.get("device"))
    net.to(device=device, dtype=dtype)
    if cfg.get("data") is None and not train_cfg.get("data"):
        raise ValueError(f"{path} does not say what it was trained on; give data=<name>")
    data = named(cfg.data if cfg.get("data") is not None else train_cfg.get("data"), "data")
    x, labels = _dataset(cfg, data, seeds["data"])
    if tuple(x.shape[1:]) != loaded.shape:
        trained = (train_cfg.get("data") or {}).get("name")
        raise ValueError(f"data {data['name']!r} has samples of shape {tuple(x.shape[1:])}, but the checkpoint's "
                         f"model takes samples of shape {loaded.shape}"
                         + (f" (it was trained on {trained!r})" if trained else ""))
    if cfg.get("labels"):
        if not net.num_classes or labels is None:
            raise ValueError("labels=true needs a class-conditional checkpoint and labelled data; this checkpoint "
                             f"has num_classes={net.num_classes} and data {data['name']!r} "
                             f"{'has no' if labels is None else 'has'} labels")
        labels = labels.to(device)
    else:
        labels = None
    deq = _dequantization(cfg, data["name"]) if data["name"] in IMAGE_DATASETS else None
    title = f"{path} (step {loaded.step}, {'EMA' if cfg.get('ema', True) else 'raw'} weights) on " \
            f"{data['name']}{'' if deq is None else ' ' + str(cfg.get('split') or data.get('split', 'test'))}" \
            f"{', true labels' if labels is not None else ', null class' if net.num_classes else ''}"
    return Source(title, sde, x.to(device=device, dtype=dtype), labels,
                  lambda s, lb: net.score_model(s, lb), deq)


def likelihood(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation the config describes, print it and return the numbers: ``mean``, ``std_error`` (across
    samples), ``probe_std_error``, ``nfe``, ``seconds``, ``exact`` (testbeds), ``values`` (per sample, CPU),
    ``points`` (the points whose density was computed: the data, dequantized for images) and ``ddpm`` (the bound's
    mean, std_error, nfe, seconds; or None)."""
    _check(cfg)
    seeds, dtype = _seeds(int(cfg.get("seed", 0))), DTYPES[str(cfg.get("dtype", "float64"))]
    threads = torch.get_num_threads()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    try:
        src = (checkpoint_source if cfg.get("ckpt") is not None else testbed_source)(cfg, seeds, dtype)
        t_min = float(src.sde.t_min if cfg.get("t_min") is None else cfg.t_min)
        ode = _ode(cfg, src, t_min, seeds["ode"])
        bound = _bound(cfg, src, seeds["ddpm"])
    finally:
        torch.set_num_threads(threads)
    out = {"source": src.title, "sde": repr(src.sde), "n": len(src.x), "t_min": t_min,
           "unit": "nats" if src.deq is None else "bits/dim", **ode, "ddpm": bound}
    print(format_report(out, cfg))
    return out


def _batches(src: Source, batch: int) -> list[tuple[Tensor, Tensor | None]]:
    labels = [None] * math.ceil(len(src.x) / batch) if src.labels is None else src.labels.split(batch)
    return list(zip(src.x.split(batch), labels))


def _ode(cfg: DictConfig, src: Source, t_min: float, seed: int) -> dict[str, Any]:
    """ODE log-likelihood (nats) or bits/dim per sample over batches, with the Hutchinson error of the mean."""
    dim = math.prod(src.x.shape[1:])
    divergence = str(cfg.divergence)
    if divergence == "auto":
        divergence = "exact" if dim <= AUTO_EXACT_MAX_DIM else "hutchinson"
    per_unit = 1.0 if src.deq is None else 1 / (dim * math.log(2))  # d(bits/dim)/d(log p) = −1/(D ln 2)
    values, points, exact, probe_var, nfe, seconds, gen = [], [], [], [], 0, 0.0, generator(seed)
    bar = tqdm(_batches(src, int(cfg.batch)), desc="scoresde-likelihood", disable=not cfg.get("progress", True))
    for xb, lb in bar:
        r = ode_log_likelihood(src.model_for(src.sde, lb), xb, divergence=divergence, probes=int(cfg.probes),
                               noise=str(cfg.noise), method=str(cfg.method), rtol=float(cfg.rtol),
                               atol=float(cfg.atol), t_min=t_min, generator=gen, dequantization=src.deq)
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
    probe = float(torch.cat(probe_var).sum().sqrt() / len(src.x)) if probe_var and cfg.probes > 1 else None
    return {"mean": mean, "std_error": se, "probe_std_error": probe, "divergence": divergence, "nfe": nfe,
            "seconds": seconds, "exact": float(torch.cat(exact).mean()) if exact else None,
            "values": values.detach().cpu(), "points": torch.cat(points).detach().cpu()}


def _mean_se(v: Tensor) -> tuple[float, float]:
    return float(v.mean()), float(v.std() / math.sqrt(len(v))) if len(v) > 1 else math.nan


def _bound(cfg: DictConfig, src: Source, seed: int) -> dict[str, Any] | None:
    """Ho et al.'s bound of the same model (bits/dim, or a lower bound on log p in nats), or None."""
    bcfg = cfg.get("ddpm_bound") or {}
    sde = src.sde if bcfg.get("sde") is None else scoresde.get_sde(str(bcfg.sde))
    if not bcfg.get("enabled", True) or not has_ddpm_chain(sde):
        return None
    timesteps, gen, parts, nfe, seconds = bcfg.get("timesteps"), generator(seed), [], 0, 0.0
    for xb, lb in _batches(src, int(cfg.batch)):
        r = ddpm_bound(src.model_for(sde, lb), xb, int(bcfg.get("steps", 1000)),
                       variance=str(bcfg.get("variance", "beta")),
                       decoder="continuous" if src.deq is None else "discrete",
                       levels=256 if src.deq is None else src.deq.levels,
                       timesteps=None if timesteps is None else int(timesteps), generator=gen)
        parts.append(-r.nats if src.deq is None else r.bits_per_dim)  # nats: a lower bound on log p
        nfe, seconds = nfe + r.nfe, seconds + r.seconds
    mean, se = _mean_se(torch.cat(parts))
    return {"mean": mean, "std_error": se, "steps": int(bcfg.get("steps", 1000)), "sde": repr(sde), "nfe": nfe,
            "seconds": seconds,
            "exact_log_p0": float(src.log_p0(src.x).mean()) if src.log_p0 and src.deq is None else None}


def format_report(out: dict[str, Any], cfg: DictConfig) -> str:
    unit = out["unit"]
    what = "bits/dim" if unit == "bits/dim" else "mean log-likelihood [nats]"
    probes = "" if out["divergence"] == "exact" else f", {cfg.probes} {cfg.noise} probes"
    probe = "" if out["probe_std_error"] is None else f" (Hutchinson share {out['probe_std_error']:.4f})"
    lines = [f"{out['source']} under {out['sde']}: {what} of {out['n']} samples at t_min={out['t_min']:.3g}",
             f"  ODE ({cfg.method}, rtol={float(cfg.rtol):.0e}, {out['divergence']} divergence{probes}): "
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


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="likelihood")
def main(cfg: DictConfig) -> None:
    """Console entry point ``scoresde-likelihood`` (Hydra overrides on the command line)."""
    likelihood(cfg)


if __name__ == "__main__":
    main()
