"""scoresde-train and scoresde-sample answer every wrong input in one line: exit status 2, ``scoresde-<app>: error:``
and a message that names the key, no traceback (issue 12, part 2). Table-driven, run in-process through the console
entry (:func:`tests.app_errors.run_console`); one subprocess test per app proves the real console script, and
``HYDRA_FULL_ERROR=1`` shows the traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scoresde.cli import sample as sample_app
from scoresde.cli import train as train_app
from tests.app_errors import assert_one_line_error, run_console

ROOT = Path(__file__).resolve().parents[1]
TINY = ["progress=false", "steps=3", "batch_size=16", "model.net.hidden=16", "data.n=64", "sample.every=0",
        "device=cpu", "log_every=1"]
SAMPLE = ["progress=false", "n=4", "steps=2", "device=cpu"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A 3-step run of the toy config: its run dir."""
    run = tmp_path_factory.mktemp("run")
    train_app.train(train_app_cfg(TINY + [f"out_dir={run}"]))
    return run


def train_app_cfg(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from scoresde.cli.common import CONFIG_DIR
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="train", overrides=overrides)


def files(tmp_path: Path) -> dict[str, str]:
    """Paths the cases refer to: a text file, a regular file to put a folder under, a missing path."""
    (tmp_path / "text.txt").write_text("not a checkpoint\n")
    (tmp_path / "afile").write_text("x")
    return {"TMP": str(tmp_path)}


def fill(args: list[str], paths: dict[str, str]) -> list[str]:
    return [a.replace("TMP", paths["TMP"]) for a in args]


# (overrides, words the one line must contain: the key, and the value where it is shown)
TRAIN_BAD = [
    (["steps=-3"], ["steps", "-3"]),
    (["steps=abc"], ["steps", "abc"]),
    (["batch_size=abc"], ["batch_size", "abc"]),
    (["batch_size=0"], ["batch_size"]),
    (["seed=abc"], ["seed", "abc"]),
    (["seed=-1"], ["seed"]),
    (["lr=1e30"], ["lr=1e+30", "training loss became nan"]),  # diverges: the message names lr
    (["lr=abc"], ["lr", "abc"]),
    (["lr=nan"], ["lr", "nan"]),
    (["ema.decay=1.5"], ["ema.decay", "1.5"]),
    (["ema.decay=nan"], ["ema.decay", "nan"]),
    (["ema.half_life_kimg=-1", "ema.decay=null"], ["ema.half_life_kimg", "-1"]),
    (["ckpt_every=0"], ["ckpt_every", "0"]),
    (["log_every=-1"], ["log_every"]),
    (["warmup_steps=-1"], ["warmup_steps"]),
    (["weight_decay=-1"], ["weight_decay"]),
    (["grad_clip=-1"], ["grad_clip"]),
    (["label_dropout=2"], ["label_dropout"]),
    (["keep_checkpoints=-1"], ["keep_checkpoints"]),
    (["lr_min=-1"], ["lr_min"]),
    (["lr_schedule=linear"], ["lr_schedule", "linear"]),
    (["threads=-1"], ["threads", "-1"]),
    (["threads=abc"], ["threads", "abc"]),
    (["dist_timeout_s=0"], ["dist_timeout_s"]),
    (["resume=maybe"], ["resume", "maybe"]),
    (["progress=maybe"], ["progress", "maybe"]),
    (["batch=3"], ["batch"]),  # not a key of the config
    (["sde.t_min=2"], ["sde", "t_min=2"]),
    (["sde.name=nope"], ["sde", "nope"]),
    (["loss.name=nope"], ["loss", "nope"]),
    (["model=nope"], ["model", "nope"]),
    (["device=tpu"], ["device", "tpu"]),
    (["out_dir=TMP/afile/sub"], ["out_dir", "afile"]),
    (["sample.solver=nosuch"], ["sample.solver", "nosuch"]),
    (["sample.grid=cubic"], ["sample.grid", "cubic"]),
    (["sample.n=0"], ["sample.n"]),
    (["sample.steps=0"], ["sample.steps"]),
    (["sample.every=-1"], ["sample.every"]),
    (["sample.options.bogus=1"], ["sample.options.bogus", "S_churn"]),
    (["sample.options.S_churn=abc"], ["sample.options.S_churn", "abc"]),
    (["data.hflip=maybe"], ["data.hflip", "maybe"]),
]

