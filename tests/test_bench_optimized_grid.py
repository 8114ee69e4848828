"""``scoresde-bench grids=[..., optimized]`` (issue 14, §2): the grid search per solver and budget inside the sweep.

On the zero-mean isotropic Gaussian every deterministic solver maps x_T linearly to ``a_grid · x_T`` (one scalar per
grid), so a grid's RMSE to the ODE solution is ``|a_grid − a_ODE| · RMS(x_T)`` on any batch: the held-out error
ranks grids exactly as the calibration error does. The search starts from the best named grid (Karras among them)
and keeps it unless it finds a better one, so its held-out error is at most Karras's, by construction.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import scoresde
from scoresde.bench import Entry, SweepSettings, sweep_problem
from scoresde.bench.planning import OPTIMIZED, plan_runs, reference_solution
from scoresde.bench.problems import testbed_problem as make_problem
from scoresde.cli import bench as bench_app
from scoresde.cli.common import CONFIG_DIR
from scoresde.evaluation.metrics import rmse
from scoresde.solvers.grids import grid_from_dict, load_grid
from tests.app_errors import assert_one_line_error, run_console

BUDGET = 5
SEARCH = 60.0  # search budget, in units of the run's NFE


@pytest.fixture(scope="module")
def problem():
    return make_problem(scoresde.get_testbed("gaussian", dim=2, mean=0.0, std=0.5), scoresde.VPSDE())


@pytest.fixture(scope="module")
def settings():
    return SweepSettings(budgets=(BUDGET,), grids=("karras", OPTIMIZED), n_samples=32, metrics=("rmse",),
                         progress=False, n_data=64, grid_search_budget=SEARCH, grid_search_batch=16)


@pytest.fixture(scope="module")
def swept(problem, settings):
    entries = [Entry(label, name, "karras", {}, (BUDGET,), None)
               for label, name in (("euler", "euler"), ("dpmpp_2m", "dpmpp_2m"), ("again", "dpmpp_2m"))]
    return sweep_problem(problem, entries, settings)


def _row(result, label, grid):
    (row,) = [r for r in result["rows"] if r["label"] == label and r["grid"] == grid]
    return row


def test_optimized_is_held_out_and_no_worse_than_karras(swept, settings):
    assert settings.calibration_seeds == list(range(32, 48))  # disjoint from the runs' seeds 0…31
    assert swept["calibration"]["seeds"] == [32, 47] and swept["calibration"]["batch"] == 16
    for label in ("euler", "dpmpp_2m"):
        karras, opt = _row(swept, label, "karras"), _row(swept, label, OPTIMIZED)
        search = opt["grid_search"]
        assert karras["grid_search"] is None and karras["error"] is None and opt["error"] is None
        assert opt["rmse"] <= karras["rmse"]
        assert search["heldout_rmse"] == opt["rmse"]
        assert search["calib_rmse"] <= search["named_errors"]["karras"]
        # linear problem: held-out and calibration errors differ by one factor RMS(x_T held-out)/RMS(x_T calib)
        assert opt["rmse"] / karras["rmse"] == pytest.approx(search["calib_rmse"] / search["named_errors"]["karras"],
                                                             rel=1e-3)
        assert search["start"] in search["named_errors"]
        assert search["budget"] == SEARCH and search["evaluations"] > len(search["named_errors"])  # it searched


def test_search_cost_is_reported_apart_from_the_run(swept):
    for label in ("euler", "dpmpp_2m"):
        opt = _row(swept, label, OPTIMIZED)
        search = opt["grid_search"]
        assert opt["nfe"] == opt["declared_nfe"] == BUDGET  # the counted model's NFE of the run alone
        assert search["declared_search_nfe"] == BUDGET * search["evaluations"]
        assert search["search_nfe"] + search["remembered_calls"] == search["declared_search_nfe"]
        assert search["reference_nfe"] > 0 and search["search_s"] > 0
    (ref,) = swept["calibration"]["reference"]
    assert ref["nfe"] == _row(swept, "euler", OPTIMIZED)["grid_search"]["reference_nfe"]


def test_one_search_per_solver_options_and_budget(swept):
    first, again = _row(swept, "dpmpp_2m", OPTIMIZED)["grid_search"], _row(swept, "again", OPTIMIZED)["grid_search"]
    assert not first["reused"] and again["reused"]
    assert again["found"] == first["found"]
    assert swept["calibration"]["searches"] == 2  # euler and dpmpp_2m at one budget


def test_the_reported_grid_is_the_one_the_run_sampled_on(swept, problem, settings):
    opt = _row(swept, "dpmpp_2m", OPTIMIZED)
    grid = grid_from_dict(problem.sde, opt["grid_search"]["found"])
    assert grid.steps == opt["steps"] and grid.ends_at_data
    x = scoresde.sample(problem.model, "dpmpp_2m", None, x_T=problem.prior(settings.seeds), grid=grid)
    reference, _ = reference_solution(problem.reference_model, problem.prior(settings.seeds),
                                      (problem.sde.t_min, True), settings)
    assert rmse(x, reference) == pytest.approx(opt["rmse"], rel=1e-9)


def test_planning_refuses_stochastic_and_adaptive_solvers(problem, settings):
    for name, options, tols, why in (("euler_maruyama", {}, None, "is stochastic"),
                                     ("heun", {"S_churn": 1.0}, None, "is stochastic"),
                                     ("ode", {}, None, "chooses its own steps"),
                                     ("ode", {}, (1e-3,), "has tolerances")):
        with pytest.raises(ValueError, match=why):
            plan_runs(Entry(name, name, OPTIMIZED, options, (BUDGET,), tols), problem.sde, settings)
    with pytest.raises(ValueError, match="grid_search_budget"):
        SweepSettings(grid_search_budget=0.0)


TINY = ["progress=false", "n_data=64", "n_projections=8", "n_samples=16", "budgets=[4]", "peers=[]",
        "kdiffusion=[]", "testbed=gaussian", "metrics=[rmse]", "grid_search_batch=8", "grid_search_budget=40"]


def test_the_app_writes_the_found_grid_to_bench_json(tmp_path):
    with initialize_config_dir(config_dir=str(Path(CONFIG_DIR).resolve()), version_base=None):
        cfg = compose(config_name="bench", overrides=[*TINY, f"out_dir={tmp_path}", "solver=[dpmpp_2m]",
                                                      "grids=[karras,optimized]"])
    bench_app.bench(cfg)
    (result,) = json.loads((tmp_path / "bench.json").read_text())["results"]
    (opt,) = [r for r in result["rows"] if r["grid"] == OPTIMIZED]
    found = opt["grid_search"]["found"]
    assert found["format"] == "scoresde.grid/1" and len(found["sigma"]) == opt["steps"] + 1
    assert opt["nfe"] == 4 and opt["grid_search"]["search_nfe"] > 0
    text = (tmp_path / "bench.md").read_text()
    assert "| dpmpp_2m@optimized | 4 | 4 |" in text and "Optimized grids" in text
    search = opt["grid_search"]  # 8 calibration samples: 2 validation rows (the default share 0.25)
    assert search["validation_batch"] == 2 and search["kept"] in ("search", "start")
    assert ("(search)" in text) == (search["kept"] == "search") and "validation rows" in text
    path = tmp_path / "grid.json"  # the reported grid is a saved grid: grid=path.json samples on it
    path.write_text(json.dumps(found))
    assert torch.equal(load_grid(scoresde.VPSDE(), str(path)).sigma, torch.tensor(found["sigma"],
                                                                                            dtype=torch.float64))


@pytest.mark.parametrize("args, needles", [
    (["solver=[euler_maruyama]", "grids=[karras,optimized]"], ["grids", "euler_maruyama", "stochastic"]),
    (["solver=[ode]", "grids=[optimized]"], ["grids", "ode", "tolerances"]),
    (["+solvers.ode={name:ode,grid:optimized}"], ["solvers.ode.grid", "adaptive"]),
    (["solver=[heun]", "solvers.heun.options.S_churn=1.0", "grids=[optimized]"], ["grids", "heun", "stochastic"]),
    (["solver=[euler]", "grids=[optimised]"], ["grids", "optimized"]),
    (["solver=[euler]", "grids=[optimized]", "grid_search_budget=0"], ["grid_search_budget"]),
    (["solver=[euler]", "grids=[optimized]", "grid_search_batch=abc"], ["grid_search_batch"]),
    (["solver=[euler]", "grids=[optimized]", "grid_search_validation=1.0"], ["grid_search_validation", "[0, 1)"]),
    (["solver=[euler]", "grids=[optimized]", "grid_search_validation=-0.5"], ["grid_search_validation"]),
])
def test_refused_cases_are_one_line_errors(args, needles, tmp_path, capsys, monkeypatch):
    code, err = run_console(bench_app.main, [*TINY, f"out_dir={tmp_path / 'out'}", *args], capsys, monkeypatch,
                            tmp_path)
    assert_one_line_error(code, err, "bench", *needles)
    assert not (tmp_path / "out" / "bench.json").exists()


def test_a_grid_that_stops_early_is_scored_against_the_solution_at_the_data(problem, settings):
    """``stop_early`` (diffusers' default layout) ends the ODE at t = T/N and jumps to the data with the denoiser: its
    RMSE is to the same solution at the data as every other run's, not to an ODE stopped where it stopped (which
    would charge nothing for the part it skips)."""
    early = SweepSettings(budgets=(3,), grids=("stop_early",), n_samples=32, metrics=("rmse",), progress=False,
                          n_data=64)
    result = sweep_problem(problem, [Entry("euler", "euler", "karras", {}, (3,), None)], early)
    (row,) = result["rows"]
    assert [ref["t_end"] for ref in result["reference"]] == [pytest.approx(problem.sde.t_min)]
    x = scoresde.sample(problem.model, "euler", 3, x_T=problem.prior(early.seeds), grid="stop_early")
    at_data, _ = reference_solution(problem.reference_model, problem.prior(early.seeds), (problem.sde.t_min, True),
                                    early)
    assert rmse(x, at_data) == pytest.approx(row["rmse"], rel=1e-9) and row["rmse"] > 1e-2
