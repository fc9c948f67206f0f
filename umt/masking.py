"""Token masks for Stage 1 and Stage 2: semantic (teacher-attention guided), tube and random.

Every mask is bool ``[B, T*HW]`` with True = masked. Semantic and tube masks hide exactly
``int(HW * ratio)`` tokens in every frame, so every clip keeps ``T * (HW - int(HW * ratio))``
visible tokens (8x224 at 0.8: 40 per frame, 320 per clip); the random mask, as the official
``RandomMaskingGenerator``, hides ``int(T*HW * ratio)`` tokens anywhere in the clip.
"""

from __future__ import annotations

from typing import Optional

import torch


def num_visible(hw: int, ratio: float) -> int:
    """Visible tokens per frame, as the official code counts them."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return hw - int(hw * ratio)


def _mask_from_keep(keep: torch.Tensor, b: int, t: int, hw: int) -> torch.Tensor:
    """Visible indices ``[B*T, n_vis]`` (within each frame) -> bool mask ``[B, T*HW]``."""
    mask = torch.ones(b * t, hw, dtype=torch.bool, device=keep.device)
    mask.scatter_(1, keep, False)
    return mask.view(b, t * hw)


def _uniform(shape, device, generator, uniform):
    if uniform is None:
        return torch.rand(shape, device=device, generator=generator)
    if tuple(uniform.shape) != tuple(shape):
        raise ValueError(f"uniform noise must be {tuple(shape)}, got {tuple(uniform.shape)}")
    return uniform


def semantic_mask(attn: torch.Tensor, ratio: float = 0.8,
                  generator: Optional[torch.Generator] = None,
                  uniform: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Attention-guided mask: ``attn [B, T, HW]`` (teacher CLS->patch attention) -> bool ``[B, T*HW]``.

    Per frame, the visible tokens are drawn without replacement with probability proportional to
    the attention, as the official ``torch.multinomial(attn, HW)[:, :n_vis]``. The Gumbel-top-k
    form used here (``topk(log attn + Gumbel noise)``) samples the same distribution, all on the
    device, with no host sync. ``uniform`` (``[B, T, HW]`` in [0, 1)) replaces the internal
    draw, so a training job can take each clip's noise from one stream for the global batch.
    """
    b, t, hw = attn.shape
    n_vis = num_visible(hw, ratio)
    logits = attn.reshape(b * t, hw).float().clamp_min(1e-20).log()
    u = _uniform((b, t, hw), attn.device, generator, uniform).reshape(b * t, hw).clamp(1e-20, 1.0)
    gumbel = -torch.log(-torch.log(u))
    keep = (logits + gumbel).topk(n_vis, dim=1).indices
    return _mask_from_keep(keep, b, t, hw)


def tube_mask(batch: int, frames: int, hw: int, ratio: float = 0.8, device=None,
              generator: Optional[torch.Generator] = None,
              uniform: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One random spatial mask per clip, repeated over all frames -> bool ``[B, T*HW]``.

    ``uniform`` (``[B, T, HW]``): optional noise; frame 0's slice decides the mask.
    """
    n_vis = num_visible(hw, ratio)
    noise = _uniform((batch, frames, hw), device, generator, uniform)[:, 0]
    keep = noise.argsort(1)[:, :n_vis]
    return _mask_from_keep(keep.repeat_interleave(frames, 0), batch, frames, hw)


def random_mask(batch: int, frames: int, hw: int, ratio: float = 0.8, device=None,
                generator: Optional[torch.Generator] = None,
                uniform: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Uniformly random tokens over the whole clip (the same count per clip, not per frame)
    -> bool ``[B, T*HW]``."""
    n = frames * hw
    noise = _uniform((batch, frames, hw), device, generator, uniform).reshape(batch, n)
    keep = noise.argsort(1)[:, :num_visible(n, ratio)]
    return _mask_from_keep(keep, batch, 1, n)


def visible_count(kind: str, ratio: float, frames: int, hw: int) -> int:
    """Visible tokens per clip for a mask type (lets the training loop avoid a host sync)."""
    if kind == "random":
        return num_visible(frames * hw, ratio)
    return frames * num_visible(hw, ratio)


def make_mask(kind: str, ratio: float, attn: torch.Tensor,
              uniform: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Dispatch on the configured mask type; ``attn [B, T, HW]`` also gives the token grid."""
    b, t, hw = attn.shape
    if kind == "attention":
        return semantic_mask(attn, ratio, uniform=uniform)
    if kind == "tube":
        return tube_mask(b, t, hw, ratio, attn.device, uniform=uniform)
    if kind == "random":
        return random_mask(b, t, hw, ratio, attn.device, uniform=uniform)
    raise ValueError(f"unknown mask type {kind!r}: use attention, tube or random")
