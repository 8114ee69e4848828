"""What a sweep reports: fitted convergence orders, the comparison with peers, markdown tables and strict JSON.

The measured order of a deterministic solver is the negative slope of log RMSE (to the reference ODE solution
from the same x_T) against log NFE, fitted by least squares over its budgets (as diffrax's tests do), shown
beside the order the solver declares (:func:`scoresde.evaluation.fit_order`, the project's one order fit).

``scoresde-compare`` (the bench preset with ``report=compare``) shows one problem as a fixed-width text table and
``results.json`` (:func:`compare_results`, :func:`compare_table`).
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from scoresde.bench.targets import QUALITY
from scoresde.evaluation.metrics import fit_order

SERIES = ("problem", "sde", "source", "label", "grid")
Row = dict[str, Any]


def series_key(row: Row) -> tuple[str, ...]:
    return tuple(str(row[k]) for k in SERIES)


def series_name(row: Row) -> str:
    """A short label of a row's series: ``label@grid`` (scoresde) or ``diffusers:method``."""
    return f"{row['label']}@{row['grid']}" if row["source"] == "scoresde" else f"{row['source']}:{row['label']}"


def ok(rows: Iterable[Row]) -> list[Row]:
    return [r for r in rows if r["error"] is None]


def orders(rows: list[Row]) -> list[dict[str, Any]]:
    """Per deterministic fixed-step series: declared order, fitted order and the NFE range of the fit."""
    groups: dict[tuple[str, ...], list[Row]] = defaultdict(list)
    for r in ok(rows):
        if not r["stochastic"] and r["tol"] is None and r["rmse"] is not None:
            groups[series_key(r)].append(r)
    out = []
    for mine in groups.values():
        mine.sort(key=lambda r: r["nfe"])
        out.append({"problem": mine[0]["problem"], "sde": mine[0]["sde"], "series": series_name(mine[0]),
                    "declared": mine[0]["order"], "fitted": fit_order([r["nfe"] for r in mine],
                                                                       [r["rmse"] for r in mine]),
                    "nfe": [r["nfe"] for r in mine], "points": len(mine)})
    return out


def primary_metric(result: dict[str, Any], metric: str = "auto") -> str:
    """The quality metric for Pareto fronts and the peer comparison: ``fd`` for images, else ``sw``."""
    if metric != "auto":
        if metric not in ("rmse", *QUALITY):
            raise ValueError(f"metric must be auto, rmse or one of {', '.join(QUALITY)}, got {metric!r}")
        return metric
    return "fd" if "fd" in result["metrics"] else ("sw" if "sw" in result["metrics"] else "rmse")


def best(rows: list[Row], metric: str) -> Row | None:
    scored = [r for r in ok(rows) if r.get(metric) is not None]
    return min(scored, key=lambda r: r[metric]) if scored else None


