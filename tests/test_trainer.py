"""Trainer, checkpoints, toys and the scoresde-train app: atomic writes, weights_only loads, exact resume,
tensorboard output, the CLI with resume, a loss that goes down, and bad input."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import scoresde as sd
from scoresde.cli.common import CONFIG_DIR
from scoresde.cli.train import build_trainer, load_data, train
from scoresde.data import FASHION_MNIST_INSTALL, TOYS, make_toy
from scoresde.models import EMA, MLP, Preconditioned, tiny_unet
from scoresde.training import DSMLoss, EDMLoss, Trainer, image_grid, latest_checkpoint, load_checkpoint
from scoresde.training.batches import BatchSource
from scoresde.training.checkpoint import CHECKPOINT_PATTERN, check_plain, checkpoint_path, save_checkpoint
from scoresde.training.schedule import lr_at
from scoresde.training.trainer import SCALAR_TAGS

REPO = Path(__file__).resolve().parents[1]


def ring_data(n: int = 512) -> torch.Tensor:
    return make_toy("ring", n, torch.Generator().manual_seed(0))


def make_trainer(tmp: Path | None = None, *, init_seed: int = 0, data: object = None, **kw) -> Trainer:
    torch.manual_seed(init_seed)
    model = Preconditioned(MLP(2, hidden=32, depth=2), kind="eps")
    opts = dict(batch_size=96, lr=3e-3, warmup_steps=5, grad_clip=0.5, total_steps=24, log_every=4,
                ema=EMA(model, decay=0.9), seed=3, progress=False)
    if tmp is not None:
        opts.update(ckpt_dir=tmp / "ckpt", log_dir=tmp / "tb")
    opts.update(kw)
    return Trainer(model, sd.get_sde("vp"), DSMLoss(), ring_data() if data is None else data, **opts)


def assert_same_state(a: Trainer, b: Trainer) -> None:
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    for k, v in a.ema.shadow.items():
        assert torch.equal(v, b.ema.shadow[k]), k
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (i, k)
    assert a.step == b.step


# ---- checkpoint files ---------------------------------------------------------------------------------------
def test_atomic_write_survives_crash_before_rename(tmp_path, monkeypatch):
    path = checkpoint_path(tmp_path, 5)
    save_checkpoint({"w": torch.ones(3), "step": 5}, path)

    def crash(src, dst):
        raise KeyboardInterrupt("killed between write and rename")

    monkeypatch.setattr(os, "replace", crash)
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: None)  # a hard kill cleans up nothing
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"w": torch.zeros(3), "step": 5}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))  # the old checkpoint is intact
    leftovers = [p.name for p in tmp_path.iterdir() if p != path]
    assert leftovers, "the crash should have left the temporary file behind"
    assert not any(CHECKPOINT_PATTERN.match(name) for name in leftovers), leftovers
    assert latest_checkpoint(tmp_path) == path


def test_failed_write_cleans_up_and_rejects_objects(tmp_path):
    save_checkpoint({"a": torch.zeros(1)}, tmp_path / "ckpt_00000001.pt")
    with pytest.raises(TypeError, match="weights_only"):
        save_checkpoint({"a": object()}, tmp_path / "ckpt_00000002.pt")
    with pytest.raises(TypeError):
        check_plain({"cfg": {"x": [1, 2, {3}]}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_00000001.pt"]
    assert latest_checkpoint(tmp_path / "absent") is None


def test_trainer_checkpoint_loads_with_weights_only(tmp_path):
    tr = make_trainer(tmp_path, total_steps=6, config={"lr": 3e-3, "nested": {"a": [1, 2], "b": None}})
    tr.train()
    path = latest_checkpoint(tmp_path / "ckpt")
    assert path.name == "ckpt_00000006.pt"
    state = torch.load(path, weights_only=True)
    assert state["step"] == 6 and state["config"]["nested"] == {"a": [1, 2], "b": None}
    assert {"model", "ema", "optimizer", "rng", "data"} <= state.keys()
    assert {"torch", "data", "loss", "python", "numpy"} <= state["rng"].keys()


def test_checkpoint_keys_are_those_earlier_runs_wrote(tmp_path):
    """A one-process checkpoint holds exactly the keys of the format runs already on disk use (and loads them)."""
    state = make_trainer(total_steps=2).state_dict()
    assert set(state) == {"format", "step", "model", "ema", "optimizer", "rng", "data", "last_loss", "config"}
    assert set(state["rng"]) - {"cuda"} == {"torch", "data", "loss", "python", "numpy"}
    assert set(state["data"]) == {"perm", "pos", "epoch", "pass_pos"}


# ---- exact resume -------------------------------------------------------------------------------------------
def test_resume_is_exact(tmp_path):
    straight = make_trainer()
    straight.train()
    # the interrupted run also logs and draws sample plots: neither may touch the training randomness
    first = make_trainer(tmp_path, sample_every=5, n_samples=32, sample_steps=3)
    first.train(num_steps=13)  # 96-sample batches of 512 points: crosses an epoch boundary on either side
    first.close()
    assert latest_checkpoint(tmp_path / "ckpt").name == "ckpt_00000013.pt"
    torch.manual_seed(12345)  # disturb the global RNG; a different initialization
    resumed = make_trainer(tmp_path, init_seed=7)
    assert resumed.resume() is not None and resumed.step == 13
    resumed.train()
    resumed.close()
    assert_same_state(straight, resumed)


def test_resume_is_exact_with_an_iterable_of_batches(tmp_path):
    batches = list(ring_data(320).split(64))  # 5 batches per pass
    straight = make_trainer(data=batches, total_steps=12)
    straight.train()
    first = make_trainer(tmp_path, data=batches, total_steps=12)
    first.train(num_steps=7)
    resumed = make_trainer(tmp_path, data=batches, total_steps=12, init_seed=1)
    resumed.resume()
    resumed.train()
    assert_same_state(straight, resumed)


def test_flips_resume_exactly_from_the_data_generator():
    images = torch.arange(48 * 16.0).reshape(48, 1, 4, 4)

    def source() -> BatchSource:
        return BatchSource(images, None, batch_size=8, num_classes=None, device=torch.device("cpu"),
                           generator=torch.Generator().manual_seed(2), hflip=True)

    straight, first = source(), source()
    for _ in range(5):
        first.next()
    state = {**first.state_dict(), "gen": first.generator.get_state()}
    resumed = source()
    resumed.generator.set_state(state.pop("gen"))
    resumed.load_state_dict(state)
    batches = [straight.next()[0] for _ in range(12)]
    assert all(torch.equal(b, resumed.next()[0]) for b in batches[5:])
    flipped = sum(int((b[:, 0, 0, 0] > b[:, 0, 0, -1]).sum()) for b in batches)  # arange rises along W
    assert 0 < flipped < 12 * 8


# ---- learning-rate schedules --------------------------------------------------------------------------------
def test_cosine_schedule_decays_from_lr_to_the_floor_after_warmup():
    lrs = [lr_at(i, 1e-3, warmup_steps=4, total_steps=14, schedule="cosine", lr_min=1e-4) for i in range(14)]
    assert lrs[:4] == [2.5e-4, 5e-4, 7.5e-4, 1e-3]  # warmup as before, then the peak
    assert lrs[8] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 0.5)).item()))
    assert lrs[-1] == pytest.approx(1e-4) and all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert [lr_at(i, 1e-3, 4, 14) for i in range(14)] == lrs[:4] + [1e-3] * 10  # constant
    tr = make_trainer(total_steps=6, warmup_steps=0, lr_schedule="cosine", lr_min=1e-4)
    tr.train()
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)  # the last update used the floor
    with pytest.raises(ValueError, match="unknown lr_schedule 'step'"):
        make_trainer(lr_schedule="step")


# ---- logging --------------------------------------------------------------------------------------------
def _event_tags(log_dir: Path) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc.Tags()


def test_tensorboard_scalars_and_scatter(tmp_path):
    tr = make_trainer(tmp_path, total_steps=8, sample_every=8, n_samples=64, sample_steps=3)
    tr.train()
    tr.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    tags = _event_tags(tmp_path / "tb")
    assert set(SCALAR_TAGS) <= set(tags["scalars"])
    assert "samples" in tags["images"]  # the 2-D scatter figure


def test_image_sample_grid(tmp_path):
    torch.manual_seed(0)
    model = Preconditioned(tiny_unet(8, 1), kind="edm")
    images = torch.rand(40, 1, 8, 8) * 2 - 1
    tr = Trainer(model, sd.get_sde("edm"), EDMLoss(), images, batch_size=8, total_steps=2, log_every=1,
                 sample_every=2, n_samples=5, sample_steps=2, log_dir=tmp_path / "tb", progress=False)
    tr.train()
    tr.close()
    assert "samples" in _event_tags(tmp_path / "tb")["images"]
    grid = image_grid(images[:5])
    assert grid.shape == (1, 2 * 9 + 1, 3 * 9 + 1) and 0 <= grid.min() and grid.max() <= 1
    assert torch.equal(grid[:, 1:9, 1:9], (images[0] + 1) / 2)


def test_training_reduces_the_loss():
    tr = make_trainer(total_steps=150, batch_size=128, data=ring_data(2048))
    x0 = ring_data(1024)

    def held_out() -> float:
        with torch.no_grad():
            return float(tr.loss(tr.model.score_model(tr.sde), x0, generator=torch.Generator().manual_seed(0)).mean())

    before = held_out()
    tr.train()
    assert held_out() < 0.7 * before


# ---- bad input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [({"batch_size": 0}, "batch_size"), ({"batch_size": 1000}, "exceeds"),
                                       ({"total_steps": 0}, "total_steps"), ({"lr": 0.0}, "lr"),
                                       ({"config": {"f": print}}, "weights_only")])
def test_bad_arguments(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make_trainer(**kw)


def test_missing_fashion_mnist_names_the_install_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=FASHION_MNIST_INSTALL):
        load_data({"name": "fashion_mnist", "root": str(tmp_path)}, 0)
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        build_trainer(compose_cfg([f"out_dir={tmp_path}", "data=fashion_mnist", "model=tiny_unet",
                                   f"data.root={tmp_path}"]))


def test_toys():
    for name in TOYS:
        x = make_toy(name, 500, torch.Generator().manual_seed(1))
        assert x.shape == (500, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
        assert 0.5 < float(x.std(0).min()) and float(x.abs().max()) < 4, name
        assert torch.equal(x, make_toy(name, 500, torch.Generator().manual_seed(1)))
    with pytest.raises(KeyError, match="unknown toy"):
        make_toy("spiral", 10)


# ---- the scoresde-train app ---------------------------------------------------------------------------------
def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="train", overrides=overrides)


SMALL = ["progress=false", "batch_size=64", "model.net.hidden=32", "data.n=512", "ckpt_every=10", "log_every=5",
         "sample.every=10", "sample.n=64", "sample.steps=3"]


def test_cli_trains_and_resumes(tmp_path):
    out = train(compose_cfg(SMALL + [f"out_dir={tmp_path}", "steps=20"]))
    assert out["step"] == 20 and out["resumed_from"] is None
    assert latest_checkpoint(tmp_path / "checkpoints").name == "ckpt_00000020.pt"
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    out = train(compose_cfg(SMALL + [f"out_dir={tmp_path}", "steps=30", "resume=true"]))
    assert out["step"] == 30 and out["resumed_from"].endswith("ckpt_00000020.pt")
    state = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    assert state["step"] == 30 and state["config"]["steps"] == 30 and state["config"]["data"]["name"] == "ring"


def test_cli_entry_point_resumes_in_hydra_run_dir(tmp_path):
    run = tmp_path / "run"  # a first run whose out_dir has the layout of a Hydra run dir, then the real app
    train(compose_cfg(SMALL + [f"out_dir={run}", "steps=4"]))
    cmd = [sys.executable, "-m", "scoresde.cli.train", *SMALL, "steps=6", f"hydra.run.dir={run}", "resume=true"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resumed from" in proc.stdout and "ckpt_00000004.pt" in proc.stdout
    assert (run / "checkpoints" / "ckpt_00000006.pt").is_file() and (run / ".hydra" / "config.yaml").is_file()
