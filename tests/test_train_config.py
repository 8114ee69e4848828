"""scoresde-train's config: fails fast on configs that cannot work, with a message that names the problem;
presets (configs/train/), launcher configs (configs/hydra/launcher/) and --multirun sweeps."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from scoresde.cli.common import CONFIG_DIR
from scoresde.cli.train import ConfigError, build_trainer
from scoresde.data import FASHION_MNIST_ROOT
from scoresde.training import latest_checkpoint, load_checkpoint


def compose_cfg(overrides: list[str], hydra: bool = False):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="train", overrides=overrides, return_hydra_config=hydra)


BAD = [
    (["lr=-0.001"], r"lr must be a finite number > 0, got lr=-0\.001"),
    (["lr=0"], r"lr must be a finite number > 0"),
    (["steps=0"], r"steps must be an integer >= 1, got steps=0"),
    (["steps=-5"], r"steps must be an integer >= 1"),
    (["batch_size=0"], r"batch_size must be an integer >= 1"),
    (["data.n=100", "batch_size=256"], r"batch_size=256 is larger than the 100 training samples of data=ring"),
    (["data=digits", "batch_size=5000"], r"batch_size=5000 is larger than the 1438 training samples"),
    (["loss.name=nope"], r"loss: unknown loss 'nope'; known losses: ddpm, dsm, edm"),
    (["sde.name=nope"], r"sde: unknown SDE 'nope'; known SDEs: .*vp"),
    (["data.name=nope"], r"unknown data 'nope'; choose a toy \(ring"),
    (["sample.solver=nope"], r"unknown sample.solver 'nope'; known solvers: .*heun"),
    (["model.net._target_=scoresde.models.Nope"],
     r"model.net._target_='scoresde.models.Nope' is not a registered network"),
    (["data=digits", "model=tiny_unet", "+model.net.channel_mult=[1,1,1,1,1]"],
     r"model 'tiny_unet': a U-Net with 5 levels needs an image size divisible by 2\^4 = 16, but the data is \(8, 8\)"),
    (["model.net.dim=3"], r"model 'mlp' cannot take the data's samples of shape \(2,\)"),
    (["model.num_classes=3"], r"class-conditional \(num_classes=3\), but data=ring has no labels"),
    (["lr_schedule=linear"], r"unknown lr_schedule 'linear'; choose one of constant, cosine"),
    (["lr_schedule=cosine", "lr_min=0.1"], r"lr_min must be a finite number >= 0 and <= 0\.002, got lr_min=0\.1"),
    (["data.hflip=true"], r"data.hflip needs images \(N, C, H, W\), but data=ring has shape \(20000, 2\)"),
    (["device=tpu"], r"device must be one of cpu, cuda, auto \(or cuda:N\), got 'tpu'"),
]


@pytest.mark.parametrize("overrides, match", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_config_fails_fast_with_its_message(tmp_path, overrides, match):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=match):
        build_trainer(compose_cfg([f"out_dir={tmp_path}", "progress=false", *overrides]))
    assert time.perf_counter() - start < 10
    assert not (tmp_path / "checkpoints").exists()  # nothing was trained or written


def test_unknown_model_group_is_refused_by_hydra_with_the_choices():
    with pytest.raises(Exception, match=r"(?s)model/nope.*mlp"):
        compose_cfg(["model=nope"])


def test_console_app_prints_one_line_and_exits_2(tmp_path):
    cmd = [sys.executable, "-m", "scoresde.cli.train", "lr=-1", f"out_dir={tmp_path}", "progress=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "scoresde-train: error: lr must be a finite number > 0, got lr=-1"
    assert "Traceback" not in proc.stderr


def test_conditional_fashion_config_builds_with_labels(tmp_path):
    if not (Path(FASHION_MNIST_ROOT) / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed")
    tr = build_trainer(compose_cfg([f"out_dir={tmp_path}", "data=fashion_mnist", "model=small_unet",
                                    "batch_size=8", "progress=false"]))
    x, y = tr.next_batch()
    assert tr.num_classes == 10 and tr.label_dropout == 0.1
    assert x.shape == (8, 1, 28, 28) and y.shape == (8,) and int(y.max()) < 10


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_config_error_and_auto_falls_back_to_the_cpu(tmp_path):
    with pytest.raises(ConfigError, match="device=cuda but CUDA is not available; use device=cpu or device=auto"):
        build_trainer(compose_cfg([f"out_dir={tmp_path}", "device=cuda"]))
    assert build_trainer(compose_cfg([f"out_dir={tmp_path}", "device=auto"])).device == torch.device("cpu")


def test_preset_sets_the_fashion_mnist_run_and_the_command_line_still_wins():
    cfg = compose_cfg(["train=fashion_mnist"])
    assert (cfg.data.name, cfg.model.name, cfg.loss.name, cfg.sde.name) == ("fashion_mnist", "small_unet", "edm", "edm")
    assert (cfg.batch_size, cfg.lr, cfg.warmup_steps, cfg.ema.decay) == (64, 1e-3, 200, 0.999)
    assert (cfg.ckpt_every, cfg.sample.every, cfg.sample.n, cfg.sample.solver) == (250, 1000, 64, "heun")
    assert cfg.data.hflip is False and cfg.lr_schedule == "constant"  # train.yaml's values where the preset is silent
    cfg = compose_cfg(["train=fashion_mnist", "steps=10", "lr=5e-4", "data=digits", "data.hflip=true"])
    assert (cfg.steps, cfg.lr, cfg.data.name, cfg.data.hflip) == (10, 5e-4, "digits", True)
    assert cfg.model.name == "small_unet"
    assert compose_cfg([]).data.name == "ring"  # no preset by default
    digits = compose_cfg(["train=digits"])
    assert (digits.data.name, digits.model.name, digits.lr_schedule, digits.lr_min) == ("digits", "tiny_unet",
                                                                                      "cosine", 1e-4)


def test_parallel_launcher_config_extends_joblib():
    launcher = compose_cfg(["hydra/launcher=parallel"], hydra=True).hydra.launcher
    assert launcher._target_.endswith("JoblibLauncher") and launcher.n_jobs == 2


def test_multirun_sweep_trains_one_run_per_value_in_the_sweep_dir(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "scoresde.cli.train", "--multirun", "lr=1e-3,2e-3", "steps=3", "progress=false",
           "batch_size=64", "model.net.hidden=32", "data.n=512", "sample.every=0", "threads=1", "device=cpu",
           f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lrs = []
    for job in ("0", "1"):
        state = load_checkpoint(latest_checkpoint(sweep / job / "checkpoints"))
        assert state["step"] == 3 and list((sweep / job / "tb").glob("events.out.tfevents.*"))
        lrs.append(state["config"]["lr"])
    assert lrs == [1e-3, 2e-3] and (sweep / "multirun.yaml").is_file()
