"""Exact-score testbeds: no training needed."""
from scoresde.testbeds.mixture import GaussianMixture
from scoresde.testbeds.presets import TESTBEDS, dataset, digits, gaussian, get_testbed, grid, high_dim, ring

__all__ = ["GaussianMixture", "TESTBEDS", "dataset", "digits", "gaussian", "get_testbed", "grid", "high_dim", "ring"]
