"""The training loop: AdamW with warmup and a constant or cosine schedule, gradient clipping, EMA, tensorboard,
checkpoints, exact resume, and data-parallel training under ``torchrun``.

:class:`Trainer` is the only library object that touches the filesystem (DESIGN.md boundary 5): it writes
tensorboard events into ``log_dir`` and checkpoints into ``ckpt_dir``. Every random draw of training goes
through an explicit ``torch.Generator`` (the data order and flips, the loss's times and noise) or torch's
global RNG (dropout), and all of them are saved in each checkpoint with the model, the EMA and the optimizer,
so a run killed at step k and resumed from its checkpoint ends with the same weights as a run never
interrupted (on CPU bitwise; on CUDA up to the nondeterminism of its kernels).

The pieces live next door: :mod:`~scoresde.training.batches` (data iteration and sharding),
:mod:`~scoresde.training.schedule` (learning rates), :mod:`~scoresde.training.rng_state`,
:mod:`~scoresde.training.labels` and :mod:`~scoresde.training.plots`; the names other modules import from
here (``image_grid``, ``scatter_figure``, ``fixed_labels``, ``drop_labels``, ``stream_seeds``) still work.
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from scoresde.distributed import (
    DistContext,
    RankFailure,
    broadcast_object,
    gather_objects,
    is_peer_failure,
    mean_across_ranks,
    rank_failure,
)
from scoresde.models.ema import EMA
from scoresde.models.preconditioning import Preconditioned
from scoresde.models.registry import check_stored_config
from scoresde.models.score_model import ScoreModel
from scoresde.sampling import sample
from scoresde.sde.base import SDE
from scoresde.training.batches import BatchSource
from scoresde.training.checkpoint import (
    check_plain,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from scoresde.training.data_parallel import ddp_score_model, wrap_ddp
from scoresde.training.labels import drop_labels, fixed_labels
from scoresde.training.plots import image_grid, scatter_figure
from scoresde.training.rng_state import capture_rng, derived_seed, restore_rng
from scoresde.training.schedule import check_schedule, lr_at

STATE_FORMAT = 1
SCALAR_TAGS = ("train/loss", "train/grad_norm", "train/lr", "train/steps_per_s")


def stream_seeds(seed: int) -> dict[str, int]:
    """Independent seeds for the data order, the loss noise and the sample grids, from one seed."""
    keys = ("data", "loss", "sample")
    return dict(zip(keys, (int(s) for s in np.random.SeedSequence(seed).generate_state(len(keys)))))


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class Trainer:
    """Train a :class:`~scoresde.models.Preconditioned` network on ``sde`` with a loss of
    :mod:`scoresde.training.losses` (``loss(score_model, x0, generator) -> (B,)``).

    Args:
        model: the preconditioned network (moved to ``device``).
        sde: the forward SDE the loss and the sampler use.
        loss: a loss callable (DSMLoss, DDPMLoss, EDMLoss, ...).
        data: a tensor (N, ...) of training data in [-1, 1] (batches are drawn without replacement, reshuffled
            each epoch by the data generator, partial last batch dropped), or an iterable of batches (tensors,
            or tuples whose first item is the batch; re-iterated when exhausted; resuming skips the batches
            already used in the current pass, so it is exact when iterating is deterministic).
        labels: class labels (N,) of tensor data (ints in [0, K) for a model with ``num_classes = K``); with
            iterable data a class-conditional model takes the labels from batches ``(images, labels)``.
        label_dropout: probability that a training label is replaced by the null class K (classifier-free
            guidance, Ho & Salimans 2022), drawn from the loss generator; class-conditional models only.
        batch_size: samples per step (tensor data): the *global* batch; under ``torchrun`` each of N ranks
            trains on ``batch_size/N`` of them, so a config means the same run on any number of ranks.
        lr, weight_decay: AdamW's learning rate (for the global batch) and decoupled weight decay.
        warmup_steps: linear warmup: step i uses ``lr·min(1, (i+1)/warmup_steps)``.
        lr_schedule, lr_min: after warmup, ``constant`` or ``cosine`` decay to ``lr_min`` at ``total_steps``
            (:func:`scoresde.training.schedule.lr_at`).
        hflip: random horizontal flips of image batches, drawn from the data generator
            (:mod:`scoresde.data.augment`).
        grad_clip: clip the global gradient norm to this (None or 0: no clipping; the norm is logged anyway).
        ema: a :class:`~scoresde.models.EMA` of ``model`` (default: decay 0.999), updated after every step.
        total_steps: optimizer steps of the whole run.
        log_dir: tensorboard folder (None: no logging). ckpt_dir: checkpoint folder (None: no checkpoints).
        ckpt_every, log_every, sample_every: intervals in steps (0: never; a checkpoint is also written when
            :meth:`train` returns).
        sample_solver, sample_steps, sample_grid, sample_options: how sample grids are drawn from the EMA
            model: ``scoresde.sample(ema.score_model(sde), solver, steps, ...)``. n_samples: how many. A
            class-conditional model's plots use fixed labels: one row per class (images), colours (2-D).
        seed: seeds the data, loss and sample generators (via NumPy's SeedSequence). Torch's global RNG (model
            initialization, dropout) is the caller's to seed; its state is saved and restored with the rest.
        device: where training runs. bf16: autocast to bfloat16 (CUDA only; ignored on CPU).
        keep_checkpoints: keep only this many latest checkpoints (0: all).
        config: the resolved run config (a plain dict), stored in each checkpoint.
        progress: show a tqdm bar (loss and steps/s).
        distributed: the :class:`scoresde.distributed.DistContext` of a ``torchrun`` process (None: one
            process). With several ranks the model trains inside ``DistributedDataParallel`` (gradients
            averaged over ranks), every rank draws the same data permutation and takes its slice of each global
            batch, each rank has its own loss-noise stream, and only rank 0 writes tensorboard events, sample
            plots and checkpoints (which hold every rank's RNG states, so that a resume is exact). A failed
            collective (a crashed or hung rank, after the process group's timeout) raises
            :class:`scoresde.distributed.RankFailure`.
    """

    def __init__(self, model: Preconditioned, sde: SDE, loss: Any, data: Tensor | Iterable[Any], *,
                 labels: Tensor | None = None, label_dropout: float = 0.0, batch_size: int = 256, lr: float = 1e-3,
                 weight_decay: float = 0.0, warmup_steps: int = 0, lr_schedule: str = "constant",
                 lr_min: float = 0.0, grad_clip: float | None = 1.0, ema: EMA | None = None, total_steps: int = 1000,
                 log_dir: str | Path | None = None, ckpt_dir: str | Path | None = None, ckpt_every: int = 0,
                 log_every: int = 50, sample_every: int = 0, sample_solver: str = "heun", sample_steps: int = 18,
                 sample_grid: str = "karras", sample_options: dict[str, Any] | None = None, n_samples: int = 1000,
                 seed: int = 0, device: str | torch.device = "cpu", bf16: bool = False, keep_checkpoints: int = 0,
                 config: dict[str, Any] | None = None, progress: bool = True, hflip: bool = False,
                 distributed: DistContext | None = None):
        self.batch_size = _positive_int("batch_size", batch_size)
        self.total_steps = _positive_int("total_steps", total_steps)
        self.warmup_steps = _positive_int("warmup_steps", warmup_steps, 0)
        self.ckpt_every = _positive_int("ckpt_every", ckpt_every, 0)
        self.log_every = _positive_int("log_every", log_every, 0)
        self.sample_every = _positive_int("sample_every", sample_every, 0)
        self.n_samples = _positive_int("n_samples", n_samples)
        self.keep_checkpoints = _positive_int("keep_checkpoints", keep_checkpoints, 0)
        self._check_numbers(lr, weight_decay, grad_clip, lr_schedule, lr_min)
        self.num_classes = getattr(model, "num_classes", None)
        if not 0 <= label_dropout < 1 or (label_dropout and not self.num_classes):
            raise ValueError(f"label_dropout must be in [0, 1) and needs a class-conditional model (num_classes), "
                             f"got {label_dropout} with num_classes={self.num_classes}")
        self.label_dropout = float(label_dropout)
        config = dict(config or {})
        check_plain(config, "config")
        self.ctx = distributed or DistContext(device=torch.device(device))
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.sde, self.loss, self.lr, self.grad_clip = sde, loss, float(lr), grad_clip or math.inf
        self.lr_schedule, self.lr_min = lr_schedule, float(lr_min)
        self.ema = ema if ema is not None else EMA(self.model, decay=0.999)
        self.ema.shadow = {k: v.to(self.device) for k, v in self.ema.shadow.items()}
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        self.log_dir, self.ckpt_dir = (Path(d) if d is not None else None for d in (log_dir, ckpt_dir))
        self.sample_solver, self.sample_steps, self.sample_grid = sample_solver, sample_steps, sample_grid
        self.sample_options = dict(sample_options or {})
        self.autocast = bool(bf16) and self.device.type == "cuda"
        self.config, self.progress, self.seed = config, progress, int(seed)
        self.step, self.last_loss = 0, math.nan
        self._seeds = stream_seeds(self.seed)
        self.sample_seed = self._seeds["sample"]
        self.data_gen = torch.Generator().manual_seed(self._seeds["data"])
        self.loss_gen = torch.Generator(self.device).manual_seed(self._rank_seed(self._seeds["loss"]))
        self.batches = BatchSource(data, labels, batch_size=self.batch_size, num_classes=self.num_classes,
                                   device=self.device, generator=self.data_gen, rank=self.ctx.rank,
                                   world_size=self.ctx.world_size, hflip=hflip)
        self._writer = None
        self._ddp = wrap_ddp(self.model, self.ema, self.ctx)

    @staticmethod
    def _check_numbers(lr: float, weight_decay: float, grad_clip: float | None, schedule: str, lr_min: float) -> None:
        if not lr > 0 or not weight_decay >= 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}")
        if grad_clip is not None and grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 or None, got {grad_clip}")
        check_schedule(schedule, lr, lr_min)

    def _rank_seed(self, seed: int, *more: int) -> int:
        """``seed`` itself for one process (as before sharding existed); an independent seed per rank otherwise."""
        return seed if not self.ctx.enabled and not more else derived_seed(seed, self.ctx.rank, *more)

    # ---- data -------------------------------------------------------------------------------------------
    @property
    def event_shape(self) -> tuple[int, ...] | None:
        """The shape of one training sample (known for tensor data, else after the first batch)."""
        return self.batches.event_shape

    def next_batch(self) -> tuple[Tensor, Tensor | None]:
        """This rank's next training batch (B, ...) on the device and its labels (B,) (None for unconditional
        models)."""
        return self.batches.next()

    # ---- optimization -----------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Learning rate of the update after ``step`` previous steps (warmup, then the schedule)."""
        return lr_at(step, self.lr, self.warmup_steps, self.total_steps, self.lr_schedule, self.lr_min)

    def _train_score_model(self, labels: Tensor | None) -> ScoreModel:
        """The score model the loss sees; under DDP its network calls go through the DDP wrapper."""
        if self._ddp is None:
            return self.model.score_model(self.sde, labels)
        return ddp_score_model(self._ddp, self.model, self.sde, labels)

    def train_step(self, x0: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One optimizer step on the batch ``x0`` (with its class ``labels`` for a conditional model, label
        dropout applied here); returns the (detached) mean loss and the gradient norm."""
        self.model.train()
        if labels is not None:
            labels = drop_labels(labels, self.label_dropout, self.num_classes, self.loss_gen)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            model = self._train_score_model(labels)
            loss = self.loss(model, x0, generator=self.loss_gen).float().mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP: gradients averaged over ranks here
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.optimizer.step()
        self.ema.update(self.model, self.step)
        self.step += 1
        return loss.detach(), grad_norm.detach()

    def train(self, num_steps: int | None = None) -> dict[str, float]:
        """Run until ``total_steps`` (or ``num_steps`` more); log, sample and checkpoint on schedule.
        Returns ``{"step", "loss"}`` (the mean loss of the last logging window, over all ranks)."""
        try:
            return self._train(num_steps)
        except RuntimeError as e:  # DDP's broadcasts and all-reduces: a peer crashed, hung or is unreachable
            if not self.ctx.enabled or isinstance(e, RankFailure) or not is_peer_failure(e):
                raise
            raise rank_failure(self.ctx, f"training step {self.step + 1}", e) from e

    def _train(self, num_steps: int | None) -> dict[str, float]:
        end = self.total_steps if num_steps is None else min(self.total_steps, self.step + num_steps)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="scoresde-train", unit="step",
                   disable=not (self.progress and self.ctx.is_main), dynamic_ncols=True)
        window: list[Tensor] = []
        norms: list[Tensor] = []
        busy, s0 = 0.0, self.step  # seconds spent in training steps (not sampling or saving) since s0
        start = saved = self.step
        try:
            while self.step < end:
                tick = time.perf_counter()
                loss, grad_norm = self.train_step(*self.next_batch())
                busy += time.perf_counter() - tick
                window.append(loss)
                norms.append(grad_norm)
                bar.update(1)
                if (self.log_every and self.step % self.log_every == 0) or self.step == end:
                    rate = (self.step - s0) / max(busy, 1e-9)
                    self._log_scalars(torch.stack(window).mean().item(), torch.stack(norms).mean().item(), rate)
                    bar.set_postfix(loss=f"{self.last_loss:.4f}", steps_per_s=f"{rate:.1f}")
                    window, norms, busy, s0 = [], [], 0.0, self.step
                if self.sample_every and self.step % self.sample_every == 0:
                    self.log_samples()
                if self.ckpt_every and self.step % self.ckpt_every == 0:
                    self.save()
                    saved = self.step
        finally:
            bar.close()
            if self._writer is not None:
                self._writer.flush()
        if self.ckpt_dir is not None and self.step not in (saved, start):
            self.save()
        return {"step": self.step, "loss": self.last_loss}

    # ---- logging ----------------------------------------------------------------------------------------
    def writer(self) -> Any:
        """The tensorboard SummaryWriter of ``log_dir`` (None without one, and on ranks other than 0);
        resuming purges later events."""
        if self.log_dir is None or not self.ctx.is_main:
            return None
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(str(self.log_dir), purge_step=self.step or None)
        return self._writer

    def _log_scalars(self, loss: float, grad_norm: float, rate: float) -> None:
        loss = mean_across_ranks(loss, self.ctx, "averaging the training loss")
        if not math.isfinite(loss):
            raise FloatingPointError(f"the training loss became {loss} by step {self.step} with lr={self.lr:g} "
                                     f"(grad_clip={'none' if math.isinf(self.grad_clip) else f'{self.grad_clip:g}'}): "
                                     "lower lr, or set grad_clip")
        self.last_loss = loss
        writer = self.writer()
        if writer is None:
            return
        for tag, value in zip(SCALAR_TAGS, (loss, grad_norm, self.lr_at(self.step - 1), rate)):
            writer.add_scalar(tag, value, self.step)

    @torch.no_grad()
    def sample(self, n: int | None = None, class_labels: Tensor | int | None = None) -> Tensor:
        """``n`` samples (default ``n_samples``) from the EMA model with the configured solver. Uses its own
        generator and leaves every training RNG untouched. A class-conditional model samples ``class_labels``
        (default :func:`fixed_labels`: every class in turn, in blocks; the null class K is unconditional).
        Talks to no other rank (the EMA model is not wrapped in DDP)."""
        if self.event_shape is None:
            raise ValueError("the data shape is unknown until the first batch has been drawn")
        n = n or self.n_samples
        if self.num_classes and class_labels is None:
            class_labels = fixed_labels(n, self.num_classes)
        if isinstance(class_labels, Tensor):
            class_labels = class_labels.to(self.device)
        self.ema.copy_to(self.ema_model)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            gen = torch.Generator(self.device).manual_seed(self.sample_seed)
            return sample(self.ema_model.score_model(self.sde, class_labels), self.sample_solver, self.sample_steps,
                          (n, *self.event_shape), grid=self.sample_grid, seed=None, generator=gen,
                          device=self.device, **self.sample_options)

    def log_samples(self) -> None:
        """Write a sample grid (images) or scatter plot (2-D points) to tensorboard (rank 0 only)."""
        writer = self.writer()
        if writer is None:
            return
        k = self.num_classes
        if k and self.event_shape is not None and len(self.event_shape) == 3:  # one row of 8 images per class
            x = self.sample(8 * k, torch.arange(k).repeat_interleave(8))
            writer.add_image("samples", image_grid(x, nrow=8), self.step, dataformats="CHW")
            return
        x = self.sample()
        if x.ndim == 4:
            writer.add_image("samples", image_grid(x[:64]), self.step, dataformats="CHW")
        elif x.ndim == 2 and x.shape[1] == 2:
            labels = fixed_labels(len(x), k) if k else None
            writer.add_figure("samples", scatter_figure(x, f"EMA samples, step {self.step}", labels), self.step,
                              close=False)

    # ---- checkpoints ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, as tensors, dicts, lists and primitives. Under torchrun every rank
        must call it (it gathers each rank's RNG states into ``dist``, complete on rank 0)."""
        rng = {**capture_rng(self.loss_gen), "data": self.data_gen.get_state()}
        state = {"format": STATE_FORMAT, "step": self.step, "model": self.model.state_dict(),
                 "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(), "rng": rng,
                 "data": self.batches.state_dict(), "last_loss": self.last_loss, "config": self.config}
        if self.ctx.enabled:
            mine = {**capture_rng(self.loss_gen), "data": self.data_gen.get_state()}  # flips of iterable data
            ranks = gather_objects(mine, self.ctx, "gathering RNG states for a checkpoint")
            state["dist"] = {"world_size": self.ctx.world_size, "rng": ranks}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (model, EMA, optimizer, step, RNGs and the data position). Under
        torchrun each rank takes its own RNG states when the checkpoint has them for this many ranks;
        otherwise the data order continues exactly and the per-rank noise streams are reseeded (a warning)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown checkpoint format {state.get('format')!r} (expected {STATE_FORMAT})")
        check_stored_config(state.get("config"))  # refuse a config no loader would take
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.last_loss = int(state["step"]), float(state["last_loss"])
        rng, saved = state["rng"], state.get("dist") or {"world_size": 1, "rng": None}
        self.data_gen.set_state(rng["data"])
        if saved["world_size"] == self.ctx.world_size:
            own = saved["rng"][self.ctx.rank] if self.ctx.enabled else rng
            restore_rng(own, self.loss_gen)
            self.data_gen.set_state(own["data"])
        else:
            warnings.warn(f"checkpoint of a {saved['world_size']}-process run resumed by {self.ctx.world_size}: the "
                          "data order continues exactly; the loss noise and torch RNG are reseeded per rank",
                          UserWarning, stacklevel=2)
            restore_rng(rng, self.loss_gen)
            self.loss_gen.manual_seed(self._rank_seed(self._seeds["loss"], self.step))
            torch.manual_seed(self._rank_seed(self._seeds["loss"], self.step, 1))
        self.batches.load_state_dict(state["data"])

    def save(self) -> Path | None:
        """Write ``ckpt_dir/ckpt_{step:08d}.pt`` atomically; returns its path (None on ranks other than 0,
        which only contribute their RNG states)."""
        if self.ckpt_dir is None:
            raise ValueError("this Trainer has no ckpt_dir")
        state = self.state_dict()
        if not self.ctx.is_main:
            return None
        path = save_checkpoint(state, checkpoint_path(self.ckpt_dir, self.step))
        prune_checkpoints(self.ckpt_dir, self.keep_checkpoints)
        return path

    def resume(self, path: str | Path | None = None) -> Path | None:
        """Load ``path`` (default: the latest checkpoint in ``ckpt_dir``, as rank 0 finds it); returns what was
        loaded, or None when there is no checkpoint yet (a fresh start). Under torchrun every rank loads the
        file rank 0 names, so ``ckpt_dir`` must be on a file system all ranks see."""
        if path is None:
            found = latest_checkpoint(self.ckpt_dir) if self.ckpt_dir is not None and self.ctx.is_main else None
            path = broadcast_object(None if found is None else str(found), self.ctx, "agreeing on the checkpoint")
            if path is None:
                return None
        if not Path(path).is_file():
            raise FileNotFoundError(f"rank {self.ctx.rank}: no checkpoint at {path} (under torchrun the run "
                                    "directory must be on a file system every rank sees)")
        self.load_state_dict(load_checkpoint(path, map_location="cpu"))
        return Path(path)

    def close(self) -> None:
        """Close the tensorboard writer."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


__all__ = ["Trainer", "SCALAR_TAGS", "STATE_FORMAT", "drop_labels", "fixed_labels", "image_grid", "scatter_figure",
           "stream_seeds"]
