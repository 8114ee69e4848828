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

import inspect
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from torch import Tensor
from tqdm.auto import tqdm

import scoresde
from scoresde.bench.planning import (  # noqa: F401  (re-exported: the names scoresde-compare has always had)
    NOISE_MODES,
    Entry,
    Run,
    Settings,
    execute,
    noise_kwargs,
    plan_runs,
    reference_solution,
    steps_for_budget,
    stream_seeds,
)
from scoresde.cli.common import (
    app_main,
    bool_option,
    float_option,
    generator,
    int_option,
    named,
    output_dir,
    plain,
    torch_threads,
)
from scoresde.errors import ConfigError, UnknownNameError
from scoresde.evaluation import rmse, sliced_wasserstein

FLOOR_DRAWS = 8
ENTRY_KEYS = ("name", "grid", "options", "budgets", "tolerances")


def budget_list(value: Any, key: str) -> tuple[int, ...]:
    """NFE budgets: a non-empty list of integers >= 1; a ConfigError naming ``key`` otherwise."""
    value = plain(value)
    if not isinstance(value, list | tuple) or not value \
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in value):
        raise ConfigError(f"{key} must be a non-empty list of integers >= 1 (NFE budgets), got {key}={value!r}")
    return tuple(value)


def solver_signature(name: str) -> str:
    """The options the registered solver ``name`` takes, as ``a=default, b=default`` (its constructor's signature)."""
    params = inspect.signature(scoresde.SOLVERS[name]).parameters.values()
    shown = [p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}" for p in params
             if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    return ", ".join(shown) or "no options"


def check_entry(entry: Entry, key: str) -> None:
    """Build the entry's solver once, so that an unknown name, an option it does not take or a bad value is a
    ConfigError naming ``key`` (and, for options, listing the solver's own) before any work starts."""
    try:
        scoresde.get_solver(entry.name, **entry.options)
    except TypeError as err:
        raise ConfigError(f"{key}.options: {err}; solver {entry.name!r} takes: {solver_signature(entry.name)}") \
            from None
    except UnknownNameError as err:
        raise UnknownNameError(f"{key}.name: {err}") from None
    except ValueError as err:
        raise ConfigError(f"{key}.options: {err}") from None
    try:
        scoresde.make_grid(scoresde.VPSDE(), 2, entry.grid)
    except UnknownNameError as err:
        raise UnknownNameError(f"{key}.grid: {err}") from None


def parse_entries(node: Any, default_budgets: tuple[int, ...], options: Any = None) -> list[Entry]:
    """The ``solvers`` config (a mapping label → entry, or a list of entries) as :class:`Entry` objects, each
    checked by building its solver; ``options`` (the top-level ``options``) are merged into every entry's."""
    node, options = plain(node), plain(options) or {}
    if not isinstance(options, dict):
        raise ConfigError(f"options must be a mapping of solver options (options.X=...), got options={options!r}")
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, list):
        items = [(e.get("name") if isinstance(e, dict) else None, e) for e in node]
    else:
        raise ConfigError("no solvers chosen: select some with solver=[heun,ode] or give solvers entries")
    if not items:
        raise ConfigError("no solvers chosen: select some with solver=[heun,ode] or give solvers entries")
    entries, seen = [], set()
    for label, e in items:
        if not isinstance(e, dict) or "name" not in e:
            raise ConfigError(f"solvers entry {label!r} must be a mapping with at least a name, got {e!r}")
        unknown = set(e) - set(ENTRY_KEYS)
        if unknown:
            raise ConfigError(f"solvers.{label}: unknown keys {sorted(unknown)}; allowed: {', '.join(ENTRY_KEYS)}")
        label = base = str(label)
        k = 2
        while label in seen:
            label, k = f"{base}#{k}", k + 1
        seen.add(label)
        tols = e.get("tolerances")
        if tols is not None and (not isinstance(tols, list) or not tols or not all(
                isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) and t > 0 for t in tols)):
            raise ConfigError(f"solvers.{label}.tolerances must be a non-empty list of positive numbers, got {tols!r}")
        budgets = budget_list(e["budgets"], f"solvers.{label}.budgets") if e.get("budgets") is not None \
            else default_budgets
        entry_options = e.get("options") or {}
        if not isinstance(entry_options, dict):
            raise ConfigError(f"solvers.{label}.options must be a mapping, got {entry_options!r}")
        entry = Entry(label, str(e["name"]), str(e.get("grid") or "uniform"), {**entry_options, **options},
                      budgets, tuple(float(t) for t in tols) if tols is not None else None)
        check_entry(entry, f"solvers.{label}")
        entries.append(entry)
    return entries


