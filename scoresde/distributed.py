"""Beyond one machine: the process group for ``torchrun``, and sharded work split by seed.

``torchrun --nproc_per_node N ...`` starts N copies of a program with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in the environment
(https://pytorch.org/docs/stable/elastic/run.html). :func:`init_distributed` turns that into a
:class:`DistContext`: it joins the process group (NCCL when the device is CUDA, gloo on the CPU), with a
timeout, so that when one rank dies or hangs the others fail with an error instead of waiting forever
(https://pytorch.org/docs/stable/distributed.html#torch.distributed.init_process_group). Without
``torchrun`` it returns a one-process context and nothing else changes.

Sharded sampling follows EDM's ``generate.py`` (Karras et al. 2022): every sample has its own seed, the
seeds are cut into consecutive batches of ``batch_size``, rank ``r`` runs batches ``r, r + N, r + 2N, …``
and rank 0 gathers the results in seed order. The batches do not depend on the number of ranks, so N
processes give exactly (bitwise) the samples one process gives with the same seeds and ``batch_size``, even
for an adaptive solver whose step count depends on the batch. Nothing inside a batch talks to other ranks:
ranks that take different step counts never wait on each other until the final gather.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

R = TypeVar("R")
DEVICES = ("cpu", "cuda", "auto")
DEFAULT_TIMEOUT_S = 1800.0


class RankFailure(RuntimeError):
    """A collective operation failed: another rank crashed, hung past the timeout, or lost its connection."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node), its device, the
    backend of the process group (None: a single process) and the group's timeout in seconds."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """True when there is more than one rank (collectives are needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes logs, checkpoints and outputs."""
        return self.rank == 0


