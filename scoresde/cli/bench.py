"""``scoresde-bench``: the sampler benchmark suite as a Hydra app (``configs/bench.yaml``; ``--multirun`` works).

Builds the problems (an exact-score testbed under one or more SDEs, or a ``scoresde-train`` checkpoint), the
solver entries (``configs/solver``, as ``scoresde-compare``) and the peers, runs
:func:`scoresde.bench.sweep_problem` on each problem, prints the markdown tables, and writes ``bench.json``,
``bench.md`` and one figure ``bench_<problem>_<sde>.png`` per problem into ``out_dir`` or the Hydra run directory.

Under ``torchrun`` every run's seed batches are split across the ranks and gathered (the samples are the ones a
single process draws with the same seeds and ``batch_size``); rank 0 writes the outputs.
"""
from __future__ import annotations

import platform
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

import scoresde
from scoresde.bench import SweepSettings, dumps, markdown, plan_peers, plot_result, sweep_problem
from scoresde.bench.problems import Problem, dataset_sampler, network_problem, testbed_problem
from scoresde.cli.common import CONFIG_DIR, named, output_dir, plain
from scoresde.cli.compare import parse_entries
from scoresde.data.from_config import load_data_config
from scoresde.distributed import DistContext, init_distributed, shutdown
from scoresde.models.loader import load_model

PROBLEMS = ("testbed", "checkpoint")


def settings_from(cfg: DictConfig) -> SweepSettings:
    """The sweep's knobs from the config (validated by :class:`SweepSettings`)."""
    grids = plain(cfg.get("grids"))
    return SweepSettings(tuple(plain(cfg.budgets)), tuple(grids) if grids else None, int(cfg.n_samples),
                         int(cfg.seed), cfg.get("batch_size"), bool(cfg.denoise), float(cfg.rho), int(cfg.n_data),
                         int(cfg.n_projections), dict(plain(cfg.reference)), tuple(plain(cfg.metrics)),
                         bool(cfg.progress))


def sde_list(cfg: DictConfig) -> list[scoresde.SDE]:
    """``sdes`` (names or mappings) if given, else the ``sde`` group's choice."""
    names = plain(cfg.get("sdes"))
    if not names:
        return [scoresde.get_sde(**named(cfg.get("sde"), "sde"))]
    return [scoresde.get_sde(**(n if isinstance(n, dict) else {"name": str(n)})) for n in names]


def checkpoint_data(train_cfg: dict[str, Any]) -> Any:
    """Real samples of the checkpoint's training data (None for an image dataset that is not installed)."""
    try:
        return dataset_sampler(load_data_config(train_cfg["data"], seed=12345)[0].float())
    except (FileNotFoundError, KeyError, TypeError, ValueError):  # not installed, or no data config stored
        return None


def build_problems(cfg: DictConfig, device: torch.device) -> list[Problem]:
    kind = str(cfg.get("problem", "testbed"))
    if kind not in PROBLEMS:
        raise ValueError(f"problem must be one of {', '.join(PROBLEMS)}, got {kind!r}")
    if kind == "testbed":
        testbed = scoresde.get_testbed(**named(cfg.get("testbed"), "testbed"))
        return [testbed_problem(testbed, sde, device) for sde in sde_list(cfg)]
    if plain(cfg.get("sdes")):
        raise ValueError("sdes= applies to testbeds; a checkpoint's SDE is the one it was trained with")
    loaded = load_model(cfg.get("ckpt"), bool(cfg.get("ema", True)))
    train_cfg = loaded.training_config
    name = f"{(train_cfg.get('data') or {}).get('name', 'model')}@step{loaded.step}"
    return [network_problem(loaded.model, loaded.sde, loaded.shape, name, checkpoint_data(train_cfg), device)]


def machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": str(device),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def bench(cfg: DictConfig) -> dict[str, Any]:
    """Run the sweep the config describes; print the tables; write bench.json, bench.md and the figures."""
    ctx = init_distributed(cfg.get("device", "auto"), float(cfg.get("dist_timeout_s") or 1800))
    try:
        return _bench(cfg, ctx)
    finally:
        shutdown(ctx)


def _bench(cfg: DictConfig, ctx: DistContext) -> dict[str, Any]:
    """:func:`bench` inside a (possibly single-process) process group: every rank sweeps with sharded sampling;
    rank 0 prints and writes."""
    settings = settings_from(cfg)
    settings = replace(settings, dist=ctx, progress=settings.progress and ctx.is_main)
    device = ctx.device
    entries = parse_entries(cfg.get("solvers"), settings.budgets)
    peers, notes = plan_peers(plain(cfg.get("peers")) or [], plain(cfg.get("kdiffusion")) or [], settings.budgets)
    threads = torch.get_num_threads()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    start = time.perf_counter()
    try:
        problems = build_problems(cfg, device)
        results = [sweep_problem(p, entries, settings, peers) for p in problems]
        info = machine(device)
    finally:
        torch.set_num_threads(threads)
    info["seconds"] = time.perf_counter() - start
    info["world_size"] = ctx.world_size
    if not ctx.is_main:
        return {"machine": info, "results": results}
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    metric = str(cfg.get("metric", "auto"))
    table = markdown(results, metric, notes)
    figures = [str(plot_result(r, out / f"bench_{r['problem']}_{r['sde']}.png", metric)) for r in results]
    payload = {"machine": info, "config": plain(cfg), "notes": notes, "results": results, "figures": figures}
    (out / "bench.json").write_text(dumps(payload))
    (out / "bench.md").write_text(table)
    print(table)
    print(f"{info['seconds']:.1f} s; wrote {out / 'bench.json'}, {out / 'bench.md'} and {', '.join(figures)}")
    return payload


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="bench")
def main(cfg: DictConfig) -> None:
    """Console entry point ``scoresde-bench`` (Hydra overrides on the command line)."""
    bench(cfg)


if __name__ == "__main__":
    main()
