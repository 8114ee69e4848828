"""The student notebooks (notebooks/*.ipynb) run top to bottom, are stored without outputs, use only the public
API, and match their percent-format sources in notebooks/src/ (``python notebooks/build_notebooks.py``)."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 600  # seconds per cell: generous, the machine may be shared

# `from scoresde.x import _y`, `from scoresde._x import ...`, `import scoresde._x`, `scoresde.x._y` in code
PRIVATE = [re.compile(r"from\s+scoresde[\w.]*\s+import\s+\(?[^)\n]*\b_\w+"),
           re.compile(r"\bscoresde(\.\w+)*\._\w+"),
           re.compile(r"\bsd(\.\w+)*\._\w+")]


def _ids(paths):
    return [p.stem for p in paths]


def _code(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_notebooks_exist():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


def test_notebooks_match_their_sources():
    sys.path.insert(0, str(ROOT / "notebooks"))
    try:
        import build_notebooks
    finally:
        sys.path.pop(0)
    for src in sorted((ROOT / "notebooks" / "src").glob("[0-9][0-9]_*.py")):
        target = ROOT / "notebooks" / f"{src.stem}.ipynb"
        assert target.exists(), f"{target.name} is missing: run python notebooks/build_notebooks.py"
        expected = build_notebooks.text_of(build_notebooks.notebook_of(src.read_text()))
        assert target.read_text() == expected, f"{target.name} differs from its source: run build_notebooks.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_stripped_and_public(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: cell {i} has stored outputs (strip them before committing)"
            assert cell.execution_count is None, f"{path.name}: cell {i} has an execution count"
    for source in _code(nb):
        for pattern in PRIVATE:
            match = pattern.search(source)
            assert match is None, f"{path.name} uses a private name: {match.group(0)!r}"
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert markdown and "What you will learn" in markdown[0], f"{path.name}: no opening that says what it teaches"
    assert any("Summary" in m for m in markdown), f"{path.name}: no closing summary"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path, tmp_path, monkeypatch):
    # the "python3" kernelspec runs `python` from PATH: make that this interpreter (the one with scoresde)
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    nb = nbformat.read(path, as_version=4)
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the kernel inherits it: small batches run best on one thread
    try:
        client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}"
