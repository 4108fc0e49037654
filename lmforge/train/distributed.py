"""Data-parallel training under `torchrun`: DDP (gloo on CPU, NCCL on GPU), or FSDP2 behind a flag.

Parallelism is applied from outside the model: the model file stays single-device. Each process
reads its own slice of every global batch; only rank 0 logs and writes files.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1


def init_world(device: torch.device) -> World:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    size = int(os.environ.get("WORLD_SIZE", 1))
    if size == 1:
        return World(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return World(rank=rank, size=size, local_rank=local_rank, device=device)


def wrap_model(model: nn.Module, world: World, *, fsdp: bool = False) -> nn.Module:
    """DDP, or FSDP2 (`fully_shard` on each block, then on the whole model); unchanged alone."""
    if not world.is_distributed:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[world.device.index] if world.device.type == "cuda" else None
    )


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def no_sync(model: nn.Module, is_last_micro: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulation."""
    if is_last_micro or not hasattr(model, "no_sync"):
        return nullcontext()
    return model.no_sync()


def all_reduce_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    if world.is_distributed:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def from_rank0(value, world: World):
    """Rank 0's `value` (any picklable object) on every process."""
    if not world.is_distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    if world.is_distributed:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.is_distributed and dist.is_initialized():
        dist.destroy_process_group()
