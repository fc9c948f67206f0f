"""Fixed 1-D sinusoidal position table over the flattened (t, h, w) token index.

UMT (like VideoMAE) does not factorise space and time: token ``t*H*W + h*W + w`` gets row
``t*H*W + h*W + w`` of the Transformer sinusoid table. Fine-tuning at another frame count or
resolution interpolates the 8x14x14 table the model was pretrained with (bicubic in space, then
linear in time), exactly as the official ``modeling_finetune.get_sinusoid_encoding_table``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The token grid (T, H, W) every official UMT backbone was pretrained with: 8 frames at 224/16.
PRETRAIN_GRID = (8, 14, 14)


def sinusoid_table(n_position: int, dim: int) -> torch.Tensor:
    """Transformer sinusoid table -> float32 ``[1, n_position, dim]``.

    Row p, column j: ``p / 10000**(2*(j//2)/dim)``, sin on even columns, cos on odd ones.
    Computed in float64 (as the official numpy code) before the cast, so values match bit-for-bit
    up to the final float32 rounding.
    """
    pos = torch.arange(n_position, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)
    angles = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.float().unsqueeze(0)


def interpolated_table(grid: tuple[int, int, int], dim: int,
                       pretrain_grid: tuple[int, int, int] = PRETRAIN_GRID) -> torch.Tensor:
    """Position table for token grid ``(T, H, W)`` -> ``[1, T*H*W, dim]``.

    Starts from the table of ``pretrain_grid`` and, when the grid differs, resizes it the way
    the official fine-tuning code does: bicubic over (H, W) per frame (``align_corners=False``),
    then linear over T. An unchanged grid returns the plain table.
    """
    t, h, w = grid
    t0, h0, w0 = pretrain_grid
    table = sinusoid_table(t0 * h0 * w0, dim)
    if (h, w) != (h0, w0):
        x = table.reshape(t0, h0, w0, dim).permute(0, 3, 1, 2)  # [T0, C, H0, W0]
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
        table = x.permute(0, 2, 3, 1).reshape(1, t0 * h * w, dim)
    if t != t0:
        x = table.reshape(t0, h, w, dim).permute(1, 2, 3, 0).reshape(h * w, dim, t0)  # [HW, C, T0]
        x = F.interpolate(x, size=t, mode="linear")
        table = x.reshape(h, w, dim, t).permute(3, 0, 1, 2).reshape(1, t * h * w, dim)
    return table.contiguous()
