"""scoresde-likelihood and scoresde-edit answer every wrong input in one line: exit status 2,
``scoresde-<app>: error:`` and a message that names the key, no traceback (issue 12, part 2). Table-driven, run
in-process through the console entry (:func:`tests.app_errors.run_console`); one subprocess test per app proves the
real console script. scoresde-edit's ``options.X=...`` works without a ``+`` and an option the solver does not take
names the ones it does."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scoresde.cli import edit as edit_app
from scoresde.cli import likelihood as likelihood_app
from scoresde.data.datasets import FASHION_MNIST_ROOT
from tests.app_errors import assert_one_line_error, run_console

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]
HAS_FASHION_MNIST = Path(FASHION_MNIST_ROOT).is_dir()
LIKELIHOOD = ["progress=false", "device=cpu", "n=2", "threads=1"]
EDIT = ["device=cpu", "n=1", "steps=2", "upscale=1", "threads=1"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    """A 3-step run of the toy config (an unconditional MLP on the ring): its run dir."""
    from hydra import compose, initialize_config_dir

    from scoresde.cli.common import CONFIG_DIR
    from scoresde.cli.train import train
    run = tmp_path_factory.mktemp("toy")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="train", overrides=[
            "progress=false", "steps=3", "batch_size=16", "model.net.hidden=16", "data.n=64", "sample.every=0",
            "device=cpu", "threads=1", f"out_dir={run}"])
    train(cfg)
    return run


@pytest.fixture
def paths(tmp_path) -> dict[str, str]:
    """What the cases refer to: TMP (a folder holding a text file ``text.pt``, a regular file ``afile`` and a
    grey PNG ``img.png``) and RUN (the toy run dir, for the likelihood cases that need a checkpoint)."""
    from PIL import Image
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    (tmp_path / "afile").write_text("x")
    Image.new("L", (28, 28), 128).save(tmp_path / "img.png")
    return {"TMP": str(tmp_path)}


def fill(args: list[str], paths: dict[str, str]) -> list[str]:
    return [a.replace("TMP", paths["TMP"]).replace("RUN", paths.get("RUN", "")) for a in args]


# (overrides, words the one line must contain: the key, and the value where it is shown)
LIKELIHOOD_BAD = [
    (["n=0"], ["n must be an integer >= 1", "n=0"]),
    (["n=abc"], ["n must be", "'abc'"]),
    (["seed=abc"], ["seed must be", "'abc'"]),
    (["seed=-1"], ["seed", "-1"]),
    (["batch=-1"], ["batch must be", "-1"]),
    (["probes=0"], ["probes must be", "probes=0"]),
    (["rtol=-1e-5"], ["rtol must be", "rtol=-1e-05"]),
    (["atol=-1"], ["atol must be", "atol=-1"]),
    (["rtol=nan"], ["rtol must be", "nan"]),
    (["divergence=nope"], ["divergence must be one of auto, exact, hutchinson", "'nope'"]),
    (["dtype=float16"], ["dtype must be one of float32, float64", "'float16'"]),
    (["noise=nope"], ["noise must be one of rademacher, gaussian"]),
    (["method=nope"], ["method must be one of", "dopri5", "'nope'"]),
    (["t_min=abc"], ["t_min must be", "'abc'"]),
    (["t_min=2"], ["t_min must be below", "T=1", "t_min=2"]),
    (["levels=1"], ["levels must be an integer >= 2", "levels=1"]),
    (["testbed=digits", "levels=5"], ["levels=5", "not on the 5-level grid"]),
    (["centered=maybe"], ["centered must be true or false"]),
    (["ddpm_bound.steps=0"], ["ddpm_bound.steps must be", "ddpm_bound.steps=0"]),
    (["ddpm_bound.steps=10", "method=euler"], ["ddpm_bound.steps=10", "beta_max=20"]),  # β_i = β(t_i)/N < 1
    (["ddpm_bound.sde=nope"], ["ddpm_bound.sde='nope'", "unknown SDE"]),
    (["ddpm_bound.variance=nope"], ["ddpm_bound.variance must be one of beta, posterior"]),
    (["ddpm_bound.timesteps=0"], ["ddpm_bound.timesteps must be"]),
    (["sde=nope"], ["sde/nope", "vp"]),
    (["sde.beta_max=-1"], ["sde=vp", "beta_max=-1"]),
    (["testbed=nope"], ["testbed/nope", "ring"]),
    (["testbed=digits", "n=100000"], ["n=100000 exceeds the 1797 points of digits"]),
    (["batch_sizee=3"], ["batch_sizee"]),
    (["device=tpu"], ["device must be one of", "'tpu'"]),
    (["threads=-1"], ["threads must be", "threads=-1"]),
    (["split=nope"], ["split must be one of train, test, all"]),
    (["out_dir=TMP/afile/sub"], ["out_dir=", "afile/sub", "cannot create"]),
    (["ckpt=TMP/missing"], ["ckpt=", "missing", "no checkpoint file or run directory"]),
    (["ckpt=TMP/text.pt"], ["ckpt=", "text.pt", "not a weights-only checkpoint"]),
    (["ckpt=TMP"], ["ckpt=", "no checkpoint (ckpt_*.pt)"]),
    (["ckpt=RUN", "labels=true"], ["labels=true needs a class-conditional checkpoint", "num_classes=None"]),
    (["ckpt=RUN", "data=digits"], ["data 'digits' has samples of shape (1, 8, 8)", "trained on 'ring'"]),
    (["ckpt=RUN", "data=nope"], ["data/nope", "digits"]),
    (["ckpt=RUN", "ema=maybe"], ["ema must be true or false"]),
]


@pytest.mark.parametrize("args,needles", LIKELIHOOD_BAD, ids=[" ".join(a) for a, _ in LIKELIHOOD_BAD])
def test_likelihood_bad_input_is_one_line(args, needles, paths, capsys, monkeypatch, tmp_path, request):
    if any("RUN" in a for a in args):
        paths["RUN"] = str(request.getfixturevalue("toy_run"))
    code, err = run_console(likelihood_app.main, [*LIKELIHOOD, *fill(args, paths)], capsys, monkeypatch, tmp_path)
    assert_one_line_error(code, err, "likelihood", *needles)


def test_likelihood_counts_at_least_15_bad_inputs():
    assert len(LIKELIHOOD_BAD) >= 15


def test_likelihood_still_runs_and_writes_its_numbers(toy_run, capsys, monkeypatch, tmp_path):
    """The checks refuse only what is wrong: the toy checkpoint's run with every checked value set succeeds."""
    out = tmp_path / "out"
    code, err = run_console(likelihood_app.main, [
        *LIKELIHOOD, f"ckpt={toy_run}", "batch=1", "seed=3", "method=euler", "rtol=1e-3", "atol=1e-3",
        "divergence=hutchinson", "probes=2", "ddpm_bound.steps=50", "ddpm_bound.timesteps=2", f"out_dir={out}"],
        capsys, monkeypatch, tmp_path)
    assert code == 0, err
    import json
    record = json.loads((out / "likelihood.json").read_text())
    assert record["n"] == 2 and len(record["values"]) == 2 and record["nfe"] == 2  # one Euler step a sample


