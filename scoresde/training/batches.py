"""Where training batches come from: a tensor reshuffled every epoch, or an iterable of batches.

Tensor data is drawn without replacement from a permutation of the whole data set, redrawn from the data
generator at every epoch (the partial last batch is dropped). Under ``torchrun`` every rank draws the same
permutation (the data generator is seeded alike on every rank) and takes its own contiguous slice of each
*global* batch: the semantics of ``torch.utils.data.DistributedSampler`` with ``set_epoch`` every epoch,
arranged so that N ranks with a global ``batch_size`` see exactly the batches one process sees with the same
``batch_size``. Random horizontal flips (:func:`scoresde.data.augment.random_hflip`) are drawn for the whole
global batch from the same generator, so they also agree with one process, and a resumed run draws the same.

An iterable (e.g. a ``DataLoader``) is re-iterated when exhausted; a resumed run skips the batches already
used in the current pass. Under ``torchrun`` each rank's iterable should yield that rank's shard (a
``DistributedSampler``); when it has one (``iterable.sampler.set_epoch``), it is told the pass number.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from scoresde.data.augment import flip_mask, random_hflip


def check_labels(labels: Tensor, n: int, num_classes: int, device: torch.device) -> Tensor:
    """Labels as int64 (n,) in [0, num_classes) on ``device``; a ValueError names what is wrong."""
    k = num_classes
    if labels.shape != (n,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers of shape ({n},), got {labels.dtype} {tuple(labels.shape)}")
    if bool(((labels < 0) | (labels >= k)).any()):
        raise ValueError(f"labels must lie in [0, {k}) for a model with num_classes={k}, got "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return labels.long().to(device)


class BatchSource:
    """Training batches ``(x (B, ...), labels (B,) or None)`` on ``device``, with a resumable position.

    Args:
        data: a tensor (N, ...) or an iterable of batches (tensors or ``(images, labels)`` tuples).
        labels: class labels (N,) of tensor data (class-conditional models only).
        batch_size: the global batch of tensor data; each of ``world_size`` ranks gets ``batch_size/world_size``.
        num_classes: the model's classes (None: unconditional).
        generator: the data generator (CPU): epoch permutations and flips.
        hflip: mirror each image left-right with probability ½ (images (B, C, H, W) only).
    """

    def __init__(self, data: Tensor | Iterable[Any], labels: Tensor | None, *, batch_size: int,
                 num_classes: int | None, device: torch.device, generator: torch.Generator, rank: int = 0,
                 world_size: int = 1, hflip: bool = False):
        self.batch_size, self.num_classes, self.device, self.generator = batch_size, num_classes, device, generator
        self.rank, self.world_size, self.hflip = rank, world_size, bool(hflip)
        self.perm: Tensor | None = None
        self.pos = self.epoch = self.pass_pos = 0
        self._iter = None
        if isinstance(data, Tensor):
            self._init_tensor(data, labels)
        elif isinstance(data, Iterable):
            if labels is not None:
                raise ValueError("labels go with tensor data; an iterable yields (images, labels) batches")
            self.data, self.batches, self.event_shape, self.labels = None, data, None, None
        else:
            raise TypeError(f"data must be a tensor or an iterable of batches, got {type(data).__name__}")

    def _init_tensor(self, data: Tensor, labels: Tensor | None) -> None:
        if data.ndim < 2 or len(data) == 0:
            raise ValueError(f"data must be a tensor (N, ...) with N >= 1, got shape {tuple(data.shape)}")
        if self.batch_size > len(data):
            raise ValueError(f"batch_size={self.batch_size} exceeds the {len(data)} training samples")
        if self.batch_size % self.world_size:
            raise ValueError(f"batch_size={self.batch_size} (the global batch) must be divisible by the "
                             f"{self.world_size} ranks")
        if self.hflip and data.ndim != 4:
            raise ValueError(f"hflip needs images (N, C, H, W), but the data has shape {tuple(data.shape)}")
        if labels is not None and not self.num_classes:
            raise ValueError("labels were given, but the model is unconditional (its network has no num_classes)")
        if self.num_classes and labels is None:
            raise ValueError(f"the model is class-conditional (num_classes={self.num_classes}): pass labels")
        self.data, self.batches = data.to(self.device), None
        self.labels = None if labels is None else check_labels(torch.as_tensor(labels), len(data),
                                                                self.num_classes, self.device)
        self.event_shape: tuple[int, ...] | None = tuple(data.shape[1:])

    def _restart(self) -> None:
        sampler = getattr(self.batches, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        self._iter = iter(self.batches)

    def _next_iterable(self) -> tuple[Tensor, Tensor | None]:
        if self._iter is None:  # (re)start, skipping what a resumed run already used in this pass
            self._restart()
            for _ in range(self.pass_pos):
                next(self._iter)
        try:
            batch = next(self._iter)
        except StopIteration:
            self.epoch, self.pass_pos = self.epoch + 1, 0
            self._restart()
            batch = next(self._iter, None)
            if batch is None:
                raise ValueError("the data iterable yielded no batches") from None
        self.pass_pos += 1
        x, y = (batch[0], batch[1] if len(batch) > 1 else None) if isinstance(batch, tuple | list) else (batch, None)
        self.event_shape = tuple(x.shape[1:])
        x = random_hflip(x, self.generator) if self.hflip else x
        if not self.num_classes:
            return x.to(self.device), None
        if y is None:
            raise ValueError(f"the model is class-conditional (num_classes={self.num_classes}), but the data "
                             "batches have no labels: yield (images, labels)")
        return x.to(self.device), check_labels(torch.as_tensor(y), len(x), self.num_classes, self.device)

    def next(self) -> tuple[Tensor, Tensor | None]:
        """This rank's next batch and its labels (None for unconditional models)."""
        if self.data is None:
            return self._next_iterable()
        n = len(self.data)
        if self.perm is None or self.pos + self.batch_size > n:
            self.perm, self.pos = torch.randperm(n, generator=self.generator), 0
            self.epoch += 1
        local = self.batch_size // self.world_size
        start = self.pos + self.rank * local
        idx = self.perm[start:start + local].to(self.device)
        flips = flip_mask(self.batch_size, self.generator)[self.rank * local:][:local] if self.hflip else None
        self.pos += self.batch_size
        x = self.data[idx] if flips is None else random_hflip(self.data[idx], mask=flips)
        return x, None if self.labels is None else self.labels[idx]

    def state_dict(self) -> dict[str, Any]:
        """The position: the epoch's permutation, the place in it, the epoch and the place in an iterable's pass."""
        return {"perm": self.perm, "pos": self.pos, "epoch": self.epoch, "pass_pos": self.pass_pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.perm, self.pos, self.epoch = state["perm"], int(state["pos"]), int(state["epoch"])
        self.pass_pos, self._iter = int(state["pass_pos"]), None


__all__ = ["BatchSource", "check_labels"]
