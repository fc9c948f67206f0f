"""Per-box action classification on the video ViT (the official UMT detection head:
``single_modality/action_detection/modeling_finetune.py``, built on AlphAction).

The model is the plain ``VisionTransformer`` with ``use_mean_pooling=False`` (a final ``norm``,
no ``fc_norm``) and a ``head`` of one logit per action: exactly the official module's keys
(``patch_embed``, ``blocks``, ``norm``, ``head``), so the official detection checkpoints load
strictly. What differs from the classifier is the pooling, done here:

    tokens [B, T'*h*w, D] -> grid [B, D, T', h, w] -> mean over T' [B, D, h, w]
    -> RoIAlign of every box, 7 x 7, on the h x w map [K, D, 7, 7] -> max over 7 x 7 [K, D]
    -> head [K, C]      (sigmoid per class: multi-label; loss BCE with logits)

as the official ``forward_features`` (``MEAN_BEFORE_POOLER``, ``align3d`` pooler at resolution 7,
scale 1/16, sampling ratio 0, then ``MaxPool2d(7)``). Boxes are normalised (x1, y1, x2, y2) in
[0, 1]; on the feature map they are ``box * (w, h)``, which is the official ``pixel box / 16``
for a frame of ``16 * (w, h)`` pixels. RoIAlign is torchvision's (``aligned=False``, the
maskrcnn-benchmark convention the official layer follows), no custom CUDA.

Box augmentation, as the official ``BoxList.random_aug`` / ``extend`` but on normalised boxes
(the official "+1 pixel" widths are left out): training jitters each corner by a fraction of
the box size, x1 by U(-0.2, 0.1) of the width, x2 by U(-0.1, 0.2), y1 by U(-0.1, 0.05) and y2 by
U(-0.05, 0.1) of the height (``sample_box``: ``random_aug(0.2, 0.1, 0.1, 0.05)``); testing
enlarges each box by 10% of its width and 5% of its height (``test_ext = (0.1, 0.05)``).
"""

from __future__ import annotations

from typing import Optional

import torch

from umt.models.vit import VisionTransformer

RESOLUTION = 7  # official ROIPoolingCfg.POOLER_RESOLUTION
TRAIN_JITTER = (0.2, 0.1, 0.1, 0.05)  # x out, x in, y out, y in (official sample_box)
TEST_EXTEND = (0.1, 0.05)  # official test_ext


