"""The Stage-1 student: the video ViT on visible tokens + per-layer alignment heads.

Mirrors the official ``PretrainVisionTransformer`` (``modeling_pretrain_umt.py``) and its
checkpoint layout (``encoder.*``, ``clip_decoder.{k}.*``): the encoder runs on the visible
tokens only, the outputs of its last K blocks (increasing layer order) go through the shared
final LayerNorm, get the fixed sinusoid table gathered at the visible positions added, and then
each its own ``Linear -> LayerNorm -> L2`` head into the teacher's space. There is no mask token
and no decoder transformer.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from umt.models.pos_embed import sinusoid_table
from umt.models.vit import LayerNorm, VisionTransformer


class AlignHead(nn.Module):
    """``[..., D]`` -> unit vectors ``[..., C_teacher]`` (official ``Linear_Decoder``)."""

    def __init__(self, embed_dim: int, teacher_dim: int):
        super().__init__()
        self.head = nn.Linear(embed_dim, teacher_dim)
        self.norm = LayerNorm(teacher_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.head(x))
        return x / x.norm(dim=-1, keepdim=True)


def visible_indices(mask: torch.Tensor, n_vis: Optional[int] = None) -> torch.Tensor:
    """Positions of the visible tokens, ascending: bool ``[B, N]`` (True = masked) -> ``[B, N_vis]``.

    Every row must show the same number of tokens (semantic, tube and random masks all do).
    Given ``n_vis`` (the training loop knows it from the mask ratio) this needs no host sync;
    without it the count is read and checked here. A stable sort keeps the positions in
    increasing order, the order the official boolean gather ``x[~mask]`` produces.
    """
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"mask must be bool [B, N], got {mask.dtype} {tuple(mask.shape)}")
    if n_vis is None:
        counts = (~mask).sum(1)
        n_vis = int(counts[0])
        if not bool((counts == n_vis).all()):
            raise ValueError(f"every clip must have the same number of visible tokens, got {counts.tolist()}")
    return torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :n_vis]


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Tokens at ``idx``: ``x [..., B, N, C]``, ``idx [B, M]`` -> ``[..., B, M, C]``."""
    idx = idx.unsqueeze(-1).expand(*x.shape[:-3], *idx.shape, x.shape[-1])
    return torch.gather(x, -2, idx)


class PretrainVisionTransformer(nn.Module):
    """``forward(x [B,3,T,H,W], mask bool [B,N])`` -> ``[K, B, N_vis, teacher_dim]`` unit vectors."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, num_frames: int = 8,
                 tubelet_size: int = 1, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path_rate: float = 0.0, teacher_dim: int = 512, align_layers: int = 6):
        super().__init__()
        if not 0 < align_layers <= depth:
            raise ValueError(f"align_layers must be in 1..depth={depth}, got {align_layers}")
        grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        # The encoder's own table is computed for its grid directly (no interpolation), as the
        # official pretraining model does; it keeps a final norm and no classifier.
        self.encoder = VisionTransformer(
            img_size=img_size, patch_size=patch_size, num_frames=num_frames,
            tubelet_size=tubelet_size, num_classes=0, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate, use_mean_pooling=False, pretrain_grid=grid)
        self.align_layers = align_layers
        self.teacher_dim = teacher_dim
        self.clip_decoder = nn.ModuleList(AlignHead(embed_dim, teacher_dim) for _ in range(align_layers))
        self.register_buffer("clip_pos_embed", sinusoid_table(self.encoder.patch_embed.num_patches, embed_dim),
                             persistent=False)
        self.apply(_init_xavier)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        return {"encoder.pos_embed", "clip_pos_embed"}

    def forward(self, x: torch.Tensor, mask: torch.Tensor,
                visible_idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``visible_idx`` (``visible_indices(mask)``) may be passed when already computed."""
        idx = visible_indices(mask) if visible_idx is None else visible_idx  # [B, N_vis]
        tokens = gather_tokens(self.encoder.embed(x), idx)             # [B, N_vis, D]
        _, layers = self.encoder.run_blocks(tokens, self.align_layers)  # [K, B, N_vis, D]
        layers = self.encoder.norm(layers)
        pos = gather_tokens(self.clip_pos_embed.to(layers.dtype).expand(x.shape[0], -1, -1), idx)
        layers = layers + pos
        return torch.stack([head(layers[k]) for k, head in enumerate(self.clip_decoder)])


def _init_xavier(m: nn.Module) -> None:
    # The official pretraining model initialises Linear layers with xavier_uniform.
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
