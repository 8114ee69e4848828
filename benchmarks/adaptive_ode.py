"""The adaptive probability-flow ODE against score_sde's scipy RK45, on the digits ideal denoiser, in one run.

What it measures
----------------
On the exact score of scikit-learn's 8×8 digits (``scoresde.get_testbed("digits")``, d = 64) under each SDE
(``--sdes``, default VP and EDM), from one fixed batch x_T (``--batch`` samples, ``--seed``), it solves the
probability-flow ODE (Song et al. 2021, eq. 13) from T to t_min at ``--tols`` (rtol = atol) with

* ``scoresde ode``: ``scoresde.sample(model, "ode", 1, x_T=x_T, rtol=tol, atol=tol)`` (dopri5, its defaults);
* ``… control=torchdiffeq, state=input``: the ``ode`` solver as it was before issue 14 §3 (torchdiffeq's own
  step-size controller and error estimator, the state in the input's float32); the two other combinations of
  ``control`` and ``state_dtype`` isolate each change;
* ``… Shampine estimator`` (``--ablation``): HNW control with torchdiffeq's own dopri5 error estimator;
* ``score_sde RK45``: score_sde_pytorch's ``get_ode_sampler`` transcribed: the batch flattened into one float64
  vector, the model called in float32 on ``torch.ones(B) * t``, ``scipy.integrate.solve_ivp(ode_func, (T, t_min),
  x, rtol=tol, atol=tol, method="RK45")``, the result cast to float32 (no denoising step in any row);
  ``--dtype float64`` runs every model call in float64 instead (score_sde's float32 cast becomes a float64 one), which
  takes the model's float32 round-off out of the comparison;

against a reference by torchdiffeq's dopri8 at rtol = atol = ``--ref-tol`` (1e-10) in float64 (the float64 model),
checked against dopri5 at the same tolerance. Reported per row: NFE counted by ``scoresde.CountingModel`` around
the model (and scipy's own ``nfev``), accepted/rejected steps, the RMS error to the reference divided by the
reference samples' standard deviation, and the wall-clock median of ``--repeats`` interleaved runs.

The model is the ideal denoiser as an x₀-prediction (``--prediction x0``, as tests/test_convergence.py drives it)
or as its exact score (``--prediction score``, the cancellation-free form).

How to run
----------
    OMP_NUM_THREADS=1 python benchmarks/adaptive_ode.py --threads 1 [--out adaptive_ode.json]
    python benchmarks/adaptive_ode.py --limit 50 --batch 4 --tols 1e-3 --repeats 1 --sdes vp   # tiny
    OMP_NUM_THREADS=1 python benchmarks/adaptive_ode.py --threads 1 --overhead --repeats 7   # integrators alone
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from datetime import date

import numpy as np
import torch
from scipy import integrate
from torch import Tensor
from torchdiffeq import odeint
from torchdiffeq._impl.dopri5 import Dopri5Solver

import scoresde as sd
from scoresde.bench.timing import Stopwatch, load_average, pin_conditions
from scoresde.solvers.step_control import HairerControl, odeint_controlled

VARIANTS = {  # label: ode options
    "scoresde ode": {},
    "ode control=torchdiffeq, state=input (before)": {"control": "torchdiffeq", "state_dtype": "input"},
    "ode control=torchdiffeq, state=float64": {"control": "torchdiffeq"},
    "ode control=hairer, state=input": {"state_dtype": "input"},
}
ShampineHairer = type("ShampineHairerDopri5", (HairerControl, Dopri5Solver), {})


def make_model(tb: sd.GaussianMixture, sde: sd.SDE, prediction: str) -> sd.ScoreModel:
    """The testbed's exact model as a score or an x₀ (ideal denoiser) prediction."""
    if prediction == "score":
        return tb.model(sde)
    return sd.ScoreModel(lambda x, t: tb.denoiser(x / sd.append_dims(sde.s(t), x.ndim), sde.sigma(t)), sde, "x0")