def pooled_map(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Tokens ``[B, T'*h*w, D]`` on the ``(T', h, w)`` grid -> temporal mean ``[B, D, h, w]``."""
    b, n, d = tokens.shape
    t, h, w = grid
    if n != t * h * w:
        raise ValueError(f"{n} tokens do not fill the grid {grid}")
    return tokens.reshape(b, t, h, w, d).mean(1).permute(0, 3, 1, 2)


def roi_features(fmap: torch.Tensor, boxes: torch.Tensor, batch_index: torch.Tensor,
                 resolution: int = RESOLUTION) -> torch.Tensor:
    """RoIAlign + max pool: ``fmap [B, D, h, w]``, normalised ``boxes [K, 4]`` of clip
    ``batch_index [K]`` -> ``[K, D]``."""
    from torchvision.ops import roi_align

    h, w = fmap.shape[-2:]
    scale = boxes.new_tensor([w, h, w, h])
    rois = torch.cat([batch_index.to(boxes.dtype)[:, None], boxes * scale], dim=1)  # [K, 5]
    pooled = roi_align(fmap, rois.to(fmap.dtype), output_size=resolution, spatial_scale=1.0,
                       sampling_ratio=0, aligned=False)                  # [K, D, r, r]
    return pooled.amax(dim=(2, 3))


class BoxActionViT(VisionTransformer):
    """The video ViT with the per-box head: ``forward(video [B, 3, T, H, W], boxes [K, 4]
    normalised, batch_index [K]) -> logits [K, C]`` (a module forward, so DDP syncs it).
    Built with ``use_mean_pooling=False``; ``num_classes`` = the action ids (80 officially)."""

    def __init__(self, **kwargs):
        kwargs["use_mean_pooling"] = False
        super().__init__(**kwargs)

    def forward(self, x: torch.Tensor, boxes: torch.Tensor,  # type: ignore[override]
                batch_index: torch.Tensor) -> torch.Tensor:
        tokens = self.forward_features(x)                                # [B, N, D] (normed)
        fmap = pooled_map(tokens, self.patch_embed.grid)                 # [B, D, h, w]
        return self.head(roi_features(fmap, boxes, batch_index))         # [K, C]


def build_box_model(name: str, **kwargs) -> BoxActionViT:
    """``BoxActionViT`` of a ``umt_vit_{tiny,small,base,large}_patch16_224`` size; ``None``
    kwargs keep the size's defaults (as ``umt.models.create_model``)."""
    from umt.models.registry import SIZES

    size = name.removeprefix("umt_vit_").removesuffix("_patch16_224")
    if size not in SIZES or not name.startswith("umt_vit_"):
        raise ValueError(f"model.name={name!r}: expected umt_vit_{{{','.join(SIZES)}}}_patch16_224")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return BoxActionViT(**{**SIZES[size], **kwargs})


def jitter_boxes(boxes: torch.Tensor, generator: Optional[torch.Generator] = None,
                 jitter: tuple[float, float, float, float] = TRAIN_JITTER) -> torch.Tensor:
    """Training box jitter of normalised ``boxes [K, 4]`` (see the module docstring); the
    result stays in [0, 1] with x2 > x1, y2 > y1."""
    x_out, x_in, y_out, y_in = jitter
    k = boxes.shape[0]
    u = torch.rand(k, 4, generator=generator, dtype=boxes.dtype).to(boxes.device)
    lo = boxes.new_tensor([-x_out, -y_out, -x_in, -y_in])
    hi = boxes.new_tensor([x_in, y_in, x_out, y_out])
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)                   # [K, 4] w h w h
    out = boxes + size * (lo + (hi - lo) * u)
    eps = 1e-3
    x1 = out[:, 0].clamp(0, 1 - eps)
    y1 = out[:, 1].clamp(0, 1 - eps)
    x2 = torch.maximum(out[:, 2].clamp(max=1.0), x1 + eps)
    y2 = torch.maximum(out[:, 3].clamp(max=1.0), y1 + eps)
    return torch.stack([x1, y1, x2, y2], 1)


def extend_boxes(boxes: torch.Tensor, extend: tuple[float, float] = TEST_EXTEND) -> torch.Tensor:
    """Test-time enlargement of normalised ``boxes [K, 4]``, clipped to [0, 1]."""
    size = boxes[:, 2:] - boxes[:, :2]
    pad = size * boxes.new_tensor(extend) / 2                           # [K, 2]
    return torch.cat([boxes[:, :2] - pad, boxes[:, 2:] + pad], 1).clamp(0, 1)


def load_box_state_dict(model: BoxActionViT, sd: dict[str, torch.Tensor], source: str, *,
                        require_head: bool = False):
    """Load ``sd`` into ``model`` strictly: an official or our detection checkpoint (every key), or a
    start for fine-tuning -- Stage 1 / Stage 2 (the encoder and its ``norm``) or a fine-tuned
    classifier such as the official K710 model the detection recipe starts from (its ``fc_norm`` is
    dropped and ``norm`` starts fresh, as the official non-strict load leaves it); a head of
    another size starts fresh. ``require_head``: ``norm`` and ``head`` must come from the file
    (evaluation). Returns the ``LoadReport``."""
    from umt.models.checkpoint import adapt_state_dict, check_strict

    sd = dict(sd)
    dropped = [k for k in sd if k.startswith("fc_norm.")]
    for k in dropped:
        del sd[k]
    sd, report = adapt_state_dict(sd, model, source)
    report.dropped += dropped
    own = model.state_dict()
    own.pop("pos_embed", None)
    fresh = [k for k in own if k.startswith(("norm.", "head.")) and k not in sd]
    if require_head and fresh:
        raise ValueError(f"{source} has no {', '.join(fresh)} for this model (a pretraining "
                         f"checkpoint, or a head of another size than {model.num_classes}): "
                         f"evaluate a fine-tuned detection checkpoint")
    report.fresh = sorted(set(report.fresh) | set(fresh))
    check_strict(sd, own, report.fresh, source, report.kind, type(model).__name__)
    model.load_state_dict(sd, strict=False)  # strictness enforced above
    return report
