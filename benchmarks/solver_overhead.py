"""Per-step overhead of scoresde's solvers against a bare loop and against diffusers' schedulers.

What it measures
----------------
With a near-free model (``eps = 0.5·x``, an ε-prediction network that costs one elementwise
multiply), every millisecond a sampler spends per step is *solver* time: the arithmetic of the
update plus whatever the framework adds around it (Python calls, per-sample time tensors, the
parametrization conversion, checks). For each method

    ancestral (DDPM)   ddim (η = 0)   euler   heun   dpmpp_2m

it times, on a 64×3×32×32 float32 batch under the VP SDE (``scoresde.VPSDE()``, uniform grid, 50 steps
by default):

* ``scoresde``  — the public call ``scoresde.sample(model, method, steps, x_T=…, noise=…)``
  (includes ``get_solver`` and building the grid, amortized over the steps);
* ``solver``    — ``solver.sample(model, x_T, grid, noise)`` with a prebuilt solver and grid;
* ``bare``      — a hand-written for-loop doing the same full-size tensor operations per step,
  in the same order, with the same model call, but with every coefficient precomputed as a Python
  float and no checks. Its output is compared against scoresde's (``bare_max_abs_diff`` in the JSON,
  a warning on stderr if it differs) to show that it really does the same arithmetic;
* ``diffusers`` — the matching diffusers scheduler (DDPMScheduler, DDIMScheduler,
  EulerDiscreteScheduler, HeunDiscreteScheduler, DPMSolverMultistepScheduler with
  ``algorithm_type="dpmsolver++", solver_order=2``) driven by its canonical loop
  ``set_timesteps(n); for t in timesteps: out = model(x, t); x = step(out, t, x).prev_sample``
  (plus ``scale_model_input`` for Euler and Heun), when diffusers is importable. The schedulers are
  set up to do the same math as scoresde where diffusers has a switch for it: ε-prediction,
  ``clip_sample=False`` (scoresde does not clip), ``variance_type="fixed_large"`` for DDPM (σ² = β,
  scoresde's default ``variance="beta"``). Their time grid is the discrete 1000-step training
  schedule, so their coefficients differ from scoresde's but the number of full-size operations
  per step is comparable. ``set_timesteps`` is inside the timed region (it is part of the loop);
  the scheduler object is built once, outside;
* ``model``     — the model calls alone (as many as scoresde's NFE), the floor of any sampler.

Every implementation is timed end to end with ``time.perf_counter`` (``torch.cuda.synchronize()``
before and after on CUDA), after warm-up runs, ``--repeats`` times in round-robin order (so slow
drifts of the machine hit all of them alike); the median run is divided by the number of steps.
A second table reports the fastest run instead of the median: on a shared machine (other jobs on
the same cores) it is the run least disturbed by them, and the steadier of the two views.
Heun costs two evaluations per step (scoresde: 2N on a grid that stops at t_min; diffusers: 2N − 1),
so its ms/step is per solver step, not per evaluation; the NFE column says how many there were.

Reported per method: ms/step of each, the ratio scoresde/bare (target ≤ 1.5), the ratio
scoresde/diffusers (target ≤ 1/3), the absolute overhead of scoresde over the bare loop in µs per
step, and — more noisily, since it divides two small differences — the overhead beyond the model
call, ``(scoresde − model)/(bare − model)``.

How to run
----------
    python benchmarks/solver_overhead.py                          # CPU, 50 steps, batch 64
    python benchmarks/solver_overhead.py --device cuda --out results/overhead_cuda.json
    python benchmarks/solver_overhead.py --steps 20 --batch 16 --repeats 20 --methods ddim heun

diffusers is optional (``pip install diffusers``); without it the diffusers columns read "n/a".
On CPU, glibc returns freed large blocks to the OS, and every fresh page of a new full-size
temporary then page-faults: that can cost as much as the arithmetic and depends on the exact order
of allocations, so it moves any of the three implementations by tens of percent from run to run.
The page faults per step are in the JSON; ``--keep-memory`` switches the trimming off (``mallopt``)
for steadier numbers. ``torch.set_num_threads`` is left at torch's default unless ``--threads`` is
given. On a machine shared with other jobs, intra-op threads wait on one another and the timings
scatter widely; the "min" table and ``--threads 1`` are then the steadier views.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import scoresde
from scoresde import VPSDE, ScoreModel, get_solver, make_grid
from scoresde.solvers import GeneratorNoise, TimeGrid

METHODS = ("ancestral", "ddim", "euler", "heun", "dpmpp_2m")
SOLVER_OPTIONS: dict[str, dict[str, Any]] = {"ddim": {"eta": 0.0}}
SEED = 0


def model_fn(x: Tensor, t: Tensor) -> Tensor:
    """The near-free ε-prediction network: one elementwise multiply."""
    return x * 0.5


# ---- bare loops: the same full-size tensor ops as scoresde's step, coefficients as Python floats ----------
@dataclass
class Coeffs:
    """Everything a bare loop needs, precomputed once from the scoresde grid (float64 → Python float)."""

    steps: int
    t: list[Tensor]          # model time input per step, shape (B,), like ctx.t
    t2: list[Tensor]         # Heun: model time at t(σ_{i+1})
    s: list[float]
    sigma: list[float]
    std: list[float]         # s·σ
    a: list[float] = field(default_factory=list)     # forward kernel (ancestral)
    var: list[float] = field(default_factory=list)


def make_coeffs(sde: VPSDE, grid: TimeGrid, batch: int, device: torch.device, dtype: torch.dtype) -> Coeffs:
    s, sig = grid.s_list, grid.sigma_list
    t2 = sde.t_of_sigma(grid.sigma).tolist()
    full = lambda v: torch.full((batch,), v, device=device, dtype=dtype)  # noqa: E731
    kern = [grid.kernel(i) for i in range(grid.steps)]
    return Coeffs(grid.steps, [full(v) for v in grid.t_list[:-1]], [full(v) for v in t2[1:]] + [full(0.0)],
                  s, sig, [a * b for a, b in zip(s, sig)], [k[0] for k in kern], [k[1] for k in kern])


def bare_ancestral(fn: Callable, x: Tensor, c: Coeffs, g: torch.Generator) -> Tensor:
    n = c.steps
    for i in range(n):
        eps = fn(x, c.t[i])
        score = eps / -c.std[i]
        x = (x + c.var[i] * score) * (1 / c.a[i])
        if i < n - 1:
            x = x + math.sqrt(c.var[i]) * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
    return x


def bare_ddim(fn: Callable, x: Tensor, c: Coeffs, g: torch.Generator) -> Tensor:
    for i in range(c.steps):
        eps = fn(x, c.t[i])
        x = (c.s[i + 1] / c.s[i]) * x + (c.std[i + 1] - c.s[i + 1] * c.sigma[i]) * eps
    return x


def bare_euler(fn: Callable, x: Tensor, c: Coeffs, g: torch.Generator) -> Tensor:
    for i in range(c.steps):
        x_hat = x / c.s[i]
        d = fn(x, c.t[i])  # the slope (x̂ − D)/σ is ε
        x = (x_hat + (c.sigma[i + 1] - c.sigma[i]) * d) * c.s[i + 1]
    return x


def bare_heun(fn: Callable, x: Tensor, c: Coeffs, g: torch.Generator) -> Tensor:
    for i in range(c.steps):
        s, s1, sg, sg1 = c.s[i], c.s[i + 1], c.sigma[i], c.sigma[i + 1]
        x_hat = x / s
        d = fn(x, c.t[i])  # the slope (x̂ − D)/σ is ε
        x_next = x_hat + (sg1 - sg) * d
        d2 = fn(x_next * s1, c.t2[i])
        x = (x_hat + (0.5 * (sg1 - sg)) * (d + d2)) * s1
    return x


def bare_dpmpp_2m(fn: Callable, x: Tensor, c: Coeffs, g: torch.Generator) -> Tensor:
    old, h_last = None, 0.0
    for i in range(c.steps):
        s, sg, sg1 = c.s[i], c.sigma[i], c.sigma[i + 1]
        eps = fn(x, c.t[i])
        den = (x - c.std[i] * eps) / s
        h = math.log(sg / sg1)
        if old is None:
            d = den
        else:
            r = h_last / h
            d = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
        old, h_last = den, h
        x = c.s[i + 1] * ((sg1 / sg) * (x / s) - math.expm1(-h) * d)
    return x


BARE = {"ancestral": bare_ancestral, "ddim": bare_ddim, "euler": bare_euler, "heun": bare_heun,
        "dpmpp_2m": bare_dpmpp_2m}


def model_only(fn: Callable, x: Tensor, c: Coeffs, nfe: int) -> Tensor:
    t = c.t[0]
    for _ in range(nfe):
        out = fn(x, t)
    return out


# ---- diffusers ----------------------------------------------------------------------------------------------
def import_diffusers() -> Any:
    try:
        import diffusers
        d = diffusers  # the scheduler classes are looked up lazily: a broken install fails here, not later
        DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler, DPMSolverMultistepScheduler = (
            d.DDPMScheduler, d.DDIMScheduler, d.EulerDiscreteScheduler, d.HeunDiscreteScheduler,
            d.DPMSolverMultistepScheduler)
    except Exception as err:  # noqa: BLE001 - optional dependency, any import failure means "skip"
        print(f"# diffusers not available ({type(err).__name__}: {err}); diffusers columns will read n/a",
              file=sys.stderr)
        return None
    return {"module": diffusers,
            "ancestral": lambda: DDPMScheduler(clip_sample=False, variance_type="fixed_large"),
            "ddim": lambda: DDIMScheduler(clip_sample=False),  # eta = 0 is step()'s default
            "euler": lambda: EulerDiscreteScheduler(),
            "heun": lambda: HeunDiscreteScheduler(),
            "dpmpp_2m": lambda: DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)}


def diffusers_runner(method: str, scheduler: Any, fn: Callable, x_T: Tensor, steps: int, g: torch.Generator
                     ) -> tuple[Callable[[], Tensor], Callable[[], int]]:
    scale = method in ("euler", "heun")
    kw = {"generator": g} if method == "ancestral" else {}
    calls = [0]

    def run() -> Tensor:
        g.manual_seed(SEED)
        scheduler.set_timesteps(steps, device=x_T.device)
        x = x_T * scheduler.init_noise_sigma
        calls[0] = 0
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(x, t) if scale else x
            out = fn(inp, t)
            calls[0] += 1
            x = scheduler.step(out, t, x, **kw).prev_sample
        return x

    return run, lambda: calls[0]


# ---- timing ---------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where getrusage is unavailable)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory instead of returning it to the OS (``mallopt``), so that a new
    full-size temporary reuses warm pages instead of page-faulting on fresh ones. Same effect as
    ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824``; False where unavailable."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def time_round_robin(runners: dict[str, Callable[[], Any]], device: torch.device, repeats: int, warmup: int
                     ) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Seconds per run of each runner (and the page faults it took); each repeat runs every runner once, in a
    rotated order. Page faults matter on CPU: glibc hands freed large blocks back to the OS and every fresh
    page of a new temporary then faults, which can cost as much as the arithmetic."""
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    faults: dict[str, list[int]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            sync(device)
            f0, t0 = minor_faults(), time.perf_counter()
            runners[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
            faults[name].append(minor_faults() - f0)
    return times, faults


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "scoresde": scoresde.__version__,
            "device": str(device), "platform": platform.platform()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


# ---- one method -----------------------------------------------------------------------------------------------
def bench_method(method: str, args: argparse.Namespace, device: torch.device, dif: Any) -> dict[str, Any]:
    sde = VPSDE()
    model = ScoreModel(model_fn, sde, prediction="eps")
    shape = (args.batch, 3, 32, 32)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(SEED)).to(device)
    g = torch.Generator(device=device)
    noise = GeneratorNoise(g)
    solver = get_solver(method, **SOLVER_OPTIONS.get(method, {}))
    grid = make_grid(sde, args.steps, "uniform")
    coeffs = make_coeffs(sde, grid, args.batch, device, x_T.dtype)
    bare = BARE[method]

    def run_scoresde() -> Tensor:
        g.manual_seed(SEED)
        return scoresde.sample(model, method, args.steps, x_T=x_T, noise=noise, grid="uniform",
                               **SOLVER_OPTIONS.get(method, {}))

    def run_solver() -> Tensor:
        g.manual_seed(SEED)
        return solver.sample(model, x_T, grid, noise)

    def run_bare() -> Tensor:
        g.manual_seed(SEED)
        return bare(model_fn, x_T, coeffs, g)

    # correctness of the bare loop and the NFE of scoresde
    model.reset_nfe()
    ref = run_scoresde()
    nfe = model.nfe
    got = run_bare()
    max_diff = float((ref - got).abs().max())
    scale = float(ref.abs().max())
    if not max_diff <= 1e-4 * max(scale, 1.0):
        print(f"# WARNING {method}: the bare loop differs from scoresde by {max_diff:.3g} (|x| ≤ {scale:.3g})",
              file=sys.stderr)

    runners: dict[str, Callable[[], Any]] = {"scoresde": run_scoresde, "solver": run_solver, "bare": run_bare,
                                             "model": lambda: model_only(model_fn, x_T, coeffs, nfe)}
    diff_nfe = None
    if dif is not None:
        run_dif, dif_calls = diffusers_runner(method, dif[method](), model_fn, x_T, args.steps, g)
        run_dif()
        diff_nfe = dif_calls()
        runners["diffusers"] = run_dif

    with torch.inference_mode():
        times, faults = time_round_robin(runners, device, args.repeats, args.warmup)
    row: dict[str, Any] = {"method": method, "nfe": nfe, "diffusers_nfe": diff_nfe, "bare_max_abs_diff": max_diff,
                           "runs_s": times,
                           "minor_faults_per_step": {k: statistics.median(v) / args.steps for k, v in faults.items()}}
    for stat, reduce in (("median", statistics.median), ("min", min)):
        ms = {k: 1e3 * reduce(v) / args.steps for k, v in times.items()}
        row[stat] = summarize(ms)
    return row


def summarize(ms: dict[str, float]) -> dict[str, Any]:
    """Ratios and differences from the ms/step of each implementation."""
    out: dict[str, Any] = {f"{k}_ms_per_step": v for k, v in ms.items()}
    sde_ms, bare_ms, model_ms = ms["scoresde"], ms["bare"], ms["model"]
    out["ratio_scoresde_bare"] = sde_ms / bare_ms
    out["ratio_solver_bare"] = ms["solver"] / bare_ms
    out["overhead_vs_bare_us_per_step"] = 1e3 * (sde_ms - bare_ms)
    out["overhead_beyond_model_ratio"] = (sde_ms - model_ms) / (bare_ms - model_ms) if bare_ms > model_ms else None
    if "diffusers" in ms:
        out["ratio_scoresde_diffusers"] = sde_ms / ms["diffusers"]
        out["diffusers_overhead_vs_bare_us_per_step"] = 1e3 * (ms["diffusers"] - bare_ms)
    out["meets_1.5x_bare"] = out["ratio_scoresde_bare"] <= 1.5
    out["meets_third_of_diffusers"] = (out["ratio_scoresde_diffusers"] <= 1 / 3) if "diffusers" in ms else None
    return out


def fmt(v: Any, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace, stat: str) -> str:
    head = (f"Machine: {info['cpu']}, {info['cpu_cores']} cores ({info['torch_threads']} torch threads), "
            f"torch {info['torch']}, device {info['device']}"
            + (", glibc keeps freed memory (--keep-memory)" if info.get("malloc_keep_memory") else "")
            + (f" ({info['gpu']})" if "gpu" in info else "")
            + (f", diffusers {info['diffusers']}" if info.get("diffusers") else ", diffusers n/a") + "\n"
            f"Batch {args.batch}×3×32×32 float32, VP SDE, {args.steps} steps (uniform grid), model eps = 0.5·x; "
            f"{stat} of {args.repeats} runs after {args.warmup} warm-up.\n\n")
    cols = ["method", "NFE sde/diff", "scoresde ms/step", "solver.sample ms/step", "bare ms/step",
            "diffusers ms/step", "model-only ms/step", "scoresde/bare", "scoresde/diffusers",
            "scoresde−bare µs/step", "diffusers−bare µs/step", "(sde−model)/(bare−model)", "≤1.5× bare", "≤⅓ diffusers"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        r = {**row, **row[stat]}
        ok = lambda b: "n/a" if b is None else ("yes" if b else "**no**")  # noqa: E731
        lines.append("| " + " | ".join([
            r["method"], f"{r['nfe']}/{fmt(r['diffusers_nfe'], 'd')}", f"{r['scoresde_ms_per_step']:.3f}",
            f"{r['solver_ms_per_step']:.3f}", f"{r['bare_ms_per_step']:.3f}",
            fmt(r.get("diffusers_ms_per_step"), ".3f"),
            f"{r['model_ms_per_step']:.3f}", f"{r['ratio_scoresde_bare']:.2f}",
            fmt(r.get("ratio_scoresde_diffusers"), ".2f"), f"{r['overhead_vs_bare_us_per_step']:.0f}",
            fmt(r.get("diffusers_overhead_vs_bare_us_per_step"), ".0f"), fmt(r["overhead_beyond_model_ratio"], ".2f"),
            ok(r["meets_1.5x_bare"]), ok(r["meets_third_of_diffusers"])]) + " |")
    return head + "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, … (default cpu)")
    p.add_argument("--steps", type=int, default=50, help="solver steps (default 50)")
    p.add_argument("--batch", type=int, default=64, help="batch size of the 3×32×32 images (default 64)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per implementation (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: leave torch's default); 1 is steadier on a busy machine")
    p.add_argument("--keep-memory", action="store_true",
                   help="glibc: keep freed memory (no page faults on new temporaries; steadier CPU timings)")
    p.add_argument("--no-diffusers", action="store_true", help="skip diffusers even if importable")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    kept = keep_freed_memory() if args.keep_memory else False
    if args.keep_memory and not kept:
        print("# --keep-memory: mallopt is not available here; timings include page faults", file=sys.stderr)
    dif = None if args.no_diffusers else import_diffusers()
    info = machine_info(device)
    info["malloc_keep_memory"] = kept
    info["diffusers"] = dif["module"].__version__ if dif is not None else None
    rows = []
    for method in args.methods:
        rows.append(bench_method(method, args, device, dif))
        print(f"# {method}: done", file=sys.stderr)
    table = markdown(rows, info, args, "median")
    print(table)
    # the fastest run is the one least disturbed by other processes: a second view for shared machines
    table_min = markdown(rows, info, args, "min")
    print(table_min)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.out.write_text(json.dumps({"machine": info, "config": config, "results": rows, "markdown": table,
                                        "markdown_min": table_min},
                                       indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
