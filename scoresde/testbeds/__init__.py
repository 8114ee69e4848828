"""Exact-score testbeds: no training needed."""
from scoresde.testbeds.labelled import LabelledMixture, labelled_ring
from scoresde.testbeds.mixture import GaussianMixture
from scoresde.testbeds.presets import TESTBEDS, dataset, digits, gaussian, get_testbed, grid, high_dim, ring

__all__ = ["GaussianMixture", "LabelledMixture", "labelled_ring", "TESTBEDS",
           "dataset", "digits", "gaussian", "get_testbed", "grid", "high_dim", "ring"]
