"""The training loop: AdamW with linear warmup, gradient clipping, EMA, tensorboard, checkpoints, exact resume.

:class:`Trainer` is the only library object that touches the filesystem (DESIGN.md boundary 5): it writes
tensorboard events into ``log_dir`` and checkpoints into ``ckpt_dir``. Every random draw of training goes
through an explicit ``torch.Generator`` (the data order and the loss's times and noise) or torch's global
RNG (dropout), and all of them are saved in each checkpoint with the model, the EMA and the optimizer, so a
run killed at step k and resumed from its checkpoint ends with the same weights as a run never interrupted
(on CPU bitwise; on CUDA up to the nondeterminism of its kernels).
"""
from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from scoresde.models.ema import EMA
from scoresde.models.preconditioning import Preconditioned
from scoresde.sampling import sample
from scoresde.sde.base import SDE
from scoresde.training.checkpoint import (
    check_plain,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)

STATE_FORMAT = 1
SCALAR_TAGS = ("train/loss", "train/grad_norm", "train/lr", "train/steps_per_s")


def stream_seeds(seed: int) -> dict[str, int]:
    """Independent seeds for the data order, the loss noise and the sample grids, from one seed."""
    keys = ("data", "loss", "sample")
    return dict(zip(keys, (int(s) for s in np.random.SeedSequence(seed).generate_state(len(keys)))))


