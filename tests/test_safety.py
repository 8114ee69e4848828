"""Safety promises (issue: loading a checkpoint never runs code; checkpoints prove their integrity).

1. A weights-only checkpoint whose stored config names a callable (``os.system``, ``builtins.exec``,
   ``numpy.load`` of an embedded pickle, ``pathlib.Path.write_text``, a nested ``_target_``, an unknown class, an
   SDE argument that is a mapping) is refused by every loader and every app that reads checkpoints, with a message
   naming the key and the value, and the marker file its payload would write never appears. The attacker's file
   carries a *valid* digest: the refusal comes from the allowlist, not from the integrity check.
2. A flipped bit in any tensor of a checkpoint is detected on every load path (explicit load, the latest-checkpoint
   lookup, resume, the loader, the apps).
3. A second trainer on a locked run directory is refused; a stale lock of a dead process is taken over.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from app_errors import assert_one_line_error, run_console
from hydra import compose, initialize_config_dir

from scoresde.cli.common import CONFIG_DIR
from scoresde.cli.train import build_trainer, train
from scoresde.models.loader import export_pretrained, load_model
from scoresde.models.registry import UnsafeConfigError, network_spec
from scoresde.training.checkpoint import (
    IntegrityError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from scoresde.training.run_lock import LOCK_NAME, RunLock, RunLockedError

TRAIN = ["progress=false", "batch_size=32", "model.net.hidden=16", "data.n=256", "ckpt_every=2", "log_every=2",
         "sample.every=0", "steps=2"]


def compose_cfg(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name=name, overrides=overrides)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    train(compose_cfg("train", TRAIN + [f"out_dir={run}"]))
    return run


@pytest.fixture(scope="module")
def good_checkpoint(run) -> Path:
    return list_checkpoints(run / "checkpoints")[-1][1]


class WritesMarker:
    """Unpickling this runs ``os.system``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def payloads(marker: Path, folder: Path) -> dict[str, tuple[str, dict, str]]:
    """name -> (config key, the value stored there, what the refusal names)."""
    embedded = folder / "payload.npy"
    embedded.write_bytes(pickle.dumps(WritesMarker(marker)))
    mlp = {"_target_": "scoresde.models.MLP", "dim": 2, "hidden": 16, "depth": 3, "embedding": "fourier"}
    return {
        "os.system": ("net", {"_target_": "os.system", "command": f"touch {marker}"}, "'os.system'"),
        "builtins.exec": ("net", {"_target_": "builtins.exec", "_args_": [f"open({str(marker)!r}, 'w')"]},
                          "'builtins.exec'"),
        "numpy.load": ("net", {"_target_": "numpy.load", "file": str(embedded), "allow_pickle": True},
                       "'numpy.load'"),
        "Path.write_text": ("net", {"_target_": "pathlib.Path.write_text", "self": str(marker), "data": "x"},
                            "'pathlib.Path.write_text'"),
        "nested _target_": ("net", {**mlp, "dim": {"_target_": "os.system", "command": f"touch {marker}"}},
                            "model.net.dim"),
        "unknown class": ("net", {"class": "EvilNet", "kwargs": {}}, "'EvilNet'"),
        "registry form, nested": ("net", {"class": "MLP", "kwargs": {"dim": {"_target_": "os.system",
                                                                             "command": f"touch {marker}"}}},
                                  "model.net.dim"),
        "sde argument": ("sde", {"name": "vp", "beta_min": {"_target_": "os.system", "command": f"touch {marker}"}},
                         "sde.beta_min"),
    }


PAYLOAD_NAMES = [
    "os.system", "builtins.exec", "numpy.load", "Path.write_text", "nested _target_", "unknown class",
    "registry form, nested", "sde argument"]


