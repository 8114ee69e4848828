"""Evaluation: likelihoods (probability-flow ODE, DDPM bound) and sample-quality metrics."""
from scoresde.evaluation.ddpm_bound import DDPMBoundResult, ddpm_bound, discretized_gaussian_log_likelihood
from scoresde.evaluation.likelihood import Dequantization, LikelihoodResult, bits_per_dim, ode_log_likelihood
from scoresde.evaluation.metrics import rmse, sliced_wasserstein

__all__ = ["rmse", "sliced_wasserstein", "ode_log_likelihood", "LikelihoodResult", "bits_per_dim", "Dequantization",
           "ddpm_bound", "DDPMBoundResult", "discretized_gaussian_log_likelihood"]
