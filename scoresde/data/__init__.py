"""Datasets as float tensors in [-1, 1] of shape (N, C, H, W), with integer labels; 2-D toys as (N, 2)."""
from scoresde.data.augment import flip_mask, random_hflip
from scoresde.data.datasets import (
    FASHION_MNIST_INSTALL,
    FASHION_MNIST_ROOT,
    IMAGE_DATASETS,
    TORCHVISION_ROOT,
    ImageDataset,
    digits_split_indices,
    load_cifar10,
    load_digits,
    load_fashion_mnist,
    load_image_dataset,
    load_mnist,
    read_idx,
)
from scoresde.data.toys import TOYS, make_toy

__all__ = ["FASHION_MNIST_INSTALL", "FASHION_MNIST_ROOT", "IMAGE_DATASETS", "TORCHVISION_ROOT", "ImageDataset",
           "digits_split_indices", "load_cifar10", "load_digits", "load_fashion_mnist", "load_image_dataset",
           "load_mnist", "read_idx", "TOYS", "make_toy", "flip_mask", "random_hflip"]
