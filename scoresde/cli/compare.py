"""``scoresde-compare``: the benchmark app (``scoresde-bench``) with its compare preset (``configs/compare.yaml``):
every registered solver at several NFE budgets on an exact-score testbed under one SDE.

For each solver entry it turns every NFE budget into the step count whose *declared* NFE (``Solver.declared_nfe``)
is closest, samples from one fixed ``x_T`` drawn from the SDE prior, and records

- the NFE the model's counting wrapper *measured*, and the wall-clock time;
- the RMSE to a high-accuracy reference from the same ``x_T`` (deterministic solvers only): the
  probability-flow ODE with float64 dopri5 at rtol = atol = 1e-7 down to the same end time, with the
  same final denoising step;
- the sliced Wasserstein distance (:func:`scoresde.evaluation.sliced_wasserstein`) to exact data
  samples of the testbed (all solvers), next to the floor the same distance has between two exact sample sets.

It prints the table and writes ``results.json`` and ``compare.png`` (quality vs NFE) into ``out_dir``
or the Hydra run directory. Every ``scoresde-bench`` setting works here too (``report=bench`` gives the bench's
markdown, JSON and figures).
"""
from __future__ import annotations

from scoresde.cli.benchmark import console, run

compare = run  # the task: compare(cfg) -> the content of results.json
main = console("compare", "compare")

__all__ = ["compare", "main"]

if __name__ == "__main__":
    main()
