"""Process-group plumbing for DistributedDataParallel under torchrun (gloo on CPU, nccl on CUDA).

A run started by ``torchrun`` has RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR/PORT) in its
environment; anything else is a single process and every helper here degrades to a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import BertforgeError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    # True when this call created the process group (and so should destroy it).
    owner: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | torch.device | None = None) -> DistInfo:
    """Join the process group torchrun describes (idempotent) and pick this process's device:
    ``cuda:LOCAL_RANK`` when CUDA is present, else the CPU; ``device`` overrides."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if device is None:
        device = f"cuda:{local}" if cuda else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owner = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owner = True
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device, owner=owner)


def teardown(info: DistInfo, wait: bool = True) -> None:
    """Leave the process group this process created; ``wait`` for the others first (not after an error,
    when they may never arrive)."""
    if info.owner and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (a one-element list in a single process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_tensors(tensors: list[torch.Tensor], src: int = 0) -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        for t in tensors:
            dist.broadcast(t, src=src)


def shard_batch(batch: dict, rank: int, world_size: int) -> dict:
    """Rank ``rank``'s contiguous share of a global batch: rows [rank * B/W, (rank + 1) * B/W) of every
    tensor with a batch dimension. Every process reads the same data stream, so the data position is
    identical everywhere and one checkpoint (rank 0's) resumes all of them."""
    if world_size == 1:
        return batch
    sizes = {v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim > 0}
    if len(sizes) != 1:
        raise ValueError(f"batch tensors disagree on the batch size: {sorted(sizes)}")
    (size,) = sizes
    if size % world_size:
        raise BertforgeError(f"a micro-batch of {size} sequences cannot be split evenly over {world_size} "
                             f"processes; use a batch size divisible by {world_size}")
    per = size // world_size
    return {k: v[rank * per:(rank + 1) * per] if isinstance(v, torch.Tensor) and v.ndim > 0 else v
            for k, v in batch.items()}
