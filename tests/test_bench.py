"""The sampler benchmark suite: per-seed sampling that any split reproduces, exact NFE counts, fitted orders,
exact floors, peers on the same denoiser, the Hydra app on testbeds and on a checkpoint, and clear errors."""
from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import scoresde as sd
from scoresde.bench import SweepSettings, draw, pareto_front, plan, plan_peers, sweep_problem
from scoresde.bench import peers as peers_mod
from scoresde.bench.problems import network_problem
from scoresde.bench.problems import testbed_problem as make_problem
from scoresde.bench.targets import available, build_targets
from scoresde.cli.bench import bench
from scoresde.cli.benchmark import parse_entries, register_all_solvers
from scoresde.cli.common import CONFIG_DIR
from scoresde.cli.train import train
from scoresde.evaluation import fit_order

pytestmark = pytest.mark.usefixtures("single_thread")
GAUSS = sd.get_testbed("gaussian", dim=2, std=0.5)


def entries(budgets=(10, 20), **spec):
    return parse_entries({k: {"name": k, **v} for k, v in spec.items()}, budgets)


def compose_cfg(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name=name, overrides=overrides)


def small(**kw) -> SweepSettings:
    return SweepSettings(**{"n_samples": 64, "n_data": 500, "n_projections": 32, "progress": False, **kw})


