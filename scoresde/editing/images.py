"""Image files in and out: PNG/JPEG → a (1, C, H, W) tensor in [-1, 1] of the model's shape, and back."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def load_image(path: str | Path, shape: tuple[int, int, int], invert: bool = False) -> Tensor:
    """Read an image file, convert it to ``shape = (C, H, W)`` (grayscale for C = 1, RGB for C = 3), resize it
    (bilinear, aspect ratio not kept) and scale it to [-1, 1]; ``invert`` swaps black and white (Fashion-MNIST
    shows light garments on black). Returns (1, C, H, W) float32. An unreadable file raises ValueError."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise ValueError(f"shape must be (C, H, W) with C = 1 or 3, got {tuple(shape)}")
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    try:
        with Image.open(path) as img:
            img = img.convert("L" if shape[0] == 1 else "RGB").resize((shape[2], shape[1]), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read {path} as an image: {err}") from None
    x = torch.from_numpy(arr).reshape(shape[1], shape[2], -1).permute(2, 0, 1)
    x = x * 2 - 1
    return (-x if invert else x)[None].contiguous()


def to_uint8(x: Tensor) -> np.ndarray:
    """A (C, H, W) image in [-1, 1] as an (H, W) or (H, W, 3) uint8 array."""
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return arr[:, :, 0] if arr.shape[2] == 1 else arr


def save_image(x: Tensor, path: str | Path, scale: int = 1) -> Path:
    """Write one image (C, H, W) or (1, C, H, W) in [-1, 1] as a PNG, upscaled ``scale``× (nearest)."""
    from PIL import Image

    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3:
        raise ValueError(f"save_image takes one image (C, H, W), got shape {tuple(x.shape)}")
    img = Image.fromarray(to_uint8(x))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


__all__ = ["load_image", "save_image", "to_uint8"]
