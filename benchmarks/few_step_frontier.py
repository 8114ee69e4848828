"""The few-step frontier: error vs NFE of every deterministic scoresde solver on four time grids against every
deterministic peer, on exact-score problems, in one run per problem.

What it measures
----------------
For each problem (exact-score testbeds: the digits ideal denoiser, the 2-D ring of 8 Gaussians, the 5×5 grid of
Gaussians, a 64-dimensional mixture of 10 Gaussians) and each SDE (EDM's σ-space by default, and VP), it runs
``scoresde-bench`` once with

* scoresde solvers ``euler heun ddim dpmpp_2m dpmpp_3m unipc ipndm deis`` (every deterministic fixed-grid solver of
  the registry that sees a ``TimeGrid``), iPNDM with ``variable_step=true`` (``ipndm_variable``) and DEIS with
  ``basis=logrho, lower_order_final=true`` (``deis_logrho``, diffusers' DEIS), each on the
  grids ``karras`` (ρ = 7), ``logsnr``, ``stop_early`` (diffusers' default ``linspace`` layout: the ODE stops at
  t = T/N and jumps to the data with the denoiser) and ``optimized`` (:func:`scoresde.solvers.optimize_grid` per
  solver and budget on a calibration batch of ``--calib-batch`` (default 256) *other* seeds, search ≤ 200× the
  budget in NFE, its last quarter held out of the fit to validate the searched grid against the named grid it
  started from; the runs are scored on held-out seeds);
* every deterministic peer on its own default grid and on Karras σ's: k-diffusion's ``euler heun dpmpp_2m lms``
  and ``dpmpp_3m_sde`` at η = 0 (Karras σ's, k-diffusion's own loops), and, on VP where diffusers' discrete
  schedules apply, diffusers' DDIM, Euler, Heun, DPM-Solver++ 2M and 3M, DEIS (tAB3) and UniPC, each on its default
  timesteps and on Karras σ's;

at NFE 5, 6, 8, 10, 15, 20, all from the same x_T per sample seed. The error is the RMS distance of the samples to a
float64 dopri5 solution of the probability-flow ODE from the same x_T (rtol = atol = 1e-7, down to t_min and the
denoising step to the data; every run here ends at the data). Stochastic samplers are left out: their samples do
not approximate the ODE's, so an RMS distance to it does not rank them.

Output: per problem and SDE a table of RMSE (rows: solver@grid or peer, columns: NFE) and a summary table per NFE:
the best scoresde run on any grid against the best peer on any grid (target ≤ 0.7×), and the best scoresde run on
the plain Karras grid against the best peer on Karras σ's (target ≤ 1.0×; the last column holds it against the best
peer on any grid, which on VP is often a diffusers default grid that stops the ODE early). ``--out`` keeps every
bench.json and a summary.json.

How to run
----------
    python benchmarks/few_step_frontier.py --out results/frontier              # 4 problems × {edm, vp}
    python benchmarks/few_step_frontier.py --problems ring --sdes edm --budgets 6 10 --n-samples 200
    # RESULTS.md §8: the cheap problems on more samples, then one table of all four
    python benchmarks/few_step_frontier.py --problems ring grid high_dim --n-samples 2000 --calib-batch 1024 --out R
    python benchmarks/few_step_frontier.py --problems digits --out R
    python benchmarks/few_step_frontier.py --tables-only --out R
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SOLVERS = ("euler", "heun", "ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "ipndm", "deis")
EXTRA = {  # solver entries with options, added with --extra (default: all)
    "ipndm_variable": "+solvers.ipndm_variable={name:ipndm,grid:karras,options:{variable_step:true}}",
    "deis_logrho": "+solvers.deis_logrho={name:deis,grid:karras,options:{basis:logrho,lower_order_final:true}}",
}
GRIDS = ("karras", "logsnr", "stop_early", "optimized")
PROBLEMS = ("digits", "ring", "grid", "high_dim")
KDIFFUSION = ("euler", "heun", "dpmpp_2m", "lms", "dpmpp_3m_sde_eta0")
DIFFUSERS = ("ddim", "euler", "euler_default", "heun", "heun_default", "dpmpp_2m", "dpmpp_2m_default", "dpmpp_3m",
             "dpmpp_3m_karras", "deis", "deis_karras", "unipc", "unipc_karras")
DIFFUSERS_SDES = {"vp"}  # diffusers' schedulers need a discrete DDPM schedule (scoresde.bench.peers)
TARGETS = {"any grid": 0.7, "karras": 1.0}
ROUND_OFF = 1e-3  # a ratio within 0.1 % of its target meets it: the same algorithm in two libraries (scoresde's
# dpmpp_3m and k-diffusion's dpmpp_3m_sde at η = 0 on Karras σ's) differs by float32 round-off only


def met(ratio: float, target: float) -> bool:
    """Whether ``ratio`` is at most ``target`` (up to :data:`ROUND_OFF`)."""
    return ratio <= target * (1 + ROUND_OFF)


def bench_command(problem: str, sde: str, args: argparse.Namespace, out: Path) -> list[str]:
    """The ``scoresde-bench`` command line of one problem under one SDE."""
    exe = shutil.which("scoresde-bench")
    head = [exe] if exe else [sys.executable, "-m", "scoresde.cli.bench"]
    peers = list(DIFFUSERS) if sde in DIFFUSERS_SDES else []
    return head + [f"testbed={problem}", f"sde={sde}", f"solver=[{','.join(args.solvers)}]",
                   f"grids=[{','.join(args.grids)}]", f"budgets=[{','.join(map(str, args.budgets))}]",
                   f"peers=[{','.join(peers)}]", f"kdiffusion=[{','.join(KDIFFUSION)}]", "metrics=[rmse]",
                   f"n_samples={args.n_samples}", f"seed={args.seed}", f"threads={args.threads}", "progress=false",
                   f"grid_search_batch={args.calib_batch}",
                   f"out_dir={out}"] + [EXTRA[name] for name in args.extra]


def on_karras(row: dict[str, Any]) -> bool:
    """Whether a peer row ran on Karras σ's: every k-diffusion sampler here, and the diffusers schedulers built
    with ``use_karras_sigmas`` (scoresde.bench.peers.DIFFUSERS)."""
    if row["source"] == "k-diffusion":
        return True
    from scoresde.bench.peers import DIFFUSERS

    return bool(DIFFUSERS.get(row["label"], ("", {}))[1].get("use_karras_sigmas"))


def label(row: dict[str, Any]) -> str:
    """``solver@grid`` for scoresde rows, ``library:method`` for peers."""
    return f"{row['label']}@{row['grid']}" if row["source"] == "scoresde" else f"{row['source']}:{row['label']}"


def best(rows: list[dict[str, Any]], budget: int, keep) -> dict[str, Any] | None:
    """The row with the lowest RMSE among those that took exactly ``budget`` evaluations and ``keep`` accepts (None
    if there is none): a run whose step rule misses the budget (Heun's 2n − 1 at an even budget) is not at it."""
    found = [r for r in rows if r["budget"] == budget and r["nfe"] == budget and r.get("rmse") is not None
             and keep(r)]
    return min(found, key=lambda r: r["rmse"], default=None)


def tables(result: dict[str, Any], budgets: list[int]) -> tuple[str, list[dict[str, Any]]]:
    """The RMSE matrix and the summary table (markdown) of one problem × SDE, and the summary's rows."""
    rows = result["rows"]
    labels = list(dict.fromkeys(label(r) for r in rows))
    cell = {(label(r), r["budget"]): r for r in rows}
    head = (f"### {result['problem']} under {result['sde']} ({result['n_samples']} samples, RMSE to the ODE "
            "solution)\n\n")
    lines = ["| run | " + " | ".join(f"NFE {b}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for name in labels:
        vals = []
        for b in budgets:
            r = cell.get((name, b))
            ok = r is not None and r.get("rmse") is not None and r["nfe"] == b
            vals.append(f"{r['rmse']:.3g}" if ok else ("–" if r is None or r.get("rmse") is None
                                                      else f"{r['rmse']:.3g} (NFE {r['nfe']})"))
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    summary, out = [], ["", "| NFE | best scoresde | RMSE | best peer | RMSE | ratio (≤ 0.7) | best scoresde on "
                            "Karras | RMSE | best peer on Karras | RMSE | ratio (≤ 1.0) | vs best peer on any grid |",
                            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    mark = lambda r, t: f"{r:.2f}" + ("" if met(r, t) else " **no**")  # noqa: E731
    show = lambda r: f"{label(r)} | {r['rmse']:.3g}" if r else "– | –"  # noqa: E731
    for b in budgets:
        ours = best(rows, b, lambda r: r["source"] == "scoresde")
        peer = best(rows, b, lambda r: r["source"] != "scoresde")
        karras = best(rows, b, lambda r: r["source"] == "scoresde" and r["grid"] == "karras")
        peer_karras = best(rows, b, lambda r: r["source"] != "scoresde" and on_karras(r))
        if ours is None or peer is None:
            continue
        ratio = lambda a, p: a["rmse"] / p["rmse"] if a and p else float("nan")  # noqa: E731
        entry = {"problem": result["problem"], "sde": result["sde"], "nfe": b, "best": label(ours),
                 "best_rmse": ours["rmse"], "peer": label(peer), "peer_rmse": peer["rmse"],
                 "ratio_any": ratio(ours, peer), "karras": label(karras) if karras else None,
                 "karras_rmse": karras["rmse"] if karras else None,
                 "peer_karras": label(peer_karras) if peer_karras else None,
                 "peer_karras_rmse": peer_karras["rmse"] if peer_karras else None,
                 "ratio_karras": ratio(karras, peer_karras), "ratio_karras_vs_any": ratio(karras, peer)}
        summary.append(entry)
        out.append(f"| {b} | {show(ours)} | {show(peer)} | {mark(entry['ratio_any'], TARGETS['any grid'])} | "
                   f"{show(karras)} | {show(peer_karras)} | {mark(entry['ratio_karras'], TARGETS['karras'])} | "
                   f"{entry['ratio_karras_vs_any']:.2f} |")
    return head + "\n".join(lines + out) + "\n", summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    p.add_argument("--sdes", nargs="+", default=["edm", "vp"])
    p.add_argument("--budgets", nargs="+", type=int, default=[5, 6, 8, 10, 15, 20])
    p.add_argument("--solvers", nargs="+", default=list(SOLVERS))
    p.add_argument("--grids", nargs="+", default=list(GRIDS))
    p.add_argument("--extra", nargs="*", default=list(EXTRA), choices=list(EXTRA),
                   help="solver entries with options: ipndm_variable = iPNDM with variable-step Adams–Bashforth "
                        "coefficients (order 4 on any grid); deis_logrho = DEIS extrapolating in log σ with "
                        "diffusers' lower_order_final (diffusers' DEIS)")
    p.add_argument("--n-samples", type=int, default=500)
    p.add_argument("--calib-batch", type=int, default=256,
                   help="samples in the optimized grids' calibration batch (scoresde-bench grid_search_batch; the "
                        "last quarter of it validates each search, grid_search_validation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("results/few_step_frontier"))
    p.add_argument("--tables-only", action="store_true",
                   help="run nothing: print the tables of the bench.json files an earlier run left in --out")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    stamp = lambda what: print(f"# {what} {time.strftime('%Y-%m-%d %H:%M %Z')}, load average "  # noqa: E731
                               + "/".join(f"{v:.2f}" for v in os.getloadavg()))
    if not args.tables_only:
        stamp("start")
    summaries = []
    for problem in args.problems:
        for sde in args.sdes:
            out = args.out / f"{problem}_{sde}"
            tick = time.perf_counter()
            proc = subprocess.CompletedProcess([], 0) if args.tables_only else \
                subprocess.run(bench_command(problem, sde, args, out), env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"scoresde-bench failed on {problem}/{sde}: {proc.stderr.strip().splitlines()[-1:]}",
                      file=sys.stderr)
                return proc.returncode
            result = json.loads((out / "bench.json").read_text())["results"][0]
            text, summary = tables(result, args.budgets)
            summaries += summary
            print(text + f"\n({time.perf_counter() - tick:.0f} s)\n", flush=True)
    if not args.tables_only:
        stamp("end")
    count = {k: sum(met(s[f"ratio_{'any' if k == 'any grid' else 'karras'}"], t) for s in summaries)
             for k, t in TARGETS.items()}  # NaN (no Karras peer) never meets
    print(f"# targets met: ratio ≤ 0.7 (any grid) in {count['any grid']}/{len(summaries)} cells, "
          f"≤ 1.0 (Karras) in {count['karras']}/{len(summaries)}")
    (args.out / "summary.json").write_text(json.dumps(summaries, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
