"""scoresde-likelihood on checkpoints trained in-process for a few steps.

A checkpoint whose network weights are all zero is an exact testbed: under EDM preconditioning its denoiser is
``D(x̂; σ) = σ_d²/(σ² + σ_d²)·x̂``, the ideal denoiser of N(0, σ_d² I), so under the VP SDE the model's marginal at
time t is N(0, s(t)²(σ_d² + σ(t)²) I) and the ODE's log-likelihood has a closed form, per sample.
"""
from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_dir

import scoresde as sd
from scoresde.cli.common import CONFIG_DIR
from scoresde.cli.likelihood import likelihood
from scoresde.cli.train import train
from scoresde.evaluation.likelihood import bits_per_dim
from scoresde.training.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")
SIGMA_DATA = 0.5
TRAIN = ["progress=false", "sample.every=0", "ckpt_every=1000", "steps=2", "threads=1", "model.kind=edm"]


def compose_cfg(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name=name, overrides=overrides)


def zeroed(run, path):
    """A copy of the run's checkpoint with every floating-point weight (raw and EMA) set to zero."""
    state = load_checkpoint(sd_ckpt(run))
    for weights in (state["model"], state["ema"]["shadow"]):
        for k, v in weights.items():
            if v.is_floating_point():
                weights[k] = torch.zeros_like(v)
    save_checkpoint(state, path)
    return path


def sd_ckpt(run):
    from scoresde.models.loader import resolve_checkpoint
    return resolve_checkpoint(run)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("toy")
    train(compose_cfg("train", [*TRAIN, "batch_size=32", "model.net.hidden=16", "data.n=64", f"out_dir={run}"]))
    return run


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("digits")
    train(compose_cfg("train", [*TRAIN, "data=digits", "model=small_unet", "model.net.model_channels=8",
                                "model.net.attn_resolutions=[]", "model.net.channel_mult=[1]", "batch_size=4",
                                f"out_dir={run}"]))
    return run


def run_cli(*overrides: str) -> dict:
    return likelihood(compose_cfg("likelihood", ["progress=false", "device=cpu", *overrides]))


def gaussian_log_prob(x: torch.Tensor, t: float, sde: sd.SDE) -> torch.Tensor:
    """log N(x; 0, s(t)²(σ_d² + σ(t)²) I) per sample."""
    tt = torch.tensor(t, dtype=torch.float64)
    var = float(sde.s(tt) ** 2 * (SIGMA_DATA**2 + sde.sigma(tt) ** 2))
    x = x.reshape(len(x), -1).double()
    return -0.5 * (x.pow(2).sum(1) / var + x.shape[1] * math.log(2 * math.pi * var))


def test_zero_network_checkpoint_gives_the_exact_gaussian_log_likelihood(toy_run, tmp_path, capsys):
    ckpt = zeroed(toy_run, tmp_path / "zero.pt")
    out = run_cli(f"ckpt={ckpt}", "n=8", "batch=4", "rtol=1e-6", "atol=1e-6", "ddpm_bound.steps=50")
    exact = gaussian_log_prob(out["points"], sd.get_sde("vp").t_min, sd.get_sde("vp"))
    assert out["unit"] == "nats" and out["divergence"] == "exact" and out["points"].shape == (8, 2)
    assert torch.allclose(out["values"], exact, rtol=1e-3, atol=1e-4), (out["values"], exact)
    assert out["nfe"] > 2 and out["seconds"] > 0 and out["exact"] is None
    assert out["ddpm"] is not None and out["ddpm"]["nfe"] == 2 * 50  # two batches of the 50-step chain
    text = capsys.readouterr().out
    assert "ODE (dopri5" in text and "NFE" in text and "DDPM bound (N=50" in text


