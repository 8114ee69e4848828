"""scoresde-compare (the Hydra app) and the metrics it reports."""
from __future__ import annotations

import inspect
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import scoresde
from scoresde.bench.planning import stream_seeds
from scoresde.cli.common import CONFIG_DIR
from scoresde.cli.compare import compare
from scoresde.evaluation import fit_order, rmse, sliced_wasserstein
from scoresde.testbeds import TESTBEDS
from tests.conftest import gen

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("single_thread")



# ---- metrics ------------------------------------------------------------------------------------
def test_sliced_wasserstein_of_a_set_with_itself_is_zero():
    x = torch.randn(300, 3, generator=gen(0))
    assert sliced_wasserstein(x, x, generator=gen(1)) == 0.0


def test_sliced_wasserstein_of_a_shift_matches_the_closed_form():
    """Shifting every sample by m shifts each projection by <m, θ>, so SW₂² = E_θ <m, θ>² = |m|²/d."""
    d, m = 3, torch.tensor([1.0, -2.0, 2.0])  # |m| = 3
    x = torch.randn(200, d, generator=gen(0), dtype=torch.float64)
    value = sliced_wasserstein(x, x + m, n_projections=5000, generator=gen(1))
    assert value == pytest.approx(3 / math.sqrt(d), rel=0.03)  # Monte Carlo error over θ: 0.45/√5000 ≈ 0.6%
    x1 = torch.randn(50, 1, generator=gen(2), dtype=torch.float64)  # in 1-D every direction is ±1: exact
    assert sliced_wasserstein(x1, x1 + 2.5, n_projections=3, generator=gen(3)) == pytest.approx(2.5, abs=1e-12)


def test_sliced_wasserstein_of_independent_shifted_gaussians_with_unequal_sizes():
    m = torch.tensor([1.5, 2.0])  # SW₂ = |m|/√2
    x = torch.randn(4000, 2, generator=gen(0), dtype=torch.float64)
    y = torch.randn(3000, 2, generator=gen(1), dtype=torch.float64) + m
    assert sliced_wasserstein(x, y, n_projections=1000, generator=gen(2)) == pytest.approx(2.5 / math.sqrt(2),
                                                                                           rel=0.05)


def test_sliced_wasserstein_unequal_sizes_is_exact_on_empirical_measures():
    x = torch.randn(7, 2, generator=gen(0), dtype=torch.float64)
    assert sliced_wasserstein(x, torch.cat([x, x, x]), generator=gen(1)) == pytest.approx(0.0, abs=1e-12)
    # 1-D by hand: quantile functions of {0, 1} and {0, 0.5, 1} differ by 0.5 on (1/3, 2/3): W₂² = 0.25/3
    a, b = torch.tensor([[0.0], [1.0]]), torch.tensor([[1.0], [0.0], [0.5]])
    assert sliced_wasserstein(a, b, generator=gen(2)) == pytest.approx(math.sqrt(1 / 12), rel=1e-12)
    y = torch.randn(11, 2, generator=gen(3), dtype=torch.float64)
    assert sliced_wasserstein(x, y, generator=gen(4)) == pytest.approx(sliced_wasserstein(y, x, generator=gen(4)))


def test_metrics_reject_mismatched_inputs():
    with pytest.raises(ValueError, match="dimensions"):
        sliced_wasserstein(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="equal shape"):
        rmse(torch.zeros(4, 2), torch.zeros(3, 2))


def test_rmse_is_the_root_mean_square_over_all_elements():
    x = torch.randn(10, 1, 4, 4, generator=gen(0))
    assert rmse(x, x + 0.3) == pytest.approx(0.3, rel=1e-6)
    y = x.clone()
    y[0, 0, 0, 0] += 4.0  # one element of 160
    assert rmse(x, y) == pytest.approx(math.sqrt(16 / 160), rel=1e-6)


def from_json(options: dict) -> dict:
    """results.json writes non-finite floats as strings (strict JSON); read them back."""
    return {k: float(v) if v in ("inf", "-inf", "nan") else v for k, v in options.items()}


# ---- the app ------------------------------------------------------------------------------------
def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="compare", overrides=overrides)


