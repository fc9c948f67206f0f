"""Process-group setup from the standard torchrun environment only (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) — what torchrun sets, on a laptop or in a PyTorchJob pod.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> DistInfo:
    """Initialise the process group when WORLD_SIZE > 1 (NCCL on GPUs, gloo on CPUs)."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local, dev)


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, indexed by rank (a collective: all ranks must call it)."""
    if info.world_size == 1:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def agree_on_step(step: int, info: DistInfo) -> int:
    """Check all ranks resume from the same step (a collective).

    Only rank 0 writes checkpoints; a multi-node job whose output folder is not shared would
    otherwise have ranks start at different steps and hang in mismatched collectives.
    """
    if info.world_size == 1:
        return step
    lo = torch.tensor(step, device=info.device)
    hi = lo.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if lo.item() != hi.item():
        raise RuntimeError(
            f"ranks found different checkpoints to resume from (steps {lo.item()}..{hi.item()}): "
            f"train.output_dir must be storage every node sees (s3:// or a shared volume)")
    return step


def mean_over_ranks(x: torch.Tensor, info: DistInfo) -> float:
    """The global mean of a per-rank scalar (for logging the loss of the whole batch)."""
    return sum_over_ranks(x, info) / info.world_size


def sum_over_ranks(x, info: DistInfo) -> float:
    """The sum of a per-rank scalar (a collective: all ranks must call it)."""
    x = torch.as_tensor(x, dtype=torch.float64, device=info.device).detach().clone()
    if info.world_size > 1:
        dist.all_reduce(x)
    return float(x)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
