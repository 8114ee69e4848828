"""Model interface: parametrizations, the score-model wrapper and NFE counting."""
from scoresde.models.parametrization import PREDICTIONS, convert, to_x0_eps
from scoresde.models.score_model import CountingModel, ScoreModel

__all__ = ["PREDICTIONS", "convert", "to_x0_eps", "CountingModel", "ScoreModel"]
