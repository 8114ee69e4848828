"""Shared helpers for the solver tests."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import scoresde as sd


def solver_names() -> list[str]:
    return sorted(sd.SOLVERS)


def configured_grid(name: str) -> str:
    """The grid a solver's config in configs/solver/ runs it on (its registry entry's own grid; uniform if none)."""
    for path in (Path(__file__).resolve().parents[1] / "configs" / "solver").glob("*.yaml"):
        for entry in yaml.safe_load(path.read_text()).values():
            if isinstance(entry, dict) and entry.get("name") == name:
                return entry.get("grid", "uniform")
    return "uniform"


def deterministic_names() -> list[str]:
    return [n for n in solver_names() if not sd.get_solver(n).stochastic]


@pytest.fixture
def ring():
    return sd.get_testbed("ring")


def gen(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def single_thread():
    """Small 2-D batches run fastest on one thread (and many times slower on a busy machine with several);
    use with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
