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
    if use_cuda and not torch.cuda.is_available():
        raise ValueError(f"train.device={device!r} but this machine has no usable CUDA device "
                         f"(torch {torch.__version__}); use train.device=cpu or auto")
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


def sum_over_ranks(x, info: DistInfo) -> float:
    """The sum of a per-rank scalar (a collective: all ranks must call it)."""
    x = torch.as_tensor(x, dtype=torch.float64, device=info.device).detach().clone()
    if info.world_size > 1:
        dist.all_reduce(x)
    return float(x)


def mean_dict_over_ranks(values: dict[str, torch.Tensor], info: DistInfo) -> dict[str, float]:
    """Global means of per-rank scalars, in one collective (every rank must pass the same keys)."""
    if not values:
        return {}
    keys = sorted(values)
    x = torch.stack([torch.as_tensor(values[k], dtype=torch.float64, device=info.device).detach()
                     for k in keys])
    if info.world_size > 1:
        dist.all_reduce(x)
        x = x / info.world_size
    return dict(zip(keys, x.tolist()))


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _gather(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    pad = max(sizes) - x.shape[0]  # all_gather needs equal shapes: pad a short last batch
    xp = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x.contiguous()
    parts = [torch.empty_like(xp) for _ in sizes]
    dist.all_gather(parts, xp)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns this rank's slice of the gradient.

    ``sum_grads=True`` first sums the gradient over ranks (every rank's loss depends on every
    rank's features), so the DDP-averaged gradient equals one process's gradient on the whole
    batch. ``False`` keeps only the gradient of this rank's own loss: the official UMT
    ``AllGather`` (``models/utils.py``), whose VTC gradient is therefore 1/world_size of that.
    """

    @staticmethod
    def forward(ctx, x, sizes, rank, sum_grads):
        ctx.sizes, ctx.rank, ctx.sum_grads = sizes, rank, sum_grads
        return _gather(x, sizes)

    @staticmethod
    def backward(ctx, grad):
        if ctx.sum_grads:
            grad = grad.contiguous()
            dist.all_reduce(grad)
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None, None, None


def all_gather_with_grad(x: torch.Tensor, sum_grads: bool = False) -> torch.Tensor:
    """Concatenate ``x [B_r, ...]`` of every rank in rank order -> ``[sum_r B_r, ...]``, with
    gradient back to this rank's ``x`` (integer tensors such as sample ids pass without one).

    One process (no process group): ``x`` itself. Ranks may hold different batch sizes (a
    short last batch): the sizes are exchanged first. ``sum_grads`` picks the backward (see
    ``_GatherWithGrad``): False (default) is the official UMT behaviour; True gives the
    gradient of the loss of the whole gathered batch, equal to one process's.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    if not x.requires_grad:
        return _gather(x, sizes)
    return _GatherWithGrad.apply(x, sizes, dist.get_rank(), sum_grads)
