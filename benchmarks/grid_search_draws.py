"""How much an optimized grid depends on its calibration batch, and what a change of the search buys: held-out error of
:func:`scoresde.solvers.optimize_grid` over several calibration draws, optionally side by side with the search of
an earlier commit.

What it measures
----------------
For each exact-score problem under each SDE (``--problems ring:vp grid:edm …``), a held-out batch (``--n-heldout``
samples, seeds 0, 1, …) and its float64 reference ODE solution (dopri5 at 1e-8, then the denoiser's jump to the
data) are fixed. For each calibration draw (``--calib-seeds``: ``--calib-batch`` samples from seeds s, s + 1, …),
each solver and each NFE budget, the grid is searched (``--budget`` × NFE network evaluations, the library's
defaults otherwise) and the held-out RMS error to the ODE solution of the solver on it is reported, with the search's
network evaluations and solves. With ``--previous REV`` the same searches run with ``scoresde/solvers/grid_search.py``
as it was at git revision REV (loaded from ``git show``, on the current solvers), and the ratios current / previous
are summarised: geometric mean and wins over all searches, and over the best solver of each problem × NFE × draw
(the number the few-step frontier, RESULTS.md §8, reports).

How to run
----------
    python benchmarks/grid_search_draws.py --problems grid:vp ring:vp --solvers ipndm deis --nfe 10 \\
        --calib-seeds 10000 20000 --previous 9343310 --out draws.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

import scoresde as sd
from scoresde.solvers import grid_search
from scoresde.solvers.noise import make_noise

ROOT = Path(__file__).resolve().parents[1]


def search_module_at(rev: str) -> Any:
    """``scoresde/solvers/grid_search.py`` as it was at git revision ``rev``, imported as a module of its own."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:scoresde/solvers/grid_search.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"grid_search_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"grid_search_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def prior(sde: sd.SDE, event_shape: tuple[int, ...], first_seed: int, n: int) -> torch.Tensor:
    """n prior samples drawn with per-sample seeds ``first_seed, first_seed + 1, …`` (float64)."""
    shape = (n, *event_shape)
    return sde.prior_sample(shape, noise=make_noise(first_seed, n, "cpu")(torch.empty(shape, dtype=torch.float64)))


def heldout_rmse(model: sd.ScoreModel, solver: str, grid: Any, x_T: torch.Tensor, reference: torch.Tensor) -> float:
    with torch.no_grad():
        x = sd.get_solver(solver).sample(model, x_T, grid)
    return (x - reference).double().pow(2).reshape(x.shape[0], -1).mean(1).mean().sqrt().item()


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    versions = {"current": grid_search}
    if args.previous:
        versions["previous"] = search_module_at(args.previous)
    rows = []
    for item in args.problems:
        name, _, sde_name = item.partition(":")
        sde = sd.get_sde(sde_name or "vp")
        testbed = sd.get_testbed(name)
        model, event = testbed.model(sde), tuple(testbed.event_shape)
        held = prior(sde, event, 0, args.n_heldout)
        held_ref = grid_search.reference_solution(model, held, True)
        for seed in args.calib_seeds:
            calib = prior(sde, event, seed, args.calib_batch)
            calib_ref = grid_search.reference_solution(model, calib, True)
            for solver in args.solvers:
                for nfe in args.nfe:
                    row: dict[str, Any] = {"problem": name, "sde": sde.name, "seed": seed, "solver": solver, "nfe": nfe}
                    for label, module in versions.items():
                        info: dict[str, Any] = {}
                        start = time.perf_counter()
                        grid = module.optimize_grid(model, solver, nfe, calib=calib, reference=calib_ref,
                                                    budget=args.budget, info=info)
                        row[label] = {"heldout_rmse": heldout_rmse(model, solver, grid, held, held_ref),
                                      "fit_error": info["searched_fit_error"], "kept": info["kept"],
                                      "solves": info["evaluations"], "search_nfe": info["search_nfe"],
                                      "seconds": time.perf_counter() - start}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def summary(rows: list[dict[str, Any]]) -> str:
    """Geometric-mean ratios current / previous over searches and over each cell's best solver."""
    if not rows or "previous" not in rows[0]:
        return ""
    logs = [math.log(r["current"]["heldout_rmse"] / r["previous"]["heldout_rmse"]) for r in rows]
    best: dict[tuple, dict[str, float]] = defaultdict(lambda: {"current": math.inf, "previous": math.inf})
    for r in rows:
        cell = best[(r["problem"], r["sde"], r["nfe"], r["seed"])]
        for label in ("current", "previous"):
            cell[label] = min(cell[label], r[label]["heldout_rmse"])
    cell_logs = [math.log(c["current"] / c["previous"]) for c in best.values()]

    def line(what: str, values: list[float]) -> str:
        return (f"{what}: geometric mean of held-out RMSE current/previous {math.exp(sum(values) / len(values)):.3f}"
                f" over {len(values)}; current lower by > 1 % in {sum(v < -0.01 for v in values)},"
                f" higher by > 1 % in {sum(v > 0.01 for v in values)}")

    out = [line("searches", logs), line("best solver per problem x NFE x draw", cell_logs), "",
           "| problem | NFE | draw | previous: best | current: best |", "|---|---|---|---|---|"]
    for r in sorted({(r["problem"], r["sde"], r["nfe"], r["seed"]) for r in rows}):
        of = [x for x in rows if (x["problem"], x["sde"], x["nfe"], x["seed"]) == r]
        pick = {label: min(of, key=lambda x: x[label]["heldout_rmse"]) for label in ("previous", "current")}
        cells = [f"{pick[k][k]['heldout_rmse']:.4g} ({pick[k]['solver']})" for k in ("previous", "current")]
        out.append(f"| {r[0]}/{r[1]} | {r[2]} | {r[3]} | {cells[0]} | {cells[1]} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--problems", nargs="+", default=["grid:vp", "ring:vp"], help="testbed:sde pairs")
    p.add_argument("--solvers", nargs="+", default=["deis", "ipndm", "dpmpp_3m", "unipc"])
    p.add_argument("--nfe", nargs="+", type=int, default=[5, 10, 20])
    p.add_argument("--calib-seeds", nargs="+", type=int, default=[10000, 20000])
    p.add_argument("--calib-batch", type=int, default=1024)
    p.add_argument("--n-heldout", type=int, default=2000)
    p.add_argument("--budget", type=float, default=200.0)
    p.add_argument("--previous", default=None, help="a git revision whose search runs side by side")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the rows as JSON")
    args = p.parse_args(argv)
    try:
        for item in args.problems:
            sd.get_testbed(item.partition(":")[0])
            sd.get_sde(item.partition(":")[2] or "vp")
        for solver in args.solvers:
            sd.get_solver(solver)
    except (ValueError, KeyError) as err:
        print(f"grid_search_draws: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, "
          f"{args.threads} thread(s)", flush=True)
    rows = measure(args)
    print(summary(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
