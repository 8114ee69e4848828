"""``scoresde-compare``: every chosen solver at several NFE budgets on an exact-score testbed.

A Hydra app (``configs/compare.yaml``), the only code that reads that config. For each solver entry it
turns every NFE budget into the step count whose *declared* NFE (``Solver.declared_nfe``) is closest,
samples from one fixed ``x_T`` drawn from the SDE prior, and records

- the NFE the model's counting wrapper *measured*, and the wall-clock time;
- the RMSE to a high-accuracy reference from the same ``x_T`` (deterministic solvers only): the
  probability-flow ODE with float64 dopri5 at rtol = atol = 1e-7 down to the same end time, with the
  same final denoising step;
- the sliced Wasserstein distance (:func:`scoresde.evaluation.sliced_wasserstein`) to exact data
  samples of the testbed (all solvers), next to the floor the same distance has between two exact sample sets.

It prints the table and writes ``results.json`` and ``compare.png`` (quality vs NFE) into ``out_dir``
or the Hydra run directory.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor
from tqdm.auto import tqdm

import scoresde
from scoresde.cli.common import CONFIG_DIR, generator, named, output_dir, plain
from scoresde.evaluation import rmse, sliced_wasserstein

NOISE_MODES = ("generator", "per_sample")
FLOOR_DRAWS = 8
ENTRY_KEYS = ("name", "grid", "options", "budgets", "tolerances")


@dataclass(frozen=True)
class Settings:
    """The run-wide knobs of ``compare.yaml``, validated."""

    budgets: tuple[int, ...]
    batch: int
    seed: int
    noise: str
    denoise: bool
    rho: float
    n_data: int
    n_projections: int
    reference: dict[str, Any]
    progress: bool

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> Settings:
        noise = str(cfg.get("noise", "generator"))
        if noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {', '.join(NOISE_MODES)}, got {noise!r}")
        for key in ("batch", "n_data", "n_projections"):
            if not isinstance(cfg.get(key), int) or cfg.get(key) < 1:
                raise ValueError(f"{key} must be a positive integer, got {cfg.get(key)!r}")
        reference = {"method": "dopri5", "rtol": 1e-7, "atol": 1e-7, **(plain(cfg.get("reference")) or {})}
        return cls(_budgets(cfg.get("budgets"), "budgets"), cfg.batch, int(cfg.get("seed", 0)), noise,
                   bool(cfg.get("denoise", True)), float(cfg.get("rho", 7.0)), cfg.n_data, cfg.n_projections,
                   reference, bool(cfg.get("progress", True)))


@dataclass(frozen=True)
class Entry:
    """One line of the ``solvers`` config: a registered solver, its grid and options."""

    label: str
    name: str
    grid: str
    options: dict[str, Any]
    budgets: tuple[int, ...]
    tolerances: tuple[float, ...] | None


@dataclass(frozen=True)
class Run:
    """One sampling run: an entry at one budget (or one tolerance) with its step count and grid."""

    entry: Entry
    solver: scoresde.Solver
    options: dict[str, Any]
    steps: int
    grid: scoresde.TimeGrid
    budget: int | None
    tol: float | None

    @property
    def end(self) -> tuple[float, bool]:
        """(last positive time of the grid, whether it ends with the step to the data): the reference's end."""
        g = self.grid
        t_end, T = (g.t_list[-2] if g.ends_at_data else g.t_list[-1]), g.t_list[0]
        return round(t_end / T, 12) * T, g.ends_at_data  # grids reach t_min up to round-off relative to T


def _budgets(value: Any, what: str) -> tuple[int, ...]:
    value = plain(value)
    if not isinstance(value, list | tuple) or not value or not all(isinstance(b, int) and b >= 1 for b in value):
        raise ValueError(f"{what} must be a non-empty list of positive integers (NFE budgets), got {value!r}")
    return tuple(value)


