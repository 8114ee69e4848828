"""The apps on a diffusers model directory (issue 16, section 3): ``scoresde-sample ckpt=diffusers:<dir>`` with any
solver (measured NFE = the solver's declared NFE), ``scoresde-likelihood`` bits/dim, ``scoresde-bench
problem=diffusers`` with scoresde solvers beside diffusers' schedulers on the model's own table, and one line for a
bad directory. Tiny random-init UNets saved with ``save_pretrained`` in a temporary folder; run in-process through
the console entries (:func:`tests.app_errors.run_console`)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde.cli import bench as bench_app
from scoresde.cli import likelihood as likelihood_app
from scoresde.cli import sample as sample_app
from scoresde.models.loader import ExternalModel, load_model
from tests.app_errors import assert_one_line_error, run_console

diffusers = pytest.importorskip("diffusers")
pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:frechet_distance")]

UNET = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
            norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"))
SAMPLE = ["progress=false", "n=3", "device=cpu"]


def save_model(path, scheduler=True, **kwargs):
    torch.manual_seed(0)
    diffusers.UNet2DModel(**{**UNET, **kwargs}).save_pretrained(path)
    if scheduler:
        diffusers.DDPMScheduler(clip_sample=False).save_config(path)
    return path


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """An ε-prediction 8×8 model, a class-conditional one (2 classes + null), one without a scheduler config and
    one whose config names a class outside the allowlist."""
    out = {"model": save_model(tmp_path_factory.mktemp("model")),
           "classes": save_model(tmp_path_factory.mktemp("classes"), num_class_embeds=3),
           "no_scheduler": save_model(tmp_path_factory.mktemp("no_scheduler"), scheduler=False)}
    evil = save_model(tmp_path_factory.mktemp("evil"))
    config = json.loads((evil / "config.json").read_text())
    (evil / "config.json").write_text(json.dumps({**config, "_class_name": "os.system"}))
    out["evil"] = evil
    return out


def test_the_loader_gives_the_apps_interface(dirs):
    loaded = load_model(f"diffusers:{dirs['model']}")
    assert isinstance(loaded.model, ExternalModel) and loaded.shape == (1, 8, 8)
    assert loaded.class_names == [] and loaded.num_classes is None and loaded.step == -1
    assert loaded.sde is loaded.model.sde and loaded.sde.num_train_timesteps == 1000
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = loaded.model.score_model(loaded.sde, None)
    model.eps(x, torch.full((2,), 500.0))
    assert model.nfe == 1
    conditional = load_model(f"diffusers:{dirs['classes']}")
    assert conditional.num_classes == 2  # the last of the 3 class embeddings is the null class
    t = torch.full((2,), 300.0)
    null = conditional.model.score_model(conditional.sde, None).eps(x, t)
    assert torch.equal(null, conditional.model.score_model(conditional.sde, 2).eps(x, t))
    assert not torch.allclose(null, conditional.model.score_model(conditional.sde, 0).eps(x, t))


@pytest.mark.parametrize("solver, grid, steps", [("heun", "karras", 3), ("dpmpp_2m", "logsnr", 4),
                                                 ("ancestral", "ddpm", 3), ("ddim", "uniform", 2)])
def test_sample_a_diffusers_directory_with_any_solver(dirs, tmp_path, capsys, monkeypatch, solver, grid, steps):
    out = tmp_path / "out"
    code, err = run_console(sample_app.main, SAMPLE + [f"ckpt=diffusers:{dirs['model']}", f"solver={solver}",
                                                       f"grid={grid}", f"steps={steps}", f"out_dir={out}"],
                            capsys, monkeypatch, tmp_path)
    assert code == 0, err
    record = np.load(out / "samples.npz")
    assert record["samples"].shape == (3, 1, 8, 8) and np.isfinite(record["samples"]).all()
    sde = load_model(f"diffusers:{dirs['model']}").sde
    declared = sd.get_solver(solver).declared_nfe(sd.make_grid(sde, steps, grid, denoise=True))
    assert int(record["nfe"]) == declared


def test_sample_takes_pretrained_and_a_class(dirs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    code, err = run_console(sample_app.main, SAMPLE + [f"pretrained=diffusers:{dirs['classes']}", "steps=2",
                                                       "class_label=1", f"out_dir={out}"], capsys, monkeypatch,
                            tmp_path)
    assert code == 0, err
    assert np.isfinite(np.load(out / "samples.npz")["samples"]).all()


def test_likelihood_of_a_diffusers_directory(dirs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    code, err = run_console(likelihood_app.main, [f"ckpt=diffusers:{dirs['model']}", "data=digits", "n=2",
                                                  "dtype=float32", "rtol=1e-3", "atol=1e-3", "probes=2",
                                                  "ddpm_bound.timesteps=4", "progress=false", "device=cpu",
                                                  f"out_dir={out}"], capsys, monkeypatch, tmp_path)
    assert code == 0, err
    record = json.loads((out / "likelihood.json").read_text())
    assert record["unit"] == "bits/dim" and math.isfinite(record["mean"]) and record["nfe"] > 0
    assert record["ddpm"] is not None and math.isfinite(record["ddpm"]["mean"])


def test_bench_runs_scoresde_solvers_and_diffusers_schedulers_on_the_model(dirs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    code, err = run_console(bench_app.main, ["problem=diffusers", f"model_dir={dirs['model']}",
                                             "solver=[heun,dpmpp_2m]", "peers=[ddim,dpmpp_2m]", "kdiffusion=[]",
                                             "budgets=[4]", "n_samples=4", "n_data=6", "floor_draws=2",
                                             "metrics=[rmse,sw]", "reference.rtol=1e-3", "reference.atol=1e-3",
                                             "progress=false", "device=cpu", f"out_dir={out}"],
                            capsys, monkeypatch, tmp_path)
    assert code == 0, err
    (result,) = json.loads((out / "bench.json").read_text())["results"]
    rows = {r["solver"]: r for r in result["rows"]}
    assert {"heun", "dpmpp_2m", "diffusers:ddim", "diffusers:dpmpp_2m"} <= set(rows), sorted(rows)
    for name in ("dpmpp_2m", "diffusers:ddim", "diffusers:dpmpp_2m"):
        assert rows[name]["error"] is None and rows[name]["nfe"] == 4, rows[name]
        assert math.isfinite(rows[name]["rmse"]) and math.isfinite(rows[name]["sw"])
    assert rows["heun"]["nfe"] == rows["heun"]["declared_nfe"] == 3


BAD = [  # (app, arguments, words the one line must contain)
    ("sample", ["ckpt=diffusers:MISSING"], ["ckpt=diffusers:", "no diffusers model directory"]),
    ("sample", ["ckpt=diffusers:"], ["ckpt=diffusers:", "needs a directory"]),
    ("sample", ["ckpt=diffusers:no_scheduler"], ["ckpt=diffusers:", "no scheduler config"]),
    ("sample", ["ckpt=diffusers:evil"], ["_class_name='os.system'", "not supported"]),
    ("sample", ["ckpt=diffusers:model", "pretrained=diffusers:model"], ["ckpt=", "pretrained=", "not both"]),
    ("sample", ["ckpt=diffusers:model", "class_label=1"], ["class_label", "no classes"]),
    ("likelihood", ["ckpt=diffusers:MISSING", "data=digits"], ["ckpt=diffusers:", "no diffusers model directory"]),
    ("likelihood", ["pretrained=diffusers:no_scheduler", "data=digits"], ["pretrained=", "no scheduler config"]),
    ("likelihood", ["ckpt=diffusers:model", "data=fashion_mnist"], ["(1, 28, 28)", "(1, 8, 8)"]),
    ("bench", ["problem=diffusers"], ["model_dir"]),
    ("bench", ["problem=diffusers", "model_dir=no_scheduler"], ["model_dir=", "no scheduler config"]),
    ("bench", ["problem=diffusers", "model_dir=MISSING"], ["model_dir=", "no diffusers model directory"]),
    ("bench", ["problem=checkpoint", "ckpt=diffusers:evil"], ["ckpt=diffusers:", "not supported"]),
    ("bench", ["problem=diffusers", "model_dir=model", "dataset=nope"], ["dataset", "nope"]),
]
APPS = {"sample": sample_app.main, "likelihood": likelihood_app.main, "bench": bench_app.main}


@pytest.mark.parametrize("app, args, needles", BAD, ids=[f"{a}-{' '.join(x)}" for a, x, _ in BAD])
def test_a_bad_directory_is_one_line(dirs, tmp_path, capsys, monkeypatch, app, args, needles):
    paths = {**{k: str(v) for k, v in dirs.items()}, "MISSING": str(tmp_path / "missing")}
    filled = [a.split("=", 1)[0] + "=" + _fill(a.split("=", 1)[1], paths) if "=" in a else a for a in args]
    base = {"sample": SAMPLE + ["steps=2"], "likelihood": ["n=2", "progress=false", "device=cpu"],
            "bench": ["budgets=[4]", "n_samples=4", "progress=false", "device=cpu", "peers=[]", "kdiffusion=[]"]}
    code, err = run_console(APPS[app], base[app] + filled + [f"out_dir={tmp_path / 'out'}"], capsys, monkeypatch,
                            tmp_path)
    assert_one_line_error(code, err, app, *needles)


def _fill(value: str, paths: dict[str, str]) -> str:
    for prefix in ("diffusers:", ""):
        if value.startswith(prefix) and value[len(prefix):] in paths:
            return prefix + paths[value[len(prefix):]]
    return value