def reference_options(cfg: DictConfig) -> dict[str, Any]:
    """``reference``: the float64 reference ODE's method and (positive) tolerances."""
    ref = {"method": "dopri5", "rtol": 1e-7, "atol": 1e-7, **(plain(cfg.get("reference")) or {})}
    unknown = set(ref) - {"method", "rtol", "atol"}
    if unknown:
        raise ConfigError(f"reference: unknown keys {sorted(unknown)}; allowed: method, rtol, atol")
    for key in ("rtol", "atol"):
        ref[key] = float_option({"reference": ref}, f"reference.{key}", minimum=0.0, open_below=True)
    try:
        scoresde.get_solver("ode", method=str(ref["method"]))
    except ValueError as err:
        raise ConfigError(f"reference.method: {err}") from None
    return ref


def common_settings(cfg: DictConfig) -> dict[str, Any]:
    """The knobs both benchmark apps share, validated, each error naming its key."""
    rho = float_option(cfg, "rho", 7.0, minimum=0.0, open_below=True)
    return {"seed": int_option(cfg, "seed", 0, minimum=0), "denoise": bool_option(cfg, "denoise", True),
            "rho": rho, "n_data": int_option(cfg, "n_data", minimum=1),
            "n_projections": int_option(cfg, "n_projections", minimum=1),
            "reference": reference_options(cfg), "progress": bool_option(cfg, "progress", True)}


def make_sde(node: Any, key: str = "sde") -> scoresde.SDE:
    """An SDE from its config mapping; a wrong parameter is a ConfigError naming ``key``."""
    spec = named(node, key) if key == "sde" else node
    try:
        return scoresde.get_sde(**spec)
    except UnknownNameError as err:
        raise UnknownNameError(f"{key}.name: {err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{key}: {err}") from None


def make_testbed(node: Any) -> scoresde.GaussianMixture:
    """The testbed of the ``testbed`` config; a wrong parameter is a ConfigError naming the key."""
    spec = named(node, "testbed")
    try:
        return scoresde.get_testbed(**spec)
    except UnknownNameError as err:
        raise UnknownNameError(f"testbed.name: {err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"testbed: {err}") from None


def make_out_dir(cfg: DictConfig) -> Path:
    """The output directory, created now (before any work), or a ConfigError naming ``out_dir``."""
    out = output_dir(cfg)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"out_dir: cannot create {out}: {err.strerror or err}") from None
    return out


def settings_from_cfg(cfg: DictConfig) -> Settings:
    """The run-wide knobs of ``compare.yaml``, validated."""
    noise = str(cfg.get("noise", "generator"))
    if noise not in NOISE_MODES:
        raise ConfigError(f"noise must be one of {', '.join(NOISE_MODES)}, got noise={noise!r}")
    c = common_settings(cfg)
    return Settings(budget_list(cfg.get("budgets"), "budgets"), int_option(cfg, "batch", minimum=2), c["seed"],
                    noise, c["denoise"], c["rho"], c["n_data"], c["n_projections"], c["reference"], c["progress"])


def compare(cfg: DictConfig) -> dict[str, Any]:
    """Run the comparison the config describes; print the table, write results.json and compare.png."""
    settings = settings_from_cfg(cfg)
    sde = make_sde(cfg.get("sde"))
    testbed = make_testbed(cfg.get("testbed"))
    entries = parse_entries(cfg.get("solvers"), settings.budgets, cfg.get("options"))
    with torch_threads(cfg.get("threads")):
        runs = [run for entry in entries for run in plan_runs(entry, sde, settings)]
        out = make_out_dir(cfg)
        results = _measure(runs, testbed, sde, settings)
    results["config"] = plain(cfg)
    print(format_table(results))
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


def solver_option_overrides(args: list[str]) -> list[str]:
    """Command-line overrides with ``options.X=v`` and ``solvers.<label>.options.X=v`` turned into Hydra's
    add-or-override form ``++...``, so that a solver option the config does not list works without a ``+``
    (the solver itself then refuses an option it does not take, listing its own)."""
    out = []
    for arg in args:
        key = arg.split("=", 1)[0]
        parts = key.split(".")
        if "=" in arg and not key.startswith(("+", "~")) and len(parts) >= 2 and (
                parts[0] == "options" or (len(parts) >= 4 and parts[0] == "solvers" and parts[2] == "options")):
            arg = "++" + arg
        out.append(arg)
    return out


def with_option_overrides(console: Callable[[], None]) -> Callable[[], None]:
    """``console`` run with :func:`solver_option_overrides` applied to ``sys.argv``."""
    def main() -> None:
        sys.argv = [sys.argv[0], *solver_option_overrides(sys.argv[1:])]
        console()
    main.__doc__ = console.__doc__
    return main


main = with_option_overrides(app_main("compare", compare, "compare"))


if __name__ == "__main__":
    main()
