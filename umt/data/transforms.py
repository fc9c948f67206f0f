"""Clip transforms shared by the loaders, following the official UMT / VideoMAE recipes.

Training (Stage 1): ``GroupMultiScaleCrop(img_size, [1, .875, .75, .66])`` -- a crop whose
sides are scales of the short side (aspect distorted by at most one scale step) at one of 13
fixed positions, resized to ``img_size`` squared -- then a random horizontal flip. Testing:
resize the short side to ``img_size`` and take ``num_crops`` square crops along the long side
(1 = centre). Both end with ImageNet normalisation. The same crop is applied to every frame of
a clip, so motion is preserved.

Not Stage 2's recipe: the official Stage 2 (multi-modality) pipeline uses
``RandomResizedCrop(img_size, scale=(0.5, 1.0), interpolation=bicubic)`` + horizontal flip,
which this module does not implement.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _fixed_offsets(w: int, h: int, cw: int, ch: int) -> list[tuple[int, int]]:
    """The 13 crop positions of GroupMultiScaleCrop (corners, centre, edge centres, quarters)."""
    ws, hs = (w - cw) // 4, (h - ch) // 4
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0),
            (1, 1), (3, 1), (1, 3), (3, 3)]
    return [(i * ws, j * hs) for i, j in grid]


def multi_scale_crop_box(h: int, w: int, img_size: int, scales: list[float],
                         rng: np.random.Generator, max_distort: int = 1) -> tuple[int, int, int, int]:
    """``(x, y, crop_w, crop_h)`` of one GroupMultiScaleCrop draw for an ``h x w`` frame."""
    base = min(h, w)
    sizes = [int(base * s) for s in scales]
    # Sizes within 3 px of the output snap to it (no pointless 1-2 px resize), as the original.
    sizes = [img_size if abs(s - img_size) < 3 else s for s in sizes]
    sizes = [max(1, min(s, base)) for s in sizes]
    pairs = [(cw, ch) for i, ch in enumerate(sizes) for j, cw in enumerate(sizes)
             if abs(i - j) <= max_distort]
    cw, ch = pairs[int(rng.integers(len(pairs)))]
    offsets = _fixed_offsets(w, h, cw, ch)
    x, y = offsets[int(rng.integers(len(offsets)))]
    return x, y, cw, ch


def _to_float(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float ``[T, 3, H, W]`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)


def _normalize(clip: torch.Tensor) -> torch.Tensor:
    """float ``[T, 3, H, W]`` in [0, 1] -> ImageNet-normalised ``[3, T, H, W]``."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((clip - mean) / std).permute(1, 0, 2, 3).contiguous()


def _resize(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(clip.shape[-2:]) == size:
        return clip
    # antialias: downscaling 320p -> 224 without it aliases (PIL's bilinear, used by the
    # official code, is antialiased too).
    return F.interpolate(clip, size=size, mode="bilinear", align_corners=False, antialias=True)


def train_transform(frames: np.ndarray, img_size: int, scales: list[float], flip: bool,
                    rng: np.random.Generator) -> torch.Tensor:
    """Stage-1/2 training augmentation.

    Args:
        frames: uint8 ``[T, H, W, 3]`` RGB.
    Returns:
        float ``[3, T, img_size, img_size]``, ImageNet-normalised.
    """
    _, h, w, _ = frames.shape
    x, y, cw, ch = multi_scale_crop_box(h, w, img_size, list(scales) or [1.0], rng)
    # Crop before converting to float: 4x less memory traffic on the biggest array.
    clip = _to_float(frames[:, y:y + ch, x:x + cw])
    clip = _resize(clip, (img_size, img_size))
    if flip and rng.random() < 0.5:
        clip = clip.flip(-1)
    return _normalize(clip)


def test_transforms(frames: np.ndarray, img_size: int, num_crops: int = 1) -> list[torch.Tensor]:
    """Evaluation views: short side -> ``img_size``, then ``num_crops`` crops along the long side.

    Args:
        frames: uint8 ``[T, H, W, 3]`` RGB.
    Returns:
        ``num_crops`` float tensors ``[3, T, img_size, img_size]``, ImageNet-normalised.
    """
    _, h, w, _ = frames.shape
    scale = img_size / min(h, w)
    nh, nw = max(img_size, round(h * scale)), max(img_size, round(w * scale))
    clip = _resize(_to_float(frames), (nh, nw))
    views = []
    for k in range(num_crops):
        # Evenly spaced along the long side; one crop = the centre (VideoMAE's spatial_step).
        frac = 0.5 if num_crops == 1 else k / (num_crops - 1)
        y = int(round((nh - img_size) * (frac if nh > nw else 0.5)))
        x = int(round((nw - img_size) * (frac if nw >= nh else 0.5)))
        views.append(_normalize(clip[:, :, y:y + img_size, x:x + img_size]))
    return views
