"""scoresde-train fails fast on configs that cannot work, with a message that names the problem."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from scoresde.cli.common import CONFIG_DIR
from scoresde.cli.train import ConfigError, build_trainer
from scoresde.data import FASHION_MNIST_ROOT


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="train", overrides=overrides)


BAD = [
    (["lr=-0.001"], r"lr must be a number > 0, got lr=-0\.001"),
    (["lr=0"], r"lr must be a number > 0"),
    (["steps=0"], r"steps must be an integer >= 1, got steps=0"),
    (["steps=-5"], r"steps must be an integer >= 1"),
    (["batch_size=0"], r"batch_size must be an integer >= 1"),
    (["data.n=100", "batch_size=256"], r"batch_size=256 is larger than the 100 training samples of data=ring"),
    (["data=digits", "batch_size=5000"], r"batch_size=5000 is larger than the 1438 training samples"),
    (["loss.name=nope"], r"loss: unknown loss 'nope'; known losses: ddpm, dsm, edm"),
    (["sde.name=nope"], r"sde: unknown SDE 'nope'; known SDEs: .*vp"),
    (["data.name=nope"], r"unknown data 'nope'; choose a toy \(ring"),
    (["sample.solver=nope"], r"unknown sample.solver 'nope'; known solvers: .*heun"),
    (["model.net._target_=scoresde.models.Nope"], r"cannot build model 'mlp' \(net._target_='scoresde.models.Nope'\)"),
    (["data=digits", "model=tiny_unet", "+model.net.channel_mult=[1,1,1,1,1]"],
     r"model 'tiny_unet': a U-Net with 5 levels needs an image size divisible by 2\^4 = 16, but the data is \(8, 8\)"),
    (["model.net.dim=3"], r"model 'mlp' cannot take the data's samples of shape \(2,\)"),
    (["model.num_classes=3"], r"class-conditional \(num_classes=3\), but data=ring has no labels"),
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
    assert proc.stderr.strip() == "scoresde-train: bad config: lr must be a number > 0, got lr=-1"
    assert "Traceback" not in proc.stderr


def test_conditional_fashion_config_builds_with_labels(tmp_path):
    if not (Path(FASHION_MNIST_ROOT) / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed")
    tr = build_trainer(compose_cfg([f"out_dir={tmp_path}", "data=fashion_mnist", "model=small_unet",
                                    "batch_size=8", "progress=false"]))
    x, y = tr.next_batch()
    assert tr.num_classes == 10 and tr.label_dropout == 0.1
    assert x.shape == (8, 1, 28, 28) and y.shape == (8,) and int(y.max()) < 10
