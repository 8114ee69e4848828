"""The sampler benchmark suite: sweeps of solvers × NFE budgets × time grids × SDEs on exact-score testbeds
and trained networks, peers (diffusers, k-diffusion) on the same denoiser, tables, JSON and figures.

    problems  Problem, testbed_problem, network_problem, dataset_sampler
    planning  SweepSettings, Entry, Run, plan_runs (budget → steps), stream_seeds, reference_solution
    sweep     draw (the sampling of one run), plan, sweep_problem
    targets   build_targets, quality (what runs are scored against; the metrics are scoresde.evaluation.metrics)
    peers     plan_peers, PeerRun (diffusers' schedulers, k-diffusion's samplers)
    report    orders (fitted vs declared order), peer_comparison, markdown, dumps; compare_results, compare_table
    plots     plot_result, pareto_front, plot_compare
    timing    pin_conditions, compare (interleaved rounds), Comparison, Summary, Ratio, Agreement, Stopwatch: the one
              timing helper behind every speed figure (median and IQR, paired ratios, "not resolved")

``scoresde-bench`` and its preset ``scoresde-compare`` are the one app that drives it (:mod:`scoresde.cli.benchmark`).
"""
from scoresde.bench.peers import PeerRun, plan_peers
from scoresde.bench.planning import Entry, Run, SweepSettings, plan_runs, stream_seeds
from scoresde.bench.plots import pareto_front, plot_compare, plot_result
from scoresde.bench.problems import Problem, dataset_sampler, network_problem, testbed_problem
from scoresde.bench.report import compare_results, compare_table, dumps, markdown, orders, peer_comparison
from scoresde.bench.sweep import draw, plan, sweep_problem
from scoresde.bench.targets import Targets, build_targets, quality
from scoresde.bench.timing import Agreement, Comparison, Ratio, Stopwatch, Summary, compare, pin_conditions

__all__ = ["Problem", "testbed_problem", "network_problem", "dataset_sampler", "SweepSettings", "Entry", "Run",
           "plan_runs", "stream_seeds", "draw", "plan", "sweep_problem", "Targets", "build_targets", "quality",
           "PeerRun", "plan_peers", "orders", "peer_comparison", "markdown", "dumps", "compare_results",
           "compare_table", "plot_result", "plot_compare", "pareto_front", "pin_conditions", "compare", "Comparison",
           "Summary", "Ratio", "Agreement", "Stopwatch"]