def image_grid(images: Tensor, nrow: int | None = None, pad: int = 1) -> Tensor:
    """Tile images (B, C, H, W) in [-1, 1] into one (C, H', W') image in [0, 1], ``nrow`` per row
    (default ⌈√B⌉), separated by ``pad`` white pixels. Plain torch, no torchvision."""
    if images.ndim != 4:
        raise ValueError(f"image_grid takes (B, C, H, W), got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    grid = images.new_ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    x = ((images.float().clamp(-1, 1) + 1) / 2).cpu()
    grid = grid.float().cpu()
    for i in range(b):
        r, k = divmod(i, nrow)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = x[i]
    return grid


def scatter_figure(points: Tensor, title: str = "", labels: Tensor | None = None) -> Any:
    """A matplotlib figure of 2-D points (B, 2), coloured by ``labels`` (B,) when given (not registered
    with pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    p = points.detach().float().cpu()
    colour = {} if labels is None else {"c": labels.cpu().numpy(), "cmap": "tab10"}
    ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.5, **colour)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def drop_labels(labels: Tensor, p: float, null_class: int, generator: torch.Generator | None = None) -> Tensor:
    """Classifier-free guidance's label dropout (Ho & Salimans 2022): each label becomes ``null_class`` with
    probability ``p``, from one U[0, 1) draw per label of ``generator``. Returns a new tensor (B,)."""
    if p <= 0:
        return labels
    u = torch.rand(labels.shape, generator=generator, device=labels.device)
    return torch.where(u < p, torch.full_like(labels, null_class), labels)


def fixed_labels(n: int, num_classes: int) -> Tensor:
    """``n`` labels for sample plots, classes in blocks of ``⌈n/K⌉`` (row ``k`` of a grid with ``⌈n/K⌉``
    images per row is class ``k``), shape (n,)."""
    per = math.ceil(n / num_classes)
    return (torch.arange(n) // per).clamp(max=num_classes - 1)


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
        batch_size: samples per step (tensor data).
        lr, weight_decay: AdamW's learning rate and decoupled weight decay.
        warmup_steps: linear warmup: step i uses ``lr·min(1, (i+1)/warmup_steps)``.
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
    """

    def __init__(self, model: Preconditioned, sde: SDE, loss: Any, data: Tensor | Iterable[Any], *,
                 labels: Tensor | None = None, label_dropout: float = 0.0, batch_size: int = 256, lr: float = 1e-3,
                 weight_decay: float = 0.0, warmup_steps: int = 0,
                 grad_clip: float | None = 1.0, ema: EMA | None = None, total_steps: int = 1000,
                 log_dir: str | Path | None = None, ckpt_dir: str | Path | None = None, ckpt_every: int = 0,
                 log_every: int = 50, sample_every: int = 0, sample_solver: str = "heun", sample_steps: int = 18,
                 sample_grid: str = "karras", sample_options: dict[str, Any] | None = None, n_samples: int = 1000,
                 seed: int = 0, device: str | torch.device = "cpu", bf16: bool = False, keep_checkpoints: int = 0,
                 config: dict[str, Any] | None = None, progress: bool = True):
        self.batch_size = _positive_int("batch_size", batch_size)
        self.total_steps = _positive_int("total_steps", total_steps)
        self.warmup_steps = _positive_int("warmup_steps", warmup_steps, 0)
        self.ckpt_every = _positive_int("ckpt_every", ckpt_every, 0)
        self.log_every = _positive_int("log_every", log_every, 0)
        self.sample_every = _positive_int("sample_every", sample_every, 0)
        self.n_samples = _positive_int("n_samples", n_samples)
        self.keep_checkpoints = _positive_int("keep_checkpoints", keep_checkpoints, 0)
        if not lr > 0 or not weight_decay >= 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}")
        if grad_clip is not None and grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 or None, got {grad_clip}")
        self.num_classes = getattr(model, "num_classes", None)
        if not 0 <= label_dropout < 1 or (label_dropout and not self.num_classes):
            raise ValueError(f"label_dropout must be in [0, 1) and needs a class-conditional model (num_classes), "
                             f"got {label_dropout} with num_classes={self.num_classes}")
        self.label_dropout = float(label_dropout)
        config = dict(config or {})
        check_plain(config, "config")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.sde, self.loss, self.lr, self.grad_clip = sde, loss, float(lr), grad_clip or math.inf
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
        seeds = stream_seeds(self.seed)
        self.sample_seed = seeds["sample"]
        self.data_gen = torch.Generator().manual_seed(seeds["data"])
        self.loss_gen = torch.Generator(self.device).manual_seed(seeds["loss"])
        self._init_data(data, labels)
        self._writer = None

    # ---- data -------------------------------------------------------------------------------------------
    def _check_labels(self, labels: Tensor, n: int) -> Tensor:
        k = self.num_classes
        if labels.shape != (n,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integers of shape ({n},), got {labels.dtype} {tuple(labels.shape)}")
        if bool(((labels < 0) | (labels >= k)).any()):
            raise ValueError(f"labels must lie in [0, {k}) for a model with num_classes={k}, got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        return labels.long().to(self.device)

    def _init_data(self, data: Tensor | Iterable[Any], labels: Tensor | None = None) -> None:
        self._perm: Tensor | None = None
        self._pos = self._epoch = self._pass_pos = 0
        self._iter = None
        if isinstance(data, Tensor):
            if data.ndim < 2 or len(data) == 0:
                raise ValueError(f"data must be a tensor (N, ...) with N >= 1, got shape {tuple(data.shape)}")
            if self.batch_size > len(data):
                raise ValueError(f"batch_size={self.batch_size} exceeds the {len(data)} training samples")
            self._data, self._batches = data.to(self.device), None
            if labels is not None and not self.num_classes:
                raise ValueError("labels were given, but the model is unconditional (its network has no num_classes)")
            if self.num_classes and labels is None:
                raise ValueError(f"the model is class-conditional (num_classes={self.num_classes}): pass labels")
            self._labels = None if labels is None else self._check_labels(torch.as_tensor(labels), len(data))
            self.event_shape: tuple[int, ...] | None = tuple(data.shape[1:])
        elif isinstance(data, Iterable):
            if labels is not None:
                raise ValueError("labels go with tensor data; an iterable yields (images, labels) batches")
            self._data, self._batches, self.event_shape, self._labels = None, data, None, None
        else:
            raise TypeError(f"data must be a tensor or an iterable of batches, got {type(data).__name__}")

    def _next_iterable_batch(self) -> tuple[Tensor, Tensor | None]:
        if self._iter is None:  # (re)start, skipping what a resumed run already used in this pass
            self._iter = iter(self._batches)
            for _ in range(self._pass_pos):
                next(self._iter)
        try:
            batch = next(self._iter)
        except StopIteration:
            self._iter, self._pass_pos = iter(self._batches), 0
            batch = next(self._iter, None)
            if batch is None:
                raise ValueError("the data iterable yielded no batches") from None
        self._pass_pos += 1
        x, y = (batch[0], batch[1] if len(batch) > 1 else None) if isinstance(batch, tuple | list) else (batch, None)
        self.event_shape = tuple(x.shape[1:])
        if not self.num_classes:
            return x.to(self.device), None
        if y is None:
            raise ValueError(f"the model is class-conditional (num_classes={self.num_classes}), but the data "
                             "batches have no labels: yield (images, labels)")
        return x.to(self.device), self._check_labels(torch.as_tensor(y), len(x))

    def next_batch(self) -> tuple[Tensor, Tensor | None]:
        """The next training batch (B, ...) on the device and its labels (B,) (None for unconditional models)."""
        if self._data is None:
            return self._next_iterable_batch()
        n = len(self._data)
        if self._perm is None or self._pos + self.batch_size > n:
            self._perm, self._pos = torch.randperm(n, generator=self.data_gen), 0
            self._epoch += 1
        idx = self._perm[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        idx = idx.to(self.device)
        return self._data[idx], None if self._labels is None else self._labels[idx]

    # ---- optimization -----------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Learning rate of the update after ``step`` previous steps (linear warmup, then constant)."""
        if self.warmup_steps == 0:
            return self.lr
        return self.lr * min(1.0, (step + 1) / self.warmup_steps)

    def train_step(self, x0: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One optimizer step on the batch ``x0`` (with its class ``labels`` for a conditional model, label
        dropout applied here); returns the (detached) mean loss and the gradient norm."""
        self.model.train()
        if labels is not None:
            labels = drop_labels(labels, self.label_dropout, self.num_classes, self.loss_gen)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            model = self.model.score_model(self.sde, labels)
            loss = self.loss(model, x0, generator=self.loss_gen).float().mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.optimizer.step()
        self.ema.update(self.model, self.step)
        self.step += 1
        return loss.detach(), grad_norm.detach()

    def train(self, num_steps: int | None = None) -> dict[str, float]:
        """Run until ``total_steps`` (or ``num_steps`` more); log, sample and checkpoint on schedule.
        Returns ``{"step", "loss"}`` (the mean loss of the last logging window)."""
        end = self.total_steps if num_steps is None else min(self.total_steps, self.step + num_steps)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="scoresde-train", unit="step",
                   disable=not self.progress, dynamic_ncols=True)
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
        """The tensorboard SummaryWriter of ``log_dir`` (None without one); resuming purges later events."""
        if self.log_dir is None:
            return None
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(str(self.log_dir), purge_step=self.step or None)
        return self._writer

    def _log_scalars(self, loss: float, grad_norm: float, rate: float) -> None:
        if not math.isfinite(loss):
            raise FloatingPointError(f"the training loss became {loss} by step {self.step}")
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
        (default :func:`fixed_labels`: every class in turn, in blocks; the null class K is unconditional)."""
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
        """Write a sample grid (images) or scatter plot (2-D points) to tensorboard."""
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
        """Everything a resumed run needs, as tensors, dicts, lists and primitives."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "data": self.data_gen.get_state(),
                               "loss": self.loss_gen.get_state(), "python": random.getstate()}
        np_state = np.random.get_state()
        rng["numpy"] = [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        data = {"perm": self._perm, "pos": self._pos, "epoch": self._epoch, "pass_pos": self._pass_pos}
        return {"format": STATE_FORMAT, "step": self.step, "model": self.model.state_dict(),
                "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(), "rng": rng, "data": data,
                "last_loss": self.last_loss, "config": self.config}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (model, EMA, optimizer, step, RNGs and the data position)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown checkpoint format {state.get('format')!r} (expected {STATE_FORMAT})")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.last_loss = int(state["step"]), float(state["last_loss"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.data_gen.set_state(rng["data"])
        self.loss_gen.set_state(rng["loss"])
        random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
        np_state = rng["numpy"]
        np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
        if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        data = state["data"]
        self._perm, self._pos, self._epoch = data["perm"], int(data["pos"]), int(data["epoch"])
        self._pass_pos, self._iter = int(data["pass_pos"]), None

    def save(self) -> Path:
        """Write ``ckpt_dir/ckpt_{step:08d}.pt`` atomically; returns its path."""
        if self.ckpt_dir is None:
            raise ValueError("this Trainer has no ckpt_dir")
        path = save_checkpoint(self.state_dict(), checkpoint_path(self.ckpt_dir, self.step))
        prune_checkpoints(self.ckpt_dir, self.keep_checkpoints)
        return path

    def resume(self, path: str | Path | None = None) -> Path | None:
        """Load ``path`` (default: the latest checkpoint in ``ckpt_dir``); returns what was loaded, or None
        when there is no checkpoint yet (a fresh start)."""
        if path is None:
            path = latest_checkpoint(self.ckpt_dir) if self.ckpt_dir is not None else None
            if path is None:
                return None
        self.load_state_dict(load_checkpoint(path, map_location="cpu"))
        return Path(path)

    def close(self) -> None:
        """Close the tensorboard writer."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


__all__ = ["Trainer", "SCALAR_TAGS", "drop_labels", "fixed_labels", "image_grid", "scatter_figure", "stream_seeds"]
