"""Every wrong input to ``scoresde-bench`` and ``scoresde-compare`` is one line on stderr that names the key, with
exit status 2 and no traceback (issue 12, part 2). Run in-process through the console entries (fast: each case
fails before any sampling), plus one subprocess run per app."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scoresde.cli import bench as bench_app
from scoresde.cli import compare as compare_app
from tests.app_errors import assert_one_line_error, run_console

# (override(s), text the one line must contain); "{tmp}" is the test's temporary directory
COMMON = [
    (["budgets=[0]"], "budgets"),
    (["budgets=abc"], "budgets"),
    (["budgets=[5,abc]"], "budgets"),
    (["seed=abc"], "seed"),
    (["seed=-1"], "seed"),
    (["sde.t_min=2"], "t_min"),
    (["sde.name=nope"], "sde.name"),
    (["sde=nope"], "sde/nope"),
    (["testbed=nope"], "testbed/nope"),
    (["testbed.name=nope"], "testbed.name"),
    (["+testbed.n_modes=3"], "n_modes"),
    (["solver=nope"], "solver/nope"),
    (["+solvers.bad={name:nope}"], "solvers.bad.name"),
    (["solvers.euler.grid=nope"], "solvers.euler.grid"),
    (["rho=nan"], "rho"),
    (["rho=0"], "rho"),
    (["options.foo=1"], "foo"),  # no leading +, and the message lists the solver's own options
    (["solvers.euler.options.foo=1"], "S_churn"),
    (["solvers.euler.options.S_churn=abc"], "solvers.euler.options"),
    (["+solvers.euler.tolerances=[-1]"], "solvers.euler.tolerances"),
    (["+solvers.euler.colour=red"], "colour"),
    (["steps=-3"], "steps"),
    (["threads=abc"], "threads"),
    (["denoise=maybe"], "denoise"),
    (["n_data=0"], "n_data"),
    (["n_projections=abc"], "n_projections"),
    (["reference.rtol=-1"], "reference.rtol"),
    (["reference.method=nope"], "reference.method"),
    (["out_dir={tmp}/a_file/out"], "out_dir"),
    (["options=5"], "options"),
]
COMPARE = COMMON + [
    (["batch=abc"], "batch"),
    (["batch=0"], "batch"),
    (["noise=nope"], "noise"),
]
BENCH = COMMON + [
    (["n_samples=0"], "n_samples"),
    (["batch_size=0"], "batch_size"),
    (["batch_size=abc"], "batch_size"),
    (["problem=nope"], "problem"),
    (["problem=checkpoint"], "ckpt"),
    (["problem=checkpoint", "ckpt={tmp}/missing.pt"], "ckpt"),
    (["problem=checkpoint", "ckpt={tmp}/notes.txt"], "ckpt"),
    (["problem=checkpoint", "ckpt={tmp}/notes.txt", "sdes=[ve]"], "sdes"),
    (["device=tpu"], "device"),
    (["grids=[nope]"], "grids"),
    (["metrics=[kl]"], "metrics"),
    (["metric=nope"], "metric"),
    (["peers=[plms]"], "peers"),
    (["kdiffusion=[nope]"], "kdiffusion"),
    (["sdes=[nope]"], "sdes[0]"),
    (["sdes=[{name:vp,t_min:2}]"], "sdes[0]"),
    (["ema=maybe"], "ema"),
    (["dist_timeout_s=abc"], "dist_timeout_s"),
]
TINY = ["progress=false", "n_data=100", "n_projections=8", "solver=[euler]", "budgets=[2]"]
APPS = {"compare": (compare_app.main, TINY + ["batch=8"]),
        "bench": (bench_app.main, TINY + ["n_samples=8", "peers=[]", "kdiffusion=[]"])}


def _files(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("a regular file, not a folder")
    (tmp_path / "notes.txt").write_text("not a checkpoint")


def _case_id(case) -> str:
    return " ".join(case[0])


@pytest.mark.parametrize("args, needle", COMPARE, ids=[_case_id(c) for c in COMPARE])
def test_compare_bad_input_is_one_line(args, needle, tmp_path, capsys, monkeypatch):
    _check("compare", args, needle, tmp_path, capsys, monkeypatch)


@pytest.mark.parametrize("args, needle", BENCH, ids=[_case_id(c) for c in BENCH])
def test_bench_bad_input_is_one_line(args, needle, tmp_path, capsys, monkeypatch):
    _check("bench", args, needle, tmp_path, capsys, monkeypatch)


def _check(app: str, args: list[str], needle: str, tmp_path: Path, capsys, monkeypatch) -> None:
    _files(tmp_path)
    main, base = APPS[app]
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, err = run_console(main, [*base, f"out_dir={tmp_path / 'out'}", *args], capsys, monkeypatch, tmp_path)
    assert_one_line_error(code, err, app, needle)
    assert not (tmp_path / "out" / "results.json").exists() and not (tmp_path / "out" / "bench.json").exists()


def test_each_app_is_tried_with_at_least_15_bad_inputs():
    assert len(COMPARE) >= 15 and len(BENCH) >= 15


@pytest.mark.parametrize("app", ["compare", "bench"])
def test_an_option_without_plus_reaches_the_solver(app, tmp_path, capsys, monkeypatch):
    """``options.X=`` (no ``+``) is merged into every chosen solver's options, and ``solvers.<label>.options.X=``
    adds an option the config does not list."""
    main, base = APPS[app]
    args = [*base, f"out_dir={tmp_path}", "solver=[euler,dpmpp_2m]", "options.S_churn=0.0",
            "solvers.dpmpp_2m.options.S_churn=0.0"]
    code, err = run_console(main, args, capsys, monkeypatch, tmp_path)
    assert code == 2 and "solvers.dpmpp_2m.options" in err and "takes no option 'S_churn'" in err
    code, err = run_console(main, [*base, f"out_dir={tmp_path}", "options.S_churn=0.5"], capsys, monkeypatch,
                            tmp_path)
    assert code == 0, err


@pytest.mark.parametrize("app", ["compare", "bench"])
def test_console_script_bad_input_and_full_error(app, tmp_path):
    """As a subprocess: one line and status 2; ``HYDRA_FULL_ERROR=1`` shows the traceback."""
    module = f"scoresde.cli.{app}"
    args = [sys.executable, "-m", module, "budgets=[0]", f"hydra.run.dir={tmp_path}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    assert_one_line_error(done.returncode, done.stderr, app, "budgets")
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, env={**env, "HYDRA_FULL_ERROR": "1"})
    assert done.returncode != 0 and "Traceback" in done.stderr and "budgets" in done.stderr
