"""Linear image filters: a separable Gaussian blur (low-pass) and its complement (high-pass), on (B, C, H, W)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_kernel(sigma_px: float, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """A normalized 1-D Gaussian of std ``sigma_px`` pixels, radius ⌈3σ⌉."""
    if not math.isfinite(sigma_px) or sigma_px <= 0:
        raise ValueError(f"blur sigma must be a positive number of pixels, got {sigma_px}")
    radius = max(1, math.ceil(3 * sigma_px))
    u = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (u / sigma_px) ** 2)
    return k / k.sum()


def gaussian_blur(x: Tensor, sigma_px: float) -> Tensor:
    """Blur each channel of (B, C, H, W) with a Gaussian of ``sigma_px`` pixels (reflect padding at the edges,
    replicate where the image is smaller than the kernel); linear, so low + high = identity exactly."""
    if x.ndim != 4:
        raise ValueError(f"gaussian_blur takes (B, C, H, W), got shape {tuple(x.shape)}")
    k = gaussian_kernel(sigma_px, x.dtype, x.device)
    r, c = len(k) // 2, x.shape[1]
    mode = "reflect" if r < min(x.shape[-2:]) else "replicate"
    h = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(h, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def low_pass(sigma_px: float):
    """``x ↦ blur(x)``."""
    return lambda x: gaussian_blur(x, sigma_px)


def high_pass(sigma_px: float):
    """``x ↦ x − blur(x)``."""
    return lambda x: x - gaussian_blur(x, sigma_px)


__all__ = ["gaussian_blur", "gaussian_kernel", "high_pass", "low_pass"]