def parse_entries(node: Any, default_budgets: tuple[int, ...]) -> list[Entry]:
    """The ``solvers`` config (a mapping label → entry, or a list of entries) as :class:`Entry` objects."""
    node = plain(node)
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, list):
        items = [(e.get("name") if isinstance(e, dict) else None, e) for e in node]
    else:
        raise ValueError("no solvers chosen: select some with solver=[heun,ode] or give solvers entries")
    entries, seen = [], set()
    for label, e in items:
        if not isinstance(e, dict) or "name" not in e:
            raise ValueError(f"solvers entry {label!r} must be a mapping with at least a name, got {e!r}")
        unknown = set(e) - set(ENTRY_KEYS)
        if unknown:
            raise ValueError(f"solvers entry {label!r}: unknown keys {sorted(unknown)}; "
                             f"allowed: {', '.join(ENTRY_KEYS)}")
        label = base = str(label)
        k = 2
        while label in seen:
            label, k = f"{base}#{k}", k + 1
        seen.add(label)
        tols = e.get("tolerances")
        if tols is not None and (not tols or not all(isinstance(t, int | float) and t > 0 for t in tols)):
            raise ValueError(f"solvers entry {label!r}: tolerances must be a non-empty list of positive numbers")
        budgets = _budgets(e["budgets"], f"solvers.{label}.budgets") if e.get("budgets") is not None \
            else default_budgets
        entries.append(Entry(label, str(e["name"]), str(e.get("grid") or "uniform"), dict(e.get("options") or {}),
                             budgets, tuple(float(t) for t in tols) if tols is not None else None))
    return entries


def steps_for_budget(solver: scoresde.Solver, sde: scoresde.SDE, kind: str, budget: int,
                     settings: Settings) -> tuple[int, scoresde.TimeGrid]:
    """The step count whose declared NFE on the ``kind`` grid is closest to ``budget`` (ties: the cheaper)."""
    def grid(steps: int) -> scoresde.TimeGrid:
        return scoresde.make_grid(sde, steps, kind, rho=settings.rho, denoise=settings.denoise)

    def cost(steps: int) -> int:
        return solver.declared_nfe(grid(steps))

    lo, hi = 1, 2  # find hi with cost(hi) > budget, then bisect: cost(lo) <= budget < cost(hi) (or lo = 1)
    while cost(hi) <= budget and hi < 4 * budget + 4:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid)
    best = hi if abs(cost(hi) - budget) < abs(cost(lo) - budget) else lo
    return best, grid(best)


def plan_runs(entry: Entry, sde: scoresde.SDE, settings: Settings) -> list[Run]:
    """Build the entry's solver(s) (raising the registry's errors at once) and one run per budget or tolerance."""
    if entry.tolerances is not None:
        runs = []
        steps = 1 + int(settings.denoise)
        grid = scoresde.make_grid(sde, steps, entry.grid, rho=settings.rho, denoise=settings.denoise)
        for tol in entry.tolerances:
            options = {**entry.options, "rtol": tol, "atol": tol}
            solver = scoresde.get_solver(entry.name, **options)
            if solver.declared_nfe(grid) is not None:
                raise ValueError(f"solvers entry {entry.label!r}: tolerances are for adaptive solvers; "
                                 f"{solver!r} steps on the grid, so give it budgets")
            runs.append(Run(entry, solver, options, steps, grid, None, tol))
        return runs
    solver = scoresde.get_solver(entry.name, **entry.options)
    probe = scoresde.make_grid(sde, 2, entry.grid, rho=settings.rho, denoise=settings.denoise)
    if solver.declared_nfe(probe) is None:
        raise ValueError(f"solvers entry {entry.label!r}: {solver!r} chooses its own steps; give it tolerances "
                         "instead of budgets")
    runs, chosen = [], set()
    for budget in entry.budgets:
        steps, grid = steps_for_budget(solver, sde, entry.grid, budget, settings)
        if steps not in chosen:  # two budgets may round to the same step count
            chosen.add(steps)
            runs.append(Run(entry, solver, dict(entry.options), steps, grid, budget, None))
    return runs


def stream_seeds(seed: int) -> dict[str, int]:
    """Independent seeds for each random stream, derived from one seed by NumPy's ``SeedSequence``.

    One seed reused for two streams correlates them: a solver whose noise generator had x_T's seed would
    draw x_T/std(T) again as its first noise."""
    keys = ("x_T", "noise", "data", "floor", "projections")
    return dict(zip(keys, (int(s) for s in np.random.SeedSequence(seed).generate_state(len(keys)))))


