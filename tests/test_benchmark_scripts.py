"""Every script in benchmarks/ runs on a tiny setting, prints its table and exits 0."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scoresde.data import FASHION_MNIST_INSTALL, FASHION_MNIST_ROOT
from scoresde.models.pretrained import PRETRAINED, WEIGHTS_DIR

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "solver_overhead.py": ["--steps", "3", "--batch", "2", "--repeats", "1", "--warmup", "0", "--threads", "1",
                           "--methods", "ddim", "heun"],
    "train_throughput.py": ["--steps", "1", "--batch", "2", "--warmup", "1", "--threads", "1", "--device", "cpu"],
}
GALLERY = ["--only", "forward", "--threads", "1"]  # make_gallery.py: the cheapest image, needs the shipped model


def test_every_script_has_a_tiny_setting():
    assert sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")) == sorted([*TINY, "make_gallery.py"])


@pytest.mark.skipif(not (WEIGHTS_DIR / PRETRAINED["fashion_mnist"]).is_file(), reason="shipped weights not built")
@pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).is_dir(), reason=f"needs Fashion-MNIST: {FASHION_MNIST_INSTALL}")
def test_gallery_script_makes_an_image(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_gallery.py"), *GALLERY, "--out",
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "gallery_forward.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("script", sorted(TINY))
def test_script_prints_its_table_and_exits_0(script):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *TINY[script]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert len(table) >= 3, proc.stdout  # header, separator, at least one row
    assert "Machine:" in proc.stdout
