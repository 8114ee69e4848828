"""Evaluation: likelihoods (probability-flow ODE, DDPM bound) and sample-quality metrics (one module,
:mod:`scoresde.evaluation.metrics`: sample distances, paired error, fitted convergence order, coverage)."""
from scoresde.evaluation.ddpm_bound import DDPMBoundResult, ddpm_bound, discretized_gaussian_log_likelihood
from scoresde.evaluation.features import feature_extractor, load_classifier
from scoresde.evaluation.likelihood import Dequantization, LikelihoodResult, bits_per_dim, ode_log_likelihood
from scoresde.evaluation.metrics import (
    KernelDistance,
    ModeReport,
    PrecisionRecall,
    ReplicationReport,
    fit_order,
    frechet_distance,
    frechet_distance_from_features,
    kernel_distance,
    mmd,
    mode_coverage,
    precision_recall,
    replication_score,
    rmse,
    sliced_wasserstein,
)

__all__ = ["rmse", "sliced_wasserstein", "fit_order", "ode_log_likelihood", "LikelihoodResult", "bits_per_dim",
           "Dequantization", "ddpm_bound", "DDPMBoundResult", "discretized_gaussian_log_likelihood", "mmd",
           "mode_coverage", "ModeReport", "frechet_distance", "frechet_distance_from_features", "kernel_distance",
           "KernelDistance", "precision_recall", "PrecisionRecall", "replication_score", "ReplicationReport",
           "feature_extractor", "load_classifier"]
