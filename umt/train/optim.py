"""Optimizer parameter groups (weight decay, layer-wise LR decay), AdamW and the LR schedule.

Every stage builds its optimizer here:

    groups = param_groups(model, weight_decay=0.05, layer_decay=0.75)   # fine-tunes
    optimizer = build_optimizer(groups, cfg.optim, lr, device)
    scheduler = build_scheduler(optimizer, total_steps, warmup_steps, min_lr, warmup_lr)

Each group carries an ``lr_scale``; timm's schedulers multiply the scheduled LR by it, so
layer-wise decay needs nothing else in the loop.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
from timm.optim import param_groups_layer_decay
from timm.scheduler import CosineLRScheduler

from umt.configs import OptimConfig


def _no_decay_names(model: nn.Module) -> set[str]:
    return set(getattr(model, "no_weight_decay", lambda: set())())


def param_groups(model: nn.Module, weight_decay: float,
                 layer_decay: Optional[float] = None) -> list[dict[str, Any]]:
    """Optimizer groups, each ``{"params", "weight_decay", "lr_scale"}``.

    Weight decay applies to matrices and kernels only: not to 1-D parameters (norms, biases,
    ``q_bias``/``v_bias``) nor to the names the model lists in ``no_weight_decay()``, as the
    official optimizer factory. Parameters with ``requires_grad=False`` are left out.

    ``layer_decay`` (fine-tuning; official 0.75 for B, 0.85 for L) scales the LR of layer ``i``
    by ``layer_decay ** (L + 1 - i)``: the patch embedding (and position table) is layer 0,
    ``blocks.j`` layer ``j + 1``, everything after the blocks (``fc_norm``, the head) layer
    ``L + 1`` with scale 1 -- the official ``LayerDecayValueAssigner``. The assignment is timm's
    ``param_groups_layer_decay`` driven by the model's ``group_matcher()``.
    """
    skip = _no_decay_names(model)
    if layer_decay is not None:
        if not hasattr(model, "group_matcher"):
            raise ValueError(f"{type(model).__name__} has no group_matcher(): layer decay needs one")
        return param_groups_layer_decay(model, weight_decay, no_weight_decay_list=list(skip),
                                        layer_decay=layer_decay)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]


def scaled_lrs(cfg: OptimConfig, global_batch: int) -> tuple[float, float, float]:
    """``(lr, min_lr, warmup_lr)``. With ``cfg.lr_scaling='linear'`` (the official video-only
    code) each is multiplied by ``global_batch / 256``; with ``'none'`` (the official
    multi-modality code) they are used as given."""
    scale = global_batch / 256 if cfg.lr_scaling == "linear" else 1.0
    return cfg.base_lr * scale, cfg.min_lr * scale, cfg.warmup_lr * scale


# devices with a fused AdamW kernel: CUDA always, CPUs from torch 2.4 (pyproject allows 2.3)
_FUSED_ADAMW_DEVICES = ("cuda", "cpu") if tuple(
    int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 4) else ("cuda",)


def build_optimizer(groups: list[dict[str, Any]], cfg: OptimConfig, lr: float,
                    device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``groups``; with ``cfg.fused`` the fused kernel on GPUs *and* CPUs (torch
    >= 2.4 has one for CPUs). On a CPU it is what keeps our Stage-1 step at or above
    the official one's speed: the official code uses the default (multi-tensor) AdamW, whose
    update takes ~40% of a small ViT-S step on one core; the fused kernel makes it ~15%
    faster end to end (BENCHMARKS.md, "Stage-1 step"). Same update up to rounding."""
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             fused=cfg.fused and device.type in _FUSED_ADAMW_DEVICES)


def build_scheduler(optimizer, total_steps: int, warmup_steps: int, min_lr: float,
                    warmup_lr: float) -> CosineLRScheduler:
    """Per-step cosine decay to ``min_lr`` after a linear warmup from ``warmup_lr`` (timm)."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return CosineLRScheduler(optimizer, t_initial=max(total_steps - warmup_steps, 1),
                             lr_min=min_lr, warmup_t=warmup_steps, warmup_lr_init=warmup_lr,
                             warmup_prefix=True, t_in_epochs=False)
