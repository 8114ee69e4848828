"""``scoresde-likelihood``: the log-likelihood of an exact-score testbed through the probability-flow ODE.

A Hydra app (``configs/likelihood.yaml``). It draws ``n_samples`` points of the testbed (digits: the first
images of the dataset), runs :func:`scoresde.evaluation.likelihood.ode_log_likelihood` over them in batches
and prints the mean ± its standard error across samples, the NFE and the seconds, beside

- the exact value ``log p_{t_min}`` of the testbed (every testbed is a Gaussian mixture with exact marginals);
- the DDPM variational bound (Ho et al. 2020, eq. 5) of the ``ddpm_bound.steps``-step chain, when the SDE
  has a ``ddpm_schedule`` (VP, cosine).

2-D / vector testbeds report nats. Image testbeds (digits) report bits/dim of the *17-level* data: the 8×8
digits are integers 0..16, scaled by the testbed as ``k/8 − 1``, so they are dequantized with bins of width
2/16 centred on the data points (``Dequantization(17, centered=True)``: ``log P(k) ≥ E_u log p(x̃) + 64·log(1/8)``)
and the DDPM bound uses Ho's discretized decoder with the same bins. Rescaling to 8 bits (round(v·255/16))
would invent 239 unused levels and make the number measure the dequantization noise rather than the model,
so the digits' bits/dim lie in [0, log₂ 17 ≈ 4.09] per pixel, not CIFAR's [0, 8].
"""
from __future__ import annotations

import math
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

import scoresde
from scoresde.cli.common import CONFIG_DIR, generator, named
from scoresde.evaluation.ddpm_bound import ddpm_bound
from scoresde.evaluation.likelihood import Dequantization, ode_log_likelihood

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _seeds(seed: int) -> dict[str, int]:
    keys = ("data", "ode", "ddpm")
    return dict(zip(keys, (int(s) for s in np.random.SeedSequence(seed).generate_state(len(keys)))))


def _data(testbed: scoresde.GaussianMixture, n: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    if bool((testbed.stds == 0).all()):  # a finite dataset: its points are the data
        if n > len(testbed.means):
            raise ValueError(f"n_samples={n} exceeds the {len(testbed.means)} points of {testbed.name}")
        return testbed.means[:n].reshape((n, *testbed.event_shape)).to(dtype)
    return testbed.sample(n, generator=generator(seed), dtype=dtype)


def _check(cfg: DictConfig) -> None:
    if cfg.get("checkpoint") is not None:
        raise NotImplementedError("checkpoint: evaluating a trained model is not supported yet (the repository has "
                                  "no trained models); leave checkpoint=null to use the testbed's exact score")
    for key in ("n_samples", "batch"):
        if not isinstance(cfg.get(key), int) or cfg.get(key) < 1:
            raise ValueError(f"{key} must be a positive integer, got {cfg.get(key)!r}")
    if str(cfg.get("dtype", "float64")) not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.get('dtype')!r}")


def _mean_se(v: torch.Tensor) -> tuple[float, float]:
    return float(v.mean()), float(v.std() / math.sqrt(len(v))) if len(v) > 1 else math.nan


