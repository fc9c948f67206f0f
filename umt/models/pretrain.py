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
    """``[..., D]`` -> unit vectors ``[..., C_teacher]`` (official ``Linear_Decoder``).

    ``norm_eps``: 1e-6 in the official Stage-1 code, torch's default 1e-5 in its Stage-2 code.
    """

    def __init__(self, embed_dim: int, teacher_dim: int, norm_eps: float = 1e-6):
        super().__init__()
        self.head = nn.Linear(embed_dim, teacher_dim)
        self.norm = nn.LayerNorm(teacher_dim, eps=norm_eps)

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
    """``forward(x [B,3,T,H,W], mask bool [B,N])`` -> ``[K, B, N_vis, teacher_dim]`` unit vectors.

    The Stage-2 video encoder is this same module with ``pool_norm=True`` (the official
    ``vision_encoder.pool_norm``, the LayerNorm of the pooled tokens) and ``align_norm_eps=1e-5``
    (the official Stage-2 ``Linear_Decoder`` uses torch's default LayerNorm eps); it calls
    ``forward_visible`` and ``pool``.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, num_frames: int = 8,
                 tubelet_size: int = 1, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path_rate: float = 0.0, teacher_dim: int = 512, align_layers: int = 6,
                 align_norm_eps: float = 1e-6, pool_norm: bool = False):
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
        self.clip_decoder = nn.ModuleList(AlignHead(embed_dim, teacher_dim, align_norm_eps)
                                          for _ in range(align_layers))
        self.register_buffer("clip_pos_embed", sinusoid_table(self.encoder.patch_embed.num_patches, embed_dim),
                             persistent=False)
        if pool_norm:
            self.pool_norm = LayerNorm(embed_dim)
        self.apply(_init_xavier)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        return {"encoder.pos_embed", "clip_pos_embed"}

    def forward(self, x: torch.Tensor, mask: torch.Tensor,
                visible_idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``visible_idx`` (``visible_indices(mask)``) may be passed when already computed."""
        return self.forward_visible(x, mask, visible_idx, align=True)[1]

    def forward_visible(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                        visible_idx: Optional[torch.Tensor] = None, align: bool = True):
        """One encoder pass on the visible tokens; ``x [B,3,T,H,W]`` (T=1: an image).

        Returns ``(tokens [B, N_vis, D], aligned [K, B, N_vis, teacher_dim] or None)``: the
        tokens after the final ``norm`` (the official ``vision_embeds``) and, with ``align``, the
        alignment heads' unit vectors. ``mask=None`` runs every token (``N_vis = N``).
        """
        tokens = self.encoder.embed(x)                                     # [B, N, D]
        idx = None
        if mask is not None or visible_idx is not None:
            idx = visible_indices(mask) if visible_idx is None else visible_idx  # [B, N_vis]
            tokens = gather_tokens(tokens, idx)                            # [B, N_vis, D]
        if not align:
            return self.encoder.norm(self.encoder.run_blocks(tokens)), None
        _, layers = self.encoder.run_blocks(tokens, self.align_layers)     # [K, B, N_vis, D]
        layers = self.encoder.norm(layers)  # the last layer is the encoder's output: reuse it
        pos = self.clip_pos_embed.to(layers.dtype).expand(x.shape[0], -1, -1)
        # Images (T=1) have positions < H*W, whose rows are the official clip_img_pos_embed.
        pos = pos[:, :tokens.shape[1]] if idx is None else gather_tokens(pos, idx)
        aligned = torch.stack([head(layers[k] + pos) for k, head in enumerate(self.clip_decoder)])
        return layers[-1], aligned

    def pool(self, tokens: torch.Tensor, frames: Optional[int] = None) -> torch.Tensor:
        """Official Stage-2 pooling: ``pool_norm`` of the token mean.

        ``tokens [B, N', D]`` -> ``[B, D]`` (``frames=None``: one vector, as in training on
        masked clips) or ``[B, frames, D]`` (per-frame means: tokens are ordered frame-major, so
        every frame must contribute the same number, e.g. unmasked evaluation).
        """
        if not hasattr(self, "pool_norm"):
            raise AttributeError("pool() needs the Stage-2 encoder, built with pool_norm=True")
        if frames is None:
            return self.pool_norm(tokens.mean(1))
        b, n, d = tokens.shape
        if n % frames:
            raise ValueError(f"{n} tokens do not split into {frames} frames of equal size")
        return self.pool_norm(tokens.view(b, frames, n // frames, d).mean(2))


def _init_xavier(m: nn.Module) -> None:
    # The official pretraining model initialises Linear layers with xavier_uniform.
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
