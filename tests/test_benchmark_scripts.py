"""Every script in benchmarks/ runs on a tiny setting, prints its table and exits 0."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scoresde.data import FASHION_MNIST_INSTALL, FASHION_MNIST_ROOT
from scoresde.models.pretrained import PRETRAINED, WEIGHTS_DIR

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "adaptive_ode.py": ["--limit", "50", "--batch", "4", "--tols", "1e-3", "--repeats", "1", "--sdes", "vp",
                        "--threads", "1"],
    "solver_overhead.py": ["--steps", "3", "--batch", "2", "--repeats", "1", "--warmup", "0", "--threads", "1",
                           "--methods", "ddim", "heun", "--processes", "2"],  # pools two fresh processes
    "train_throughput.py": ["--steps", "1", "--repeats", "2", "--batch", "2", "--warmup", "1", "--threads", "1",
                           "--device", "cpu"],
}
GALLERY = ["--only", "forward", "--threads", "1"]  # make_gallery.py: the cheapest image, needs the shipped model
QUALITY = ["--solver", "euler", "--steps", "2", "--n-per-class", "2", "--n-test", "20", "--batch", "20",
           "--threads", "1"]  # model_quality.py: needs the shipped model and Fashion-MNIST
NEEDS_MODEL = [pytest.mark.skipif(not (WEIGHTS_DIR / PRETRAINED["fashion_mnist"]).is_file(),
                                  reason="shipped weights not built"),
               pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).is_dir(),
                                  reason=f"needs Fashion-MNIST: {FASHION_MNIST_INSTALL}")]


def test_every_script_has_a_tiny_setting():
    assert sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")) == sorted([*TINY, "make_gallery.py",
                                                                                 "model_quality.py",
                                                                                 "train_diffusers_unet.py",
                                                                                 "few_step_frontier.py",
                                                                                 "grid_search_draws.py"])
    # train_diffusers_unet.py: its tiny setting is tests/test_train_diffusers_unet.py


@NEEDS_MODEL[0]
@NEEDS_MODEL[1]
def test_model_quality_script_prints_its_table(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "model_quality.py"), *QUALITY, "--out",
                           str(tmp_path / "q.json")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len([line for line in proc.stdout.splitlines() if line.startswith("|")]) >= 3, proc.stdout


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


def _load_overhead_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("solver_overhead", ROOT / "benchmarks" / "solver_overhead.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_overhead_runs_are_agreed_on_and_a_noisy_table_is_not_written(tmp_path, capsys):
    """Two separate runs → one agreed table; ``--write`` replaces the marked table only when every quoted
    figure's IQR/median is under ``--max-spread``, and otherwise refuses (exit 3) and leaves the file alone."""
    script = _load_overhead_script()
    runs = []
    for i in range(2):
        runs.append(tmp_path / f"run{i}.json")
        assert script.main(["--steps", "2", "--batch", "2", "--repeats", "5", "--warmup", "1", "--methods", "ddim",
                            "--no-diffusers", "--processes", "1", "--out", str(runs[-1])]) == 0
    out = capsys.readouterr().out
    assert "load average (1/5/15 min) before" in out and "flush-denormal" in out
    readme = tmp_path / "README.md"
    original = "# x\n<!-- solver_overhead: begin -->\nold table\n<!-- solver_overhead: end -->\nafter\n"
    readme.write_text(original)
    agree = ["--agree", *map(str, runs), "--write", str(readme)]
    assert script.main([*agree, "--max-spread", "0"]) == 3  # every real timing has some spread
    assert readme.read_text() == original
    assert "refusing to write" in capsys.readouterr().err
    assert script.main([*agree, "--max-spread", "1e9"]) == 0
    text = readme.read_text()
    assert "old table" not in text and "2 separate run(s)" in text and text.endswith("end -->\nafter\n")
    assert "| ddim | 2/n/a |" in text
    torch.set_flush_denormal(False)  # main() pinned it for this process


def test_few_step_frontier_prints_its_tables(tmp_path):
    """One problem, one budget, two grids: the RMSE matrix, the summary against the targets, the bench.json kept."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "few_step_frontier.py"), "--problems", "ring",
                           "--sdes", "edm", "--budgets", "6", "--n-samples", "16", "--solvers", "dpmpp_3m",
                           "--grids", "karras", "stop_early", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| dpmpp_3m@karras |" in proc.stdout and "| dpmpp_3m@stop_early |" in proc.stdout
    assert "| ratio (≤ 0.7) |" in proc.stdout and "| ratio (≤ 1.0) |" in proc.stdout and "# targets met:" in proc.stdout
    assert (tmp_path / "ring_edm" / "bench.json").is_file() and (tmp_path / "summary.json").is_file()


def test_grid_search_draws_compares_with_an_earlier_search(tmp_path):
    """One problem, one solver, one draw, a tiny budget, side by side with the search at the commit before the
    memoized one: both rows, the summary and the JSON."""
    if subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", "9343310"], capture_output=True).returncode:
        pytest.skip("not a git checkout with the history of grid_search.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "draws.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "grid_search_draws.py"), "--problems", "ring:edm",
                           "--solvers", "dpmpp_2m", "--nfe", "5", "--calib-seeds", "10000", "--calib-batch", "32",
                           "--n-heldout", "32", "--budget", "40", "--previous", "9343310", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())
    assert row["current"]["search_nfe"] <= 40 * 5 and row["previous"]["search_nfe"] <= 40 * 5
    assert "best solver per problem x NFE x draw" in proc.stdout and "| ring/edm | 5 | 10000 |" in proc.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "grid_search_draws.py"), "--problems", "moon:vp"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown testbed 'moon'" in bad.stderr