DATASET = pytest.mark.skipif(not HAS_FASHION_MNIST, reason=f"Fashion-MNIST not in {FASHION_MNIST_ROOT}")
EDIT_BAD = [
    (["n=0"], ["n must be an integer >= 1", "n=0"]),
    (["n=abc"], ["n must be", "'abc'"]),
    (["seed=abc"], ["seed must be", "'abc'"]),
    (["steps=0"], ["steps must be", "steps=0"]),
    (["upscale=0"], ["upscale must be", "upscale=0"]),
    (["upscale=100000"], ["upscale must be", "upscale=100000"]),
    (["mode=nope"], ["mode must be one of guidance, sdedit", "'nope'"]),
    (["class_label=99"], ["class_label=99", "out of range", "10 classes"]),
    (["class_label=horse"], ["class_label=horse", "unknown class 'horse'", "Trouser"]),
    (["class_label=1.5"], ["class_label must be a class index or name", "1.5"]),
    (["mode=anagram", "class_label=0", "class_b=99"], ["class_b=99", "out of range"]),
    (["mode=anagram", "class_label=0"], ["mode=anagram needs two classes", "class_b"]),
    (["scale=nan"], ["scale must be a finite number", "nan"]),
    (["scales=[]"], ["scales must be a non-empty list"]),
    (["scales=[1,abc]"], ["scales must be a finite number", "'abc'"]),
    (["strengths=[2]"], ["strengths must be a finite number >= 0 and <= 1", "strengths=2"]),
    (["strength=2"], ["strength"]),
    (["solver=nope"], ["solver/nope", "heun"]),
    (["grid=nope"], ["grid must be one of", "karras", "'nope'"]),
    (["options.nope=1"], ["options.nope", "solver 'heun' takes no option 'nope'", "S_churn, S_tmin, S_tmax, S_noise"]),
    (["solver=ddim", "options.S_churn=1"], ["options.S_churn", "'ddim'", "its options: eta"]),
    (["options.S_churn=abc"], ["options.S_churn of solver 'heun' must be a number"]),
    (["solver=ode", "options.method=nope"], ["options of solver 'ode'", "unknown torchdiffeq method 'nope'"]),
    (["options=5"], ["options must be a mapping", "options=5"]),
    (["method=nope"], ["method must be one of replace, repaint, both"]),
    (["mode=inpaint", "mask=donut"], ["unknown mask 'donut'", "mask='donut'"]),
    (["mode=inpaint", "mask=TMP/missing.png"], ["mask=", "missing.png", "no image file"]),
    (["view=nope"], ["view must be one of", "flip_ud", "'nope'"]),
    (["blur_sigma=0"], ["blur_sigma must be a finite number > 0", "blur_sigma=0"]),
    (["times=[0]"], ["times must be a finite number > 0", "times=0"]),
    (["mode=forward", "times=[1000]"], ["times must lie in the edm SDE's", "1000"]),
    (["jump_length=0"], ["jump_length must be", "jump_length=0"]),
    (["resamplings=-1"], ["resamplings must be", "resamplings=-1"]),
    (["invert=maybe"], ["invert must be true or false"]),
    (["mode=sdedit", "input=fashion_mnist:abc"], ["input=fashion_mnist:abc", "fashion_mnist:<i>-<j>"]),
    (["mode=sdedit", "input=fashion_mnist:5-2"], ["input=fashion_mnist:5-2", "fashion_mnist:<i>-<j>"]),
    pytest.param(["mode=sdedit", "input=fashion_mnist:99999"], ["input=fashion_mnist:99999", "0..9999"],
                 marks=DATASET),
    (["mode=sdedit", "input=TMP/missing.png"], ["input=", "missing.png", "no image file"]),
    (["mode=sdedit", "input=TMP/text.pt"], ["input=", "text.pt", "cannot read"]),
    (["pretrained=TMP/missing"], ["pretrained=", "no checkpoint file or run directory"]),
    (["pretrained=TMP/text.pt"], ["pretrained=", "not a weights-only checkpoint"]),
    (["pretrained=nope"], ["pretrained=nope", "unknown model 'nope'", "fashion_mnist"]),
    (["pretrained=RUN", "mode=sdedit"], ["pretrained=", "edits images", "shape (2,)"]),
    (["device=tpu"], ["device must be one of", "'tpu'"]),
    (["threads=abc"], ["threads must be", "'abc'"]),
    (["out_dir=TMP/afile/sub"], ["out_dir=", "afile/sub", "cannot create the folder"]),
    (["out=TMP/afile/grid.png"], ["out=", "afile/grid.png", "cannot create the folder"]),
    (["out=TMP/grid.jpg"], ["out must name a .png file"]),
    (["batch_sizee=3"], ["batch_sizee"]),
]