SMALL = ["batch=256", "n_data=1000", "n_projections=64", "progress=false"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    cfg = compose_cfg(SMALL + [f"out_dir={out}", "solver=[heun,ancestral,ode]", "budgets=[16,32,64]",
                               "solvers.ode.tolerances=[1e-2,1e-4]"])
    compare(cfg)
    return cfg, json.loads((out / "results.json").read_text()), out


def test_results_have_one_row_per_solver_and_budget(small_run):
    _, results, _ = small_run
    rows = results["rows"]
    assert [(r["label"], r["budget"], r["tol"]) for r in rows] == [
        ("heun", 16, None), ("heun", 32, None), ("heun", 64, None),
        ("ancestral", 16, None), ("ancestral", 32, None), ("ancestral", 64, None),
        ("ode", None, 1e-2), ("ode", None, 1e-4)]
    for r in rows:
        assert r["error"] is None and math.isfinite(r["sw"]) and r["sw"] > 0 and r["time_s"] >= 0
        assert (r["rmse"] is None) == r["stochastic"]
        if r["budget"] is not None:  # the step count whose declared NFE is closest to the budget
            solver = scoresde.get_solver(r["solver"], **from_json(r["options"]))
            assert abs(r["declared_nfe"] - r["budget"]) <= solver.nfe_per_step


def test_measured_nfe_is_what_the_model_counted(small_run):
    cfg, results, _ = small_run
    sde = scoresde.get_sde(**cfg.sde)
    model = scoresde.get_testbed(**cfg.testbed).model(sde)
    seeds = stream_seeds(cfg.seed)
    assert results["seeds"] == seeds and len(set(seeds.values())) == len(seeds)
    x_T = sde.prior_sample((cfg.batch, 2), generator=gen(seeds["x_T"]))
    for r in results["rows"]:
        model.reset_nfe()
        scoresde.sample(model, r["solver"], r["steps"], x_T=x_T, grid=r["grid"], denoise=True, seed=None,
                        generator=gen(seeds["noise"]), **from_json(r["options"]))
        assert r["nfe"] == model.nfe, r["label"]
    ode = [r for r in results["rows"] if r["label"] == "ode"]
    assert ode[1]["nfe"] > ode[0]["nfe"] and ode[1]["rmse"] < ode[0]["rmse"]


def test_rmse_of_a_second_order_solver_falls_with_nfe_at_its_order(small_run):
    _, results, _ = small_run
    heun = sorted((r for r in results["rows"] if r["label"] == "heun"), key=lambda r: r["nfe"])
    errors = [r["rmse"] for r in heun]
    assert errors[0] > errors[1] > errors[2] > 0
    assert fit_order([r["nfe"] for r in heun[1:]], errors[1:]) > 1.5  # order 2: error ∝ NFE^-2 (finest pair)


def test_stochastic_runs_match_the_exact_law_of_their_scheme(tmp_path):
    """Euler–Maruyama on a Gaussian under VE is a linear recursion with a known output variance v, and the
    sliced W₂ between N(0, v I) and the data N(0, c² I) is |√v − c|. A solver noise correlated with x_T (a
    shared seed) or a wrong metric would both miss it."""
    cfg = compose_cfg([f"out_dir={tmp_path}", "progress=false", "sde=ve", "testbed=gaussian", "solver=[euler_maruyama]",
                       "budgets=[10]", "batch=4000", "n_data=4000", "n_projections=128"])
    row = compare(cfg)["rows"][0]
    sde, c2 = scoresde.get_sde(**cfg.sde), cfg.testbed.std ** 2
    grid = scoresde.make_grid(sde, row["steps"], "uniform", denoise=True)
    t, var = grid.t[:-1], sde.prior_std() ** 2 + c2
    for i in range(len(t) - 1):  # x ← x + g²Δt·score + g√Δt z with score = −x/(c² + σ²)
        g2dt, sig2 = float(sde.g(t[i])) ** 2 * float(t[i] - t[i + 1]), float(sde.sigma(t[i])) ** 2
        var = (1 - g2dt / (c2 + sig2)) ** 2 * var + g2dt
    var *= (c2 / (c2 + float(sde.sigma(t[-1])) ** 2)) ** 2  # the final denoising step D(x) = c²/(c² + σ²)·x
    assert row["sw"] == pytest.approx(math.sqrt(var) - math.sqrt(c2), rel=0.05)


def test_plot_and_json_are_written(small_run):
    _, results, out = small_run
    assert (out / "compare.png").read_bytes()[:8] == PNG_MAGIC
    assert results["sw_floor"] > 0 and len(results["reference"]) == 1
    assert results["reference"][0]["nfe"] > max(r["nfe"] for r in results["rows"])


def test_default_config_runs_every_registered_solver():
    cfg = compose_cfg([])
    assert sorted(e.name for e in cfg.solvers.values()) == sorted(scoresde.SOLVERS)
    assert cfg.testbed.name == "ring" and cfg.sde.name == "vp"


def test_group_configs_name_what_the_library_registers():
    for path in Path(CONFIG_DIR, "solver").glob("*.yaml"):  # one entry, keyed and named by the file
        entry = OmegaConf.to_container(OmegaConf.load(path))
        assert list(entry) == [path.stem] and entry[path.stem]["name"] == path.stem
        configured = scoresde.get_solver(path.stem, **entry[path.stem].get("options", {}))
        assert configured.options() == scoresde.get_solver(path.stem).options(), \
            f"{path} no longer holds the solver's default options"
    for path in Path(CONFIG_DIR, "sde").glob("*.yaml"):
        assert scoresde.get_sde(**OmegaConf.to_container(OmegaConf.load(path))).name == path.stem
    for path in Path(CONFIG_DIR, "testbed").glob("*.yaml"):  # checked against the signature: digits loads sklearn
        testbed_cfg = OmegaConf.to_container(OmegaConf.load(path))
        assert testbed_cfg.pop("name") == path.stem
        inspect.signature(TESTBEDS[path.stem]).bind(**testbed_cfg)


@pytest.mark.parametrize("override, message", [
    ("+solvers.bad={name:nope}", "registered solvers"),
    ("testbed.name=nope", "known testbeds"),
    ("sde.name=nope", "known SDEs"),
])
def test_unknown_names_raise_the_library_errors(tmp_path, override, message):
    cfg = compose_cfg(SMALL + [f"out_dir={tmp_path}", "solver=[euler]", override])
    with pytest.raises(KeyError, match=message):
        compare(cfg)
    assert not (tmp_path / "results.json").exists()


def test_console_script_writes_into_the_hydra_run_dir(tmp_path):
    exe = shutil.which("scoresde-compare")
    cmd = [exe] if exe else [sys.executable, "-m", "scoresde.cli.compare"]
    args = ["solver=[euler,pc]", "budgets=[6]", "batch=64", "n_data=200", "n_projections=16", "progress=false",
            "sde=ve", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(cmd + args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "solver" in done.stdout and "SW2" in done.stdout
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["euler", "pc"] and rows[0]["nfe"] == 6
    assert (tmp_path / "compare.png").read_bytes()[:8] == PNG_MAGIC
