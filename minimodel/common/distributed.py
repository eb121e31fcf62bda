"""torchrun integration: process group setup (NCCL on GPU, gloo on CPU) and rank helpers."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from minimodel.common.errors import UserError


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False   # False when a caller (e.g. the ablation driver) set the group up

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """The one device choice (training, eval, dream): "auto" is this rank's GPU when CUDA is visible,
    else the CPU; "cuda" is this rank's GPU (a UserError without one); anything else is taken as a
    torch device string ("cpu", "cuda:1", "mps")."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("device cuda was asked for (train.device / --device) but no CUDA device is visible")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if requested == "auto":
        return torch.device("cpu")
    try:
        return torch.device(requested)
    except RuntimeError:
        raise UserError(f"unknown device {requested!r}: use auto, cpu, cuda or a torch device such as cuda:1") from None


def init_distributed(requested_device: str = "auto") -> DistInfo:
    """Read torchrun's environment; a plain `python -m` run is a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local)
    owns = False
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
        owns = True
    return DistInfo(rank=rank, local_rank=local, world_size=world, device=device, owns_group=owns)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