def _case_id(case) -> str:
    args = case.values[0] if hasattr(case, "values") else case[0]
    return " ".join(args)


@pytest.mark.parametrize("args,needles", EDIT_BAD, ids=[_case_id(c) for c in EDIT_BAD])
def test_edit_bad_input_is_one_line(args, needles, paths, capsys, monkeypatch, tmp_path, request):
    if any("RUN" in a for a in args):
        paths["RUN"] = str(request.getfixturevalue("toy_run"))
    code, err = run_console(edit_app.main, [*EDIT, f"out_dir={tmp_path / 'out'}", *fill(args, paths)], capsys,
                            monkeypatch, tmp_path)
    assert_one_line_error(code, err, "edit", *needles)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # refused before any work


def test_hydra_full_error_shows_the_traceback(monkeypatch, tmp_path):
    """Hydra's convention: with HYDRA_FULL_ERROR=1 (set before the console entry is made, as for a console script)
    a user error comes through with its traceback."""
    from hydra.core.global_hydra import GlobalHydra

    from scoresde.cli.common import app_main
    from scoresde.errors import ConfigError
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    for app, task, arg in (("edit", edit_app.edit, "upscale=0"), ("likelihood", likelihood_app.likelihood,
                                                                     "probes=0")):
        monkeypatch.setattr(sys, "argv", [f"scoresde-{app}", arg])
        try:
            with pytest.raises(ConfigError, match=arg):
                app_main(app, task, app)()
        finally:
            GlobalHydra.instance().clear()


