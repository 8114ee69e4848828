"""The benchmark app's task, shared by ``scoresde-bench`` (``configs/bench.yaml``) and its preset
``scoresde-compare`` (``configs/compare.yaml``, which extends bench.yaml): reads the config into the library's
objects (:mod:`scoresde.bench`), runs the sweep and writes the report. Not an app itself: the two console entries
(:mod:`scoresde.cli.bench`, :mod:`scoresde.cli.compare`) are ``console(<app>, <config>)``.

The default solver list is every registered solver: :func:`register_all_solvers` stores the config-group option
``solver/all`` (each solver's ``configs/solver/<name>.yaml`` entry where it has one, else its name, the uniform grid
and its default options), built from ``scoresde.SOLVERS`` when this module is imported, so a new solver is swept
with no edit to any list.

Every wrong input is a :class:`~scoresde.errors.ConfigError` (or UnknownNameError) naming its key, found before any
sampling starts; the console entry prints it as one line (:func:`scoresde.cli.common.app_main`).
"""
from __future__ import annotations

import math
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import scoresde
from scoresde.bench import (
    SweepSettings,
    compare_results,
    compare_table,
    dumps,
    markdown,
    plan_peers,
    plot_compare,
    plot_result,
    sweep_problem,
)
from scoresde.bench.planning import NOISE_MODES, OPTIMIZED, Entry, check_optimizable
from scoresde.bench.problems import Problem, dataset_sampler, network_problem, reference_data, testbed_problem
from scoresde.bench.targets import METRICS
from scoresde.bench.timing import Conditions
from scoresde.cli.common import (
    CONFIG_DIR,
    app_main,
    bool_option,
    float_option,
    int_option,
    make_output_dir,
    named,
    one_line,
    plain,
    torch_threads,
)
from scoresde.cli.solver_options import build_solver
from scoresde.data import IMAGE_DATASETS, TOYS
from scoresde.data.from_config import load_data_config
from scoresde.distributed import DistContext, init_distributed, resolve_device, shutdown
from scoresde.errors import ConfigError, UnknownNameError, UserError
from scoresde.models.loader import DIFFUSERS_PREFIX, load_model

PROBLEMS = ("testbed", "checkpoint", "diffusers")
REPORTS = ("bench", "compare")
ENTRY_KEYS = ("name", "grid", "options", "budgets", "tolerances")


def register_all_solvers() -> dict[str, Any]:
    """Store the config-group option ``solver/all`` (package ``solvers``): one entry per registered solver, from
    its ``configs/solver/<name>.yaml`` where it has one, else ``{name, grid: uniform, options: {}}``."""
    from hydra.core.config_store import ConfigStore

    entries = {}
    for name in sorted(scoresde.SOLVERS):
        path = Path(CONFIG_DIR, "solver", f"{name}.yaml")
        node = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {}
        entries[name] = node.get(name) if isinstance(node, dict) and isinstance(node.get(name), dict) \
            else {"name": name, "grid": "uniform", "options": {}}
    ConfigStore.instance().store(group="solver", name="all", node=entries, package="solvers")
    return entries


def budget_list(value: Any, key: str) -> tuple[int, ...]:
    """NFE budgets: a non-empty list of integers >= 1; a ConfigError naming ``key`` otherwise."""
    value = plain(value)
    if not isinstance(value, list | tuple) or not value \
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in value):
        raise ConfigError(f"{key} must be a non-empty list of integers >= 1 (NFE budgets), got {key}={value!r}")
    return tuple(value)


def check_entry(entry: Entry, key: str) -> None:
    """Build the entry's solver once, so that an unknown name, an option it does not take or a bad value is a
    ConfigError naming ``key`` (and, for options, listing the solver's own) before any work starts."""
    try:
        build_solver(entry.name, entry.options, f"{key}.options")
    except UnknownNameError as err:
        raise UnknownNameError(f"{key}.name: {err}") from None
    if entry.grid == OPTIMIZED:
        return
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


