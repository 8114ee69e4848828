"""The scoresde-sample app: a tiny run trained in-process, sampled with the EMA weights into a PNG and an .npz,
reproducible under a fixed seed, with clear errors for a missing checkpoint and an unknown solver."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from scoresde.cli.common import CONFIG_DIR
from scoresde.cli.sample import sample_checkpoint
from scoresde.cli.train import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TRAIN = ["progress=false", "batch_size=64", "model.net.hidden=32", "data.n=512", "ckpt_every=10", "log_every=5",
         "sample.every=0", "steps=20"]


def compose_cfg(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name=name, overrides=overrides)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    train(compose_cfg("train", TRAIN + [f"out_dir={run}"]))
    return run


def sample(run, out, *overrides: str) -> dict:
    return sample_checkpoint(compose_cfg("sample", [f"ckpt={run}", f"out_dir={out}", "progress=false", "n=50",
                                                    "device=cpu", *overrides]))


def test_writes_png_and_npz_with_the_measured_nfe(run, tmp_path):
    out = sample(run, tmp_path, "solver=heun", "steps=6", "grid=karras", "denoise=true")
    assert out["checkpoint"].endswith("ckpt_00000020.pt")
    assert (tmp_path / "samples.png").read_bytes()[:8] == PNG_MAGIC
    npz = np.load(tmp_path / "samples.npz")
    assert npz["samples"].shape == (50, 2) and np.isfinite(npz["samples"]).all()
    assert int(npz["nfe"]) == out["nfe"] == 2 * 6 - 1  # Heun: two evaluations a step, one on the denoising step
    assert str(npz["solver"]) == "heun" and str(npz["grid"]) == "karras"


def test_same_seed_same_samples_other_seed_other_samples(run, tmp_path):
    args = ("solver=euler_maruyama", "steps=5")
    a = sample(run, tmp_path / "a", *args)["samples"]
    b = sample(run, tmp_path / "b", *args)["samples"]
    c = sample(run, tmp_path / "c", *args, "seed=1")["samples"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert np.array_equal(np.load(tmp_path / "a" / "samples.npz")["samples"], a.numpy())


def test_seed_batches_give_per_sample_results_independent_of_the_batch_size(run, tmp_path):
    args = ("solver=euler_maruyama", "steps=5")
    whole = sample(run, tmp_path / "a", *args)
    batched = sample(run, tmp_path / "b", *args, "batch_size=16")
    assert batched["nfe_per_batch"] == [5, 5, 5, 5] and batched["nfe"] == whole["nfe"] == 5  # 50 = 16+16+16+2
    torch.testing.assert_close(batched["samples"], whole["samples"], rtol=1e-5, atol=1e-5)  # same seeds per sample
    tail = sample(run, tmp_path / "c", *args, "seed=48", "n=2")["samples"]  # the last batch: seeds 48, 49
    assert torch.equal(tail, batched["samples"][48:])
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got batch_size=0"):
        sample(run, tmp_path / "d", *args, "batch_size=0")


def test_ema_and_raw_weights_differ_and_a_file_path_works(run, tmp_path):
    ckpt = run / "checkpoints" / "ckpt_00000010.pt"
    ema = sample(ckpt, tmp_path / "e", "steps=3")
    raw = sample(ckpt, tmp_path / "r", "steps=3", "ema=false")
    assert ema["checkpoint"] == str(ckpt) and not torch.equal(ema["samples"], raw["samples"])


def test_image_checkpoint_gives_an_image_grid(tmp_path):
    run = tmp_path / "img"
    train(compose_cfg("train", ["progress=false", "data=digits", "model=tiny_unet", "batch_size=8", "steps=2",
                                "sample.every=0", "ckpt_every=2", f"out_dir={run}"]))
    out = sample(run, tmp_path / "s", "steps=2", "n=5")
    assert np.load(tmp_path / "s" / "samples.npz")["samples"].shape == (5, 1, 8, 8)
    import matplotlib.image
    png = matplotlib.image.imread(tmp_path / "s" / "samples.png")
    assert png.shape[:2] == (2 * 9 + 1, 3 * 9 + 1)  # 5 images: 3 per row, 2 rows, 1-pixel gaps
    assert out["nfe"] == 3  # Heun on 2 steps with the denoising step: 2 + 1


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file or run directory at .*nowhere"):
        sample(tmp_path / "nowhere", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        sample(tmp_path / "empty", tmp_path)


def test_unknown_solver_raises_the_registry_keyerror(run, tmp_path):
    with pytest.raises(KeyError, match="unknown solver 'nosuch'"):
        sample(run, tmp_path, "solvers.heun.name=nosuch")
    assert not (tmp_path / "samples.npz").exists()
