"""Guidance as model wrappers that compose with every solver: classifier-free guidance (Ho & Salimans 2022),
classifier guidance with a noise-aware classifier (Dhariwal & Nichol 2021), and the branch combinator
behind them (also used by visual anagrams and hybrid images in :mod:`scoresde.editing`)."""
from scoresde.guidance.cfg import cfg_branches, classifier_free_guidance
from scoresde.guidance.classifier import (
    ClassifierNet,
    NoiseConditionalClassifier,
    classifier_guidance,
    noisy_batch,
    train_classifier,
)
from scoresde.guidance.composite import IDENTITY, Branch, GuidedModel, View, as_labels, check_scale, compose

__all__ = ["Branch", "ClassifierNet", "GuidedModel", "IDENTITY", "NoiseConditionalClassifier", "View", "as_labels",
           "cfg_branches", "check_scale", "classifier_free_guidance", "classifier_guidance", "compose",
           "noisy_batch", "train_classifier"]
