"""Shared helpers for the solver tests."""
from __future__ import annotations

import pytest
import torch

import scoresde as sd


def solver_names() -> list[str]:
    return sorted(sd.SOLVERS)


def deterministic_names() -> list[str]:
    return [n for n in solver_names() if not sd.get_solver(n).stochastic]


@pytest.fixture
def ring():
    return sd.get_testbed("ring")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
