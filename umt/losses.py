"""Unmasked Token Alignment (UTA) loss; Stage-2 losses (VTC, VTM, MLM) join this file later."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from umt.models.pretrain import gather_tokens, visible_indices


def uta_loss(student: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None,
             kind: str = "l2") -> torch.Tensor:
    """Align the student's visible tokens with the teacher's.

    ``student [K, B, N_vis, C]`` (unit vectors); ``target [K, B, N, C]`` with the bool ``mask
    [B, N]`` (True = masked) the student used, or ``target`` already gathered ``[K, B, N_vis, C]``.

    ``kind='l2'`` (the paper's): mean over layers, clips and visible tokens of ``2 - 2*cos``
    (for unit vectors, the squared distance). ``'mse'`` and ``'smooth_l1'`` are the official
    alternatives, averaged over every element.
    """
    if mask is not None:
        target = gather_tokens(target, visible_indices(mask))
    if student.shape != target.shape:
        raise ValueError(f"student {tuple(student.shape)} and target {tuple(target.shape)} differ")
    target = target.to(student.dtype)
    if kind == "l2":
        return (2 - 2 * (student * target).sum(-1)).mean()
    if kind == "mse":
        return F.mse_loss(student, target)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(student, target)
    raise ValueError(f"unknown UTA loss {kind!r}: use l2, mse or smooth_l1")