SAMPLE_BAD = [
    (["steps=-3"], ["steps", "-3"]),
    (["steps=abc"], ["steps", "abc"]),
    (["batch_size=abc"], ["batch_size", "abc"]),
    (["batch_size=0"], ["batch_size"]),
    (["seed=abc"], ["seed", "abc"]),
    (["seed=-1"], ["seed"]),
    (["n=0"], ["n=0"]),
    (["n=abc"], ["n=", "abc"]),
    (["ckpt=TMP/missing"], ["ckpt=", "missing"]),
    (["ckpt=TMP/text.txt"], ["ckpt=", "text.txt"]),
    (["ckpt=null"], ["ckpt="]),
    (["out_dir=TMP/afile/sub"], ["out_dir", "afile"]),
    (["solver=nosuch"], ["solver", "nosuch"]),
    (["solvers.heun.name=nosuch"], ["solver", "nosuch"]),
    (["grid=cubic"], ["grid", "cubic"]),
    (["grid=karras", "rho=nan"], ["rho", "nan"]),
    (["rho=abc"], ["rho", "abc"]),
    (["rho=0"], ["rho"]),
    (["device=tpu"], ["device", "tpu"]),
    (["class_label=99"], ["class_label", "99"]),
    (["shape=[0]"], ["shape", "[0]"]),
    (["shape=abc"], ["shape", "abc"]),
    (["threads=-1"], ["threads", "-1"]),
    (["batch=3"], ["batch"]),
    (["options.bogus=1"], ["options.bogus", "heun", "S_churn, S_tmin, S_tmax, S_noise"]),
    (["+options.bogus=1"], ["options.bogus", "S_churn"]),
    (["options.S_churn=abc"], ["options.S_churn", "abc"]),
    (["solver=ode", "options.rtol=-1"], ["options", "rtol"]),
    (["options=3"], ["options", "3"]),
    (["dist_timeout_s=0"], ["dist_timeout_s"]),
    (["nrow=0"], ["nrow"]),
    (["ema=maybe"], ["ema", "maybe"]),
    (["denoise=maybe"], ["denoise", "maybe"]),
]


def test_the_tables_cover_at_least_15_bad_inputs_per_app():
    assert len(TRAIN_BAD) >= 15 and len(SAMPLE_BAD) >= 15


@pytest.mark.parametrize("overrides, needles", TRAIN_BAD, ids=[" ".join(o) for o, _ in TRAIN_BAD])
def test_train_refuses_in_one_line(tmp_path, capsys, monkeypatch, overrides, needles):
    paths = files(tmp_path)
    args = TINY + [f"out_dir={tmp_path / 'run'}"] + fill(overrides, paths)
    code, err = run_console(train_app.main, args, capsys, monkeypatch, tmp_path)
    assert_one_line_error(code, err, "train", *needles)


@pytest.mark.parametrize("overrides, needles", SAMPLE_BAD, ids=[" ".join(o) for o, _ in SAMPLE_BAD])
def test_sample_refuses_in_one_line(ckpt, tmp_path, capsys, monkeypatch, overrides, needles):
    paths = files(tmp_path)
    args = SAMPLE + [f"ckpt={ckpt}", f"out_dir={tmp_path / 'out'}"] + fill(overrides, paths)
    code, err = run_console(sample_app.main, args, capsys, monkeypatch, tmp_path)
    assert_one_line_error(code, err, "sample", *needles)
    assert not (tmp_path / "out" / "samples.npz").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("app", ["train", "sample"])
def test_a_read_only_out_dir_is_one_line(ckpt, tmp_path, capsys, monkeypatch, app):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if app == "train":
            args, main = TINY + [f"out_dir={locked / 'run'}"], train_app.main
        else:
            args, main = SAMPLE + [f"ckpt={ckpt}", f"out_dir={locked / 'out'}"], sample_app.main
        code, err = run_console(main, args, capsys, monkeypatch, tmp_path)
    finally:
        locked.chmod(0o755)
    assert_one_line_error(code, err, app, "out_dir")


def test_sample_options_dot_key_sets_a_solver_option(ckpt, tmp_path, capsys, monkeypatch):
    """``options.X=v`` works as the docstring says (no ``+`` needed), and it changes the samples."""
    import numpy as np
    runs = {}
    for name, extra in (("plain", []), ("churn", ["options.S_churn=40", "options.S_tmax=100"])):
        out = tmp_path / name
        code, err = run_console(sample_app.main, SAMPLE + [f"ckpt={ckpt}", f"out_dir={out}", *extra], capsys,
                                monkeypatch, tmp_path)
        assert code == 0, err
        runs[name] = np.load(out / "samples.npz")["samples"]
    assert not np.array_equal(runs["plain"], runs["churn"])


def console(module: str, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    environ.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd,
                          env=environ, timeout=120)


def test_the_train_console_script_prints_one_line_and_hydra_full_error_a_traceback(tmp_path):
    args = TINY + [f"out_dir={tmp_path / 'run'}", "seed=abc"]
    proc = console("scoresde.cli.train", args, tmp_path)
    assert_one_line_error(proc.returncode, proc.stderr, "train", "seed", "abc")
    full = console("scoresde.cli.train", args, tmp_path, HYDRA_FULL_ERROR="1")
    assert full.returncode == 1 and "Traceback" in full.stderr and "seed must be an integer" in full.stderr


def test_the_sample_console_script_prints_one_line(ckpt, tmp_path):
    proc = console("scoresde.cli.sample", SAMPLE + [f"ckpt={ckpt}", f"out_dir={tmp_path}", "options.bogus=1"],
                   tmp_path)
    assert_one_line_error(proc.returncode, proc.stderr, "sample", "options.bogus", "S_churn")