def noise_kwargs(settings: Settings) -> dict[str, Any]:
    """Arguments of ``scoresde.sample`` for the solver noise: a fresh seeded source per run, so a run does not
    depend on the runs before it (``per_sample``: sample i gets seed noise + i)."""
    seed = stream_seeds(settings.seed)["noise"]
    if settings.noise == "per_sample":
        return {"seed": seed}
    return {"seed": None, "generator": generator(seed)}


def reference_solution(model: scoresde.ScoreModel, x_T: Tensor, end: tuple[float, bool],
                       settings: Settings) -> tuple[Tensor, dict[str, Any]]:
    """Probability-flow ODE in float64 with a tight adaptive solver from ``x_T`` down to ``end``."""
    t_end, to_data = end
    model.reset_nfe()
    start = time.perf_counter()
    x = scoresde.sample(model, "ode", 1 + int(to_data), x_T=x_T.to(torch.float64), t_min=t_end, denoise=to_data,
                        **settings.reference)
    info = {**settings.reference, "t_end": t_end, "denoise": to_data, "nfe": model.nfe,
            "time_s": time.perf_counter() - start}
    return x, info


def execute(run: Run, model: scoresde.ScoreModel, x_T: Tensor, settings: Settings) -> tuple[Tensor, int, float]:
    """One timed ``scoresde.sample`` call; returns the samples, the measured NFE and the seconds taken."""
    model.reset_nfe()
    start = time.perf_counter()
    x = scoresde.sample(model, run.entry.name, run.steps, x_T=x_T, grid=run.entry.grid, rho=settings.rho,
                        denoise=settings.denoise, **noise_kwargs(settings), **run.options)
    return x, model.nfe, time.perf_counter() - start


def compare(cfg: DictConfig) -> dict[str, Any]:
    """Run the comparison the config describes; print the table, write results.json and compare.png."""
    settings = Settings.from_cfg(cfg)
    sde = scoresde.get_sde(**named(cfg.get("sde"), "sde"))
    testbed = scoresde.get_testbed(**named(cfg.get("testbed"), "testbed"))
    entries = parse_entries(cfg.get("solvers"), settings.budgets)
    runs = [run for entry in entries for run in plan_runs(entry, sde, settings)]
    out = output_dir(cfg)
    threads = torch.get_num_threads()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    try:
        results = _measure(runs, testbed, sde, settings)
    finally:
        torch.set_num_threads(threads)
    results["config"] = plain(cfg)
    print(format_table(results))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(_jsonable(results), indent=2, allow_nan=False))
    plot(results, out / "compare.png")
    print(f"wrote {out / 'results.json'} and {out / 'compare.png'}")
    return results


def _measure(runs: list[Run], testbed: scoresde.GaussianMixture, sde: scoresde.SDE,
             settings: Settings) -> dict[str, Any]:
    seeds, model = stream_seeds(settings.seed), testbed.model(sde)
    x_T = sde.prior_sample((settings.batch, *testbed.event_shape), generator=generator(seeds["x_T"]))
    data = testbed.sample(settings.n_data, generator=generator(seeds["data"]))

    def sw(x: Tensor) -> float:
        return sliced_wasserstein(x, data, settings.n_projections, generator=generator(seeds["projections"]))

    # the floor: the same distance between independent exact sample sets, averaged over draws (one draw
    # varies by about as much as the solvers differ at high NFE)
    floors = [sw(testbed.sample(settings.batch, generator=generator(seeds["floor"] + k))) for k in range(FLOOR_DRAWS)]
    floor, floor_std = float(np.mean(floors)), float(np.std(floors, ddof=1))
    references: dict[tuple[float, bool], tuple[Tensor, dict[str, Any]]] = {}
    rows = []
    for run in tqdm(runs, desc="scoresde-compare", disable=not settings.progress):
        row = {"label": run.entry.label, "solver": run.entry.name, "grid": run.entry.grid, "options": run.options,
               "budget": run.budget, "tol": run.tol, "steps": run.steps,
               "declared_nfe": run.solver.declared_nfe(run.grid), "stochastic": bool(run.solver.stochastic),
               "nfe": None, "time_s": None, "rmse": None, "sw": None, "error": None}
        try:
            x, row["nfe"], row["time_s"] = execute(run, model, x_T, settings)
        except FloatingPointError as err:  # a diverging run is a result, not a crash of the comparison
            row["error"] = str(err)
            rows.append(row)
            continue
        row["sw"] = sw(x)
        if not run.solver.stochastic:
            if run.end not in references:
                references[run.end] = reference_solution(testbed.model(sde), x_T, run.end, settings)
            row["rmse"] = rmse(x, references[run.end][0])
        rows.append(row)
    return {"testbed": repr(testbed), "sde": repr(sde), "batch": settings.batch, "n_data": settings.n_data,
            "seeds": seeds, "sw_floor": floor, "sw_floor_std": floor_std,
            "sw_reference": [sw(x) for x, _ in references.values()],
            "reference": [info for _, info in references.values()], "rows": rows}