def test_same_seed_same_number_and_the_data_default_to_the_checkpoints(toy_run):
    args = (f"ckpt={toy_run}", "n=6", "divergence=hutchinson", "probes=2", "rtol=1e-3", "atol=1e-3",
            "ddpm_bound.steps=25")
    a, b, c = run_cli(*args), run_cli(*args), run_cli(*args, "seed=1")
    assert a["mean"] == b["mean"] and a["ddpm"]["mean"] == b["ddpm"]["mean"] and a["mean"] != c["mean"]
    assert a["probe_std_error"] > 0 and "ring" in a["source"]
    moons = run_cli(*args, "data=moons")
    assert "moons" in moons["source"] and moons["mean"] != a["mean"]


def test_image_checkpoint_reports_bits_per_dim_of_the_dequantized_digits(digits_run, tmp_path):
    ckpt = zeroed(digits_run, tmp_path / "zero.pt")
    out = run_cli(f"ckpt={ckpt}", "n=2", "divergence=hutchinson", "probes=2", "rtol=1e-3", "atol=1e-3",
                  "ddpm_bound.steps=25")
    sde, d = sd.get_sde("vp"), 64
    x = out["points"]
    assert x.shape == (2, 1, 8, 8) and out["unit"] == "bits/dim"
    k = sd.data.load_digits("test")[0][:2]
    assert float((x - k).abs().max()) <= 1 / 16 + 1e-12  # dequantized within the data's own 17-level bin
    exact = bits_per_dim(gaussian_log_prob(x, sde.t_min, sde), d, scale=2 / 16)
    assert torch.allclose(out["values"], exact, rtol=2e-3), (out["values"], exact)
    assert out["probe_std_error"] == pytest.approx(0.0, abs=1e-6)  # Rademacher probes: the Jacobian is c(t)·I
    assert out["ddpm"]["mean"] > 0 and "null class" in out["source"]


def test_conditional_checkpoint_null_class_by_default_true_labels_on_request(digits_run, monkeypatch):
    from scoresde.models import Preconditioned
    seen, predict = [], Preconditioned.predict

    def spy(self, x, t, sde, class_labels=None):
        seen.append(class_labels)
        return predict(self, x, t, sde, class_labels)

    monkeypatch.setattr(Preconditioned, "predict", spy)
    args = (f"ckpt={digits_run}", "n=3", "batch=2", "method=euler", "ddpm_bound.enabled=false", "dtype=float32")
    null = run_cli(*args)
    assert "null class" in null["source"] and null["nfe"] == 2 and seen == [None, None]  # one Euler step a batch
    seen.clear()
    true = run_cli(*args, "labels=true")
    labels = sd.data.load_digits("test")[1][:3]
    assert "true labels" in true["source"] and len(seen) == 2
    assert torch.equal(torch.cat(seen), labels)  # each batch's own labels


def test_bad_input_is_named(toy_run, digits_run, monkeypatch):
    with pytest.raises(ValueError, match=r"data 'digits' has samples of shape \(1, 8, 8\).*trained on 'ring'"):
        run_cli(f"ckpt={toy_run}", "data=digits", "n=2")
    with pytest.raises(ValueError, match="probes must be an integer >= 1, got probes=0"):
        run_cli(f"ckpt={toy_run}", "probes=0")
    with pytest.raises(ValueError, match="labels=true needs a class-conditional checkpoint"):
        run_cli(f"ckpt={toy_run}", "labels=true", "n=2")
    with pytest.raises(ValueError, match="n=2000 exceeds the 359 images of digits"):
        run_cli(f"ckpt={digits_run}", "n=2000")
    with pytest.raises(ValueError, match="ckpt=/nonexistent/run: no checkpoint file or run directory"):
        run_cli("ckpt=/nonexistent/run")
    import scoresde.cli.likelihood as app
    x, y = sd.data.load_digits("test")
    monkeypatch.setattr(app, "load_image_dataset", lambda *a: (2 * x, y))
    with pytest.raises(ValueError, match=r"data must lie in \[-1, 1\]"):
        run_cli(f"ckpt={digits_run}", "n=2", "method=euler")
