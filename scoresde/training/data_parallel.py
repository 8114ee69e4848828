"""The trainer's model under ``torchrun``: ``DistributedDataParallel`` (Li et al. 2020, "PyTorch Distributed:
Experiences on Accelerating Data Parallel Training"; https://pytorch.org/docs/stable/notes/ddp.html).

DDP averages the gradients over ranks during ``backward`` (bucketed all-reduces that overlap with the backward
pass), so after ``loss.backward()`` every rank holds the gradient of the global batch's mean loss and the
optimizer, the gradient clipping and the EMA run identically everywhere. The network must be *called through*
the DDP wrapper for that: :func:`ddp_score_model` is ``Preconditioned.score_model`` with the wrapper in the
middle. The EMA copy used for sample plots is never wrapped, so sampling talks to no other rank.
"""
from __future__ import annotations

import torch.distributed as dist
from torch import Tensor, nn

from scoresde.distributed import DistContext, collective
from scoresde.models.ema import EMA
from scoresde.models.preconditioning import Preconditioned
from scoresde.models.score_model import ScoreModel
from scoresde.sde.base import SDE


def wrap_ddp(model: Preconditioned, ema: EMA, ctx: DistContext) -> nn.Module | None:
    """``DistributedDataParallel(model)`` when there are several ranks (None for one process). DDP broadcasts
    rank 0's weights to every rank; the EMA's shadow weights are broadcast too, so all ranks start alike."""
    if not ctx.enabled:
        return None
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    ids = [device] if device.type == "cuda" else None
    ddp = collective("wrapping the model in DDP", ctx, lambda: DistributedDataParallel(model, device_ids=ids))
    for v in ema.shadow.values():
        collective("broadcasting the EMA", ctx, lambda v=v: dist.broadcast(v, src=0))
    return ddp


def ddp_score_model(ddp: nn.Module, model: Preconditioned, sde: SDE, labels: Tensor | int | None) -> ScoreModel:
    """The :class:`ScoreModel` of ``model.score_model(sde, labels)``, evaluated through the DDP wrapper
    (``forward(x, σ(t), s(t), labels)``, as :meth:`Preconditioned.predict`)."""
    return ScoreModel(lambda x, t: ddp(x, sde.sigma(t), sde.s(t), labels), sde, model.prediction)


__all__ = ["wrap_ddp", "ddp_score_model"]
