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

Every implementation is timed end to end by :mod:`scoresde.bench.timing`: the torch thread count is pinned
(``--threads``, default 1; 0 keeps torch's default, recorded) and denormals are flushed where the CPU supports it
(the output says so); every implementation gets the same x_T, allocated once outside the timed region; after
``--warmup`` untimed rounds, ``--repeats`` rounds each run every implementation once, interleaved and rotated
(A B C, B C A, …), so a slow drift or a burst of other jobs hits all of them alike (CUDA: events and
``torch.cuda.synchronize()``); all of that in ``--processes`` fresh processes (default 11, 7 rounds each),
rounds pooled.
Each figure is the median and interquartile range (IQR) over the rounds; a ratio is the median and IQR of the
*paired* ratios (the two implementations' times in the same round), and a yes/no against a target becomes
"not resolved" when the ratio's IQR straddles the target. The load average before and after is printed.
Heun costs two evaluations per step (scoresde: 2N on a grid that stops at t_min; diffusers: 2N − 1),
so its ms/step is per solver step, not per evaluation; the NFE column says how many there were.

Reported per method: ms/step of each, the ratio scoresde/bare (target ≤ 1.5), the ratio scoresde/diffusers
(against 1 and against the target ≤ 1/3), and the paired overhead of scoresde and of diffusers over the bare
loop in µs per step.

Separate runs, and what they agree on
-------------------------------------
``--out run1.json`` keeps a run; ``--agree run1.json run2.json run3.json`` measures nothing and prints what the runs
agree on: per figure the median of the medians and the envelope of the IQRs where the IQRs overlap, "disagree"
(with each run's median) where they do not, and a verdict only where every run gives the same one.
``--write README.md`` replaces the table between ``<!-- solver_overhead: begin -->`` and ``<!-- solver_overhead:
end -->``, and refuses (exit 3, the table printed only) when any quoted figure of any run (scoresde, bare and
diffusers ms/step, the two ratios) has IQR/median above ``--max-spread`` (default 10 %).

How to run
----------
    python benchmarks/solver_overhead.py                          # CPU, 50 steps, batch 64
    python benchmarks/solver_overhead.py --device cuda --out results/overhead_cuda.json
    python benchmarks/solver_overhead.py --steps 20 --batch 16 --repeats 21 --methods ddim heun
    for i in 1 2 3; do python benchmarks/solver_overhead.py --out run$i.json; done
    python benchmarks/solver_overhead.py --agree run1.json run2.json run3.json --write README.md

diffusers is optional (``pip install diffusers``); without it the diffusers columns read "n/a".
On CPU, glibc returns freed large blocks to the OS, and every fresh page of a new full-size
temporary then page-faults: that can cost as much as the arithmetic and depends on the exact order
of allocations, so it moves any of the three implementations by tens of percent from run to run.
The page faults per step are in the JSON; the trimming is switched off by default (``mallopt``,
``--no-keep-memory`` to keep it) for steadier numbers. With more than one thread on a machine shared with other
jobs, intra-op threads wait on one another and the timings scatter widely: hence one thread by default.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import scoresde
from scoresde import VPSDE, ScoreModel, get_solver, make_grid
from scoresde.bench.timing import (
    MAX_SPREAD,
    Agreement,
    Comparison,
    Conditions,
    Summary,
    compare,
    pin_conditions,
    pool,
    too_noisy,
    write_between_markers,
)
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


def diffusers_runner(method: str, scheduler: Any, fn: Callable, steps: int, g: torch.Generator
                     ) -> tuple[Callable[[Tensor], Tensor], Callable[[], int]]:
    scale = method in ("euler", "heun")
    kw = {"generator": g} if method == "ancestral" else {}
    calls = [0]

    def run(x_T: Tensor) -> Tensor:
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


# ---- conditions ----------------------------------------------------------------------------------------------
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


def faults_per_step(runners: dict[str, Callable[[Tensor], Any]], x: Tensor, steps: int) -> dict[str, float]:
    """Minor page faults per step of each runner, from one extra untimed call (not inside the timed rounds)."""
    out = {}
    for name, run in runners.items():
        f0 = minor_faults()
        run(x)
        out[name] = (minor_faults() - f0) / steps
    return out


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU, cores and versions (the pinned conditions and load are recorded separately)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "scoresde": scoresde.__version__, "device": str(device), "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


# ---- one method -----------------------------------------------------------------------------------------------
def bench_method(method: str, args: argparse.Namespace, device: torch.device, dif: Any, conditions: Conditions
                 ) -> dict[str, Any]:
    """Time every implementation of ``method`` interleaved on one x_T; the row of figures (median and IQR)."""
    sde = VPSDE()
    model = ScoreModel(model_fn, sde, prediction="eps")
    shape = (args.batch, 3, 32, 32)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(SEED)).to(device)  # the one input of all
    g = torch.Generator(device=device)
    noise = GeneratorNoise(g)
    solver = get_solver(method, **SOLVER_OPTIONS.get(method, {}))
    grid = make_grid(sde, args.steps, "uniform")
    coeffs = make_coeffs(sde, grid, args.batch, device, x_T.dtype)
    bare = BARE[method]

    def run_scoresde(x: Tensor) -> Tensor:
        g.manual_seed(SEED)
        return scoresde.sample(model, method, args.steps, x_T=x, noise=noise, grid="uniform",
                               **SOLVER_OPTIONS.get(method, {}))

    def run_solver(x: Tensor) -> Tensor:
        g.manual_seed(SEED)
        return solver.sample(model, x, grid, noise)

    def run_bare(x: Tensor) -> Tensor:
        g.manual_seed(SEED)
        return bare(model_fn, x, coeffs, g)

    # correctness of the bare loop and the NFE of scoresde
    model.reset_nfe()
    ref = run_scoresde(x_T)
    nfe = model.nfe
    got = run_bare(x_T)
    max_diff = float((ref - got).abs().max())
    scale = float(ref.abs().max())
    if not max_diff <= 1e-4 * max(scale, 1.0):
        print(f"# WARNING {method}: the bare loop differs from scoresde by {max_diff:.3g} (|x| ≤ {scale:.3g})",
              file=sys.stderr)

    runners: dict[str, Callable[[Tensor], Any]] = {"scoresde": run_scoresde, "solver": run_solver, "bare": run_bare,
                                                   "model": lambda x: model_only(model_fn, x, coeffs, nfe)}
    diff_nfe = None
    if dif is not None:
        run_dif, dif_calls = diffusers_runner(method, dif[method](), model_fn, args.steps, g)
        run_dif(x_T)
        diff_nfe = dif_calls()
        runners["diffusers"] = run_dif

    with torch.inference_mode():
        result = compare(runners, (x_T,), repeats=args.repeats, warmup=args.warmup, device=device,
                         conditions=conditions)
        faults = faults_per_step(runners, x_T, args.steps)
    return {"method": method, "nfe": nfe, "diffusers_nfe": diff_nfe, "bare_max_abs_diff": max_diff,
            "runs_s": result.times, "minor_faults_per_step": faults,
            "figures": {k: asdict(v) for k, v in figures(result, args.steps).items()}}


TARGETS = {"scoresde/bare": 1.5, "solver/bare": 1.5, "scoresde/diffusers": 1 / 3}
QUOTED = ("scoresde_ms", "bare_ms", "diffusers_ms", "scoresde/bare", "scoresde/diffusers")  # held to the threshold


def figures(result: Comparison, steps: int) -> dict[str, Summary]:
    """Median and IQR of each implementation's ms/step, of the paired ratios and of the paired overheads
    (µs/step over the bare loop)."""
    out = {f"{k}_ms": result.summary(k, 1e3 / steps) for k in result.times}
    for key in TARGETS:
        num, den = key.split("/")
        if num in result.times and den in result.times:
            out[key] = result.ratio(num, den).summary
    for k in ("scoresde", "diffusers"):
        if k in result.times:
            out[f"{k}-bare_us"] = result.difference(k, "bare", 1e6 / steps)
    return out


# ---- the table: one run, or what several separate runs agree on ------------------------------------------------
def agreed(runs: list[dict[str, Any]], method: str, key: str) -> Agreement | None:
    """The figure ``key`` of ``method`` in every run (None when a run lacks it, e.g. no diffusers)."""
    found = [next((r["figures"].get(key) for r in run["results"] if r["method"] == method), None) for run in runs]
    return None if any(f is None for f in found) else Agreement(tuple(Summary(**f) for f in found))


def markdown(runs: list[dict[str, Any]]) -> str:
    """The overhead table of one run (median [IQR]) or of several (median of medians [IQR envelope], or
    "disagree" where the runs' IQRs do not overlap), with the machine, settings and each run's conditions."""
    info, config = runs[0]["machine"], runs[0]["config"]
    head = (f"Machine: {info['cpu']}, {info['cpu_cores']} cores, torch {info['torch']}, device {info['device']}"
            + (f" ({info['gpu']})" if "gpu" in info else "")
            + (f", diffusers {info['diffusers']}" if info.get("diffusers") else ", diffusers n/a")
            + (", glibc keeps freed memory (--keep-memory)" if info.get("malloc_keep_memory") else "") + "\n"
            f"Batch {config['batch']}×3×32×32 float32, VP SDE, {config['steps']} steps (uniform grid), model "
            f"eps = 0.5·x; {config['repeats']} interleaved rounds after {config['warmup']} warm-up"
            + (f" in each of {config['processes']} fresh processes, rounds pooled"
               if config.get("processes", 1) > 1 else "") + ", "
            f"{len(runs)} separate run(s).\n\n")
    for i, run in enumerate(runs, 1):
        head += f"- Run {i} ({run['machine'].get('date', '?')}): {describe(run['conditions'])}\n"
    head += ("\nCells: median [IQR] of one run; over several runs, median of the medians [lowest q25 – highest q75], "
             "or 'disagree' with each run's median where their IQRs do not overlap. Ratios are of paired runs "
             "(same round). A verdict is 'not resolved' when an IQR straddles the target.\n\n")
    cols = ["method", "NFE sde/diff", "scoresde ms/step", "bare ms/step", "diffusers ms/step", "scoresde/bare",
            "≤1.5× bare", "scoresde/diffusers", "faster than diffusers", "≤⅓ diffusers", "scoresde−bare µs/step",
            "diffusers−bare µs/step"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += [table_row(runs, row) for row in runs[0]["results"]]
    return head + "\n".join(lines) + "\n"


def table_row(runs: list[dict[str, Any]], row: dict[str, Any]) -> str:
    """One method's line of :func:`markdown`."""
    m = row["method"]

    def cell(key: str, spec: str = ".3f") -> str:
        a = agreed(runs, m, key)
        return "n/a" if a is None else a.fmt(spec)

    def verdict(key: str, target: float, below: str = "yes", above: str = "**no**") -> str:
        a = agreed(runs, m, key)
        return "n/a" if a is None else a.verdict(target, below, above)

    return "| " + " | ".join([
        m, f"{row['nfe']}/{row['diffusers_nfe'] if row['diffusers_nfe'] is not None else 'n/a'}",
        cell("scoresde_ms"), cell("bare_ms"), cell("diffusers_ms"), cell("scoresde/bare", ".2f"),
        verdict("scoresde/bare", 1.5), cell("scoresde/diffusers", ".2f"),
        verdict("scoresde/diffusers", 1.0, "yes", "no"), verdict("scoresde/diffusers", 1 / 3),
        cell("scoresde-bare_us", ".0f"), cell("diffusers-bare_us", ".0f")]) + " |"


def describe(cond: dict[str, Any]) -> str:
    """The conditions line of :class:`scoresde.bench.timing.Conditions` from its JSON form."""
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cond.items() if k != "loaded"}
    return Conditions(**fields).describe()


def refusals(runs: list[dict[str, Any]], threshold: float) -> list[str]:
    """Why the table must not be written: every quoted figure of any run with IQR/median above ``threshold``."""
    out = []
    for i, run in enumerate(runs, 1):
        for row in run["results"]:
            quoted = {f"run {i} {row['method']} {k}": Summary(**row["figures"][k]) for k in QUOTED
                      if k in row["figures"]}
            out += too_noisy(quoted, threshold)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, … (default cpu)")
    p.add_argument("--steps", type=int, default=50, help="solver steps (default 50)")
    p.add_argument("--batch", type=int, default=64, help="batch size of the 3×32×32 images (default 64)")
    p.add_argument("--repeats", type=int, default=7, help="timed interleaved rounds per process (default 7)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (default 1: one core per implementation, steady on a shared machine; "
                        "0: torch's default, recorded)")
    p.add_argument("--keep-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="glibc keeps freed memory (mallopt; default on): no page faults on new temporaries, whose "
                        "count otherwise moves a run by tens of percent; --no-keep-memory to measure with them")
    p.add_argument("--no-diffusers", action="store_true", help="skip diffusers even if importable")
    p.add_argument("--processes", type=int, default=11,
                   help="fresh Python processes run one after another, their rounds pooled (default 11; 1: this "
                        "process only). Process-to-process differences are part of the reported spread")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--agree", type=Path, nargs="+", default=None, metavar="JSON",
                   help="measure nothing: print what the --out files of separate runs agree on")
    p.add_argument("--write", type=Path, default=None, metavar="README",
                   help="replace the table between <!-- solver_overhead: begin/end --> in this file, unless the "
                        "spread of a quoted figure is above --max-spread")
    p.add_argument("--max-spread", type=float, default=MAX_SPREAD,
                   help=f"IQR/median above which --write refuses (default {MAX_SPREAD:.2f})")
    return p.parse_args(argv)


def measure(args: argparse.Namespace) -> dict[str, Any] | None:
    """One run of every method under pinned conditions: the JSON payload (None when the device is missing)."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return None
    conditions = pin_conditions(args.threads or None, device)
    kept = keep_freed_memory() if args.keep_memory else False
    if args.keep_memory and not kept:
        print("# --keep-memory: mallopt is not available here; timings include page faults", file=sys.stderr)
    dif = None if args.no_diffusers else import_diffusers()
    info = machine_info(device)
    info["malloc_keep_memory"] = kept
    info["diffusers"] = dif["module"].__version__ if dif is not None else None
    rows = []
    for method in args.methods:
        rows.append(bench_method(method, args, device, dif, conditions))
        print(f"# {method}: done", file=sys.stderr)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
              if k not in ("agree", "write", "out")}
    return {"machine": info, "config": config, "conditions": conditions.to_dict(), "results": rows}


def worker_argv(args: argparse.Namespace, out: Path) -> list[str]:
    """The command line of one measuring process: the same settings, ``--processes 1``, results to ``out``."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--steps", str(args.steps),
            "--batch", str(args.batch), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
            "--methods", *args.methods, "--processes", "1", "--out", str(out)]
    argv += ["--threads", str(args.threads), "--keep-memory" if args.keep_memory else "--no-keep-memory"]
    argv += ["--no-diffusers"] * args.no_diffusers
    return argv


