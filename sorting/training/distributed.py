"""DDP plumbing: the same `textile-sorter train` runs single-process or under torchrun.

torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``; we then join a process
group (nccl on GPU, gloo on CPU). Only the main process (rank 0) writes files, logs at INFO,
shows progress bars and tracks; every rank computes the same validation metrics from
gathered logits so early-stopping decisions agree without extra messages.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from sorting.errors import ConfigError

        raise ConfigError("device=cuda but no CUDA GPU is available (use device=auto or cpu)")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(device_preference: str = "auto") -> DistContext:
    """Join the torchrun process group if ``WORLD_SIZE`` > 1; otherwise a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        log.info("joined process group: rank %d/%d backend %s", rank, world, backend)
    if rank != 0:
        logging.getLogger("sorting").setLevel(logging.WARNING)  # only rank 0 reports progress
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def broadcast_object(obj: T, ctx: DistContext) -> T:
    """Rank 0's ``obj`` on every rank (e.g. the run folder name)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_arrays(arrays: dict[str, np.ndarray], ctx: DistContext) -> dict[str, np.ndarray]:
    """Concatenate each named array over ranks, in rank order (every rank gets the result)."""
    if not ctx.distributed:
        return arrays
    parts: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(parts, arrays)
    return {k: np.concatenate([p[k] for p in parts]) for k in arrays}


def shard_indices(n: int, ctx: DistContext) -> list[int]:
    """This rank's share of ``range(n)`` for evaluation (strided, no padding, no duplicates)."""
    return list(range(ctx.rank, n, ctx.world_size))


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP-wrap ``model`` when distributed (only its trainable parameters are synchronised)."""
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sync_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP keeps parameters identical but each rank's last forward pass updates its own
    running statistics; without this, ranks would validate (and finish) with different models.
    """
    if not ctx.distributed:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def state_digest(model: nn.Module) -> str:
    """SHA-1 of a state_dict's bytes (ranks that stayed in sync have equal digests)."""
    digest = hashlib.sha1()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """``obj`` from every rank, in rank order."""
    if not ctx.distributed:
        return [obj]
    parts: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(parts, obj)
    return parts


class ShardedSampler(Sampler[int]):
    """Per-epoch shuffled (optionally class-weighted) indices, split evenly across ranks.

    Like ``DistributedSampler`` (pads by repeating so every rank takes the same number of
    steps) but with optional draw weights for class-balanced sampling; single-process it is
    a seeded shuffle / ``WeightedRandomSampler``. Call :meth:`set_epoch` every epoch.
    """

    def __init__(self, n: int, ctx: DistContext, *, seed: int = 0, weights: np.ndarray | None = None) -> None:
        self.n = n
        self.rank = ctx.rank
        self.world = ctx.world_size
        self.seed = seed
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.epoch = 0
        self.per_rank = -(-n // self.world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        total = self.per_rank * self.world
        if self.weights is not None:
            order = torch.multinomial(self.weights, total, replacement=True, generator=gen).tolist()
        else:
            order = torch.randperm(self.n, generator=gen).tolist()
            while len(order) < total:  # pad so every rank takes the same number of steps
                order += order[: total - len(order)]
        return iter(order[self.rank : total : self.world])