def test_edit_counts_at_least_15_bad_inputs():
    assert len(EDIT_BAD) >= 15


def test_edit_solver_options_need_no_plus(paths, capsys, monkeypatch, tmp_path):
    """``options.S_churn=...`` reaches the solver without a ``+``: churn changes the edit, the same churn twice does
    not."""
    import scoresde
    built = []
    get_solver = scoresde.get_solver

    def spy(name, **options):
        built.append((name, options))
        return get_solver(name, **options)

    monkeypatch.setattr(scoresde, "get_solver", spy)
    results = []
    for churn in (0, 40, 40):
        out = tmp_path / f"churn{len(results)}"
        code, err = run_console(edit_app.main, [
            *EDIT, "mode=sdedit", f"input={paths['TMP']}/img.png", "strengths=[0.6]", "class_label=0",
            f"options.S_churn={churn}", f"out_dir={out}"], capsys, monkeypatch, tmp_path)
        assert code == 0, err
        results.append((out / "sdedit.png").read_bytes())
    assert results[1] == results[2] and results[0] != results[1]
    assert ("heun", {"S_churn": 40, "S_tmin": 0.0, "S_tmax": float("inf"), "S_noise": 1.0}) in built


def _console(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_likelihood_console_script_prints_one_line(tmp_path):
    proc = _console("scoresde.cli.likelihood", ["seed=abc", "progress=false"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "scoresde-likelihood: error: seed must be an integer >= 0, got seed='abc'"


def test_edit_console_script_prints_one_line(tmp_path):
    proc = _console("scoresde.cli.edit", ["solver=ddim", "options.eta=1", "options.S_churn=1"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("scoresde-edit: error: options.S_churn: solver 'ddim' takes no option "
                                   "'S_churn'; its options: eta")


def test_edit_dataset_input_runs(capsys, monkeypatch, tmp_path):
    """The index syntax that is refused above is the one that works."""
    if not HAS_FASHION_MNIST:
        pytest.skip(f"Fashion-MNIST not in {FASHION_MNIST_ROOT}")
    code, err = run_console(edit_app.main, [*EDIT, "mode=sdedit", "input=fashion_mnist:3-4", "strengths=[0]",
                                            f"out_dir={tmp_path}"], capsys, monkeypatch, tmp_path)
    assert code == 0, err
    assert (tmp_path / "sdedit.png").is_file()