def measure_in_processes(args: argparse.Namespace) -> dict[str, Any] | None:
    """Run :func:`measure` in ``args.processes`` fresh processes one after another and pool their rounds
    (:func:`scoresde.bench.timing.pool`); the JSON payload keeps each process's medians under
    ``process_medians``."""
    import subprocess
    import tempfile

    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.processes):
            out = Path(tmp) / f"process{i}.json"
            done = subprocess.run(worker_argv(args, out), stdout=subprocess.DEVNULL, check=False)
            if done.returncode != 0:
                return None
            parts.append(json.loads(out.read_text()))
            print(f"# process {i + 1}/{args.processes}: done", file=sys.stderr)
    conds = [Conditions.from_dict(part["conditions"]) for part in parts]
    rows = []
    for m, row in enumerate(parts[0]["results"]):
        per_process = [Comparison(part["results"][m]["runs_s"], [], c) for part, c in zip(parts, conds)]
        pooled = pool(per_process)
        faults = {k: statistics.mean(part["results"][m]["minor_faults_per_step"][k] for part in parts)
                  for k in row["minor_faults_per_step"]}
        rows.append({**row, "runs_s": pooled.times, "minor_faults_per_step": faults,
                     "bare_max_abs_diff": max(part["results"][m]["bare_max_abs_diff"] for part in parts),
                     "figures": {k: asdict(v) for k, v in figures(pooled, args.steps).items()},
                     "process_medians": {k: [figures(c, args.steps)[k].median for c in per_process]
                                         for k in TARGETS if k in row["figures"]}})
    conditions = pooled.conditions
    config = {**parts[0]["config"], "processes": args.processes}
    return {"machine": parts[0]["machine"], "config": config, "conditions": conditions.to_dict(), "results": rows}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.processes < 1:
        print(f"--processes must be ≥ 1, got {args.processes}", file=sys.stderr)
        return 2
    if args.agree:
        runs = [json.loads(path.read_text()) for path in args.agree]
    else:
        run = measure(args) if args.processes == 1 else measure_in_processes(args)
        if run is None:
            return 2
        runs = [run]
    table = markdown(runs)
    print(table)
    reasons = refusals(runs, args.max_spread)
    if reasons:
        print(f"# spread above {args.max_spread:.0%} (IQR/median) in {len(reasons)} quoted figure(s): "
              + "; ".join(reasons), file=sys.stderr)
    if any(run["conditions"].get("loaded") for run in runs):
        print("# the machine was loaded during a run (see the load averages above)", file=sys.stderr)
    if args.out is not None and not args.agree:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**runs[0], "markdown": table}, indent=2))
    if args.write is not None:
        if reasons:
            print(f"# refusing to write {args.write}: the spread of {len(reasons)} quoted figure(s) is above "
                  f"{args.max_spread:.0%} (listed above); the table is printed only", file=sys.stderr)
            return 3
        write_between_markers(args.write, "solver_overhead", table)
        print(f"# wrote the table into {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
