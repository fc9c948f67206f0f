"""Clip-consistent augmentation primitives: one random draw per clip, applied to every frame.

The image versions in timm draw their randomness per image (RandAugment's op choice, magnitude
and sign; RandomErasing's box), so applied frame by frame they would tear a clip apart: a
rotation on frame 3 only, an erased box that jumps around. Here each primitive is split into

* ``sample_*`` / ``ClipRandAugment.sample``: the draws, taken from a passed numpy Generator (so
  a loader is deterministic per (seed, step, rank, worker), see ``umt.seeds.derive_seed``), and
* an ``apply`` function that takes those draws and applies them to all frames.

The splits also let tests feed the exact draws that the official code was given
(``tests/reference/make_reference_augment.py``). The semantics follow the official
``single_modality/datasets/{rand_augment,video_transforms,random_erasing}.py`` (UMT at
``4fb4049``): comparisons, rounding, retry counts and fallbacks are theirs.

Boxes are ``(top, left, height, width)`` in pixels.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.auto_augment import rand_augment_transform

from umt.data.transforms import random_resized_crop_box

Box = tuple[int, int, int, int]

# --------------------------------------------------------------------------- RandAugment
# How each op's argument depends on the sign that timm's level function draws. timm's level
# functions draw that sign from Python's *global* ``random`` (``_randomly_negate``), which a
# passed Generator cannot drive and which would differ between frames; so we ask timm's level
# function for the magnitude's argument and set the sign ourselves: the argument is
# ``centre +/- |timm_value - centre|``. Ops in _UNSIGNED take no sign. Any other op is refused
# (it might draw from global state inside the op itself, like timm's GaussianBlurRand).
_SIGN_CENTRE = {
    "Rotate": 0.0, "ShearX": 0.0, "ShearY": 0.0, "TranslateX": 0.0, "TranslateY": 0.0,
    "TranslateXRel": 0.0, "TranslateYRel": 0.0,
    "ColorIncreasing": 1.0, "ContrastIncreasing": 1.0, "BrightnessIncreasing": 1.0,
    "SharpnessIncreasing": 1.0,
}
_UNSIGNED = frozenset({
    "AutoContrast", "Equalize", "Invert", "Posterize", "PosterizeIncreasing", "PosterizeOriginal",
    "Solarize", "SolarizeIncreasing", "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness",
    "Desaturate", "GaussianBlur",
})
_INTERPOLATION = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
_MAX_LEVEL = 10.0  # official _MAX_LEVEL / timm _LEVEL_DENOM: magnitudes are clipped to [0, 10]


class OpDraw(NamedTuple):
    """One RandAugment op that fires on a clip: its timm name, clipped magnitude and sign."""

    name: str
    magnitude: float
    negate: bool


class ClipRandAugment:
    """RandAugment with one draw per clip (official ``AugmentOp`` applied to a frame list).

    The config string is parsed by timm (``rand_augment_transform``; e.g. the official
    ``rand-m7-n4-mstd0.5-inc1``: 4 ops drawn with replacement from timm's increasing set, each
    firing with p 0.5 at magnitude ~ N(7, 0.5) clipped to [0, 10]) and its ops are timm's PIL ops
    with timm's level functions; only the draws are ours.

    Args:
        config: a timm RandAugment string starting with ``rand``.
        img_size: the training crop size; sets ``translate_const`` = 0.45 x img_size as the
            official ``create_random_augment`` (only the absolute Translate ops use it).
        interpolation: ``bicubic`` (official default) or ``bilinear``; not ``random``, which
            would draw per frame.
    """

    def __init__(self, config: str, img_size: int, interpolation: str = "bicubic"):
        if interpolation not in _INTERPOLATION:
            raise ValueError(f"interpolation={interpolation!r} is not allowed; choose one of: "
                             f"{', '.join(map(repr, _INTERPOLATION))}")
        if not isinstance(config, str) or not config.startswith("rand"):
            raise ValueError(f"RandAugment config {config!r} must start with 'rand', e.g. 'rand-m7-n4-mstd0.5-inc1'")
        hparams = {"translate_const": int(img_size * 0.45), "img_mean": (128, 128, 128),
                   "interpolation": _INTERPOLATION[interpolation]}
        try:
            ra = rand_augment_transform(config, hparams)
        except (AssertionError, ValueError, KeyError) as e:
            raise ValueError(f"RandAugment config {config!r} is not understood by timm "
                             f"(sections m, n, p, mstd, mmax, inc, t): {e!r}") from None
        self.config = config
        self.ops = list(ra.ops)
        self.num_layers = int(ra.num_layers)
        self.choice_weights = None if ra.choice_weights is None else np.asarray(ra.choice_weights, float)
        for op in self.ops:
            if op.name not in _SIGN_CENTRE and op.name not in _UNSIGNED:
                raise ValueError(f"RandAugment op {op.name!r} (from {config!r}) cannot be applied with one "
                                 "draw per clip; supported: " + ", ".join(sorted({*_SIGN_CENTRE, *_UNSIGNED})))
        self._by_name = {op.name: op for op in self.ops}

    def sample(self, rng: np.random.Generator) -> tuple[OpDraw, ...]:
        """The ops that fire on one clip, in order (the official draw order per op: fire?,
        magnitude, sign)."""
        if self.choice_weights is None:
            idx = rng.integers(0, len(self.ops), size=self.num_layers)
        else:  # weighted choice is without replacement, as timm / the official code
            idx = rng.choice(len(self.ops), self.num_layers, replace=False, p=self.choice_weights)
        out = []
        for i in idx:
            op = self.ops[int(i)]
            if op.prob < 1.0 and rng.random() > op.prob:
                continue
            magnitude = float(op.magnitude)
            if op.magnitude_std == float("inf"):
                magnitude = float(rng.uniform(0.0, magnitude))
            elif op.magnitude_std > 0:
                magnitude = magnitude + op.magnitude_std * float(rng.standard_normal())
            upper = getattr(op, "magnitude_max", None) or _MAX_LEVEL
            magnitude = max(0.0, min(magnitude, upper))
            # Official _randomly_negate: negative when random() > 0.5.
            negate = bool(rng.random() > 0.5) if op.name in _SIGN_CENTRE else False
            out.append(OpDraw(op.name, magnitude, negate))
        return tuple(out)

    def level_args(self, draw: OpDraw) -> tuple:
        """The arguments the op's PIL function gets for this draw (timm's level function)."""
        op = self._by_name[draw.name]
        if op.level_fn is None:
            return ()
        args = op.level_fn(draw.magnitude, op.hparams)
        if draw.name not in _SIGN_CENTRE:
            return tuple(args)
        centre = _SIGN_CENTRE[draw.name]
        value = centre + (-1.0 if draw.negate else 1.0) * abs(args[0] - centre)
        if centre == 1.0:
            value = max(0.1, value)  # timm keeps enhance factors >= 0.1 (only hit when mmax > 10)
        return (value,)

    def apply(self, frames: np.ndarray, draws: Sequence[OpDraw]) -> np.ndarray:
        """uint8 ``[T, H, W, 3]`` -> uint8 ``[T, H, W, 3]``: every op applied to every frame."""
        if not draws:
            return frames
        images = [Image.fromarray(f) for f in frames]
        for d in draws:
            op = self._by_name[d.name]
            args = self.level_args(d)
            if d.name.startswith("Posterize") and args[0] <= 0:
                # Keeping 0 bits (PosterizeIncreasing at magnitude 10) made the frame black in older
                # Pillow; Pillow 13 raises instead, which would stop training on a rare draw.
                images = [Image.new(img.mode, img.size) for img in images]
                continue
            images = [op.aug_fn(img, *args, **op.kwargs) for img in images]
        return np.stack([np.asarray(img) for img in images])


# --------------------------------------------------------------------------- RandomResizedCrop
def sample_resized_crop_box(height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
                            rng: np.random.Generator, attempts: int = 10) -> Box:
    """One Inception-style crop box for a whole clip (official ``_get_param_spatial_crop``):
    :func:`umt.data.transforms.random_resized_crop_box`, the one sampler of the loaders."""
    return random_resized_crop_box(height, width, scale, rng, ratio, attempts)


def resized_crop(clip: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    """float ``[C, T, H, W]`` -> ``[C, T, size, size]``: the same box cut from every frame, then
    bilinear resizing (``align_corners=False``, no antialiasing, as the official
    ``random_resized_crop``)."""
    top, left, h, w = box
    cropped = clip[:, :, top:top + h, left:left + w]
    return F.interpolate(cropped, size=(size, size), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- RandomErasing
def sample_erase_box(height: int, width: int, rng: np.random.Generator, *,
                     area: tuple[float, float] = (0.02, 1 / 3), aspect: tuple[float, float] = (0.3, 1 / 0.3),
                     attempts: int = 100) -> Optional[Box]:
    """The box erased on every frame (official ``RandomErasing._erase_cube``, one box), or None
    when no try fits. Area fraction ~ U(area), aspect h/w log-uniform in ``aspect``; a box fits
    when ``h < height`` and ``w < width`` (strictly, as officially)."""
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    for _ in range(attempts):
        target_area = (area[0] + (area[1] - area[0]) * rng.random()) * (height * width)
        a = math.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * rng.random())
        h = int(round(math.sqrt(target_area * a)))
        w = int(round(math.sqrt(target_area / a)))
        if w < width and h < height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    return None


def erase_(clip: torch.Tensor, box: Box, mode: str, generator: torch.Generator) -> torch.Tensor:
    """Fill ``box`` on every frame of float ``[C, T, H, W]`` in place and return it.

    ``mode``: ``pixel`` = per-pixel N(0, 1), ``rand`` = one N(0, 1) colour per channel, ``const``
    = 0 (the values are in normalised units). As officially the box is shared by all frames but
    the random values are drawn afresh for each frame, frame after frame (so the values equal
    the official ones for the same torch seed). Hand-written instead of timm's ``_get_pixels``
    because that draws from torch's global generator.
    """
    top, left, h, w = box
    c, t = clip.shape[:2]
    for i in range(t):
        if mode == "pixel":
            fill = torch.randn((c, h, w), generator=generator, dtype=clip.dtype)
        elif mode == "rand":
            fill = torch.randn((c, 1, 1), generator=generator, dtype=clip.dtype)
        elif mode == "const":
            fill = torch.zeros((c, 1, 1), dtype=clip.dtype)
        else:
            raise ValueError(f"erase mode {mode!r} is not allowed; choose one of: 'pixel', 'rand', 'const'")
        clip[:, i, top:top + h, left:left + w] = fill
    return clip
