"""``scoresde-bench``: the sampler benchmark suite as a Hydra app (``configs/bench.yaml``; ``--multirun`` works).

Builds the problems (an exact-score testbed under one or more SDEs, or a ``scoresde-train`` checkpoint), the
solver entries (every registered solver by default, ``solver=[...]`` to choose; ``configs/solver``) and the peers,
runs :func:`scoresde.bench.sweep_problem` on each problem, prints the markdown tables, and writes ``bench.json``,
``bench.md`` and one figure ``bench_<problem>_<sde>.png`` per problem into ``out_dir`` or the Hydra run directory.
``scoresde-compare`` is a preset of this app (``configs/compare.yaml``).

Under ``torchrun`` every run's seed batches are split across the ranks and gathered (the samples are the ones a
single process draws with the same seeds and ``batch_size``); rank 0 writes the outputs.

The task is :func:`scoresde.cli.benchmark.run` (shared with the preset); this module is the console entry.
"""
from __future__ import annotations

from scoresde.cli.benchmark import console, run

bench = run  # the task: bench(cfg) -> the payload written to bench.json
main = console("bench", "bench")

__all__ = ["bench", "main"]

if __name__ == "__main__":
    main()