def peer_comparison(result: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    """Per budget with peers and per metric (``metric``, then the RMSE to the reference ODE solution, which
    resolves deterministic solvers far more finely than a distance between sample sets): scoresde's best run
    against the best peer run, quality and time as ratios."""
    out = []
    budgets = sorted({r["budget"] for r in result["rows"] if r["source"] != "scoresde" and r["budget"] is not None})
    pairs = [(b, m) for b in budgets for m in dict.fromkeys((metric, "rmse"))]
    for b, m in pairs:
        mine = best([r for r in result["rows"] if r["source"] == "scoresde" and r["budget"] == b], m)
        peer = best([r for r in result["rows"] if r["source"] != "scoresde" and r["budget"] == b], m)
        if mine is None or peer is None:
            continue
        out.append({"budget": b, "metric": m, "scoresde": series_name(mine), "scoresde_value": mine[m],
                    "scoresde_nfe": mine["nfe"], "peer": series_name(peer), "peer_value": peer[m],
                    "peer_nfe": peer["nfe"], "quality_ratio": mine[m] / peer[m] if peer[m] else None,
                    "time_ratio": mine["time_s"] / peer["time_s"] if peer["time_s"] else None})
    return out


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _table(head: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(x) + " |" for x in lines]


def runs_table(result: dict[str, Any]) -> list[str]:
    lines = []
    for r in result["rows"]:
        steps = f"rtol={r['tol']:.0e}" if r["tol"] is not None else str(r["steps"])
        if r["error"] is not None:
            lines.append([series_name(r), steps, "-", "-", "-", "failed", r["error"][:60], "", "", ""])
            continue
        lines.append([series_name(r), steps, str(r["nfe"]), _fmt(r["time_s"], ".3f"), _fmt(r["samples_per_s"], ".0f"),
                      _fmt(r["rmse"], ".2e"), _fmt(r["sw"], ".4f"), _fmt(r["mmd"], ".2e"), _fmt(r["nll"], ".3f"),
                      _fmt(r["fd"], ".3f")])
    floors, std = result["floors"], result.get("floors_std", {})

    def floor(m: str, spec: str) -> str:
        return "-" if m not in floors else f"{floors[m]:{spec}} ± {std.get(m, 0.0):{spec}}"

    lines.append(["floor: exact vs exact (mean ± std)", "", "", "", "", "", floor("sw", ".4f"), floor("mmd", ".1e"),
                  floor("nll", ".3f"), floor("fd", ".3f")])
    return _table(["solver", "steps", "NFE", "time [s]", "samples/s", "RMSE", "SW2", "MMD²", "NLL", "FD"], lines)


def validation_cell(search: dict[str, Any]) -> str:
    """The validation rows' RMSE of the start grid and of the searched grid, and which grid was kept."""
    start, searched = search.get("start_validation_error"), search.get("searched_validation_error")
    if start is None or searched is None:
        return "-"
    return f"{start:.2e} → {searched:.2e} ({search.get('kept', '?')})"


def searches_table(result: dict[str, Any]) -> list[str]:
    """The optimized grids of one problem (rows with a ``grid_search`` record): the named grid each search started
    from, calibration and held-out RMSE, the search's cost (apart from the run's NFE and time) and the σ's found."""
    lines = []
    for r in result["rows"]:
        s = r.get("grid_search")
        if not s:
            continue
        sigmas = ", ".join(f"{v:.3g}" for v in s["found"]["sigma"])
        lines.append([series_name(r), str(r["nfe"]), s["start"], f"{s['start_calib_rmse']:.2e}",
                      f"{s['calib_rmse']:.2e}", validation_cell(s), _fmt(s["heldout_rmse"], ".2e"),
                      f"{s['search_nfe']}" + (" (reused)" if s["reused"] else ""), f"{s['search_s']:.1f}", sigmas])
    if not lines:
        return []
    calib = result.get("calibration") or {}
    ref = ", ".join(f"NFE {i['nfe']}, {i['time_s']:.2f} s" for i in calib.get("reference", []))
    return (["", f"Optimized grids (calibration batch of {calib.get('batch')} samples, seeds {calib.get('seeds')}, "
             f"disjoint from the runs', the last {calib.get('validation', 0):g} of it validation rows the search "
             f"never fits; search budget {calib.get('budget'):g}× the NFE; calibration reference: "
             f"{ref}; none of it counted in the runs' NFE or time):", ""]
            + _table(["solver", "NFE", "started from", "start calib RMSE", "calib RMSE",
                      "validation: start → searched (kept)", "held-out RMSE",
                      "search NFE", "search [s]", "σ's"], lines))


def markdown(results: list[dict[str, Any]], metric: str = "auto", notes: Iterable[str] = ()) -> str:
    """All tables of a sweep: runs, fitted orders, and scoresde against the best peer, per problem."""
    text = []
    for res in results:
        text += [f"### {res['problem']} / {res['sde']} ({res['device']})", ""] + runs_table(res) + [""]
        for info in res["reference"]:
            text.append(f"Reference: ode {info['method']} rtol={info['rtol']:.0e} float64 to t={info['t_end']:.3g} "
                        f"(NFE {info['nfe']}, {info['time_s']:.2f} s).")
        text += searches_table(res)
        fits = orders(res["rows"])
        if fits:
            text += ["", "Convergence order (fit of log RMSE against log NFE):", ""]
            text += _table(["solver", "declared order", "fitted order", "NFE range"],
                           [[f["series"], f"{f['declared']:g}", _fmt(f["fitted"], ".2f"),
                             f"{min(f['nfe'])}–{max(f['nfe'])}"] for f in fits])
        cmp = peer_comparison(res, primary_metric(res, metric))
        if cmp:
            text += ["", "scoresde against peers at equal budget (ratios scoresde / peer; quality ratio ≤ 1: "
                     "scoresde at least as good):", ""]
            text += _table(["budget", "metric", "best scoresde", "value", "best peer", "value", "quality ratio",
                            "time ratio"],
                           [[str(c["budget"]), c["metric"], c["scoresde"], f"{c['scoresde_value']:.4g}", c["peer"],
                             f"{c['peer_value']:.4g}", _fmt(c["quality_ratio"], ".3f"), _fmt(c["time_ratio"], ".2f")]
                            for c in cmp])
        text.append("")
    text += [f"Note: {n}" for n in notes]
    return "\n".join(text).rstrip() + "\n"


def jsonable(value: Any) -> Any:
    """Strict JSON: non-finite floats become the strings "inf", "-inf", "nan"; tuples become lists."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def dumps(payload: dict[str, Any]) -> str:
    return json.dumps(jsonable(payload), indent=2, allow_nan=False)


COMPARE_ROW = ("label", "solver", "grid", "options", "budget", "tol", "steps", "declared_nfe", "stochastic", "nfe",
               "time_s", "rmse", "sw", "error")


def compare_results(result: dict[str, Any], n_data: int, floor_draws: int) -> dict[str, Any]:
    """One problem's sweep in ``scoresde-compare``'s ``results.json`` form: its rows (solver, budget, steps, NFE,
    time, RMSE to the reference, sliced W2), the SW2 floor and the reference solutions."""
    if "sw" not in result["metrics"]:
        raise ValueError(f"the compare report shows sliced W2 (metrics with sw); {result['problem']} has none")
    return {"testbed": result["problem"], "sde": result["sde"], "batch": result["n_samples"], "n_data": n_data,
            "noise": result["noise"], "seeds": result["seeds"], "sw_floor": result["floors"]["sw"],
            "sw_floor_std": result["floors_std"]["sw"], "floor_draws": floor_draws,
            "sw_reference": [info.get("sw") for info in result["reference"]], "reference": result["reference"],
            "rows": [{k: r[k] for k in COMPARE_ROW} for r in result["rows"]]}


def compare_table(results: dict[str, Any]) -> str:
    """:func:`compare_results` as a fixed-width text table, with the reference and the sliced W2 floor below."""
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
                    f"t={info['t_end']:.3g}: NFE {info['nfe']}, {info['time_s']:.2f} s, SW2 {_fmt(sw, '.4f')}")
    text.append(f"SW2 floor (exact data vs exact data, {results['batch']} vs {results['n_data']} samples, "
                f"mean ± std of {results['floor_draws']} draws): {results['sw_floor']:.4f} ± "
                f"{results['sw_floor_std']:.4f}")
    return "\n".join(text)
