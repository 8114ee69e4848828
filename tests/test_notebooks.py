"""The student notebooks (notebooks/*.ipynb) run top to bottom, are stored without outputs, use only the public
API, match their percent-format sources in notebooks/src/ (``python notebooks/build_notebooks.py``), and end with
a "Checks" cell of plain ``assert`` statements on their own claims (a fitted slope against the declared order, a
likelihood against its closed form, ...), so a notebook that runs but shows something wrong fails
``test_notebook_runs``."""
from __future__ import annotations

import ast
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


def _builder():
    """notebooks/build_notebooks.py as a module."""
    sys.path.insert(0, str(ROOT / "notebooks"))
    try:
        import build_notebooks
    finally:
        sys.path.pop(0)
    return build_notebooks


def test_notebooks_exist():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


def test_notebooks_match_their_sources():
    build_notebooks = _builder()
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


MIN_CHECKS = 5  # asserts in a notebook's final cell


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_ends_with_checks_of_its_claims(path):
    nb = nbformat.read(path, as_version=4)
    last = nb.cells[-1]
    assert last.cell_type == "code", f"{path.name}: the last cell should be the code cell of checks"
    assert nb.cells[-2].cell_type == "markdown" and "Checks" in nb.cells[-2].source, \
        f"{path.name}: the checks should follow a markdown cell headed 'Checks'"
    asserts = [node for node in ast.walk(ast.parse(last.source)) if isinstance(node, ast.Assert)]
    assert len(asserts) >= MIN_CHECKS, f"{path.name}: only {len(asserts)} assert statements in the checks cell"
    trivial = [ast.unparse(a.test) for a in asserts if isinstance(a.test, ast.Constant)]
    assert not trivial, f"{path.name}: asserts that cannot fail: {trivial}"


def _execute(nb, tmp_path, monkeypatch) -> None:
    """Run ``nb`` in place on a ``python3`` kernel of this interpreter; a failing cell raises CellExecutionError."""
    # the "python3" kernelspec runs `python` from PATH: make that this interpreter (the one with scoresde)
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the kernel inherits it: small batches run best on one thread
    try:
        client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    _execute(nb, tmp_path, monkeypatch)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}"
    assert nb.cells[-1].execution_count is not None, f"{path.name}: the checks cell did not run"


@pytest.mark.slow
def test_a_false_claim_fails_the_run(tmp_path, monkeypatch):
    """The mechanism the checks rely on: a notebook that runs but whose final assert is false fails."""
    build_notebooks = _builder()
    nb = build_notebooks.notebook_of("# %%\nslope = 1.4\n# %% [markdown]\n# ## Checks\n# %%\n"
                                     "assert abs(slope - 2) < 0.25, f'fitted slope {slope}'\n")
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="fitted slope 1.4"):
        _execute(nb, tmp_path, monkeypatch)
