"""Build the student notebooks ``notebooks/NN_name.ipynb`` from their sources ``notebooks/src/NN_name.py``.

The sources are plain Python in the "percent" format (as jupytext and VS Code read it): a line ``# %%``
starts a code cell, ``# %% [markdown]`` starts a markdown cell whose lines are comments (``# text``). The
notebooks are written with nbformat v4, without outputs and with ``execution_count`` null, so they are
ready to commit; ``tests/test_notebooks.py`` executes them and checks that they match their sources.

    python notebooks/build_notebooks.py            # rebuild every notebook
    python notebooks/build_notebooks.py --check    # exit 1 if a notebook differs from its source
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"
KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}


def _cell(kind: str, lines: list[str]) -> nbformat.NotebookNode | None:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    if not lines:
        return None
    if kind == "markdown":
        text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines)
        return nbformat.v4.new_markdown_cell(text)
    return nbformat.v4.new_code_cell("\n".join(lines))


def notebook_of(source: str) -> nbformat.NotebookNode:
    """The notebook (no outputs) of one percent-format source text."""
    cells, kind, lines = [], None, []
    for line in source.splitlines():
        if line.startswith("# %%"):
            if kind is not None and (cell := _cell(kind, lines)) is not None:
                cells.append(cell)
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        elif kind is not None:
            lines.append(line)
    if kind is not None and (cell := _cell(kind, lines)) is not None:
        cells.append(cell)
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": KERNEL, "language_info": {"name": "python"}})
    for i, cell in enumerate(nb.cells):  # stable ids, so a rebuild of an unchanged source is byte-identical
        cell["id"] = f"cell-{i:02d}"
    return nb


def text_of(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the notebooks are up to date")
    args = parser.parse_args(argv)
    stale = []
    for src in sorted(SOURCES.glob("[0-9][0-9]_*.py")):
        target = HERE / f"{src.stem}.ipynb"
        text = text_of(notebook_of(src.read_text()))
        if target.exists() and target.read_text() == text:
            continue
        stale.append(target.name)
        if not args.check:
            target.write_text(text)
            print(f"wrote {target.relative_to(HERE.parent)}")
    if args.check and stale:
        print("out of date (run python notebooks/build_notebooks.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
