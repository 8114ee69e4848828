"""The sampler benchmark suite: sweeps of solvers × NFE budgets × time grids × SDEs on exact-score testbeds
and trained networks, peers (diffusers, k-diffusion) on the same denoiser, tables, JSON and figures.

    problems  Problem, testbed_problem, network_problem, dataset_sampler
    sweep     SweepSettings, draw (the per-seed sampling of one run), plan, sweep_problem
    metrics   build_targets, quality (sliced W2, MMD, exact NLL, Fréchet distance in classifier features)
    peers     plan_peers, PeerRun (diffusers' schedulers, k-diffusion's samplers)
    report    orders (fitted vs declared order), peer_comparison, markdown, dumps
    plots     plot_result, pareto_front
"""
from scoresde.bench.metrics import Targets, build_targets, quality
from scoresde.bench.peers import PeerRun, plan_peers
from scoresde.bench.plots import pareto_front, plot_result
from scoresde.bench.problems import Problem, dataset_sampler, network_problem, testbed_problem
from scoresde.bench.report import dumps, fit_order, markdown, orders, peer_comparison
from scoresde.bench.sweep import SweepSettings, draw, plan, sweep_problem

__all__ = ["Problem", "testbed_problem", "network_problem", "dataset_sampler", "SweepSettings", "draw", "plan",
           "sweep_problem", "Targets", "build_targets", "quality", "PeerRun", "plan_peers", "orders", "fit_order",
           "peer_comparison", "markdown", "dumps", "plot_result", "pareto_front"]
