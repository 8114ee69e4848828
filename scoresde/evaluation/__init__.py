"""Evaluation: sample-quality metrics (sliced Wasserstein distance, RMSE to a reference solution)."""
from scoresde.evaluation.metrics import rmse, sliced_wasserstein

__all__ = ["rmse", "sliced_wasserstein"]
