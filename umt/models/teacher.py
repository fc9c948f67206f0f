"""The frozen CLIP teacher (open_clip's vision tower, run frame by frame).

Matches the official ``single_modality/models/clip.py`` teacher: every frame is an image with
its own class token; it takes the student's ImageNet-normalised clip (not CLIP's constants, as
the official code does) resized to ``input_resolution``; it returns the last K layers' patch
tokens (increasing layer order) each through ``ln_post`` and ``proj`` and L2-normalised, plus
the last layer's class-token -> patch attention averaged over heads, which guides the masking.

Unlike the official teacher, all layers stay on PyTorch's fused attention path: the one
attention map needed is recomputed for the class-token query only (a [1 x L] product per head).
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Union

import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.model import _build_vision_tower

from umt.models.checkpoint import CheckpointError

log = logging.getLogger(__name__)


def _resample_pos(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """CLIP position table ``[1 + g*g, D]`` -> ``[1 + grid*grid, D]`` (bicubic, as official)."""
    old = int(round((pos.shape[0] - 1) ** 0.5))
    if old == grid:
        return pos
    cls_pos, patch_pos = pos[:1], pos[1:]
    patch_pos = patch_pos.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(pos.dtype)])


def names_weights_file(pretrained: Optional[str]) -> bool:
    """Whether a teacher's ``pretrained`` string is a file location (a path or URI), not an
    open_clip tag such as ``'openai'``."""
    return pretrained is not None and (pretrained.startswith("s3://") or "/" in pretrained
                                       or pretrained.endswith((".pth", ".pt", ".bin")))


def _read_visual_state_dict(pretrained) -> tuple[dict[str, torch.Tensor], str]:
    """An OpenAI-format visual state dict (what the official repo extracts into
    ``vit_b16.pth``), a full CLIP state dict (``visual.*``) or an official Stage-2 checkpoint
    (``clip_teacher.*``), with its source name: a local path or a checkpoint already read."""
    from umt.models.checkpoint import state_dict_of

    sd, uri = state_dict_of(pretrained)
    for prefix in ("visual.", "clip_teacher."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    w = sd.get("conv1.weight")
    if w is not None and w.dim() == 5:  # the official loader's inflated (1, p, p) Conv3d kernel
        if w.shape[2] != 1:
            raise CheckpointError(f"{uri}: conv1 has temporal kernel {w.shape[2]}; only 1 is supported")
        sd["conv1.weight"] = w[:, :, 0]
    return sd, uri


class CLIPTeacher(nn.Module):
    """``teacher(x [B,3,T,H,W]) -> (targets [K, B, T*HW, C], attn [B, T, HW])``; frozen.

    ``pretrained``: ``'openai'`` (or another open_clip tag; downloads), a local path of visual
    weights or those weights already read (a dict: ``umt.runtime.weights.read_checkpoint``
    reads ``s3://`` ones), or ``None`` for random weights (tests, the CPU demo). ``vision_cfg`` and
    ``embed_dim`` override open_clip's config for ``model_name`` (``heads`` is accepted and
    mapped to open_clip's ``head_width``). OpenAI CLIP uses QuickGELU, hence the default.
    ``autocast_dtype``: the teacher's precision on GPUs (bf16 by default; None = fp32).
    """

    def __init__(self, model_name: str = "ViT-B-16", pretrained: Union[str, dict, None] = "openai",
                 return_layers: int = 6, input_resolution: int = 224,
                 vision_cfg: Optional[dict[str, Any]] = None, embed_dim: Optional[int] = None,
                 quick_gelu: bool = True, autocast_dtype: Optional[torch.dtype] = torch.bfloat16):
        super().__init__()
        is_file = isinstance(pretrained, dict) or names_weights_file(pretrained)
        if pretrained is not None and not is_file:
            if vision_cfg or embed_dim:
                raise ValueError("vision_cfg/embed_dim overrides cannot be combined with an "
                                 f"open_clip pretrained tag ({pretrained!r})")
            visual = open_clip.create_model(model_name, pretrained=pretrained,
                                            force_quick_gelu=quick_gelu).visual
        else:
            cfg = open_clip.get_model_config(model_name)
            if cfg is None:
                raise ValueError(f"unknown open_clip model {model_name!r}")
            vcfg = {**cfg["vision_cfg"], **(vision_cfg or {})}
            if "heads" in vcfg:
                vcfg["head_width"] = vcfg["width"] // vcfg.pop("heads")
            visual = _build_vision_tower(embed_dim or cfg["embed_dim"], vcfg, quick_gelu=quick_gelu)
            if is_file:
                sd, source = _read_visual_state_dict(pretrained)
                if "positional_embedding" in sd:  # a file saved at another grid than the config's
                    built_grid = int(round((visual.positional_embedding.shape[0] - 1) ** 0.5))
                    sd["positional_embedding"] = _resample_pos(sd["positional_embedding"], built_grid)
                missing, unexpected = visual.load_state_dict(sd, strict=False)
                if missing or unexpected:
                    raise CheckpointError(f"teacher weights {source} do not fit {model_name}: "
                                          f"missing {missing[:20]}, unexpected {unexpected[:20]}")
        self.visual = visual
        self.patch_size = visual.conv1.kernel_size[0]
        if input_resolution % self.patch_size:
            raise ValueError(f"input_resolution {input_resolution} must divide by patch {self.patch_size}")
        self.input_resolution = input_resolution
        self.grid = input_resolution // self.patch_size
        with torch.no_grad():
            visual.positional_embedding = nn.Parameter(_resample_pos(visual.positional_embedding.data, self.grid))
        self.blocks = visual.transformer.resblocks
        if not 0 < return_layers <= len(self.blocks):
            raise ValueError(f"return_layers must be in 1..{len(self.blocks)}, got {return_layers}")
        self.return_layers = return_layers
        self.num_heads = self.blocks[-1].attn.num_heads
        self.dim = visual.proj.shape[1]
        self.autocast_dtype = autocast_dtype
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "CLIPTeacher":
        return super().train(False)  # frozen: always in eval mode

    def _cls_attention(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Head-averaged attention of the class token over all tokens: ``[N, L, D]`` -> ``[N, L]``."""
        y = blk.ln_1(x)
        d = y.shape[-1]
        w, b = blk.attn.in_proj_weight, blk.attn.in_proj_bias
        q = F.linear(y[:, :1], w[:d], b[:d])                       # [N, 1, D]
        k = F.linear(y, w[d:2 * d], b[d:2 * d])                    # [N, L, D]
        n, length, _ = k.shape
        h = self.num_heads
        q = q.view(n, 1, h, d // h).transpose(1, 2)                # [N, h, 1, dh]
        k = k.view(n, length, h, d // h).transpose(1, 2)           # [N, h, L, dh]
        scores = (q.float() @ k.float().transpose(-1, -2)) * (d // h) ** -0.5
        return scores.softmax(-1).mean(1)[:, 0]                    # [N, L]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, 3, T, H, W]`` -> ``(targets [K, B, T*HW, C] fp32, attn [B, T, HW] fp32)``."""
        b, c, t, h, w = x.shape
        r = self.input_resolution
        if (h, w) != (r, r):  # as the official engine: bicubic over (H, W) with C*T channels
            x = F.interpolate(x.reshape(b, c * t, h, w), size=(r, r), mode="bicubic",
                              align_corners=False).reshape(b, c, t, r, r)
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, r, r)
        use_amp = x.is_cuda and self.autocast_dtype is not None
        with torch.autocast(x.device.type, dtype=self.autocast_dtype or torch.float32, enabled=use_amp):
            return self._forward_frames(frames, b, t)

    def _forward_frames(self, frames: torch.Tensor, b: int, t: int):
        v = self.visual
        x = v.conv1(frames).flatten(2).transpose(1, 2)              # [BT, HW, D]
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = v.ln_pre(torch.cat([cls, x], 1) + v.positional_embedding.to(x.dtype))
        batch_first = getattr(v.transformer, "batch_first", True)
        kept, attn = [], None
        first_kept = len(self.blocks) - self.return_layers
        for i, blk in enumerate(self.blocks):
            if i == len(self.blocks) - 1:
                attn = self._cls_attention(blk, x)[:, 1:]           # [BT, HW]
            x = blk(x) if batch_first else blk(x.transpose(0, 1)).transpose(0, 1)
            if i >= first_kept:
                kept.append(x[:, 1:])
        z = v.ln_post(torch.stack(kept)) @ v.proj                 # [K, BT, HW, C]
        z = z.float()
        z = z / z.norm(dim=-1, keepdim=True)
        k, _, hw, dim = z.shape
        return z.reshape(k, b, t * hw, dim), attn.float().reshape(b, t, hw)
