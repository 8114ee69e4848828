"""The data ↔ testbeds dependency runs one way: testbeds (exact-score mixtures) build on data (sample-only data
sets: the digits, the ring's geometry); nothing in ``scoresde.data`` imports ``scoresde.testbeds``, directly, lazily
inside a function, or through another subpackage (issue 13.5)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import torch

import scoresde as sd
from scoresde.data import TOYS, make_toy

PACKAGE = Path(sd.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every ``scoresde`` module a file imports, at module level or inside a function, relative imports resolved
    (``from a import b`` counts as a and, where b is a module, a.b)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m.startswith("scoresde.")}


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports (only names that are modules of the package)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imported_modules(path) if m in files} for name, path in files.items()}


def reachable(graph: dict[str, set[str]], start: set[str]) -> set[str]:
    """Modules reachable from ``start``, counting that importing a.b.c runs a.b's ``__init__`` (but not the root
    package's, which imports the public API of everything)."""
    seen, todo = set(), list(start)
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        parents = [".".join(mod.split(".")[:i]) for i in range(2, mod.count(".") + 1)]
        todo.extend(graph.get(mod, set()) | {p for p in parents if p in graph})
    return seen


def test_no_data_module_reaches_testbeds():
    graph = import_graph()
    data = {m for m in graph if m == "scoresde.data" or m.startswith("scoresde.data.")}
    assert "scoresde.data.toys" in data and "scoresde.testbeds.presets" in graph  # the scan sees the tree
    assert "scoresde.data.datasets" in graph["scoresde.testbeds.presets"]  # the allowed direction is seen
    bad = sorted(m for m in reachable(graph, data) if m.startswith("scoresde.testbeds"))
    assert not bad, f"scoresde.data imports {bad} (directly or through another module): the circle is back"


def test_the_toys_run_with_testbeds_blocked():
    """Every toy draws its samples with scoresde.testbeds made unimportable (a lazy import would fail)."""
    code = ("import sys, torch\n"
            "import scoresde.data as data\n"
            "for name in [m for m in sys.modules if m.startswith('scoresde.testbeds')]:\n"
            "    sys.modules[name] = None\n"
            "for toy in data.TOYS:\n"
            "    assert data.make_toy(toy, 5, torch.Generator().manual_seed(0)).shape == (5, 2), toy\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_ring_toy_is_the_ring_testbed_bit_for_bit():
    assert "ring" in TOYS
    for seed in (0, 7):
        toy = make_toy("ring", 3000, torch.Generator().manual_seed(seed), dtype=torch.float64)
        exact = sd.get_testbed("ring").sample(3000, torch.Generator().manual_seed(seed), dtype=torch.float64)
        assert torch.equal(toy, exact)