def resolve_device(name: Any = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; plain ``cuda``/``auto`` under torchrun
    means ``cuda:<local_rank>``. Asking for CUDA where there is none is an error naming the fix."""
    name = str(name or "auto")
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} but CUDA is not available; use device=cpu or device=auto")
    return torch.device(f"cuda:{local_rank}" if name == "cuda" else name)


def _env_int(key: str, default: int) -> int:
    value = os.environ.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {key}={value!r} is not an integer (set by torchrun)") from None


def init_distributed(device: Any = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """The context of this process: joins the ``torchrun`` process group when ``WORLD_SIZE > 1`` (backend
    NCCL on CUDA, gloo on CPU, ``timeout_s`` on every collective), uses an already initialized group as it
    is, and otherwise returns a single-process context on ``device``."""
    if not timeout_s > 0:
        raise ValueError(f"the process-group timeout must be > 0 seconds, got {timeout_s}")
    if dist.is_available() and dist.is_initialized():
        local = _env_int("LOCAL_RANK", dist.get_rank())
        return DistContext(dist.get_rank(), dist.get_world_size(), local, resolve_device(device, local),
                           dist.get_backend(), float(timeout_s), owns_group=False)
    world, rank, local = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local)
    if world <= 1:
        return DistContext(device=dev, timeout_s=float(timeout_s))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world})")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank, world, local, dev, backend, float(timeout_s), owns_group=True)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group if :func:`init_distributed` joined it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


# Words in the errors of gloo and NCCL when a peer is gone or late (gloo raises plain RuntimeErrors).
PEER_FAILURE_WORDS = ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket", "watchdog")


def is_peer_failure(error: BaseException) -> bool:
    """Whether ``error`` is a failed collective (a crashed, hung or unreachable rank) rather than a bug."""
    text = str(error).lower()
    return isinstance(error, dist.DistError) or any(word in text for word in PEER_FAILURE_WORDS)


def rank_failure(ctx: DistContext, what: str, error: BaseException) -> RankFailure:
    """A :class:`RankFailure` naming this rank, what it was doing, the timeout and the backend's message."""
    first = next((ln.strip() for ln in str(error).splitlines() if ln.strip()), type(error).__name__)
    return RankFailure(f"rank {ctx.rank}/{ctx.world_size}: {what} failed; another rank probably crashed or hung "
                       f"(process-group timeout {ctx.timeout_s:g} s): {first[:300]}")


def collective(what: str, ctx: DistContext, fn: Callable[[], R]) -> R:
    """Run a collective ``fn()``; a failure (a crashed or hung peer) becomes a :class:`RankFailure`."""
    try:
        return fn()
    except RuntimeError as e:  # gloo: connection closed / timed out; NCCL: watchdog (DistError is a RuntimeError)
        raise rank_failure(ctx, what, e) from e


def broadcast_object(obj: Any, ctx: DistContext, what: str = "broadcast") -> Any:
    """Rank 0's ``obj`` on every rank (a no-op for one process)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    collective(what, ctx, lambda: dist.broadcast_object_list(box, src=0))
    return box[0]


def gather_objects(obj: Any, ctx: DistContext, what: str = "gather") -> list[Any] | None:
    """Every rank's ``obj`` as a list in rank order on rank 0 (None on the others). Tensors should be on the
    CPU; NCCL needs ``torch.cuda.set_device`` (done by :func:`init_distributed`)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    collective(what, ctx, lambda: dist.gather_object(obj, out, dst=0))
    return out


def all_gather_objects(obj: Any, ctx: DistContext, what: str = "all_gather") -> list[Any]:
    """Every rank's ``obj`` as a list in rank order, on every rank."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    collective(what, ctx, lambda: dist.all_gather_object(out, obj))
    return out


def seed_batches(seeds: Sequence[int], batch_size: int) -> list[list[int]]:
    """``seeds`` cut into consecutive batches of ``batch_size`` (the last one may be shorter)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("need at least one seed")
    return [seeds[i:i + batch_size] for i in range(0, len(seeds), batch_size)]


def rank_batches(seeds: Sequence[int], batch_size: int, rank: int, world_size: int) -> list[tuple[int, list[int]]]:
    """``(batch index, seeds)`` of the batches rank ``rank`` of ``world_size`` runs: indices ``rank::world_size``
    of :func:`seed_batches` (EDM's ``generate.py`` split; a rank may get none when batches < ranks)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
    batches = seed_batches(seeds, batch_size)
    return [(i, batches[i]) for i in range(rank, len(batches), world_size)]


def run_sharded(fn: Callable[[list[int]], R], seeds: Sequence[int], batch_size: int,
                ctx: DistContext) -> list[R] | None:
    """Run ``fn(seed batch)`` on this rank's batches (:func:`rank_batches`) and gather every batch's result on
    rank 0, in batch order: the list one process would get from ``[fn(b) for b in seed_batches(...)]``.
    Returns None on the other ranks. ``fn`` must not use collectives; results should be on the CPU."""
    mine = [(i, fn(batch)) for i, batch in rank_batches(seeds, batch_size, ctx.rank, ctx.world_size)]
    gathered = gather_objects(mine, ctx, what="gathering sharded results")
    if gathered is None:
        return None
    by_index = dict(pair for part in gathered for pair in part)
    return [by_index[i] for i in range(len(by_index))]


def cat_results(parts: Sequence[Tensor]) -> Tensor:
    """Concatenate per-batch sample tensors (B_i, ...) along the batch dimension."""
    return torch.cat([p.cpu() for p in parts])


def mean_across_ranks(value: float, ctx: DistContext, what: str = "averaging a metric") -> float:
    """The mean of a float over ranks (every rank gets it)."""
    if not ctx.enabled:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64,
                     device=ctx.device if ctx.backend == "nccl" else "cpu")
    collective(what, ctx, lambda: dist.all_reduce(t))
    return float(t.item()) / ctx.world_size


__all__ = ["DistContext", "RankFailure", "DEFAULT_TIMEOUT_S", "resolve_device", "init_distributed", "shutdown",
           "collective", "is_peer_failure", "rank_failure", "broadcast_object", "gather_objects",
           "all_gather_objects", "seed_batches", "rank_batches", "run_sharded", "cat_results", "mean_across_ranks"]
