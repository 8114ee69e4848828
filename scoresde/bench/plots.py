"""Figures of a sweep (matplotlib, Agg): error against NFE with fitted orders, error against wall-clock, and the
Pareto front of quality against time."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from scoresde.bench.report import ok, primary_metric, series_key, series_name
from scoresde.evaluation.metrics import fit_order

Row = dict[str, Any]


def pareto_front(rows: list[Row], cost: str, metric: str) -> list[Row]:
    """The runs no other run beats on both ``cost`` and ``metric`` (lower is better for both), by cost."""
    pts = sorted((r for r in ok(rows) if r.get(cost) is not None and r.get(metric) is not None),
                 key=lambda r: (r[cost], r[metric]))
    front, best = [], float("inf")
    for r in pts:
        if r[metric] < best:
            front.append(r)
            best = r[metric]
    return front


def _series(rows: list[Row]) -> dict[tuple[str, ...], list[Row]]:
    groups: dict[tuple[str, ...], list[Row]] = defaultdict(list)
    for r in ok(rows):
        groups[series_key(r)].append(r)
    return {k: sorted(v, key=lambda r: r["nfe"]) for k, v in groups.items()}


def _style(row: Row) -> str:
    return ":" if row["source"] != "scoresde" else ("--" if row["stochastic"] else "-")


def plot_result(result: dict[str, Any], path: Path, metric: str = "auto") -> Path:
    """Three panels for one problem: RMSE vs NFE (deterministic; legend: fitted order), ``metric`` vs seconds,
    and the Pareto front of ``metric`` against seconds. Dotted lines: peers; dashed: stochastic solvers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = primary_metric(result, metric)
    fig = Figure(figsize=(16, 5))
    FigureCanvasAgg(fig)
    ax_nfe, ax_time, ax_front = fig.subplots(1, 3)
    for mine in _series(result["rows"]).values():
        r0, nfe = mine[0], [r["nfe"] for r in mine]
        if not r0["stochastic"] and all(r["rmse"] is not None for r in mine):
            p = fit_order(nfe, [r["rmse"] for r in mine]) if r0["tol"] is None else None
            extra = f" (order {p:.2f}, declared {r0['order']:g})" if p is not None else ""
            ax_nfe.plot(nfe, [r["rmse"] for r in mine], _style(r0), marker="o", label=series_name(r0) + extra)
        if all(r[metric] is not None for r in mine):
            ax_time.plot([r["time_s"] for r in mine], [r[metric] for r in mine], _style(r0), marker="o",
                         label=series_name(r0))
    every = [r for r in ok(result["rows"]) if r.get(metric) is not None and r["time_s"]]
    ax_front.scatter([r["time_s"] for r in every], [r[metric] for r in every], s=12, color="gray", alpha=0.6,
                     label="all runs")
    front = pareto_front(result["rows"], "time_s", metric)
    ax_front.step([r["time_s"] for r in front], [r[metric] for r in front], "r-", where="post", label="Pareto front")
    for r in front:
        ax_front.annotate(f"{series_name(r)} {r['nfe']}", (r["time_s"], r[metric]), fontsize=6)
    floor = result["floors"].get(metric)
    for ax in (ax_time, ax_front):
        if floor is not None and floor > 0:
            ax.axhline(floor, color="gray", ls=":", label="exact vs exact")
    ax_nfe.set(xscale="log", yscale="log", xlabel="NFE (measured)", ylabel="RMSE to reference ODE solution",
               title="deterministic solvers: error vs NFE")
    ax_time.set(xscale="log", yscale="log", xlabel="wall-clock [s]", ylabel=metric, title=f"{metric} vs wall-clock")
    ax_front.set(xscale="log", yscale="log", xlabel="wall-clock [s]", ylabel=metric, title="Pareto front")
    for ax in (ax_nfe, ax_time, ax_front):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.suptitle(f"{result['problem']} / {result['sde']} ({result['device']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_compare(results: dict[str, Any], path: Path) -> None:
    """``scoresde-compare``'s figure of :func:`scoresde.bench.report.compare_results`: sliced W2 vs measured NFE
    (every solver) and RMSE vs NFE (deterministic ones), log-log."""
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
