"""The UMT student: a plain video ViT with joint space-time attention.

Layout and parameter names follow the official ``single_modality/models/modeling_finetune.py``
so official checkpoints load with no renaming: Conv3d patch embedding (tubelet 1 by default,
i.e. no temporal downsampling), no class token, pre-LN blocks, BEiT-style ``q_bias``/``v_bias``
(k has no bias), MLP ratio 4 with GELU, LayerNorm eps 1e-6, mean pooling -> ``fc_norm`` -> head.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch.utils.checkpoint import checkpoint

from umt.models.pos_embed import PRETRAIN_GRID, interpolated_table

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class PatchEmbed(nn.Module):
    """``[B, 3, T, H, W]`` -> ``[B, (T/tubelet)*(H/p)*(W/p), D]`` with one Conv3d."""

    def __init__(self, img_size: int, patch_size: int, num_frames: int, tubelet_size: int,
                 embed_dim: int, in_chans: int = 3):
        super().__init__()
        if img_size % patch_size or num_frames % tubelet_size:
            raise ValueError(f"img_size {img_size} must divide by patch {patch_size} and "
                             f"num_frames {num_frames} by tubelet {tubelet_size}")
        self.img_size, self.num_frames = img_size, num_frames
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, t, h, w = x.shape
        # T=1 is an image (Stage 2 trains on image-text pairs as 1-frame clips).
        if t not in (self.num_frames, 1) or (h, w) != (self.img_size, self.img_size):
            raise ValueError(f"input clip is {t}x{h}x{w} (frames x height x width) but the model "
                             f"was built for {self.num_frames}x{self.img_size}x{self.img_size} "
                             f"(or 1x{self.img_size}x{self.img_size} images)")
        if t == 1 and self.proj.kernel_size[0] != 1:
            raise ValueError(f"images (1-frame clips) need tubelet_size 1, the model has {self.proj.kernel_size[0]}")
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``.

    Written here rather than taken from timm because the official checkpoints store the bias as
    separate ``q_bias``/``v_bias`` (k bias fixed at zero), which timm's Attention cannot hold.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, D]`` -> ``[B, N, D]``."""
        b, n, d = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, d_head]
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, d)))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """Video ViT backbone / classifier.

    ``forward(x [B,3,T,H,W])`` -> logits ``[B, num_classes]``;
    ``forward_features(x)`` -> tokens ``[B, T*H*W/(tubelet*p*p), D]`` (before pooling).
    With ``use_mean_pooling=False`` (the Stage-1 encoder) the tokens go through a final ``norm``
    instead and there is no ``fc_norm``; ``num_classes=0`` makes the head an Identity.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, num_frames: int = 8,
                 tubelet_size: int = 1, num_classes: int = 400, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, fc_drop_rate: float = 0.0,
                 use_mean_pooling: bool = True, init_scale: float = 0.001,
                 pretrain_grid: tuple[int, int, int] = PRETRAIN_GRID):
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, num_frames, tubelet_size, embed_dim)
        # Fixed table, never trained. Persistent (saved as ``pos_embed``) only when it had to be
        # interpolated away from the pretraining grid, exactly when the official code saves it.
        grid = self.patch_embed.grid
        self.register_buffer("pos_embed", interpolated_table(grid, embed_dim, pretrain_grid),
                             persistent=grid != tuple(pretrain_grid))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()  # linear stochastic depth
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i])
            for i in range(depth))
        self.use_mean_pooling = use_mean_pooling
        self.norm = nn.Identity() if use_mean_pooling else LayerNorm(embed_dim)
        self.fc_norm = LayerNorm(embed_dim) if use_mean_pooling else None
        self.fc_dropout = nn.Dropout(fc_drop_rate) if fc_drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False
        self.apply(_init_trunc_normal)
        if isinstance(self.head, nn.Linear):  # tiny head init (official --init_scale 0.001)
            self.head.weight.data.mul_(init_scale)
            self.head.bias.data.mul_(init_scale)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer groups for layer-wise LR decay (timm's interface): the patch embedding is
        layer 0, ``blocks.i`` layer ``i + 1``, the rest (``fc_norm``, head) the last layer."""
        return {"stem": r"^patch_embed", "blocks": r"^blocks\.(\d+)"}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding + fixed position table: ``[B,3,T,H,W]`` -> ``[B, N, D]``.

        An image (T=1) gets the first H*W rows of the table: the official Stage-2 encoder's
        ``img_pos_embed`` (a sinusoid over H*W), not the clip table repeated.
        """
        x = self.patch_embed(x)
        pos = self.pos_embed
        if x.shape[1] != pos.shape[1]:
            pos = pos[:, :x.shape[1]]
        return self.pos_drop(x + pos.to(x.dtype))

    def run_blocks(self, x: torch.Tensor, return_layers: int = 0):
        """Run every block on ``x [B, N', D]`` (all tokens or the visible ones).

        Returns the last block's output; with ``return_layers=K`` also the outputs of the last K
        blocks stacked in increasing layer order, ``[K, B, N', D]``.
        """
        kept = []
        first_kept = len(self.blocks) - return_layers
        for i, blk in enumerate(self.blocks):
            if self.grad_checkpointing and self.training:
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if return_layers and i >= first_kept:
                kept.append(x)
        return (x, torch.stack(kept)) if return_layers else x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, H, W]`` -> tokens ``[B, N, D]`` after the blocks (and ``norm``)."""
        return self.norm(self.run_blocks(self.embed(x)))

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, N, D]`` -> logits ``[B, num_classes]``: mean pool -> fc_norm -> dropout -> head."""
        pooled = tokens.mean(1)
        if self.fc_norm is not None:
            pooled = self.fc_norm(pooled)
        return self.head(self.fc_dropout(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()


def _init_trunc_normal(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
