"""Multi-process training through PyTorch's own engine (torchrun + DistributedDataParallel).

`torchrun --nproc_per_node N -m maskrcnn train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; we
initialize NCCL on GPUs and gloo on CPUs. Logging, checkpoints and evaluation happen on rank 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(
        rank=int(os.environ["RANK"]), world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", 0))
    )
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def all_finite(value: torch.Tensor, info: DistInfo) -> bool:
    """True when `value` is finite on every rank (so all ranks skip a bad step together)."""
    flag = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
    if info.enabled:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