@pytest.mark.parametrize("solver,options", [("euler_maruyama", {}), ("torchsde", {}), ("pc", {"norm": "sample"})])
def test_any_split_of_the_seed_list_gives_the_same_samples(solver, options):
    """(PC's default norm="batch" averages the Langevin step over the batch, so only norm="sample" qualifies.)"""
    problem = make_problem(sd.get_testbed("ring"), sd.VPSDE())
    st = small(budgets=(8,), n_samples=6)
    (run,) = plan(entries((8,), **{solver: {"options": options}}), problem.sde, st)
    seeds = list(range(100, 106))
    whole, _, _ = draw(problem, run, seeds, st)
    halves = torch.cat([draw(problem, run, seeds[:2], st)[0], draw(problem, run, seeds[2:], st)[0]])
    chunked, _, _ = draw(problem, run, seeds, small(budgets=(8,), n_samples=6, batch_size=4))
    torch.testing.assert_close(halves, whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
    other, _, _ = draw(problem, run, [s + 50 for s in seeds], st)
    assert (other - whole).abs().min() > 0  # other seeds: other samples


def test_torchsde_methods_share_one_brownian_path_per_sample():
    """euler and milstein coincide for additive noise (g depends on t only), so one path gives one answer."""
    problem = make_problem(GAUSS, sd.VPSDE())
    st = small(budgets=(20,), n_samples=4)
    runs = plan(parse_entries({"a": {"name": "torchsde", "options": {"method": "euler"}},
                               "b": {"name": "torchsde", "options": {"method": "milstein"}}}, (20,)), problem.sde, st)
    xa, xb = (draw(problem, r, st.seeds, st)[0] for r in runs)
    torch.testing.assert_close(xa, xb, rtol=0, atol=1e-5)


def test_measured_nfe_equals_the_declared_cost_and_peers_their_budget():
    problem = make_problem(GAUSS, sd.VPSDE())
    st = small(budgets=(10, 20), metrics=("rmse",))
    peer_runs, notes = plan_peers(["heun", "ddim", "dpmpp_2m"], [], st.budgets)
    assert notes == []
    res = sweep_problem(problem, entries(heun={"grid": "karras"}, dpmpp_2m={"grid": "karras"},
                                         ancestral={}), st, peer_runs)
    rows = res["rows"]
    assert all(r["error"] is None for r in rows)
    for r in rows:
        if r["source"] == "scoresde":
            assert r["nfe"] == r["declared_nfe"]
        else:  # diffusers' Heun: 2n − 1 for n = (budget + 1) // 2; the others one evaluation per step
            assert r["nfe"] == (2 * ((r["budget"] + 1) // 2) - 1 if r["label"] == "heun" else r["budget"])
    assert {r["nfe"] for r in rows if r["label"] == "heun"} == {9, 19}
    assert all(r["rmse"] is not None for r in rows if not r["stochastic"])
    assert all(r["rmse"] is None for r in rows if r["stochastic"])


def test_fit_order_recovers_an_exact_power_law():
    nfe = [10, 20, 40, 80]
    assert fit_order(nfe, [3.0 * n ** -2.0 for n in nfe]) == pytest.approx(2.0, abs=1e-12)
    assert fit_order([10, 10], [0.1, 0.2]) is None  # one distinct NFE: no slope


def test_measured_orders_match_the_declared_ones_on_a_gaussian():
    """On a Gaussian the ODE is linear and smooth: Euler and DDIM converge at order 1, Heun and DPM-Solver++ at 2."""
    from scoresde.bench.report import orders
    problem = make_problem(GAUSS, sd.VPSDE())
    st = small(budgets=(16, 32, 64), n_samples=16, metrics=("rmse",))
    res = sweep_problem(problem, entries(st.budgets, euler={"grid": "karras"}, ddim={"grid": "quadratic"},
                                         heun={"grid": "karras"}, dpmpp_2m={"grid": "logsnr"}), st)
    fitted = {f["series"].split("@")[0]: (f["fitted"], f["declared"]) for f in orders(res["rows"])}
    assert set(fitted) == {"euler", "ddim", "heun", "dpmpp_2m"}
    for name, (p, declared) in fitted.items():
        assert abs(p - declared) < 0.35, (name, p, declared)


def test_nll_floor_is_the_entropy_of_the_gaussian():
    """−mean log p over exact samples estimates H = (d/2)·log(2πe·std²) (exact for N(0, std² I))."""
    problem = make_problem(GAUSS, sd.VPSDE())
    targets = build_targets(problem, ("nll", "sw"), 500, 1000, 0, 16)
    assert targets.floors["nll"] == pytest.approx(math.log(2 * math.pi * math.e * 0.25), abs=0.08)
    assert targets.floors_std["nll"] < 0.08


def test_pareto_front_keeps_exactly_the_undominated_runs():
    rows = [{"error": None, "time_s": t, "sw": q, "id": i}
            for i, (t, q) in enumerate([(1, 5), (2, 3), (3, 4), (4, 1), (5, 1), (0.5, 9)])]
    assert [r["id"] for r in pareto_front(rows, "time_s", "sw")] == [5, 0, 1, 3]


def test_metrics_follow_what_the_problem_knows():
    digits = make_problem(sd.get_testbed("digits", limit=100), sd.VPSDE())
    assert digits.is_image and digits.features is not None and digits.log_prob is None
    assert available(digits, ("rmse", "sw", "mmd", "nll", "fd")) == ("rmse", "sw", "mmd", "fd")
    assert available(make_problem(GAUSS, sd.VPSDE()), ("nll", "fd")) == ("nll",)
    with pytest.raises(ValueError, match="unknown metrics.*kl"):
        available(digits, ("kl",))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="budgets"):
        SweepSettings(budgets=())
    with pytest.raises(ValueError, match="unknown grids.*cosine"):
        SweepSettings(grids=("cosine",))
    with pytest.raises(ValueError, match="n_samples"):
        SweepSettings(n_samples=1)
    with pytest.raises(ValueError, match="batch_size"):
        SweepSettings(batch_size=0)
    with pytest.raises(ValueError, match="unknown diffusers peer methods.*'plms'"):
        plan_peers(["plms"], [], (10,))
    with pytest.raises(TypeError, match="Preconditioned"):
        network_problem(torch.nn.Linear(2, 2), sd.VPSDE(), (2,), "x")


def test_peers_are_optional(monkeypatch):
    monkeypatch.setattr(peers_mod, "import_diffusers", lambda: None)
    monkeypatch.setattr(peers_mod, "import_kdiffusion", lambda: None)
    runs, notes = plan_peers(["ddim"], ["euler"], (10,))
    assert runs == [] and len(notes) == 2 and "diffusers is not installed" in notes[0]


def test_diffusers_peer_on_a_non_vp_sde_is_a_recorded_error():
    problem = make_problem(GAUSS, sd.VESDE())
    peer_runs, _ = plan_peers(["ddim"], [], (10,))
    res = sweep_problem(problem, [], small(metrics=("sw",)), peer_runs)
    assert "VP-type SDE" in res["rows"][0]["error"]


def test_the_app_writes_json_markdown_and_figures(tmp_path):
    cfg = compose_cfg("bench", [f"out_dir={tmp_path}", "testbed=gaussian", "sdes=[vp,ve]", "grids=[karras,uniform]",
                                "budgets=[6,12]", "n_samples=32", "n_data=300", "n_projections=16", "progress=false",
                                "solver=[heun,euler_maruyama]", "peers=[ddim]", "kdiffusion=[]"])
    out = bench(cfg)
    payload = json.loads((tmp_path / "bench.json").read_text())
    assert [r["sde"] for r in payload["results"]] == ["vp", "ve"]
    vp = payload["results"][0]["rows"]
    assert {(r["label"], r["grid"]) for r in vp} >= {("heun", "karras"), ("heun", "uniform"),
                                                    ("euler_maruyama", "karras"), ("ddim", "peer")}
    assert not any(r["source"] == "diffusers" and r["error"] is None for r in payload["results"][1]["rows"])
    md = (tmp_path / "bench.md").read_text()
    assert "| heun@karras | 3 | 5 |" in md and "fitted order" in md and "quality ratio" in md
    for fig in out["figures"]:
        assert open(fig, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_app_benchmarks_a_trained_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(compose_cfg("train", ["progress=false", "batch_size=64", "model.net.hidden=32", "data.n=512",
                                "ckpt_every=10", "log_every=5", "sample.every=0", "steps=10", f"out_dir={run}"]))
    cfg = compose_cfg("bench", [f"out_dir={tmp_path / 'bench'}", "problem=checkpoint", f"ckpt={run}", "budgets=[4,8]",
                                "n_samples=32", "n_data=300", "n_projections=16", "progress=false",
                                "solver=[dpmpp_2m,ancestral]", "peers=[]", "kdiffusion=[]",
                                "reference.rtol=1e-4", "reference.atol=1e-4"])
    (res,) = bench(cfg)["results"]
    assert res["problem"] == "ring@step10" and not res["exact"]
    assert all(r["error"] is None and r["nfe"] == r["declared_nfe"] and r["sw"] is not None for r in res["rows"])
    assert all((r["rmse"] is None) == r["stochastic"] for r in res["rows"])
    with pytest.raises(ValueError, match="sdes= applies to testbeds"):
        bench(compose_cfg("bench", [f"out_dir={tmp_path}", "problem=checkpoint", f"ckpt={run}", "sdes=[ve]"]))
    with pytest.raises(ValueError, match="problem must be one of"):
        bench(compose_cfg("bench", [f"out_dir={tmp_path}", "problem=model", "peers=[]", "kdiffusion=[]"]))


@pytest.mark.parametrize("name", ["bench", "compare"])
def test_the_default_solver_list_is_the_registry(name):
    """Neither app keeps a solver list: the default is ``solver/all``, built from ``scoresde.SOLVERS``."""
    cfg = compose_cfg(name, [])
    assert sorted(e.name for e in cfg.solvers.values()) == sorted(sd.SOLVERS)
    assert "all" in str(OmegaConf.load(Path(CONFIG_DIR, "bench.yaml")).defaults)


def test_a_new_solver_without_a_config_is_swept_by_default(monkeypatch):
    """A solver registered with no configs/solver/<name>.yaml joins the default list with its default options."""
    monkeypatch.setitem(sd.SOLVERS, "zz_new", sd.SOLVERS["euler_maruyama"])
    try:
        entries = register_all_solvers()
        assert entries["zz_new"] == {"name": "zz_new", "grid": "uniform", "options": {}}
        cfg = compose_cfg("compare", [])
        assert sorted(cfg.solvers) == sorted(sd.SOLVERS)
        (entry,) = [e for e in parse_entries(cfg.solvers, (4,)) if e.name == "zz_new"]
        assert entry.grid == "uniform" and entry.budgets == (4,)
    finally:
        monkeypatch.undo()
        register_all_solvers()


def test_no_app_imports_another_app():
    """An app is a cli module with a console ``main``; apps import library code and the cli helpers only."""
    cli = Path(CONFIG_DIR).parent / "scoresde" / "cli"
    apps = {p.stem for p in cli.glob("*.py") if re.search(r"^main\b|^def main\b", p.read_text(), re.M)}
    assert {"bench", "compare"} <= apps
    for stem in apps:
        tree = ast.parse((cli / f"{stem}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m.rpartition(".")[2] for m in imported if m.startswith("scoresde.cli.")} & apps, stem
