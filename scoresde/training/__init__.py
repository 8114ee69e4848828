"""Training: losses (each a small callable on the ScoreModel interface), and later the trainer and checkpoints."""
from scoresde.training.losses import LOSSES, WEIGHTINGS, DDPMLoss, DSMLoss, EDMLoss, get_loss

__all__ = ["DSMLoss", "DDPMLoss", "EDMLoss", "LOSSES", "WEIGHTINGS", "get_loss"]