def likelihood(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation the config describes, print it and return the numbers."""
    _check(cfg)
    sde = scoresde.get_sde(**named(cfg.get("sde"), "sde"))
    testbed = scoresde.get_testbed(**named(cfg.get("testbed"), "testbed"))
    seeds, dtype = _seeds(int(cfg.get("seed", 0))), DTYPES[str(cfg.get("dtype", "float64"))]
    image = len(testbed.event_shape) > 1
    deq = Dequantization(int(cfg.levels), centered=True) if image else None
    x = _data(testbed, cfg.n_samples, seeds["data"], dtype)
    t_min = float(sde.t_min if cfg.get("t_min") is None else cfg.t_min)
    model, gen = testbed.model(sde), generator(seeds["ode"])
    threads = torch.get_num_threads()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    try:
        ode, exact, bound = _run(cfg, sde, testbed, model, x, deq, t_min, gen, seeds)
    finally:
        torch.set_num_threads(threads)
    unit = "bits/dim" if image else "nats"
    out = {"testbed": repr(testbed), "sde": repr(sde), "n": len(x), "t_min": t_min, "unit": unit, **ode,
           "exact": exact, "ddpm": bound}
    print(format_report(out, cfg))
    return out


def _run(cfg, sde, testbed, model, x, deq, t_min, gen, seeds) -> tuple[dict, float, dict | None]:
    values, exact, se_probe, nfe, seconds = [], [], [], 0, 0.0
    batches = list(torch.split(x, int(cfg.batch)))
    for xb in tqdm(batches, desc="scoresde-likelihood", disable=not cfg.get("progress", True)):
        r = ode_log_likelihood(model, xb, divergence=str(cfg.divergence), probes=int(cfg.probes),
                               noise=str(cfg.noise), method=str(cfg.method), rtol=float(cfg.rtol),
                               atol=float(cfg.atol), t_min=t_min, generator=gen, dequantization=deq)
        nfe, seconds = nfe + r.nfe, seconds + r.seconds
        if deq is None:
            values.append(r.log_likelihood)
            exact.append(testbed.marginal_log_prob(xb, t_min, sde))
        else:  # the exact density at the same dequantized points
            values.append(r.bits_per_dim)
            exact.append(deq.bits_per_dim(testbed.marginal_log_prob(r.x, t_min, sde), r.log_q, r.x[0].numel()))
        if r.std_error is not None:
            se_probe.append(r.std_error)
    v = torch.cat(values)
    mean, se = _mean_se(v)
    ode = {"mean": mean, "std_error": se, "nfe": nfe, "seconds": seconds,
           "probe_std_error": float(torch.cat(se_probe).mean()) if se_probe else None}
    bound = None
    ddpm_cfg = cfg.get("ddpm_bound") or {}
    if ddpm_cfg.get("enabled", True) and getattr(sde, "ddpm_schedule", None) is not None:
        bound = _bound(ddpm_cfg, testbed, model, x, deq, seeds)
    return ode, float(torch.cat(exact).mean()), bound


def _bound(ddpm_cfg, testbed, model, x, deq, seeds) -> dict[str, Any]:
    timesteps = ddpm_cfg.get("timesteps")
    r = ddpm_bound(model, x, int(ddpm_cfg.get("steps", 1000)), variance=str(ddpm_cfg.get("variance", "beta")),
                   decoder="discrete" if deq is not None else "continuous",
                   levels=deq.levels if deq is not None else 256,
                   timesteps=None if timesteps is None else int(timesteps), generator=generator(seeds["ddpm"]))
    value = r.bits_per_dim if deq is not None else -r.nats  # nats: report the bound on log p (a lower bound)
    mean, se = _mean_se(value)
    return {"mean": mean, "std_error": se, "steps": r.steps, "nfe": r.nfe, "seconds": r.seconds,
            "exact_log_p0": float(testbed.log_prob(x).mean()) if deq is None else None}


def format_report(out: dict[str, Any], cfg: DictConfig) -> str:
    unit, what = out["unit"], "bits/dim" if out["unit"] == "bits/dim" else "mean log-likelihood [nats]"
    probe = "" if out["probe_std_error"] is None else f", mean probe std error {out['probe_std_error']:.4f}"
    lines = [f"{out['testbed']} under {out['sde']}: {what} of {out['n']} samples at t_min={out['t_min']:.3g}",
             f"  ODE ({cfg.method}, rtol={float(cfg.rtol):.0e}, {cfg.divergence} divergence"
             f"{'' if cfg.divergence == 'exact' else f', {cfg.probes} {cfg.noise} probes'}): "
             f"{out['mean']:.4f} ± {out['std_error']:.4f} {unit}{probe}; NFE {out['nfe']}, {out['seconds']:.2f} s",
             f"  exact: {out['exact']:.4f} {unit}"]
    b = out["ddpm"]
    if b is not None:
        sign = "≥" if unit == "bits/dim" else "≤"
        kind = "bits/dim" if unit == "bits/dim" else "nats, bound on log p_0 (continuous decoder)"
        lines.append(f"  DDPM bound (N={b['steps']}): {sign} {b['mean']:.4f} ± {b['std_error']:.4f} {kind}; "
                     f"NFE {b['nfe']}, {b['seconds']:.2f} s"
                     + ("" if b["exact_log_p0"] is None else f"; exact log p_0: {b['exact_log_p0']:.4f}"))
    return "\n".join(lines)


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="likelihood")
def main(cfg: DictConfig) -> None:
    """Console entry point ``scoresde-likelihood`` (Hydra overrides on the command line)."""
    likelihood(cfg)


if __name__ == "__main__":
    main()
