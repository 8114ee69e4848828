"""``scoresde-edit`` on a tiny random class-conditional model saved in the pretrained format: every mode writes
its grid with the documented rows, edits keep their promises through the app, and bad input is named."""
from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from scoresde.cli.common import CONFIG_DIR
from scoresde.cli.edit import edit
from scoresde.editing import save_image
from scoresde.training.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")
NET = {"img_resolution": 8, "in_channels": 1, "model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
       "attn_resolutions": [], "dropout": 0.0, "num_classes": 3, "emb_mult": 2}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from scoresde.models import Preconditioned, UNet
    torch.manual_seed(0)
    model = Preconditioned(UNet(**{**NET, "init_zero": 1.0}), kind="edm")
    spec = {"format": "scoresde-pretrained", "version": 1, "net": {"class": "UNet", "kwargs": NET},
            "preconditioning": {"kind": "edm", "sigma_data": 0.5, "c_noise": None, "normalize_input": False},
            "sde": {"name": "edm"}, "shape": [1, 8, 8], "class_names": ["cat", "dog", "owl"],
            "state_dict": model.state_dict(), "provenance": {}}
    return save_checkpoint(spec, tmp_path_factory.mktemp("model") / "tiny.pt")


def run(model_file, tmp_path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="edit", overrides=[f"pretrained={model_file}", f"out_dir={tmp_path}", "steps=4",
                                                     "n=3", "upscale=1", *overrides])
    return edit(cfg)


@pytest.mark.parametrize("mode,overrides,rows", [
    ("guidance", ["scales=[0,2]"], 2),
    ("sdedit", ["strengths=[0,0.5]", "class_label=dog", "scale=2"], 3),
    ("inpaint", ["method=both", "jump_length=2", "resamplings=2"], 4),
    ("anagram", ["class_label=cat", "class_b=2", "view=rot90", "scale=2"], 2),
    ("hybrid", ["class_label=0", "class_b=1", "blur_sigma=1"], 3),
    ("forward", ["times=[0.5,2]"], 4),
])
def test_every_mode_writes_its_grid(model_file, tmp_path, mode, overrides, rows):
    out = run(model_file, tmp_path, f"mode={mode}", *overrides)
    assert len(out["rows"]) == rows and all(r.isfinite().all() for r in out["rows"])
    width = max(len(r) for r in out["rows"])
    assert Image.open(out["png"]).size == (width * 9 + 1, rows * 9 + 1)  # 8 px images, 1 px padding


def test_png_in_png_out_sdedit_and_inpaint_keep_their_promises(model_file, tmp_path):
    x = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    save_image(torch.nn.functional.interpolate(x, size=(32, 32), mode="nearest"), tmp_path / "in.png")
    sd_rows = run(model_file, tmp_path, "mode=sdedit", f"input={tmp_path / 'in.png'}", "strengths=[0]")["rows"]
    assert torch.equal(sd_rows[1], sd_rows[0])  # strength 0 returns the (resized) input
    rows = run(model_file, tmp_path, "mode=inpaint", f"input={tmp_path / 'in.png'}", "mask=top_half")["rows"]
    for result in rows[2:]:
        assert torch.equal(result[..., 4:, :], rows[0][..., 4:, :])  # the bottom half was known


@pytest.mark.parametrize("overrides,error,match", [
    (["mode=guidance", "class_label=horse"], ValueError, "unknown class 'horse'"),
    (["mode=guidance", "class_label=7"], ValueError, "class_label=7: class label 7 out of range"),
    (["mode=guidance", "scales=[nan]"], ValueError, "scales must be a finite number, got scales=nan"),
    (["mode=anagram", "class_label=0"], ValueError, "needs two classes"),
    (["mode=inpaint", "mask=donut"], ValueError, "unknown mask 'donut'"),
    (["mode=paint"], ValueError, "mode must be one of guidance, .*got mode='paint'"),
    (["mode=sdedit", "strengths=[2]"], ValueError, "strengths must be a finite number >= 0 and <= 1, got strengths=2"),
])
def test_bad_input_is_named(model_file, tmp_path, overrides, error, match):
    with pytest.raises(error, match=match):
        run(model_file, tmp_path, *overrides)


def test_unreadable_image_and_mask_of_wrong_shape(model_file, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="cannot read .*broken.png as an image"):
        run(model_file, tmp_path, "mode=sdedit", f"input={tmp_path / 'broken.png'}")
    from scoresde.editing import inpaint
    from scoresde.models.pretrained import load_pretrained
    pre = load_pretrained(model_file)
    with pytest.raises(ValueError, match=r"mask has shape \(28, 28\)"):
        inpaint(pre.score_model(0), torch.zeros(1, 1, 8, 8), torch.ones(28, 28, dtype=torch.bool))
