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

import torch
from omegaconf import DictConfig

import scoresde
from scoresde.bench import SweepSettings, dumps, markdown, plan_peers, plot_result, sweep_problem
from scoresde.bench.metrics import METRICS
from scoresde.bench.problems import Problem, dataset_sampler, network_problem, testbed_problem
from scoresde.cli.common import app_main, bool_option, float_option, int_option, one_line, plain, torch_threads
from scoresde.cli.compare import (
    budget_list,
    common_settings,
    make_out_dir,
    make_sde,
    make_testbed,
    parse_entries,
    with_option_overrides,
)
from scoresde.data.from_config import load_data_config
from scoresde.distributed import DistContext, init_distributed, resolve_device, shutdown
from scoresde.errors import ConfigError, UnknownNameError, UserError
from scoresde.models.loader import load_model

PROBLEMS = ("testbed", "checkpoint")


def settings_from(cfg: DictConfig) -> SweepSettings:
    """The sweep's knobs from the config, validated; every error names its key."""
    grids = plain(cfg.get("grids"))
    if grids is not None and (not isinstance(grids, list) or not grids
                              or any(not isinstance(g, str) or g not in scoresde.GRIDS for g in grids)):
        raise UnknownNameError(f"grids must be a non-empty list of known grids ({', '.join(scoresde.GRIDS)}) or "
                               f"null, got grids={grids!r}")
    metrics = plain(cfg.get("metrics"))
    if not isinstance(metrics, list) or not metrics or any(m not in METRICS for m in metrics):
        raise UnknownNameError(f"metrics must be a non-empty list of {', '.join(METRICS)}, got metrics={metrics!r}")
    metric = str(cfg.get("metric", "auto"))
    if metric not in ("auto", *METRICS):
        raise UnknownNameError(f"metric must be auto or one of {', '.join(METRICS)}, got metric={metric!r}")
    batch_size = None if cfg.get("batch_size") is None else int_option(cfg, "batch_size", minimum=1)
    c = common_settings(cfg)
    return SweepSettings(budget_list(cfg.get("budgets"), "budgets"), tuple(grids) if grids else None,
                         int_option(cfg, "n_samples", minimum=2), c["seed"], batch_size, c["denoise"], c["rho"],
                         c["n_data"], c["n_projections"], c["reference"], tuple(metrics), c["progress"])


def sde_list(cfg: DictConfig) -> list[scoresde.SDE]:
    """``sdes`` (names or mappings) if given, else the ``sde`` group's choice."""
    names = plain(cfg.get("sdes"))
    if not names:
        return [make_sde(cfg.get("sde"))]
    if not isinstance(names, list):
        raise ConfigError(f"sdes must be a list of SDE names or mappings, got sdes={names!r}")
    return [make_sde(n if isinstance(n, dict) else {"name": str(n)}, f"sdes[{i}]") for i, n in enumerate(names)]


def checkpoint_data(train_cfg: dict[str, Any]) -> Any:
    """Real samples of the checkpoint's training data (None for an image dataset that is not installed)."""
    try:
        return dataset_sampler(load_data_config(train_cfg["data"], seed=12345)[0].float())
    except (FileNotFoundError, KeyError, TypeError, ValueError):  # not installed, or no data config stored
        return None


def problem_kind(cfg: DictConfig) -> str:
    kind = str(cfg.get("problem", "testbed"))
    if kind not in PROBLEMS:
        raise UnknownNameError(f"problem must be one of {', '.join(PROBLEMS)}, got problem={kind!r}")
    if kind == "checkpoint" and plain(cfg.get("sdes")):
        raise ConfigError("sdes= applies to testbeds; a checkpoint's SDE is the one it was trained with")
    if kind == "checkpoint" and not cfg.get("ckpt"):
        raise ConfigError("problem=checkpoint needs ckpt=<a checkpoint file, its folder or the run dir>")
    return kind


def build_problems(cfg: DictConfig, device: torch.device) -> list[Problem]:
    kind = problem_kind(cfg)
    if kind == "testbed":
        testbed = make_testbed(cfg.get("testbed"))
        return [testbed_problem(testbed, sde, device) for sde in sde_list(cfg)]
    try:
        loaded = load_model(str(cfg.get("ckpt")), bool_option(cfg, "ema", True))
    except (OSError, UserError) as err:
        raise ConfigError(f"ckpt={cfg.get('ckpt')}: {one_line(err)}") from None
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
    settings = settings_from(cfg)  # every config error is found before a process group is joined
    try:
        resolve_device(cfg.get("device", "auto"))
    except (ValueError, RuntimeError) as err:
        raise ConfigError(str(err)) from None
    timeout = float_option(cfg, "dist_timeout_s", 1800, minimum=0.0, open_below=True)
    entries = parse_entries(cfg.get("solvers"), settings.budgets, cfg.get("options"))
    for key in ("peers", "kdiffusion"):
        methods = plain(cfg.get(key)) or []
        if not isinstance(methods, list):
            raise ConfigError(f"{key} must be a list of method names, got {key}={methods!r}")
        try:
            plan_peers(*((methods, []) if key == "peers" else ([], methods)), settings.budgets)
        except ValueError as err:
            raise UnknownNameError(f"{key}: {err}") from None
    problem_kind(cfg)
    bool_option(cfg, "ema", True)
    with torch_threads(cfg.get("threads")):
        ctx = init_distributed(cfg.get("device", "auto"), timeout)
        try:
            return _bench(cfg, ctx, settings, entries)
        finally:
            shutdown(ctx)


def _bench(cfg: DictConfig, ctx: DistContext, settings: SweepSettings, entries: list) -> dict[str, Any]:
    """:func:`bench` inside a (possibly single-process) process group: every rank sweeps with sharded sampling;
    rank 0 prints and writes."""
    settings = replace(settings, dist=ctx, progress=settings.progress and ctx.is_main)
    device = ctx.device
    peers, notes = plan_peers(plain(cfg.get("peers")) or [], plain(cfg.get("kdiffusion")) or [], settings.budgets)
    out = make_out_dir(cfg) if ctx.is_main else None
    start = time.perf_counter()
    problems = build_problems(cfg, device)
    results = [sweep_problem(p, entries, settings, peers) for p in problems]
    info = machine(device)
    info["seconds"] = time.perf_counter() - start
    info["world_size"] = ctx.world_size
    if out is None:
        return {"machine": info, "results": results}
    metric = str(cfg.get("metric", "auto"))
    table = markdown(results, metric, notes)
    figures = [str(plot_result(r, out / f"bench_{r['problem']}_{r['sde']}.png", metric)) for r in results]
    payload = {"machine": info, "config": plain(cfg), "notes": notes, "results": results, "figures": figures}
    (out / "bench.json").write_text(dumps(payload))
    (out / "bench.md").write_text(table)
    print(table)
    print(f"{info['seconds']:.1f} s; wrote {out / 'bench.json'}, {out / 'bench.md'} and {', '.join(figures)}")
    return payload


main = with_option_overrides(app_main("bench", bench, "bench"))


if __name__ == "__main__":
    main()
