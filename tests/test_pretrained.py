"""Pretrained models: a training checkpoint exported to the pretrained format loads (offline, weights-only) into
the same function as the checkpoint's own EMA model; the shipped Fashion-MNIST model loads and is conditional."""
from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from scoresde.cli.common import CONFIG_DIR
from scoresde.cli.train import train
from scoresde.models.loader import load_model, resolve_checkpoint
from scoresde.models.pretrained import PRETRAINED, WEIGHTS_DIR, export_pretrained, load_pretrained
from scoresde.training.checkpoint import load_checkpoint

TRAIN = ["progress=false", "data=digits", "model=tiny_unet", "model.num_classes=10", "batch_size=16", "steps=3",
         "ckpt_every=3",
         "sample.every=0", "log_every=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="train", overrides=TRAIN + [f"out_dir={run}"])
    train(cfg)
    return run


def test_export_then_load_gives_the_checkpoints_ema_model(run, tmp_path):
    loaded = load_model(resolve_checkpoint(run))
    reference, sde, state = loaded.model, loaded.sde, {"step": loaded.step}
    path = export_pretrained(run, tmp_path / "model.pt", provenance={"command": "test"})
    exported = load_checkpoint(path)  # weights_only: nothing in the file runs code
    assert exported["format"] == "scoresde-pretrained" and "optimizer" not in exported
    pre = load_pretrained(path)
    assert pre.shape == (1, 8, 8) and pre.num_classes == 10 and pre.class_names[3] == "3"
    assert pre.provenance["command"] == "test" and pre.provenance["step"] == state["step"] == 3
    assert type(pre.sde) is type(sde)
    x, t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.full((4,), 0.5)
    labels = torch.tensor([0, 3, 9, 10])
    want = reference.predict(x, t, sde, labels)
    torch.testing.assert_close(pre.model.predict(x, t, pre.sde, labels), want, rtol=0, atol=0)
    torch.testing.assert_close(load_pretrained(run).model.predict(x, t, pre.sde, labels), want, rtol=0, atol=0)


def test_class_names_and_bad_names(run):
    pre = load_pretrained(run)
    assert pre.class_index("7") == 7 and pre.class_index(2) == 2
    with pytest.raises(ValueError, match="out of range"):
        pre.class_index(10)
    with pytest.raises(ValueError, match="unknown model 'nonesuch'"):
        load_pretrained("nonesuch")


@pytest.mark.skipif(not (WEIGHTS_DIR / PRETRAINED["fashion_mnist"]).is_file(), reason="shipped weights not built")
def test_shipped_fashion_mnist_model_loads_and_denoises():
    pre = load_pretrained("fashion_mnist")
    assert pre.shape == (1, 28, 28) and pre.num_classes == 10 and pre.class_names[7] == "Sneaker"
    assert pre.class_index("Bag") == 8
    assert {"command", "step", "seconds"} <= set(pre.provenance)
    x0 = torch.zeros(2, 1, 28, 28)
    sigma = 0.05
    noisy = x0 + sigma * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        denoised = pre.model(noisy, torch.full((2,), sigma), class_labels=torch.tensor([10, 10]))
    # at a small sigma the denoiser moves a sample towards the clean image: it removes most of the noise
    assert (denoised - x0).square().mean() < (noisy - x0).square().mean()


def sample_cli(ckpt, out, *overrides):
    from scoresde.cli.sample import sample_checkpoint
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="sample", overrides=[f"ckpt={ckpt}", f"out_dir={out}", "progress=false", "n=6",
                                                       "device=cpu", "solver=euler", "steps=3", *overrides])
    return sample_checkpoint(cfg)


def test_sample_app_takes_a_pretrained_file_and_class_labels(run, tmp_path):
    import scoresde as sd
    path = export_pretrained(run, tmp_path / "model.pt")
    pre = load_pretrained(path)
    got = sample_cli(path, tmp_path / "a", "class_label=3")["samples"]
    want = sd.sample(pre.score_model(3), "euler", 3, (6, 1, 8, 8), grid="karras", seed=list(range(6)), denoise=True)
    torch.testing.assert_close(got, want)  # the app samples class 3 with per-sample seeds 0..5
    rows = sample_cli(path, tmp_path / "b", "class_label=rows", "n=20")["samples"]
    per_row = -(-20 // 10)  # row k (two images) is class k
    torch.testing.assert_close(rows[6:8], sd.sample(pre.score_model(3), "euler", 3, (2, 1, 8, 8), grid="karras",
                                                    seed=[6, 7], denoise=True))
    assert rows.shape == (20, 1, 8, 8) and per_row == 2
    with pytest.raises(ValueError, match="out of range"):
        sample_cli(path, tmp_path / "c", "class_label=10")
    with pytest.raises(ValueError, match="unknown class 'Shirt'"):
        sample_cli(path, tmp_path / "d", "class_label=Shirt")
