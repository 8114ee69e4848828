"""Model interface (parametrizations, the score-model wrapper, NFE counting), networks, preconditioning, EMA."""
from scoresde.models.ema import EMA
from scoresde.models.networks import MLP, UNet, cifar10_unet, tiny_unet
from scoresde.models.parametrization import PREDICTIONS, convert, to_x0_eps
from scoresde.models.preconditioning import C_NOISE, Preconditioned, edm_coefficients
from scoresde.models.score_model import CountingModel, ScoreModel

__all__ = ["PREDICTIONS", "convert", "to_x0_eps", "CountingModel", "ScoreModel", "EMA", "MLP", "UNet",
           "cifar10_unet", "tiny_unet", "Preconditioned", "edm_coefficients", "C_NOISE"]