def hostile_checkpoint(good: Path, folder: Path, name: str) -> tuple[Path, Path, str]:
    """A copy of ``good`` whose config holds payload ``name``, saved with a valid digest: (file, marker, needle)."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "PWNED"
    key, value, needle = payloads(marker, folder)[name]
    state = load_checkpoint(good)
    if key == "net":
        state["config"]["model"]["net"] = value
    else:
        state["config"]["sde"] = value
    path = save_checkpoint(state, folder / "checkpoints" / "ckpt_00000002.pt")
    return path, marker, needle


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_library_loaders_refuse_every_payload(good_checkpoint, tmp_path, name):
    path, marker, needle = hostile_checkpoint(good_checkpoint, tmp_path, name)
    for load in (lambda: load_model(path), lambda: load_model(tmp_path),  # the file, and the run dir
                 lambda: export_pretrained(path, tmp_path / "out.pt")):
        with pytest.raises(UnsafeConfigError) as err:
            load()
        assert needle in str(err.value)
    assert not marker.exists(), "a payload ran"


APPS = {
    "sample": ("scoresde.cli.sample", ["n=2", "steps=2", "progress=false", "out_dir=out"]),
    "likelihood": ("scoresde.cli.likelihood", ["n=2"]),
    "bench": ("scoresde.cli.bench", ["problem=checkpoint", "out_dir=out"]),
}


@pytest.mark.parametrize("app", list(APPS))
@pytest.mark.parametrize("name", ["os.system", "numpy.load", "nested _target_", "unknown class", "sde argument"])
def test_apps_refuse_payloads_in_one_line(good_checkpoint, tmp_path, capsys, monkeypatch, app, name):
    import importlib
    path, marker, needle = hostile_checkpoint(good_checkpoint, tmp_path, name)
    module, extra = APPS[app]
    main = importlib.import_module(module).main
    for ckpt in (path, tmp_path):
        code, err = run_console(main, [f"ckpt={ckpt}", *extra], capsys, monkeypatch, tmp_path)
        assert_one_line_error(code, err, app, needle)
    assert not marker.exists(), "a payload ran"


def test_the_console_script_refuses_a_payload(good_checkpoint, tmp_path):
    path, marker, needle = hostile_checkpoint(good_checkpoint, tmp_path, "os.system")
    proc = subprocess.run([sys.executable, "-m", "scoresde.cli.sample", f"ckpt={path}", f"out_dir={tmp_path}",
                           "n=2", "steps=2"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("scoresde-sample: error: ") and needle in proc.stderr
    assert "Traceback" not in proc.stderr and not marker.exists()


def test_training_stores_the_registry_form_and_old_hydra_form_still_loads(good_checkpoint, tmp_path):
    state = load_checkpoint(good_checkpoint)
    assert state["config"]["model"]["net"] == {"class": "MLP", "kwargs": {"dim": 2, "hidden": 16, "depth": 3,
                                                                          "embedding": "fourier"}}
    reference = load_model(good_checkpoint)
    state["config"]["model"]["net"] = {"_target_": "scoresde.models.MLP", "_convert_": "all", "dim": 2,
                                       "hidden": 16, "depth": 3, "embedding": "fourier"}  # how older versions wrote it
    old = load_model(save_checkpoint(state, tmp_path / "old.pt"))
    for a, b in zip(reference.model.state_dict().values(), old.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("spec, needle", [
    ({"_target_": "scoresde.models.MLP", "dim": 2, "bogus": 1}, "model.net.bogus: not an argument of network MLP"),
    ({"_target_": "scoresde.models.MLP", "_partial_": True}, "model.net._partial_"),
    ({"class": "MLP", "kwargs": {"dim": 2}, "extra": 1}, "model.net.extra"),
    ({"class": "MLP", "kwargs": {"hidden": [1, {"a": 1}]}}, "model.net.hidden"),
    ("scoresde.models.MLP", "must be a mapping"),
])
def test_network_spec_checks_every_key(spec, needle):
    with pytest.raises(UnsafeConfigError, match=None) as err:
        network_spec(spec)
    assert needle in str(err.value)


# ---- integrity -------------------------------------------------------------------------------------------------


def flip_bit(state: dict, key: str, index: int = 0) -> None:
    """Flip the lowest bit of element ``index`` of tensor ``key`` (a model weight: an exact change)."""
    t = state["model"][key]
    t.view(-1).view(torch.int32)[index] ^= 1


def tampered_copy(good: Path, folder: Path, key: str) -> Path:
    """``good`` with one bit flipped in tensor ``key`` of the weights, written *without* recomputing the digest."""
    state = load_checkpoint(good)
    flip_bit(state, key)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / good.name
    torch.save(state, path)  # the stored digest is the old one
    return path


def test_every_tensor_is_covered_by_the_digest(good_checkpoint, tmp_path):
    keys = list(load_checkpoint(good_checkpoint)["model"])
    for i, key in enumerate(keys):
        path = tampered_copy(good_checkpoint, tmp_path / str(i), key)
        with pytest.raises(IntegrityError, match="fails its integrity check"):
            load_checkpoint(path)


def test_an_edited_config_is_detected(good_checkpoint, tmp_path):
    state = load_checkpoint(good_checkpoint)
    state["config"]["lr"] = 1.0
    torch.save(state, tmp_path / "ckpt_00000002.pt")
    with pytest.raises(IntegrityError, match=str(tmp_path / "ckpt_00000002.pt")):
        load_checkpoint(tmp_path / "ckpt_00000002.pt")


def test_latest_lookup_skips_a_tampered_checkpoint_and_resume_uses_the_previous(run, tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    older = load_checkpoint(list_checkpoints(run / "checkpoints")[-1][1])
    older["step"] = 1
    save_checkpoint(older, folder / "ckpt_00000001.pt")
    key = next(iter(older["model"]))
    tampered_copy(list_checkpoints(run / "checkpoints")[-1][1], folder, key)
    with pytest.warns(UserWarning, match="ckpt_00000002.pt.*fails its integrity check"):
        assert latest_checkpoint(folder) == folder / "ckpt_00000001.pt"
    trainer = build_trainer(compose_cfg("train", TRAIN + [f"out_dir={tmp_path}", "steps=3"]))
    try:
        with pytest.warns(UserWarning, match="fails its integrity check"):
            assert trainer.resume() == folder / "ckpt_00000001.pt"
        assert trainer.step == 1
    finally:
        trainer.close()


@pytest.mark.parametrize("app", list(APPS))
def test_apps_refuse_a_tampered_checkpoint_named_explicitly(good_checkpoint, tmp_path, capsys, monkeypatch, app):
    import importlib
    key = next(iter(load_checkpoint(good_checkpoint)["model"]))
    path = tampered_copy(good_checkpoint, tmp_path / "t", key)
    module, extra = APPS[app]
    code, err = run_console(importlib.import_module(module).main, [f"ckpt={path}", *extra], capsys, monkeypatch,
                            tmp_path)
    assert_one_line_error(code, err, app, str(path), "fails its integrity check")


def test_loader_refuses_a_tampered_pretrained_file(good_checkpoint, tmp_path):
    path = export_pretrained(good_checkpoint, tmp_path / "model.pt")
    state = load_checkpoint(path)
    key = next(iter(state["state_dict"]))
    state["state_dict"][key].view(-1).view(torch.int32)[0] ^= 1
    torch.save(state, path)
    with pytest.raises(IntegrityError, match="model.pt fails its integrity check"):
        load_model(path)


def test_the_shipped_model_carries_a_digest_that_verifies():
    from scoresde.models.loader import PRETRAINED, WEIGHTS_DIR
    for file in PRETRAINED.values():
        state = load_checkpoint(WEIGHTS_DIR / file)
        assert state["integrity"]["algorithm"] == "sha256" and len(state["integrity"]["digest"]) == 64


def test_a_checkpoint_without_digest_loads_with_a_warning(tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="no integrity digest"):
        assert load_checkpoint(tmp_path / "old.pt")["w"].sum() == 3


def test_a_full_disk_leaves_the_previous_checkpoint_and_says_so_in_one_line(tmp_path, monkeypatch):
    path = save_checkpoint({"w": torch.zeros(4)}, tmp_path / "ckpt_00000001.pt")

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(OSError) as err:
        save_checkpoint({"w": torch.ones(4)}, path)
    assert "\n" not in str(err.value) and str(path) in str(err.value) and "intact" in str(err.value)
    monkeypatch.undo()
    assert load_checkpoint(path)["w"].sum() == 0
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


# ---- one trainer per run directory -------------------------------------------------------------------------------


def test_a_second_lock_on_a_run_dir_is_refused_naming_the_other_process(tmp_path):
    with RunLock(tmp_path):
        holder = subprocess.run([sys.executable, "-c", "import sys; from scoresde.training.run_lock import RunLock;"
                                 f"RunLock({str(tmp_path)!r}).acquire()"], capture_output=True, text=True, timeout=60)
        assert holder.returncode != 0 and f"pid {os.getpid()}" in holder.stderr and "RunLockedError" in holder.stderr
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import json
    import socket
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with pytest.warns(UserWarning, match=f"stale lock .* process {dead.pid}"):
        with RunLock(tmp_path) as lock:
            assert lock.held and json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_a_lock_of_another_host_is_respected(tmp_path):
    import json
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(RunLockedError, match="pid 1 on elsewhere"):
        RunLock(tmp_path).acquire()


def test_a_second_trainer_on_a_locked_run_dir_exits_with_one_line(tmp_path, capsys, monkeypatch):
    import json
    import time

    from scoresde.cli.train import main
    holder = subprocess.Popen([sys.executable, "-c", "import time; from scoresde.training.run_lock import RunLock;"
                               f"RunLock({str(tmp_path)!r}).acquire(); time.sleep(120)"])
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / LOCK_NAME).exists() or not (tmp_path / LOCK_NAME).read_text():
            assert time.monotonic() < deadline and holder.poll() is None
            time.sleep(0.05)
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid
        code, err = run_console(main, [f"out_dir={tmp_path}", *TRAIN], capsys, monkeypatch, tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert_one_line_error(code, err, "train", "in use by another scoresde-train", f"pid {holder.pid}")
    assert not (tmp_path / "checkpoints").exists()


def test_npz_payload_file_really_would_run(tmp_path):
    """The numpy.load payload is real: loading the embedded file with allow_pickle runs it (so refusing the
    config is what keeps the marker away)."""
    marker = tmp_path / "PWNED"
    payloads(marker, tmp_path)
    np.load(tmp_path / "payload.npy", allow_pickle=True)
    assert marker.exists()


@pytest.mark.parametrize("name", ["os.system", "nested _target_", "sde argument"])
def test_resume_refuses_a_payload(good_checkpoint, tmp_path, capsys, monkeypatch, name):
    from scoresde.cli.train import main
    _, marker, needle = hostile_checkpoint(good_checkpoint, tmp_path, name)
    code, err = run_console(main, [f"out_dir={tmp_path}", "resume=true", *TRAIN, "steps=4"], capsys, monkeypatch,
                            tmp_path)
    assert_one_line_error(code, err, "train", needle)
    assert not marker.exists() and len(list_checkpoints(tmp_path / "checkpoints")) == 1