def _jsonable(value: Any) -> Any:
    """Strict JSON: non-finite floats (e.g. S_tmax = inf) become the strings "inf", "-inf", "nan"."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(results: dict[str, Any]) -> str:
    """The rows as a fixed-width text table, with the reference and the sliced Wasserstein floor below."""
    head = ("solver", "grid", "steps", "NFE", "time [s]", "RMSE", "SW2")
    lines = []
    for r in results["rows"]:
        steps = f"rtol={r['tol']:.0e}" if r["tol"] is not None else str(r["steps"])
        if r["error"] is not None:
            lines.append((r["label"], r["grid"], steps, "-", "-", "failed", "non-finite"))
            continue
        lines.append((r["label"], r["grid"], steps, str(r["nfe"]), _fmt(r["time_s"], ".3f"), _fmt(r["rmse"], ".2e"),
                      _fmt(r["sw"], ".4f")))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    text = [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*line) for line in lines]
    for info, sw in zip(results["reference"], results["sw_reference"]):
        text.append(f"reference: ode {info['method']} rtol={info['rtol']:.0e} atol={info['atol']:.0e} float64 to "
                    f"t={info['t_end']:.3g}: NFE {info['nfe']}, {info['time_s']:.2f} s, SW2 {sw:.4f}")
    text.append(f"SW2 floor (exact data vs exact data, {results['batch']} vs {results['n_data']} samples, "
                f"mean ± std of {FLOOR_DRAWS} draws): {results['sw_floor']:.4f} ± {results['sw_floor_std']:.4f}")
    return "\n".join(text)


def plot(results: dict[str, Any], path: Path) -> None:
    """Sliced Wasserstein vs measured NFE (every solver) and RMSE vs NFE (deterministic ones), log-log."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.8))
    FigureCanvasAgg(fig)
    ax_sw, ax_rmse = fig.subplots(1, 2)
    rows = [r for r in results["rows"] if r["error"] is None]
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = sorted((r for r in rows if r["label"] == label), key=lambda r: r["nfe"])
        style = "--" if mine[0]["stochastic"] else "-"
        (line,) = ax_sw.plot([r["nfe"] for r in mine], [r["sw"] for r in mine], style, marker="o", label=label)
        if not mine[0]["stochastic"]:
            ax_rmse.plot([r["nfe"] for r in mine], [r["rmse"] for r in mine], style, marker="o", label=label,
                         color=line.get_color())
    ax_sw.axhline(results["sw_floor"], color="gray", ls=":", label="data vs data (±1 std)")
    ax_sw.axhspan(results["sw_floor"] - results["sw_floor_std"], results["sw_floor"] + results["sw_floor_std"],
                  color="gray", alpha=0.15)
    ax_sw.set(xscale="log", yscale="log", xlabel="NFE (measured)", ylabel="sliced W2 to data",
              title="sample quality (dashed: stochastic)")
    ax_rmse.set(xscale="log", yscale="log", xlabel="NFE (measured)", ylabel="RMSE to reference ODE solution",
                title="deterministic solvers: error vs reference")
    ax_sw.legend(fontsize=8)
    if ax_rmse.lines:
        ax_rmse.legend(fontsize=8)
    fig.suptitle(f"{results['testbed']} / {results['sde']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="compare")
def main(cfg: DictConfig) -> None:
    """Console entry point ``scoresde-compare`` (Hydra overrides on the command line)."""
    compare(cfg)


if __name__ == "__main__":
    main()
