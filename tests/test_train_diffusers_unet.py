"""benchmarks/train_diffusers_unet.py (issue 16 §4): two training steps of a tiny diffusers UNet on the 8×8 digits
give a directory that ``scoresde.load_model("diffusers:<dir>")`` reads — diffusers' DDPM table, the EMA weights —
and that scoresde's solvers sample with the measured NFE their grids declare; a missing dataset is one line, exit 2.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import scoresde as sd
from scoresde.models.loader import load_model

diffusers = pytest.importorskip("diffusers")
pytestmark = [pytest.mark.usefixtures("single_thread")]

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_diffusers_unet.py"
TINY = ["--dataset", "digits", "--limit", "32", "--channels", "8,16", "--batch", "4", "--warmup", "1", "--quiet",
        "--threads", "1"]


def script():
    spec = importlib.util.spec_from_file_location("train_diffusers_unet", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("unet")
    assert script().main([*TINY, "--steps", "2", "--out", str(out)]) == 0
    return out


def test_saved_directory_has_the_pipeline_layout_and_the_run_record(trained):
    assert (trained / "unet" / "config.json").is_file() and any((trained / "unet").glob("*.safetensors"))
    assert (trained / "scheduler" / "scheduler_config.json").is_file()
    info = json.loads((trained / "training.json").read_text())
    assert info["steps"] == 2 and info["finished"] and len(info["loss_every_100"]) == 0
    assert info["settings"]["ema"] == 0.999 and info["images"] == 32


def test_loads_with_the_ddpm_table_diffusers_trained_on(trained):
    loaded = load_model(f"diffusers:{trained}")
    assert loaded.shape == (1, 8, 8) and loaded.provenance["prediction"] == "eps"
    assert torch.equal(loaded.sde.alphas_cumprod, diffusers.DDPMScheduler(num_train_timesteps=1000).alphas_cumprod)


def test_saved_weights_are_the_ema_of_the_training_weights(tmp_path):
    """One step: the saved weights are β·θ₀ + (1 − β)·θ₁ with diffusers' warm-up β = min(decay, 1/10) (θ₀ the seeded
    init, θ₁ the weights after the step, which ``--ema 0`` saves)."""
    def weights(out):
        return diffusers.UNet2DModel.from_pretrained(str(out / "unet")).state_dict()
    module = script()
    module.main([*TINY, "--steps", "1", "--ema", "0.9", "--out", str(tmp_path / "ema")])
    module.main([*TINY, "--steps", "1", "--ema", "0", "--out", str(tmp_path / "raw")])
    torch.manual_seed(0)
    init = module.build_unet(8, 1, (8, 16), 1, True).state_dict()
    ema, raw = weights(tmp_path / "ema"), weights(tmp_path / "raw")
    assert not torch.equal(raw["conv_in.weight"], init["conv_in.weight"])
    for name, value in ema.items():
        torch.testing.assert_close(value, 0.1 * init[name] + 0.9 * raw[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("solver,grid", [("ddim", "quadratic"), ("dpmpp_2m", "karras")])
def test_two_scoresde_solvers_sample_it_with_the_declared_nfe(trained, solver, grid):
    loaded = load_model(f"diffusers:{trained}")
    model = loaded.model.score_model(loaded.sde, None)
    model.reset_nfe()
    x = sd.sample(model, solver, 4, (3, *loaded.shape), grid=grid, denoise=True, seed=0)
    assert x.shape == (3, 1, 8, 8) and bool(torch.isfinite(x).all())
    assert model.nfe == sd.get_solver(solver).declared_nfe(sd.make_grid(loaded.sde, 4, grid, denoise=True))


def test_missing_dataset_is_one_line_naming_the_package(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        script().main(["--dataset", "fashion_mnist", "--root", str(tmp_path / "none"), "--steps", "1",
                       "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "apt-get install -y dataset-fashion-mnist" in err
    assert not (tmp_path / "out").exists()