def score_sde_rk45(model: sd.ScoreModel, x_T: Tensor, tol: float) -> tuple[Tensor, dict]:
    """score_sde_pytorch's ``get_ode_sampler`` (sampling.py), without its optional denoising step; the model runs in
    x_T's dtype (score_sde casts to float32, which is x_T's dtype unless ``--dtype float64``)."""
    sde, shape = model.sde, tuple(x_T.shape)
    flow = sd.ProbabilityFlowODE(sde, model.score)

    def ode_func(t: float, x: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(x.reshape(shape)).to(x_T.device).type(x_T.dtype)  # score_sde: torch.float32
        vec_t = torch.ones(shape[0], device=x.device, dtype=x_T.dtype) * t
        return flow.drift(x, vec_t).detach().cpu().numpy().reshape((-1,))

    solution = integrate.solve_ivp(ode_func, (sde.T, sde.t_min), x_T.detach().cpu().numpy().reshape((-1,)),
                                   rtol=tol, atol=tol, method="RK45")
    x = torch.tensor(solution.y[:, -1]).reshape(shape).to(x_T.device).type(x_T.dtype)
    return x, {"nfev": int(solution.nfev), "accepted": len(solution.t) - 1}


def scoresde_ode(options: dict) -> Callable[[sd.ScoreModel, Tensor, float], tuple[Tensor, dict]]:
    def run(model: sd.ScoreModel, x_T: Tensor, tol: float) -> tuple[Tensor, dict]:
        solver = sd.get_solver("ode", rtol=tol, atol=tol, **options)
        x = sd.sample(model, solver, 1, x_T=x_T)
        return x, dict(solver.stats)
    return run


def shampine_hairer(model: sd.ScoreModel, x_T: Tensor, tol: float) -> tuple[Tensor, dict]:
    """HNW control with torchdiffeq's own (Shampine) dopri5 error estimator, float64 state."""
    sde = model.sde
    flow = sd.ProbabilityFlowODE(sde, model.score)

    def drift(t: Tensor, y: Tensor) -> Tensor:
        return flow.drift(y.to(x_T.dtype), t.to(x_T.dtype).clamp(sde.t_min, sde.T)).double()

    ts = torch.tensor([sde.T, sde.t_min], dtype=torch.float64)
    path, run = odeint_controlled(drift, x_T.double(), ts, ShampineHairer, rtol=tol, atol=tol,
                                  options={"step_t": ts[1:]})
    return path[-1].to(x_T.dtype), {"accepted": run.accepted, "rejected": run.rejected}


def reference(tb: sd.GaussianMixture, sde: sd.SDE, x_T: Tensor, tol: float) -> tuple[Tensor, float]:
    """dopri8 at ``tol`` in float64 on the float64 exact score, and its RMS distance to dopri5 at ``tol`` (both
    with the last step ending on t_min: a stage below it would see σ ≤ 0 under EDM)."""
    flow = sd.ProbabilityFlowODE(sde, lambda x, t: tb.score(x, t, sde))
    drift = lambda t, y: flow.drift(y, t.expand(y.shape[0]))  # noqa: E731
    ts = torch.tensor([sde.T, sde.t_min], dtype=torch.float64)
    x, end = x_T.double(), {"step_t": ts[1:]}
    ref = odeint(drift, x, ts, method="dopri8", rtol=tol, atol=tol, options=end)[-1]
    check = odeint(drift, x, ts, method="dopri5", rtol=tol, atol=tol, options=end)[-1]
    return ref, float((ref - check).pow(2).mean().sqrt() / ref.std())


def measure(args: argparse.Namespace) -> dict:
    tb = sd.get_testbed("digits", limit=args.limit)
    runners = {label: scoresde_ode(opts) for label, opts in VARIANTS.items()}
    if args.ablation:
        runners["ode control=hairer, Shampine estimator, state=float64"] = shampine_hairer
    runners["score_sde RK45 (scipy)"] = score_sde_rk45
    rows = []
    for sde_name, seed in ((name, seed) for name in args.sdes for seed in args.seeds):
        sde = sd.get_sde(sde_name)
        shape = (args.batch, *tb.event_shape)
        model = make_model(tb, sde, args.prediction)
        noise = sd.solvers.make_noise(seed, args.batch, torch.device("cpu"), None)
        x_T = sde.prior_sample(shape, noise=noise(torch.empty(shape, dtype=getattr(torch, args.dtype))))
        ref, ref_check = reference(tb, sde, x_T, args.ref_tol)
        spread = float(ref.std())
        for tol in args.tols:
            times: dict[str, list[float]] = {label: [] for label in runners}
            for r in range(args.repeats):
                labels = list(runners)
                for label in labels[r % len(labels):] + labels[:r % len(labels)]:  # rotated, interleaved
                    model.reset_nfe()
                    with Stopwatch() as sw:
                        x, stats = runners[label](model, x_T, tol)
                    times[label].append(sw.seconds)
                    if r == 0:
                        error = float((x.double() - ref).pow(2).mean().sqrt()) / spread
                        rows.append({"sde": sde_name, "seed": seed, "tol": tol, "solver": label, "nfe": model.nfe,
                                     **stats,
                                     "error": error, "ref_check": ref_check})
            for row in rows:
                if (row["sde"], row["seed"], row["tol"]) == (sde_name, seed, tol):
                    row["ms"] = 1e3 * float(np.median(times[row["solver"]]))
    return {"rows": rows}


def table(rows: list[dict]) -> str:
    lines = ["| SDE | seed | rtol = atol | solver | NFE (counted) | solver's NFE | steps acc / rej | error / spread "
             "| ms |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reported = r.get("nfev", r["nfe"])
        steps = f"{r.get('accepted', '–')} / {r.get('rejected', '–')}" if "rejected" in r or "accepted" in r else "–"
        lines.append(f"| {r['sde']} | {r['seed']} | {r['tol']:g} | {r['solver']} | {r['nfe']} | {reported} | {steps} | "
                     f"{r['error']:.3g} | {r['ms']:.0f} |")
    return "\n".join(lines)


def verdicts(rows: list[dict], slack: float = 1.05) -> str:
    """Per SDE and tolerance: in how many runs scoresde's ode took ≤ scipy's NFE, and had ≤ its error (× slack)."""
    out = []
    for sde_name, tol in sorted({(r["sde"], r["tol"]) for r in rows}):
        key = lambda r: (r["sde"], r["seed"], r["tol"])  # noqa: E731
        pairs = [(r, s) for r in rows for s in rows if r["solver"] == "scoresde ode"
                 and s["solver"].startswith("score_sde") and key(r) == key(s)
                 and (r["sde"], r["tol"]) == (sde_name, tol)]
        nfe = sum(r["nfe"] <= s["nfe"] for r, s in pairs)
        err = sum(r["error"] <= s["error"] * slack for r, s in pairs)
        ratios = ", ".join(f"{r['ms'] / s['ms']:.2f}" for r, s in pairs)
        out.append(f"{sde_name} at {tol:g}: NFE ≤ scipy's in {nfe}/{len(pairs)}, error ≤ {slack}× scipy's in "
                   f"{err}/{len(pairs)}, time / scipy's {ratios}")
    return "; ".join(out)


def integrator_overhead(repeats: int, shape: tuple[int, ...] = (64, 64), tol: float = 1e-9) -> dict[str, float]:
    """Microseconds per evaluation each integrator spends besides the model, on a free model f(t, y) = −y(1 + 10t)
    from t = 1 to 1e-3 in float64 (best of ``repeats`` interleaved runs): scoresde's controlled dopri5 (its own
    Runge–Kutta step), torchdiffeq's ``odeint`` dopri5, and scipy's ``solve_ivp`` RK45 (score_sde's integrator,
    on the flattened state, with the torch↔numpy round trip of score_sde's ``ode_func``)."""
    y0 = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ts = torch.tensor([1.0, 1e-3], dtype=torch.float64)
    calls = [0]

    def f(t: Tensor, y: Tensor) -> Tensor:
        calls[0] += 1
        return -y * (1 + 10 * t)

    def scipy_f(t: float, y: np.ndarray) -> np.ndarray:
        return f(torch.tensor(t, dtype=torch.float64), torch.from_numpy(y).reshape(shape)).numpy().reshape(-1)

    runs = {
        "scoresde ode (controlled dopri5)": lambda: odeint_controlled(
            f, y0, ts, Dopri5Solver, rtol=tol, atol=tol, options={"step_t": ts[1:]}, dense=False),
        "torchdiffeq odeint dopri5": lambda: odeint(f, y0, ts, method="dopri5", rtol=tol, atol=tol,
                                                    options={"step_t": ts[1:]}),
        "scipy solve_ivp RK45": lambda: integrate.solve_ivp(scipy_f, (1.0, 1e-3), y0.numpy().reshape(-1),
                                                            rtol=tol, atol=tol, method="RK45"),
    }
    best = {label: float("inf") for label in runs}
    with torch.no_grad():
        for r in range(repeats + 1):  # the first round warms up
            for label, run in runs.items():
                calls[0] = 0
                with Stopwatch() as sw:
                    run()
                if r:
                    best[label] = min(best[label], 1e6 * sw.seconds / calls[0])
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sdes", nargs="+", default=["vp", "edm"])
    p.add_argument("--tols", nargs="+", type=float, default=[1e-5])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="one x_T per seed (sample i: seed + i)")
    p.add_argument("--limit", type=int, default=None, help="use the first LIMIT digits only")
    p.add_argument("--prediction", choices=["x0", "score"], default="x0")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="x_T's and the model's dtype")
    p.add_argument("--ref-tol", type=float, default=1e-10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ablation", action="store_true", help="add HNW control with torchdiffeq's error estimator")
    p.add_argument("--out", default=None, help="write the rows as JSON")
    p.add_argument("--overhead", action="store_true",
                   help="only measure each integrator's own cost per evaluation on a free model")
    args = p.parse_args(argv)
    conditions = pin_conditions(args.threads)
    if args.overhead:
        for label, us in integrator_overhead(args.repeats).items():
            print(f"{label}: {us:.0f} µs per evaluation")
        conditions.load_after = load_average()
        print(f"Machine: {platform.processor() or platform.machine()}, {conditions.describe()}, torch "
              f"{torch.__version__}, {date.today()}")
        return 0
    result = measure(args)
    conditions.load_after = load_average()
    print(table(result["rows"]))
    print(f"\nscoresde ode vs score_sde RK45: {verdicts(result['rows'])}")
    checks = sorted({f"{r['sde']}: {r['ref_check']:.2g}" for r in result["rows"]})
    print(f"\nReference: dopri8 at {args.ref_tol:g} in float64; its distance to dopri5 at the same tolerance "
          f"(/ spread): {', '.join(checks)}")
    print(f"Problem: digits ideal denoiser ({args.prediction}-prediction, limit {args.limit}), batch {args.batch}, "
          f"seeds {args.seeds}, model in {args.dtype}; torch {torch.__version__}, {date.today()}")
    print(f"Machine: {platform.processor() or platform.machine()}, {conditions.describe()}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**result, "args": vars(args), "conditions": conditions.to_dict()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
