"""Clip augmentations for action fine-tuning (umt.data.clip_augment, umt.data.video_transforms).

Against the official code: ``tests/reference/augment_official.pt`` holds outputs of the official
``single_modality/datasets`` transforms for scripted draws (``make_reference_augment.py``; how to
regenerate: ``tests/reference/README.md``). ``ScriptedRng`` hands our samplers the same draws,
in the order our samplers take them, and checks each integer draw's range against the
official one. Tolerances: uint8 RandAugment outputs and every box must be equal; float outputs
within 1e-6 (the same float32 operations in the same order; observed: 0).

By property (real numpy Generators): distributions of crop / erasing boxes, op firing rates,
one op / box per clip, CutMix box on every frame and lambda correction, determinism per seed.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from timm.data import auto_augment as timm_aa
from timm.data.mixup import Mixup, cutmix_bbox_and_lam
from timm.data.random_erasing import RandomErasing

from umt.configs.finetune_action import ActionAugmentConfig
from umt.data.clip_augment import (
    ActionAugment,
    ClipMixup,
    MixDraw,
    ViewDraw,
    action_train_views,
    cutmix_box,
)
from umt.data.video_transforms import (
    _SIGN_CENTRE,
    _UNSIGNED,
    ClipRandAugment,
    OpDraw,
    erase_,
    sample_erase_box,
    sample_resized_crop_box,
)

REF = Path(__file__).resolve().parent / "reference" / "augment_official.pt"
FLOAT_TOL = 1e-6


@pytest.fixture(scope="module")
def ref() -> dict:
    if not REF.is_file():
        pytest.fail(f"missing {REF}; see tests/reference/README.md")
    return torch.load(REF, map_location="cpu", weights_only=True)


class ScriptedRng:
    """Hands out the draws the official code was given (numpy Generator interface, the methods
    our samplers use). ``ints`` are (value, low, high_exclusive) as the official code drew them:
    a different range here means our sampler draws differently from the official one."""

    def __init__(self, uniforms=(), normals=(), ints=(), betas=()):
        self.u, self.z, self.i, self.b = list(uniforms), list(normals), list(ints), list(betas)

    def random(self):
        return self.u.pop(0)

    def standard_normal(self):
        return self.z.pop(0)

    def integers(self, low, high=None, size=None):
        if high is None:
            low, high = 0, low
        out = []
        for _ in range(1 if size is None else size):
            value, lo, hi = self.i.pop(0)
            assert (lo, hi) == (low, high), f"integer range ({low}, {high}) != official ({lo}, {hi})"
            out.append(value)
        return out[0] if size is None else np.array(out)

    def beta(self, a, b):
        value, ea, eb = self.b.pop(0)
        assert (ea, eb) == (a, b), f"beta({a}, {b}) != official beta({ea}, {eb})"
        return value

    def assert_used_up(self):
        assert not (self.u or self.z or self.i or self.b), "our sampler took fewer draws than the official code"


# --------------------------------------------------------------------------- against the official
@pytest.mark.parametrize("case", ["view_kinetics", "view_ssv2", "view_fallback"])
def test_view_matches_official(ref, case):
    c = ref[case]
    frames = c["frames"].numpy()
    aug = ActionAugment(ActionAugmentConfig(flip=c["flip_enabled"]), img_size=c["img_size"])
    rng = ScriptedRng(c["uniforms"], c["normals"], c["ints"])
    draw = aug.sample(frames.shape[1], frames.shape[2], rng)
    rng.assert_used_up()
    # Same draws -> same decisions as the official samplers.
    assert [d.name for d in draw.ops] == [name for name, _ in c["ops"]]
    for d, (_, args) in zip(draw.ops, c["ops"]):
        assert aug.rand_augment.level_args(d) == pytest.approx(args, rel=1e-12), d.name
    assert draw.crop == tuple(c["crop"])
    assert draw.flip == c["flip"]
    assert draw.erase == (None if c["erase"] is None else tuple(c["erase"]))
    assert draw.noise_seed == c["noise_seed"]
    out = aug.apply(frames, draw)
    assert out.shape == c["output"].shape == (3, frames.shape[0], c["img_size"], c["img_size"])
    assert out.dtype == torch.float32
    assert (out - c["output"]).abs().max().item() <= FLOAT_TOL


def test_every_rand_augment_op_matches_official(ref):
    c = ref["ops"]
    frames = c["frames"].numpy()
    inc = ClipRandAugment("rand-m7-n4-mstd0.5-inc1", c["img_size"])
    plain = ClipRandAugment("rand-m7-n4-mstd0.5", c["img_size"])
    assert len(c["draws"]) == 21
    for (name, magnitude, negate, official_args), expected in zip(c["draws"], c["outputs"]):
        ra = inc if name in inc._by_name else plain
        draw = OpDraw(name, magnitude, negate)
        assert ra.level_args(draw) == pytest.approx(official_args), name
        out = ra.apply(frames, [draw])
        assert np.array_equal(out, expected.numpy()), f"{name}: differs from the official op"
        assert not np.array_equal(out, frames) or name == "AutoContrast", f"{name} left the clip unchanged"


@pytest.mark.parametrize("case", ["mixup_cutmix", "mixup_blend", "mixup_skipped", "mixup_cutmix_only"])
def test_mixup_matches_official(ref, case):
    c = ref[case]
    mix = ClipMixup(5, mixup_alpha=c["mixup_alpha"], cutmix_alpha=c["cutmix_alpha"], prob=c["prob"],
                    switch_prob=0.5, label_smoothing=0.1)
    rng = ScriptedRng(c["uniforms"], ints=c["ints"], betas=c["betas"])
    x, soft = mix(c["x"].clone(), c["target"], rng=rng)
    rng.assert_used_up()
    assert (x - c["x_out"]).abs().max().item() <= FLOAT_TOL
    assert (soft - c["soft"]).abs().max().item() <= 1e-6
    assert soft.sum(1).sub(1).abs().max().item() < 1e-6


# --------------------------------------------------------------------------- timm is not clip-aware
def test_timm_cutmix_on_5d_cuts_frames_and_rows_not_a_box():
    # Why ClipMixup does not use timm's Mixup: on [B, C, T, H, W] timm writes x[:, :, y0:y1, x0:x1].
    x = torch.zeros(2, 1, 4, 8, 8)
    x[1] = 1.0
    mixer = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, label_smoothing=0.0, num_classes=2)
    np.random.seed(3)
    out, _ = mixer(x.clone(), torch.tensor([0, 1]))
    np.random.seed(3)  # replay timm's own draws to learn the box it meant
    lam, _ = mixer._params_per_batch()
    (yl, yh, xl, xh), _ = cutmix_bbox_and_lam(x.shape, lam, correct_lam=True)
    assert yh > yl and xh > xl
    changed = out[0, 0] != 0                      # [T, H, W]
    expected_wrong = torch.zeros_like(changed)
    expected_wrong[yl:yh, xl:xh, :] = True         # frames yl:yh, rows xl:xh, every column
    assert torch.equal(changed, expected_wrong)
    right = torch.zeros_like(changed)
    right[:, yl:yh, xl:xh] = True                  # what a clip CutMix does: the box on every frame
    assert not torch.equal(changed, right)
    # Ours with the same box and lambda does the right thing.
    ours, _ = ClipMixup(2, label_smoothing=0.0).apply(x.clone(), torch.tensor([0, 1]),
                                                      MixDraw(lam, (yl, xl, yh - yl, xh - xl)))
    assert torch.equal(ours[0, 0] != 0, right)


def test_timm_random_erasing_draws_a_box_per_frame():
    # Why erasing is ours: timm's RandomErasing on [T, C, H, W] erases each frame independently.
    random.seed(0)
    ones = torch.ones(6, 3, 32, 32)
    RandomErasing(probability=1.0, mode="const", device="cpu")(ones)  # const mode writes 0
    masks = [(ones[t, 0] == 0) for t in range(6)]
    assert any(not torch.equal(masks[0], m) for m in masks[1:])


# --------------------------------------------------------------------------- properties
def test_one_draw_for_the_whole_clip():
    # Identical frames stay identical through RandAugment, crop and flip: one draw per clip.
    g = np.random.default_rng(0)
    frame = g.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    clip = np.repeat(frame[None], 5, axis=0)
    aug = ActionAugment(ActionAugmentConfig(reprob=0.0), img_size=32)
    rng = np.random.default_rng(1)
    fired = 0
    for _ in range(20):
        draw = aug.sample(48, 64, rng)
        fired += len(draw.ops)
        out = aug.apply(clip, draw)
        assert all(torch.equal(out[:, 0], out[:, t]) for t in range(1, 5))
    assert fired > 0


def test_erasing_box_is_shared_noise_is_per_frame():
    clip = torch.full((3, 4, 16, 16), 5.0)
    erase_(clip, (2, 3, 6, 7), "pixel", torch.Generator().manual_seed(0))
    erased = clip[0] != 5.0
    box = torch.zeros(16, 16, dtype=torch.bool)
    box[2:8, 3:10] = True
    assert all(torch.equal(erased[t], box) for t in range(4))
    assert not torch.equal(clip[:, 0], clip[:, 1])  # official: fresh N(0,1) values on every frame
    clip2 = torch.full((3, 2, 16, 16), 5.0)
    erase_(clip2, (0, 0, 4, 4), "rand", torch.Generator().manual_seed(0))
    assert clip2[0, 0, :4, :4].unique().numel() == 1
    with pytest.raises(ValueError, match="erase mode 'noise' is not allowed"):
        erase_(clip2, (0, 0, 4, 4), "noise", torch.Generator())


def test_crop_box_distribution():
    rng = np.random.default_rng(0)
    boxes = np.array([sample_resized_crop_box(400, 400, (0.08, 1.0), (0.75, 1.3333), rng) for _ in range(4000)])
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 400).all() and (left + w <= 400).all()
    frac = h * w / 160000
    # Accepted boxes: area ~ U(0.08, 1) truncated where the aspect makes a side exceed the frame.
    assert frac.min() == pytest.approx(0.08, abs=0.005) and frac.max() > 0.97
    assert 0.45 < np.mean(frac) < 0.56
    log_ratio = np.log(w / h)
    assert log_ratio.min() > math.log(0.75) - 0.02 and log_ratio.max() < math.log(1.3333) + 0.02
    assert abs(np.mean(log_ratio)) < 0.02  # log-uniform around 0
    # Fallback: a frame far wider than 4:3 never fits -> the centre crop at the widest aspect.
    assert sample_resized_crop_box(8, 200, (0.08, 1.0), (0.75, 1.3333), rng) == (0, 94, 8, 11)
    assert sample_resized_crop_box(200, 8, (0.08, 1.0), (0.75, 1.3333), rng) == (94, 0, 11, 8)


def test_erasing_probability_and_box_distribution():
    aug = ActionAugment(ActionAugmentConfig(rand_augment=None), img_size=64)
    rng = np.random.default_rng(0)
    draws = [aug.sample(64, 64, rng) for _ in range(4000)]
    boxes = np.array([d.erase for d in draws if d.erase is not None])
    assert 0.23 < len(boxes) / len(draws) < 0.27  # p 0.25
    top, left, h, w = boxes.T
    assert (top + h <= 64).all() and (left + w <= 64).all() and (h < 64).all() and (w < 64).all()
    frac = h * w / 4096
    assert frac.min() > 0.015 and frac.max() < 0.36  # 0.02 - 1/3 up to rounding
    log_aspect = np.log(h / w)
    assert log_aspect.min() > math.log(0.3) - 0.15 and log_aspect.max() < math.log(1 / 0.3) + 0.15
    assert abs(np.mean(log_aspect)) < 0.1
    # As officially, a tiny frame can give an empty box (h or w rounded to 0): harmless.
    box = sample_erase_box(1, 1, rng)
    assert box is not None and box[2] * box[3] == 0


def test_rand_augment_draw_statistics():
    ra = ClipRandAugment("rand-m7-n4-mstd0.5-inc1", 224)
    assert ra.num_layers == 4 and len(ra.ops) == 15
    rng = np.random.default_rng(0)
    draws = [ra.sample(rng) for _ in range(3000)]
    counts = np.array([len(d) for d in draws])
    assert 1.9 < counts.mean() < 2.1  # 4 ops x p 0.5
    mags = np.array([op.magnitude for d in draws for op in d])
    assert abs(mags.mean() - 7) < 0.03 and abs(mags.std() - 0.5) < 0.03 and mags.max() <= 10
    names = [op.name for d in draws for op in d]
    assert set(names) == {op.name for op in ra.ops}
    signed = [op.negate for d in draws for op in d if op.name in _SIGN_CENTRE]
    assert 0.45 < np.mean(signed) < 0.55


def test_sign_table_matches_timm_level_functions():
    # Our sign handling assumes timm's signed level functions return centre +/- value with a
    # random sign and the others a single value; check against timm itself.
    random.seed(0)
    for name in set(timm_aa._RAND_TRANSFORMS) | set(timm_aa._RAND_INCREASING_TRANSFORMS):
        fn = timm_aa.LEVEL_TO_ARG[name]
        values = {fn(7.3, {"translate_const": 100})[0] for _ in range(50)} if fn else set()
        if name in _SIGN_CENTRE:
            c = _SIGN_CENTRE[name]
            assert len(values) == 2 and sum(v - c for v in values) == pytest.approx(0), name
        else:
            assert name in _UNSIGNED and len(values) <= 1, name


def test_posterize_to_zero_bits_is_black_not_an_error():
    ra = ClipRandAugment("rand-m10-n1-inc1", 32)
    frames = np.full((2, 8, 8, 3), 200, dtype=np.uint8)
    out = ra.apply(frames, [OpDraw("PosterizeIncreasing", 10.0, False)])
    assert out.shape == frames.shape and not out.any()


def test_views_repeated_augmentation_and_determinism():
    g = np.random.default_rng(0)
    frames = g.integers(0, 256, (4, 36, 48, 3), dtype=np.uint8)
    views = action_train_views(frames, img_size=24, rng=np.random.default_rng(5))
    assert len(views) == 2 and all(v.shape == (3, 4, 24, 24) and v.dtype == torch.float32 for v in views)
    assert not torch.equal(views[0], views[1])  # independent draws per view
    again = action_train_views(frames, img_size=24, rng=np.random.default_rng(5))
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    other = action_train_views(frames, img_size=24, rng=np.random.default_rng(6))
    assert not torch.equal(views[0], other[0])
    three = action_train_views(frames, img_size=24, rng=np.random.default_rng(5),
                               cfg=ActionAugmentConfig(num_sample=3, flip=False))
    assert len(three) == 3
    # Without RandAugment / erasing, a full-frame crop is just normalise + resize.
    plain = ActionAugment(ActionAugmentConfig(rand_augment=None, reprob=0.0, flip=False), img_size=36)
    out = plain.apply(frames[:, :, :36], ViewDraw((), (0, 0, 36, 36), False, None, 0))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1, 1)
    expected = (torch.from_numpy(frames[:, :, :36]).permute(3, 0, 1, 2).float() / 255 - mean) / std
    assert (out - expected).abs().max().item() < 1e-5
    flipped = plain.apply(frames[:, :, :36], ViewDraw((), (0, 0, 36, 36), True, None, 0))
    assert torch.equal(flipped, out.flip(-1))


def test_flip_off_never_flips():
    aug = ActionAugment(ActionAugmentConfig(flip=False, rand_augment=None), img_size=16)
    rng = np.random.default_rng(0)
    assert not any(aug.sample(20, 20, rng).flip for _ in range(200))
    aug_on = ActionAugment(ActionAugmentConfig(flip=True, rand_augment=None), img_size=16)
    flips = [aug_on.sample(20, 20, rng).flip for _ in range(2000)]
    assert 0.45 < np.mean(flips) < 0.55


def test_clip_mixup_properties():
    rng = np.random.default_rng(0)
    mix = ClipMixup(4)
    cut = blend = 0
    for _ in range(400):
        d = mix.sample(12, 16, rng)
        if d.box is not None:
            cut += 1
            top, left, h, w = d.box
            assert d.lam == pytest.approx(1 - h * w / (12 * 16))
        else:
            blend += 1
            assert 0 <= d.lam <= 1
    assert 0.4 < cut / 400 < 0.6  # switch prob 0.5, prob 1: every batch is mixed
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1, 1).expand(4, 2, 3, 12, 16).clone()
    target = torch.tensor([0, 1, 2, 3])
    out, soft = mix.apply(x.clone(), target, MixDraw(1 - 20 / 192, (2, 3, 4, 5)))
    inside = torch.zeros(12, 16, dtype=torch.bool)
    inside[2:6, 3:8] = True
    for b in range(4):  # partner of b is 3 - b, inside the box on every frame and channel
        assert (out[b][..., inside] == 3 - b).all() and (out[b][..., ~inside] == b).all()
    lam = 1 - 20 / 192
    assert soft[0, 0].item() == pytest.approx(lam * (0.9 + 0.025) + (1 - lam) * 0.025)
    assert soft[0, 3].item() == pytest.approx((1 - lam) * (0.9 + 0.025) + lam * 0.025)
    out, _ = mix.apply(x.clone(), target, MixDraw(0.25, None))
    assert torch.allclose(out[:, 0, 0, 0, 0], torch.tensor([2.25, 1.75, 1.25, 0.75]))
    # Both alphas 0: clips untouched, targets label-smoothed one-hots.
    off = ClipMixup(4, mixup_alpha=0, cutmix_alpha=0, rng=np.random.default_rng(0))
    out, soft = off(x.clone(), target)
    assert torch.equal(out, x) and soft[1, 1].item() == pytest.approx(0.925) and soft[1, 0].item() == pytest.approx(0.025)


def test_cutmix_box_clips_at_borders():
    (top, left, h, w), lam = cutmix_box(0.75, 8, 8, 0, 7)   # half-size box centred at a corner
    assert (top, left, h, w) == (0, 5, 2, 3) and lam == pytest.approx(1 - 6 / 64)


def test_clip_mixup_bad_input():
    mix = ClipMixup(3, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"x must be float \[B, C, T, H, W\], got torch.float32 \[2, 3, 8, 8\]"):
        mix(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"got torch.uint8"):
        mix(torch.zeros(2, 3, 2, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="batch size must be even"):
        mix(torch.zeros(3, 3, 2, 8, 8), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"target holds class 3, outside the 3 classes"):
        mix(torch.zeros(2, 3, 2, 8, 8), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="target must be integer class indices"):
        mix(torch.zeros(2, 3, 2, 8, 8), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="needs a numpy Generator"):
        ClipMixup(3)(torch.zeros(2, 3, 2, 8, 8), torch.tensor([0, 1]))


@pytest.mark.parametrize("kwargs, message", [
    ({"crop_scale": [0.5]}, r"augment.crop_scale=\[0.5\] must have exactly 2 values"),
    ({"crop_scale": [0.6, 0.5]}, r"augment.crop_scale\[1\]=0.5 is out of range"),
    ({"reprob": 1.5}, "augment.reprob=1.5 is out of range"),
    ({"remode": "noise"}, "augment.remode='noise' is not allowed"),
    ({"num_sample": 0}, "augment.num_sample=0 is out of range"),
    ({"rand_augment": "rand-m7-q3"}, "augment.rand_augment='rand-m7-q3' is not allowed"),
    ({"rand_augment": "augmix-m5"}, "must start with 'rand'"),
    ({"rand_augment_interpolation": "random"}, "augment.rand_augment_interpolation='random' is not allowed"),
    ({"smoothing": 1.0}, "augment.smoothing=1.0 is out of range"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ActionAugmentConfig(**kwargs)


def test_frames_must_be_uint8_thwc():
    aug = ActionAugment(img_size=16)
    with pytest.raises(ValueError, match=r"frames must be uint8 \[T, H, W, 3\] RGB, got float32"):
        aug(np.zeros((2, 8, 8, 3), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"got uint8 \[2, 3, 8, 8\]"):
        aug(np.zeros((2, 3, 8, 8), np.uint8), np.random.default_rng(0))
