"""Checkpoint safety: pickles that would run code are refused before anything runs, truncated files are named
as such, the latest-checkpoint lookup skips broken files (warning, then the newest good one), a crash while
writing leaves the previous latest intact, and a training process killed with SIGKILL resumes to the exact
weights of an uninterrupted run."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scoresde.training.checkpoint import (
    CHECKPOINT_PATTERN,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


class WritesMarker:
    """Unpickling this runs ``os.system`` (the classic malicious-checkpoint payload)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def good(directory: Path, step: int) -> Path:
    return save_checkpoint({"w": torch.full((64,), float(step)), "step": step}, checkpoint_path(directory, step))


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_a_checkpoint_that_runs_code_is_refused_and_nothing_runs(tmp_path, how):
    marker, path = tmp_path / "PWNED", checkpoint_path(tmp_path, 7)
    if how == "torch.save":
        torch.save({"model": WritesMarker(marker)}, path)
    else:
        import pickle
        path.write_bytes(pickle.dumps(WritesMarker(marker)))
    with pytest.warns(UserWarning) if how == "pickle.dump" else contextlib.nullcontext():
        with pytest.raises(UnsafeCheckpointError, match="not a weights-only checkpoint") as err:
            load_checkpoint(path)
    assert str(path) in str(err.value)
    assert not marker.exists(), "unpickling ran the payload"


def test_a_truncated_checkpoint_is_named_truncated_or_corrupt(tmp_path):
    path = good(tmp_path, 3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupt") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "ckpt_00000099.pt")


def test_latest_skips_broken_files_with_a_warning(tmp_path):
    first, second = good(tmp_path, 10), good(tmp_path, 20)
    cut = checkpoint_path(tmp_path, 30)
    cut.write_bytes(second.read_bytes()[:100])
    torch.save({"x": WritesMarker(tmp_path / "PWNED")}, checkpoint_path(tmp_path, 40))
    with pytest.warns(UserWarning) as record:
        assert latest_checkpoint(tmp_path) == second
    text = " ".join(str(w.message) for w in record)
    assert "ckpt_00000040.pt" in text and "not a weights-only" in text
    assert "ckpt_00000030.pt" in text and "truncated or corrupt" in text
    assert not (tmp_path / "PWNED").exists()
    assert latest_checkpoint(tmp_path, verify=False) == checkpoint_path(tmp_path, 40)
    second.write_bytes(b"")
    first.write_bytes(b"garbage")
    with pytest.warns(UserWarning):
        assert latest_checkpoint(tmp_path) is None


def test_crash_inside_the_write_keeps_the_previous_latest(tmp_path, monkeypatch):
    before = good(tmp_path, 5)
    real_save = torch.save

    def crash_midway(obj, fh, *args, **kwargs):
        real_save(obj, fh, *args, **kwargs)
        fh.truncate(fh.tell() // 2)  # half written ...
        raise OSError("disk full")   # ... then the write fails, after the temporary file exists

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"w": torch.zeros(64), "step": 6}, checkpoint_path(tmp_path, 6))
    monkeypatch.undo()
    assert [p for _, p in list_checkpoints(tmp_path)] == [before]
    assert sorted(p.name for p in tmp_path.iterdir()) == [before.name]  # the temporary file was removed
    assert latest_checkpoint(tmp_path) == before and load_checkpoint(before)["step"] == 5


# ---- a training process killed with SIGKILL ----------------------------------------------------------------
TRAIN = ["progress=false", "batch_size=64", "model.net.hidden=32", "model.net.depth=2", "data.n=512",
         "log_every=20", "sample.every=0", "ckpt_every=20", "keep_checkpoints=3", "steps=400", "threads=1"]


def train_cmd(run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "scoresde.cli.train", *TRAIN, f"hydra.run.dir={run}", *extra]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def steps_saved(run: Path) -> list[int]:
    return [s for s, _ in list_checkpoints(run / "checkpoints")]


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(train_cmd(killed), cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not any(s >= 100 for s in steps_saved(killed)):
            assert proc.poll() is None, f"training exited early: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint at step >= 100 within 90 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    at_kill = max(steps_saved(killed))
    assert 100 <= at_kill < 400, at_kill
    for run, extra in ((killed, ["resume=true"]), (clean, [])):
        done = subprocess.run(train_cmd(run, *extra), cwd=tmp_path, env=env(), capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        if extra:
            assert f"ckpt_{at_kill:08d}.pt at step {at_kill}" in done.stdout, done.stdout
    a = load_checkpoint(checkpoint_path(killed / "checkpoints", 400))
    b = load_checkpoint(checkpoint_path(clean / "checkpoints", 400))
    assert a["step"] == b["step"] == 400
    assert a["model"].keys() == b["model"].keys() and a["ema"]["shadow"].keys() == b["ema"]["shadow"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]["shadow"]:
        assert torch.equal(a["ema"]["shadow"][k], b["ema"]["shadow"][k]), k
    assert not any(CHECKPOINT_PATTERN.match(p.name) and p.stat().st_size == 0
                   for p in (killed / "checkpoints").iterdir())