def settings_from(cfg: DictConfig) -> SweepSettings:
    """The sweep's knobs from the config, validated; every error names its key."""
    grids = plain(cfg.get("grids"))
    if grids is not None and (not isinstance(grids, list) or not grids
                              or any(not isinstance(g, str) or g not in (*scoresde.GRIDS, OPTIMIZED) for g in grids)):
        raise UnknownNameError(f"grids must be a non-empty list of known grids ({', '.join(scoresde.GRIDS)}, "
                               f"{OPTIMIZED}) or null, got grids={grids!r}")
    metrics = plain(cfg.get("metrics"))
    if not isinstance(metrics, list) or not metrics or any(m not in METRICS for m in metrics):
        raise UnknownNameError(f"metrics must be a non-empty list of {', '.join(METRICS)}, got metrics={metrics!r}")
    metric = str(cfg.get("metric", "auto"))
    if metric not in ("auto", *METRICS):
        raise UnknownNameError(f"metric must be auto or one of {', '.join(METRICS)}, got metric={metric!r}")
    noise = str(cfg.get("noise", "per_sample"))
    if noise not in NOISE_MODES:
        raise UnknownNameError(f"noise must be one of {', '.join(NOISE_MODES)}, got noise={noise!r}")
    if "batch" in cfg:  # scoresde-compare's name for the samples per run (n_samples: ${batch})
        int_option(cfg, "batch", minimum=2)
    batch_size = None if cfg.get("batch_size") is None else int_option(cfg, "batch_size", minimum=1)
    return SweepSettings(
        budgets=budget_list(cfg.get("budgets"), "budgets"), grids=tuple(grids) if grids else None,
        n_samples=int_option(cfg, "n_samples", minimum=2), seed=int_option(cfg, "seed", 0, minimum=0),
        batch_size=batch_size, denoise=bool_option(cfg, "denoise", True),
        rho=float_option(cfg, "rho", 7.0, minimum=0.0, open_below=True), n_data=int_option(cfg, "n_data", minimum=1),
        n_projections=int_option(cfg, "n_projections", minimum=1), reference=reference_options(cfg),
        metrics=tuple(metrics), progress=bool_option(cfg, "progress", True), noise=noise,
        floor_draws=int_option(cfg, "floor_draws", 4, minimum=2),
        grid_search_budget=float_option(cfg, "grid_search_budget", 200.0, minimum=0.0, open_below=True),
        grid_search_batch=int_option(cfg, "grid_search_batch", 256, minimum=1),
        grid_search_validation=float_option(cfg, "grid_search_validation", 0.25, minimum=0.0, maximum=1.0))


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


def built(build: Any, spec: dict[str, Any], key: str) -> Any:
    """``build(**spec)``: an unknown name is an UnknownNameError naming ``<key>.name``, a wrong parameter a
    ConfigError naming ``key``."""
    try:
        return build(**spec)
    except UnknownNameError as err:
        raise UnknownNameError(f"{key}.name: {err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{key}: {err}") from None


def make_sde(node: Any, key: str = "sde") -> scoresde.SDE:
    """An SDE from its config mapping (:func:`built`)."""
    return built(scoresde.get_sde, named(node, key) if key == "sde" else node, key)


def make_testbed(node: Any) -> scoresde.GaussianMixture:
    """The testbed of the ``testbed`` config (:func:`built`)."""
    return built(scoresde.get_testbed, named(node, "testbed"), "testbed")


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
    """``problem`` (testbed, checkpoint or diffusers), checked with the settings it needs."""
    kind = str(cfg.get("problem", "testbed"))
    if kind not in PROBLEMS:
        raise UnknownNameError(f"problem must be one of {', '.join(PROBLEMS)}, got problem={kind!r}")
    if kind != "testbed" and plain(cfg.get("sdes")):
        raise ConfigError("sdes= applies to testbeds; a model's SDE is the one it was trained with")
    if kind == "checkpoint" and not cfg.get("ckpt"):
        raise ConfigError("problem=checkpoint needs ckpt=<a checkpoint file, its folder, the run dir or "
                          "diffusers:<dir>>")
    if kind == "diffusers" and not cfg.get("model_dir"):
        raise ConfigError("problem=diffusers needs model_dir=<a local diffusers model or pipeline directory>")
    dataset = cfg.get("dataset")
    if dataset is not None and str(dataset) not in (*IMAGE_DATASETS, *TOYS):
        raise UnknownNameError(f"dataset must be null or one of {', '.join([*IMAGE_DATASETS, *TOYS])}, "
                               f"got dataset={dataset!r}")
    return kind


