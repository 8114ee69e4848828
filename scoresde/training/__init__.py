"""Training: losses (each a small callable on the ScoreModel interface), the trainer and checkpoints."""
from scoresde.training.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from scoresde.training.losses import LOSSES, WEIGHTINGS, DDPMLoss, DSMLoss, EDMLoss, FlowMatchingLoss, get_loss
from scoresde.training.trainer import Trainer, image_grid

__all__ = ["DSMLoss", "DDPMLoss", "EDMLoss", "FlowMatchingLoss", "LOSSES", "WEIGHTINGS", "get_loss", "Trainer",
           "image_grid", "checkpoint_path", "latest_checkpoint", "list_checkpoints", "load_checkpoint",
           "save_checkpoint"]
