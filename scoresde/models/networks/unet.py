"""A DDPM++/NCSN++-style U-Net (Song et al. 2021, "Score-Based Generative Modeling through SDEs", app. H;
Ho et al. 2020; layout as in Karras et al. 2022's ``SongUNet``).

Residual blocks: GroupNorm → SiLU → (resample) → conv3×3 → + noise/class embedding → GroupNorm → SiLU →
dropout → conv3×3, skip connection (1×1 conv when channels change), sum scaled by ``skip_scale = 1/√2``.
Down/up sampling happens inside residual blocks (BigGAN style: 2×2 average pooling / nearest upsampling).
Self-attention blocks follow the residual blocks at the resolutions in ``attn_resolutions``.

Sizes (counted in tests/test_networks.py):
* tiny test config :func:`tiny_unet` (``model_channels=8, channel_mult=(1, 2), num_res_blocks=1, emb_mult=2``,
  attention at the lower resolution): 45,785 parameters for 1 channel.
* CIFAR-10 config :func:`cifar10_unet` (DDPM++ of Song et al. 2021 / EDM: 128 channels, mult (2, 2, 2),
  4 blocks per resolution, attention at 16×16): 56,524,291 parameters (EDM's SongUNet: 55.7M).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scoresde.models.networks.embeddings import ConditionEmbedding
from scoresde.utils import append_dims


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(32, ch // 4) or 1, num_channels=ch, eps=1e-6)


def _init(layer: nn.Conv2d | nn.Linear, scale: float = 1.0) -> nn.Module:
    """Xavier-uniform weights times ``scale``, zero bias (DDPM++ ``default_init`` / EDM ``init_zero``)."""
    nn.init.xavier_uniform_(layer.weight, gain=scale)
    nn.init.zeros_(layer.bias)
    return layer


class ResBlock(nn.Module):
    """BigGAN-style residual block with the embedding added after the first conv. Input (B, C_in, H, W)
    and emb (B, E); output (B, C_out, H', W') with H' = H/2 (down), 2H (up) or H."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0, up: bool = False,
                 down: bool = False, skip_scale: float = 1 / math.sqrt(2), init_zero: float = 1e-5):
        super().__init__()
        self.up, self.down, self.skip_scale = up, down, skip_scale
        self.norm0, self.conv0 = _norm(in_ch), _init(nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb = _init(nn.Linear(emb_dim, out_ch))
        self.norm1, self.dropout = _norm(out_ch), nn.Dropout(dropout)
        self.conv1 = _init(nn.Conv2d(out_ch, out_ch, 3, padding=1), init_zero)
        self.skip = _init(nn.Conv2d(in_ch, out_ch, 1)) if in_ch != out_ch else nn.Identity()

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.avg_pool2d(x, 2) if self.down else x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(self._resample(F.silu(self.norm0(x))))
        h = h + append_dims(self.emb(emb), h.ndim)
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        return (h + self.skip(self._resample(x))) * self.skip_scale


class AttnBlock(nn.Module):
    """Multi-head self-attention over the H·W positions, residual, scaled by ``skip_scale``."""

    def __init__(self, ch: int, channels_per_head: int = 64, skip_scale: float = 1 / math.sqrt(2),
                 init_zero: float = 1e-5):
        super().__init__()
        self.heads, self.skip_scale = max(1, ch // channels_per_head), skip_scale
        self.norm, self.qkv = _norm(ch), _init(nn.Conv2d(ch, 3 * ch, 1))
        self.proj = _init(nn.Conv2d(ch, ch, 1), init_zero)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return (x + self.proj(out)) * self.skip_scale


class Block(nn.Module):
    """A residual block optionally followed by self-attention."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, attn: bool, **kw):
        super().__init__()
        attn_kw = {k: v for k, v in kw.items() if k in ("skip_scale", "init_zero")}
        self.res = ResBlock(in_ch, out_ch, emb_dim, **kw)
        self.attn = AttnBlock(out_ch, **attn_kw) if attn else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


class UNet(nn.Module):
    """DDPM++/NCSN++-style U-Net ``F(x, c_noise, class_labels) -> (B, out_channels, H, W)``.

    Args:
        img_resolution: side of the training images; only decides where attention goes (any H, W divisible
            by ``2**(len(channel_mult) - 1)`` runs).
        in_channels, out_channels: image channels in and out (out defaults to in).
        model_channels: base width; level ``i`` has ``model_channels * channel_mult[i]`` channels.
        channel_mult: one multiplier per resolution level; each level after the first halves H and W.
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more, as in DDPM).
        attn_resolutions: resolutions (e.g. 16) after whose residual blocks self-attention runs.
        dropout: dropout in the residual blocks (0.1 for CIFAR-10 in DDPM++).
        embedding: noise embedding, ``"sinusoidal"`` (DDPM++) or ``"fourier"`` (NCSN++).
        num_classes: number of classes for conditioning (label ``num_classes`` is the null class), or None.
        emb_mult: the embedding width is ``model_channels * emb_mult``.
        fourier_scale: std of the random Fourier frequencies (16 in NCSN++).
        skip_scale: scale of every residual sum (1/√2, Song et al. 2021's ``skip_rescale``).
        init_zero: weight scale of the last conv of each block and of the output conv (EDM: 1e-5).

    ``forward(x (B, C, H, W), c_noise (B,), class_labels (B,) ints | None)``: None means the null class.
    """

    def __init__(self, img_resolution: int = 32, in_channels: int = 3, out_channels: int | None = None,
                 model_channels: int = 128, channel_mult: tuple[int, ...] = (2, 2, 2), num_res_blocks: int = 4,
                 attn_resolutions: tuple[int, ...] = (16,), dropout: float = 0.1, embedding: str = "sinusoidal",
                 num_classes: int | None = None, emb_mult: int = 4, fourier_scale: float = 16.0,
                 skip_scale: float = 1 / math.sqrt(2), init_zero: float = 1e-5):
        super().__init__()
        out_channels = out_channels or in_channels
        self.levels, emb_dim = len(channel_mult), model_channels * emb_mult
        self.cond = ConditionEmbedding(model_channels, emb_dim, embedding, num_classes, fourier_scale)
        kw = dict(dropout=dropout, skip_scale=skip_scale, init_zero=init_zero)
        self.conv_in = _init(nn.Conv2d(in_channels, model_channels, 3, padding=1))
        self.enc, skips, cur, res = nn.ModuleList(), [model_channels], model_channels, img_resolution
        for level, mult in enumerate(channel_mult):
            if level > 0:
                res //= 2
                self.enc.append(Block(cur, cur, emb_dim, False, down=True, **kw))
                skips.append(cur)
            for _ in range(num_res_blocks):
                self.enc.append(Block(cur, model_channels * mult, emb_dim, res in attn_resolutions, **kw))
                cur = model_channels * mult
                skips.append(cur)
        self.mid = nn.ModuleList([Block(cur, cur, emb_dim, True, **kw), Block(cur, cur, emb_dim, False, **kw)])
        self.dec, self.dec_skip = nn.ModuleList(), []
        for level in reversed(range(self.levels)):
            if level < self.levels - 1:
                res *= 2
                self.dec.append(Block(cur, cur, emb_dim, False, up=True, **kw))
                self.dec_skip.append(False)
            for _ in range(num_res_blocks + 1):
                out = model_channels * channel_mult[level]
                self.dec.append(Block(cur + skips.pop(), out, emb_dim, res in attn_resolutions, **kw))
                self.dec_skip.append(True)
                cur = out
        self.norm_out = _norm(cur)
        self.conv_out = _init(nn.Conv2d(cur, out_channels, 3, padding=1), init_zero)

    def forward(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | int | None = None) -> Tensor:
        factor = 2 ** (self.levels - 1)
        if x.ndim != 4 or x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"UNet needs (B, C, H, W) with H and W divisible by {factor}, got {tuple(x.shape)}")
        emb = F.silu(self.cond(c_noise, class_labels))
        h = self.conv_in(x)
        hs = [h]
        for block in self.enc:
            h = block(h, emb)
            hs.append(h)
        for block in self.mid:
            h = block(h, emb)
        for block, takes_skip in zip(self.dec, self.dec_skip):
            h = block(torch.cat([h, hs.pop()], dim=1) if takes_skip else h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def cifar10_unet(**overrides) -> UNet:
    """DDPM++ for 32×32×3 (Song et al. 2021 app. H; Karras et al. 2022 config F): 56.5M parameters."""
    cfg = dict(img_resolution=32, in_channels=3, model_channels=128, channel_mult=(2, 2, 2), num_res_blocks=4,
               attn_resolutions=(16,), dropout=0.1, embedding="sinusoidal")
    return UNet(**{**cfg, **overrides})


def tiny_unet(img_resolution: int = 8, in_channels: int = 1, **overrides) -> UNet:
    """A ~46k-parameter U-Net for tests and toy image data (two levels, attention at the bottom)."""
    cfg = dict(img_resolution=img_resolution, in_channels=in_channels, model_channels=8, channel_mult=(1, 2),
               num_res_blocks=1, emb_mult=2, attn_resolutions=(img_resolution // 2,), dropout=0.0)
    return UNet(**{**cfg, **overrides})


__all__ = ["UNet", "ResBlock", "AttnBlock", "cifar10_unet", "tiny_unet"]
