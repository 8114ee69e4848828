"""Datasets as float tensors in [-1, 1] of shape (N, 1, H, W), with integer labels; 2-D toys as (N, 2)."""
from scoresde.data.datasets import (
    FASHION_MNIST_INSTALL,
    FASHION_MNIST_ROOT,
    digits_split_indices,
    load_digits,
    load_fashion_mnist,
    read_idx,
)
from scoresde.data.toys import TOYS, make_toy

__all__ = ["FASHION_MNIST_INSTALL", "FASHION_MNIST_ROOT", "digits_split_indices", "load_digits", "load_fashion_mnist",
           "read_idx", "TOYS", "make_toy"]