def model_source(cfg: DictConfig, kind: str) -> tuple[str, str, str]:
    """``(key, value, source)``: the key and value that name a network problem's model, and its loader source."""
    if kind == "diffusers":
        return "model_dir", str(cfg.get("model_dir")), f"{DIFFUSERS_PREFIX}{cfg.get('model_dir')}"
    return "ckpt", str(cfg.get("ckpt")), str(cfg.get("ckpt"))


def named_data(name: str, shape: tuple[int, ...]) -> Any:
    """Samples of data set ``dataset=<name>`` (its train split), checked against the model's sample shape."""
    try:
        x = load_data_config({"name": name, "split": "train"}, seed=12345)[0].float()
    except (OSError, UserError, KeyError) as err:
        raise ConfigError(f"dataset={name}: {one_line(err)}") from None
    if tuple(x.shape[1:]) != tuple(shape):
        raise ConfigError(f"dataset={name} has samples of shape {tuple(x.shape[1:])}, but the model takes samples of "
                          f"shape {tuple(shape)}")
    return dataset_sampler(x)


def build_problems(cfg: DictConfig, device: torch.device) -> list[Problem]:
    """The testbed under each SDE of the config, or the network of a checkpoint or a diffusers model directory.
    A network problem's metrics compare against ``dataset=`` when given, else its training data (a checkpoint's)
    or the samples of its own float64 reference ODE (a diffusers model, which comes without data)."""
    kind = problem_kind(cfg)
    if kind == "testbed":
        testbed = make_testbed(cfg.get("testbed"))
        return [testbed_problem(testbed, sde, device) for sde in sde_list(cfg)]
    key, value, source = model_source(cfg, kind)
    try:
        loaded = load_model(source, bool_option(cfg, "ema", True))
    except (OSError, UserError) as err:
        raise ConfigError(f"{key}={value}: {one_line(err)}") from None
    dataset = None if cfg.get("dataset") is None else named_data(str(cfg.get("dataset")), loaded.shape)
    if loaded.provenance.get("format") == "diffusers":
        folder = Path(str(loaded.provenance["source"])[len(DIFFUSERS_PREFIX):])
        name = "diffusers_" + (re.sub(r"[^A-Za-z0-9_.-]+", "_", folder.resolve().name) or "model")
        problem = network_problem(loaded.model, loaded.sde, loaded.shape, name, dataset, device)
        return [problem if dataset is not None else replace(problem, data=reference_data(problem,
                                                                                         reference_options(cfg)))]
    train_cfg = loaded.training_config
    name = f"{(train_cfg.get('data') or {}).get('name', 'model')}@step{loaded.step}"
    data = dataset if dataset is not None else checkpoint_data(train_cfg)
    return [network_problem(loaded.model, loaded.sde, loaded.shape, name, data, device)]


def machine(device: torch.device) -> dict[str, Any]:
    """What the timings were measured on."""
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


