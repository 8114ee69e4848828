"""Datasets as float tensors in [-1, 1] of shape (N, 1, H, W), with integer labels."""
from scoresde.data.datasets import (
    FASHION_MNIST_INSTALL,
    FASHION_MNIST_ROOT,
    digits_split_indices,
    load_digits,
    load_fashion_mnist,
    read_idx,
)

__all__ = ["FASHION_MNIST_INSTALL", "FASHION_MNIST_ROOT", "digits_split_indices", "load_digits", "load_fashion_mnist",
           "read_idx"]
