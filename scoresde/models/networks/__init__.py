"""Denoising networks. They take a noise input ``c_noise`` of shape (B,) chosen by the preconditioning
layer (scoresde.models.preconditioning) and know nothing of SDEs (DESIGN.md boundary 3)."""
from scoresde.models.networks.embeddings import ConditionEmbedding, FourierEmbedding, SinusoidalEmbedding
from scoresde.models.networks.mlp import MLP
from scoresde.models.networks.unet import UNet, cifar10_unet, tiny_unet

__all__ = ["MLP", "UNet", "cifar10_unet", "tiny_unet", "ConditionEmbedding", "FourierEmbedding",
           "SinusoidalEmbedding"]
