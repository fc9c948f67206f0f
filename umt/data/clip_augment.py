"""Training augmentation for action-recognition fine-tuning, as the official UMT recipe.

Per decoded sample (``ActionAugment`` / ``action_train_views``), in the official order
(``single_modality/datasets/kinetics_sparse.py::_aug_frame``; ``ssv2.py`` is the same):

1. RandAugment ``rand-m7-n4-mstd0.5-inc1`` on the full-resolution uint8 frames: the same ops,
   magnitudes and signs on every frame (fill 128, bicubic).
2. ImageNet normalisation, then RandomResizedCrop: one box for all frames, area U(0.08, 1),
   aspect log-uniform in (0.75, 1.3333) (the official literal), bilinear to ``img_size``.
3. Horizontal flip with p 0.5 (off for temporal datasets such as SSv2: ``flip=False``).
4. RandomErasing with p 0.25: one box on every frame (official ``cube=True``), area 0.02-1/3,
   aspect 0.3-3.3, per-pixel N(0, 1) values.
5. Repeated augmentation (official ``num_sample=2``): the decoded clip goes through 1-4
   ``num_sample`` times with independent draws; the loader puts every view in the batch as its
   own sample with the clip's label (the official collate flattens them), and the LR scaling
   counts them (official ``lr * batch * num_sample / 256``).

Per batch on the device (``ClipMixup``): Mixup (alpha 0.8) or CutMix (alpha 1.0) with
p 0.5 each, always on (prob 1), one lambda per batch, the partner is ``x.flip(0)``, the CutMix box
is shared by every frame and lambda is corrected for the clipped box area; targets are timm's
``mixup_target`` with label smoothing 0.1 folded in, for ``timm.loss.SoftTargetCrossEntropy``.

Every draw comes from a passed ``numpy.random.Generator`` (erasing noise from a torch
Generator seeded by it), e.g. ``np.random.default_rng(derive_seed("augment", seed, step, rank,
worker))``. Draw and application are separate (``sample`` / ``apply``) so tests can feed the
draws the official code was given.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import numpy as np
import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.mixup import mixup_target

from umt.configs.checks import at_least, in_range
from umt.configs.finetune_action import ActionAugmentConfig
from umt.data.video_transforms import (
    Box,
    ClipRandAugment,
    OpDraw,
    erase_,
    resized_crop,
    sample_erase_box,
    sample_resized_crop_box,
)


@functools.lru_cache(maxsize=16)
def rand_augment(config: str, img_size: int, interpolation: str) -> ClipRandAugment:
    return ClipRandAugment(config, img_size, interpolation)


# --------------------------------------------------------------------------- per-sample views
class ViewDraw(NamedTuple):
    """Every random choice of one augmented view."""

    ops: tuple[OpDraw, ...]  # RandAugment ops that fire, in order
    crop: Box  # (top, left, height, width) in the input frame
    flip: bool
    erase: Optional[Box]  # (top, left, height, width) in the output frame; None = no erasing
    noise_seed: int  # torch seed of the erasing values


_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN, dtype=torch.float32)
_STD = torch.tensor(IMAGENET_DEFAULT_STD, dtype=torch.float32)


class ActionAugment:
    """The per-sample training views of action-recognition fine-tuning.

    ``ActionAugment(cfg, img_size)(frames, rng)`` -> ``cfg.num_sample`` views.
    """

    def __init__(self, cfg: ActionAugmentConfig | None = None, img_size: int = 224):
        self.cfg = cfg or ActionAugmentConfig()
        at_least("img_size", img_size, 1)
        self.img_size = int(img_size)
        c = self.cfg
        self.rand_augment = (rand_augment(c.rand_augment, self.img_size, c.rand_augment_interpolation)
                             if c.rand_augment else None)

    def sample(self, height: int, width: int, rng: np.random.Generator) -> ViewDraw:
        """The draws of one view of an ``height x width`` clip, in the official order."""
        c = self.cfg
        ops = self.rand_augment.sample(rng) if self.rand_augment else ()
        crop = sample_resized_crop_box(height, width, c.crop_scale, c.crop_ratio, rng)
        flip = bool(rng.random() < 0.5) if c.flip else False
        erase, seed = None, 0
        # Official RandomErasing: skipped when random() > probability.
        if c.reprob > 0 and not rng.random() > c.reprob:
            erase = sample_erase_box(self.img_size, self.img_size, rng)
            if erase is not None and c.remode != "const":
                seed = int(rng.integers(0, 2**63 - 1))
        return ViewDraw(ops, crop, flip, erase, seed)

    def apply(self, frames: np.ndarray, draw: ViewDraw) -> torch.Tensor:
        """uint8 ``[T, H, W, 3]`` -> float32 ``[3, T, img_size, img_size]``, ImageNet-normalised."""
        frames = _check_frames(frames)
        if self.rand_augment is not None:
            frames = self.rand_augment.apply(frames, draw.ops)
        top, left, h, w = draw.crop
        # Normalising only the crop gives the same values as the official normalise-then-crop
        # (elementwise), on a fraction of the pixels.
        x = torch.from_numpy(np.ascontiguousarray(frames[:, top:top + h, left:left + w])).float().div_(255.0)
        x = ((x - _MEAN) / _STD).permute(3, 0, 1, 2)  # [T, h, w, 3] -> [3, T, h, w]
        x = resized_crop(x, (0, 0, h, w), self.img_size)
        if draw.flip:
            x = x.flip(-1)
        if draw.erase is not None:
            x = erase_(x.contiguous(), draw.erase, self.cfg.remode, torch.Generator().manual_seed(draw.noise_seed))
        return x.contiguous()

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> list[torch.Tensor]:
        """``num_sample`` independently augmented views of one decoded clip (uint8 ``[T,H,W,3]``),
        each float32 ``[3, T, img_size, img_size]``."""
        frames = _check_frames(frames)
        _, h, w, _ = frames.shape
        return [self.apply(frames, self.sample(h, w, rng)) for _ in range(self.cfg.num_sample)]


def action_train_views(frames: np.ndarray, *, img_size: int, rng: np.random.Generator,
                       cfg: ActionAugmentConfig | None = None) -> list[torch.Tensor]:
    """The loader's entry point: ``cfg.num_sample`` views of one decoded clip.

    Args:
        frames: uint8 ``[T, H, W, 3]`` RGB, the decoded frames (any size).
        img_size: the output side S.
        rng: the sample's generator; every draw comes from it.
        cfg: settings (default: the official Kinetics recipe).
    Returns:
        ``num_sample`` float32 ``[3, T, S, S]`` ImageNet-normalised views.
    """
    return ActionAugment(cfg, img_size)(frames, rng)


def _check_frames(frames) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        frames = frames.cpu().numpy()
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        desc = f"{frames.dtype} {list(frames.shape)}" if hasattr(frames, "shape") else type(frames).__name__
        raise ValueError(f"frames must be uint8 [T, H, W, 3] RGB, got {desc}")
    if min(frames.shape[:3]) < 1:
        raise ValueError(f"frames must have at least one frame and pixel, got shape {list(frames.shape)}")
    return frames


# --------------------------------------------------------------------------- batch Mixup / CutMix
class MixDraw(NamedTuple):
    """One batch's Mixup/CutMix choice: ``lam`` is the weight of the clip itself (after the
    box-area correction for CutMix); ``box`` (top, left, height, width) is the CutMix box, or
    None for a Mixup blend (no-op when ``lam == 1``)."""

    lam: float
    box: Optional[Box]


def cutmix_box(lam: float, height: int, width: int, cy: int, cx: int) -> tuple[Box, float]:
    """The official CutMix box for ``lam`` centred at (cy, cx) and the area-corrected lambda.

    Sides ``int(side * sqrt(1 - lam))``, clipped to the frame; ``lam = 1 - box area / frame
    area``. Hand-written (timm's ``rand_bbox`` is the same arithmetic) because timm draws the
    centre from numpy's global generator.
    """
    ratio = float(np.sqrt(1.0 - lam))
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    yl, yh = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height))
    xl, xh = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width))
    return (yl, xl, yh - yl, xh - xl), 1.0 - (yh - yl) * (xh - xl) / float(height * width)


class ClipMixup:
    """Batch Mixup/CutMix for clips ``[B, C, T, H, W]`` (official ``datasets/mixup.py``, mode
    ``batch``).

    Not timm's ``Mixup``: on 5-D input its CutMix writes ``x[:, :, y0:y1, x0:x1]``, i.e. it cuts
    frames ``y0:y1`` and rows ``x0:x1`` over the full width instead of one box on every frame,
    and it draws from numpy's global generator. The targets are timm's ``mixup_target``.

    Args:
        num_classes: size of the soft targets.
        mixup_alpha, cutmix_alpha: Beta parameters; 0 switches one off (both 0: targets are
            only label-smoothed, the clips untouched).
        prob: probability of mixing a batch at all; switch_prob: P(CutMix) when both are on.
        label_smoothing: folded into the targets (on = 1 - s + s/C, off = s/C).
        rng: default generator for ``__call__``.
    """

    def __init__(self, num_classes: int, *, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 prob: float = 1.0, switch_prob: float = 0.5, label_smoothing: float = 0.1,
                 rng: np.random.Generator | None = None):
        at_least("num_classes", num_classes, 1)
        at_least("mixup_alpha", mixup_alpha, 0.0)
        at_least("cutmix_alpha", cutmix_alpha, 0.0)
        in_range("prob", prob, 0.0, 1.0)
        in_range("switch_prob", switch_prob, 0.0, 1.0)
        in_range("label_smoothing", label_smoothing, 0.0, 1.0, high_open=True)
        self.num_classes = int(num_classes)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob = float(prob), float(switch_prob)
        self.label_smoothing = float(label_smoothing)
        self.rng = rng

    @classmethod
    def from_config(cls, cfg: ActionAugmentConfig, num_classes: int,
                    rng: np.random.Generator | None = None) -> "ClipMixup":
        return cls(num_classes, mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                   switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.smoothing, rng=rng)

    def sample(self, height: int, width: int, rng: np.random.Generator) -> MixDraw:
        """One batch's draw, in the official order (mix?, cutmix?, lambda, box centre y, x)."""
        m, c = self.mixup_alpha, self.cutmix_alpha
        if (m <= 0 and c <= 0) or not rng.random() < self.prob:
            return MixDraw(1.0, None)
        use_cutmix = bool(rng.random() < self.switch_prob) if m > 0 and c > 0 else c > 0
        lam = float(rng.beta(c, c) if use_cutmix else rng.beta(m, m))
        if lam == 1.0 or not use_cutmix:
            return MixDraw(lam, None)
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        box, lam = cutmix_box(lam, height, width, cy, cx)
        return MixDraw(lam, box)

    def apply(self, x: torch.Tensor, target: torch.Tensor, draw: MixDraw) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix ``x`` [B, C, T, H, W] **in place** with ``x.flip(0)``; return it and float32 soft
        targets [B, num_classes] (on ``target``'s device)."""
        self._check(x, target)
        return self._mix(x, target, draw)

    def _mix(self, x: torch.Tensor, target: torch.Tensor, draw: MixDraw) -> tuple[torch.Tensor, torch.Tensor]:
        if draw.box is not None:
            top, left, h, w = draw.box
            x[..., top:top + h, left:left + w] = x.flip(0)[..., top:top + h, left:left + w]
        elif draw.lam != 1.0:
            partner = x.flip(0).mul_(1.0 - draw.lam)
            x.mul_(draw.lam).add_(partner)
        return x, mixup_target(target, self.num_classes, float(draw.lam), self.label_smoothing)

    def __call__(self, x: torch.Tensor, target: torch.Tensor,
                 rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x [B,C,T,H,W] mixed in place, soft targets [B, num_classes])``; draws from ``rng``
        (default: the constructor's)."""
        rng = rng if rng is not None else self.rng
        if rng is None:
            raise ValueError("ClipMixup needs a numpy Generator: pass rng= to the constructor or the call")
        self._check(x, target)
        return self._mix(x, target, self.sample(x.shape[-2], x.shape[-1], rng))

    def _check(self, x: torch.Tensor, target: torch.Tensor) -> None:
        if x.ndim != 5 or not x.is_floating_point():
            raise ValueError(f"x must be float [B, C, T, H, W], got {x.dtype} {list(x.shape)}")
        if target.ndim != 1 or target.shape[0] != x.shape[0] or target.is_floating_point():
            raise ValueError(f"target must be integer class indices [B] = [{x.shape[0]}], "
                             f"got {target.dtype} {list(target.shape)}")
        if x.shape[0] % 2:
            # As the official Mixup: the partner of sample i is sample B-1-i.
            raise ValueError(f"the batch size must be even for Mixup/CutMix, got {x.shape[0]}")
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= self.num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(f"target holds class {bad}, outside the {self.num_classes} classes [0, {self.num_classes})")
