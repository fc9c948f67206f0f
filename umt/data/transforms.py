"""Clip transforms shared by the loaders, following the official UMT / VideoMAE recipes.

Training (Stage 1): ``GroupMultiScaleCrop(img_size, [1, .875, .75, .66])`` -- a crop whose
sides are scales of the short side (aspect distorted by at most one scale step) at one of 13
fixed positions, resized to ``img_size`` squared -- then a random horizontal flip. Testing:
resize the short side to ``img_size`` and take ``num_crops`` square crops along the long side
(1 = centre). Both end with ImageNet normalisation. The same crop is applied to every frame of
a clip, so motion is preserved.

Stage 2 and retrieval (the official multi-modality recipe, ``multi_modality/dataset/__init__.py``):
training is ``RandomResizedCrop(img_size, scale=(0.5, 1.0), ratio=(3/4, 4/3), bicubic)`` +
horizontal flip (:func:`vl_train_transform`), evaluation ``Resize((img_size, img_size),
bicubic)`` with no crop (:func:`vl_test_transform`). As officially, both resize the uint8 frames
(torchvision's resize, rounded back to uint8) before converting to float; the crop box and the
flip are drawn once per clip from a passed Generator (torchvision draws from torch's global RNG,
which a deterministic, resumable loader cannot use). Resizing is antialiased (torchvision's
default; the torchvision of the official environment did not antialias tensors).
"""

from __future__ import annotations

import math
from typing import Sequence

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


def _u8_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> uint8 ``[T, 3, H, W]`` (what the official transforms receive)."""
    arr = np.ascontiguousarray(frames)
    if not arr.flags.writeable:  # PIL / broadcast views: torch wants memory it may own
        arr = arr.copy()
    return torch.from_numpy(arr).permute(0, 3, 1, 2)


def to_float(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float ``[T, 3, H, W]`` in [0, 1]."""
    return _u8_tensor(frames).float().div_(255.0)


def normalize(clip: torch.Tensor) -> torch.Tensor:
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
    """Stage-1 training augmentation (GroupMultiScaleCrop + flip).

    Args:
        frames: uint8 ``[T, H, W, 3]`` RGB.
    Returns:
        float ``[3, T, img_size, img_size]``, ImageNet-normalised.
    """
    _, h, w, _ = frames.shape
    x, y, cw, ch = multi_scale_crop_box(h, w, img_size, list(scales) or [1.0], rng)
    # Crop before converting to float: 4x less memory traffic on the biggest array.
    clip = to_float(frames[:, y:y + ch, x:x + cw])
    clip = _resize(clip, (img_size, img_size))
    if flip and rng.random() < 0.5:
        clip = clip.flip(-1)
    return normalize(clip)


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
    clip = _resize(to_float(frames), (nh, nw))
    views = []
    for k in range(num_crops):
        # Evenly spaced along the long side; one crop = the centre (VideoMAE's spatial_step).
        frac = 0.5 if num_crops == 1 else k / (num_crops - 1)
        y = int(round((nh - img_size) * (frac if nh > nw else 0.5)))
        x = int(round((nw - img_size) * (frac if nw >= nh else 0.5)))
        views.append(normalize(clip[:, :, y:y + img_size, x:x + img_size]))
    return views


# ------------------------------------------------------------------- Stage 2 / retrieval


def random_resized_crop_box(h: int, w: int, scale: Sequence[float], rng: np.random.Generator,
                            ratio: Sequence[float] = (3 / 4, 4 / 3),
                            attempts: int = 10) -> tuple[int, int, int, int]:
    """``(top, left, crop_h, crop_w)`` of one Inception-style crop box for an ``h x w`` frame:
    torchvision's ``RandomResizedCrop.get_params`` and the official action fine-tuning's
    ``_get_param_spatial_crop`` (the same algorithm; the action augmentation's
    :func:`umt.data.video_transforms.sample_resized_crop_box` is this draw).

    Area fraction ~ U(scale), aspect w/h log-uniform in ``ratio``: up to ``attempts`` tries for
    a box that fits (``0 < crop_w <= w``, ``0 < crop_h <= h``), else the centre fallback (the
    whole frame, cut to the nearest allowed aspect). Each try draws two ``rng.random()``, a fit
    two ``rng.integers`` (top, then left).
    """
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = (scale[0] + (scale[1] - scale[0]) * rng.random()) * area
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * rng.random())
        cw = int(round(math.sqrt(target_area * aspect)))
        ch = int(round(math.sqrt(target_area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return top, left, ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        cw, ch = int(round(h * max(ratio))), h
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def vl_train_transform(frames: np.ndarray, img_size: int, scale: tuple[float, float], flip: bool,
                       rng: np.random.Generator) -> torch.Tensor:
    """Stage-2 training augmentation, one crop box and one flip for the whole clip.

    Args:
        frames: uint8 ``[T, H, W, 3]`` RGB (T = 1 for an image).
    Returns:
        float ``[3, T, img_size, img_size]``, ImageNet-normalised.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    _, h, w, _ = frames.shape
    top, left, ch, cw = random_resized_crop_box(h, w, tuple(scale), rng)
    # Crop the uint8 array first: the resize then reads only the box.
    clip = _u8_tensor(frames[:, top:top + ch, left:left + cw])
    clip = TF.resize(clip, [img_size, img_size], interpolation=InterpolationMode.BICUBIC,
                     antialias=True)
    if flip and rng.random() < 0.5:
        clip = clip.flip(-1)
    return normalize(clip.float().div_(255.0))


def vl_test_transform(frames: np.ndarray, img_size: int) -> torch.Tensor:
    """Retrieval evaluation: ``Resize((img_size, img_size))`` bicubic, no crop.

    Args:
        frames: uint8 ``[T, H, W, 3]`` RGB.
    Returns:
        float ``[3, T, img_size, img_size]``, ImageNet-normalised.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    clip = TF.resize(_u8_tensor(frames), [img_size, img_size],
                     interpolation=InterpolationMode.BICUBIC, antialias=True)
    return normalize(clip.float().div_(255.0))