def check_config(cfg: DictConfig) -> tuple[SweepSettings, list[Entry], str]:
    """Every setting of the config, validated before any work (and before a process group is joined): the
    sweep's settings, the solver entries and the report."""
    settings = settings_from(cfg)
    try:
        resolve_device(cfg.get("device", "auto"))
    except (ValueError, RuntimeError) as err:
        raise ConfigError(str(err)) from None
    float_option(cfg, "dist_timeout_s", 1800, minimum=0.0, open_below=True)
    entries = parse_entries(cfg.get("solvers"), settings.budgets, cfg.get("options"))
    for entry in entries:  # the optimized grid's search needs deterministic fixed-grid solvers
        if OPTIMIZED in (settings.grids or (entry.grid,)):
            key = "grids" if settings.grids else f"solvers.{entry.label}.grid"
            try:
                check_optimizable(entry, build_solver(entry.name, entry.options, f"solvers.{entry.label}.options"))
            except ValueError as err:
                raise ConfigError(f"{key}: {err}") from None
    for key in ("peers", "kdiffusion"):
        methods = plain(cfg.get(key)) or []
        if not isinstance(methods, list):
            raise ConfigError(f"{key} must be a list of method names, got {key}={methods!r}")
        try:
            plan_peers(*((methods, []) if key == "peers" else ([], methods)), settings.budgets)
        except ValueError as err:
            raise UnknownNameError(f"{key}: {err}") from None
    kind = problem_kind(cfg)
    bool_option(cfg, "ema", True)
    report = str(cfg.get("report", "bench"))
    if report not in REPORTS:
        raise UnknownNameError(f"report must be one of {', '.join(REPORTS)}, got report={report!r}")
    if report == "compare" and ("sw" not in settings.metrics or kind != "testbed" or len(plain(cfg.get("sdes"))
                                                                                         or [None]) > 1):
        raise ConfigError("report=compare shows one testbed under one SDE with metrics including sw; use "
                          "report=bench (scoresde-bench) for checkpoints, several SDEs or other metrics")
    return settings, entries, report


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the sweep the config describes; print the tables and write the report (``report=bench``: bench.json,
    bench.md and one figure per problem; ``report=compare``: results.json and compare.png). Under torchrun every
    rank sweeps with sharded sampling and rank 0 writes."""
    settings, entries, report = check_config(cfg)
    if settings.noise == "generator" and os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1"):
        raise ConfigError("noise=generator draws in one process; use noise=per_sample under torchrun")
    with torch_threads(cfg.get("threads")):
        ctx = init_distributed(cfg.get("device", "auto"), float(cfg.get("dist_timeout_s") or 1800))
        try:
            return _run(cfg, ctx, settings, entries, report)
        finally:
            shutdown(ctx)


def _run(cfg: DictConfig, ctx: DistContext, settings: SweepSettings, entries: list[Entry], report: str
         ) -> dict[str, Any]:
    settings = replace(settings, dist=ctx, progress=settings.progress and ctx.is_main)
    device = ctx.device
    peers, notes = plan_peers(plain(cfg.get("peers")) or [], plain(cfg.get("kdiffusion")) or [], settings.budgets)
    out = make_output_dir(cfg) if ctx.is_main else None
    start = time.perf_counter()
    problems = build_problems(cfg, device)
    results = [sweep_problem(p, entries, settings, peers) for p in problems]
    info = machine(device)
    info["seconds"] = time.perf_counter() - start
    info["world_size"] = ctx.world_size
    if out is None:
        return {"machine": info, "results": results}
    if report == "compare":
        return write_compare(cfg, results[0], settings, info, out)
    metric = str(cfg.get("metric", "auto"))
    table = markdown(results, metric, notes)
    figures = [str(plot_result(r, out / f"bench_{r['problem']}_{r['sde']}.png", metric)) for r in results]
    payload = {"machine": info, "config": plain(cfg), "notes": notes, "results": results, "figures": figures}
    (out / "bench.json").write_text(dumps(payload))
    (out / "bench.md").write_text(table)
    print(table)
    for r in results:  # the conditions every problem's timings were measured under (scoresde.bench.timing)
        if r.get("timing"):
            print(f"timing of {r['problem']} under {r['sde']}: {Conditions.from_dict(r['timing']).describe()}")
    print(f"{info['seconds']:.1f} s; wrote {out / 'bench.json'}, {out / 'bench.md'} and {', '.join(figures)}")
    return payload


def write_compare(cfg: DictConfig, result: dict[str, Any], settings: SweepSettings, info: dict[str, Any],
                  out: Path) -> dict[str, Any]:
    """``scoresde-compare``'s report of one problem: the text table, results.json and compare.png."""
    results = {**compare_results(result, settings.n_data, settings.floor_draws), "machine": info,
               "config": plain(cfg)}
    print(compare_table(results))
    (out / "results.json").write_text(dumps(results))
    plot_compare(results, out / "compare.png")
    print(f"{info['seconds']:.1f} s; wrote {out / 'results.json'} and {out / 'compare.png'}")
    return results


def console(app: str, config_name: str) -> Callable[[], None]:
    """The console entry ``scoresde-<app>`` running :func:`run` on ``configs/<config_name>.yaml``
    (:func:`scoresde.cli.common.app_main`), with solver options accepted without a ``+``."""
    return app_main(app, run, config_name, option_keys=("options", "solvers.*.options"))


register_all_solvers()
