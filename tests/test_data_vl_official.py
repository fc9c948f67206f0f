"""The Stage-2 data path against frozen outputs of the official multi-modality code: frame
sampling (``dataset/video_utils.py get_frame_indices``), caption cleaning (``dataset/utils.py
pre_text``), and the official train / test transforms (torchvision's, which ours call).

The frozen values below come from OpenGVLab/unmasked_teacher at commit
``4fb4049f5a87919882e68ccc427615ae7dab1c33``. Regenerate them (nothing is copied; the official
module is imported from the extracted folder, with import-only stand-ins for cv2 / imageio,
which the two functions never call)::

    mkdir -p /tmp/umt_official
    git --git-dir=/work/.mirror/OpenGVLab+unmasked_teacher/repo archive HEAD \\
        multi_modality/dataset multi_modality/utils | tar -x -C /tmp/umt_official
    .venv/bin/python tests/test_data_vl_official.py /tmp/umt_official/multi_modality

and paste the printed ``MIDDLE``, ``RAND_SUPPORT`` and ``PRE_TEXT`` over the ones below. 'rand' is random (Python's ``random`` and
``np.random`` officially, a numpy Generator here): what is frozen is the set of indices each
position takes over 3000 seeds, which ours must reproduce exactly.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from umt.data.captions import clean_caption
from umt.data.sampling import vl_frame_indices
from umt.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    random_resized_crop_box,
    vl_test_transform,
    vl_train_transform,
)

# get_frame_indices(T, n, "middle"), keyed "T,n"
MIDDLE = {'1,1': [0],
 '1,100': [49],
 '1,16': [7],
 '1,2': [0],
 '1,3': [1],
 '1,301': [150],
 '1,31': [15],
 '1,4': [1],
 '1,5': [2],
 '1,7': [3],
 '1,8': [3],
 '1,9': [4],
 '12,1': [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
 '12,100': [3, 11, 20, 28, 36, 45, 53, 61, 70, 78, 86, 95],
 '12,16': [0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14],
 '12,2': [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
 '12,3': [0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
 '12,301': [12, 37, 62, 87, 112, 137, 162, 187, 212, 237, 262, 287],
 '12,31': [0, 3, 5, 8, 10, 13, 16, 18, 21, 23, 26, 29],
 '12,4': [0, 1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3],
 '12,5': [0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4],
 '12,7': [0, 1, 2, 3, 4, 5, 6, 6, 6, 6, 6, 6],
 '12,8': [0, 1, 2, 3, 4, 5, 6, 7, 7, 7, 7, 7],
 '12,9': [0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 8],
 '4,1': [0, 0, 0, 0],
 '4,100': [12, 37, 62, 87],
 '4,16': [1, 5, 9, 13],
 '4,2': [0, 1, 1, 1],
 '4,3': [0, 1, 2, 2],
 '4,301': [37, 112, 187, 262],
 '4,31': [3, 10, 18, 26],
 '4,4': [0, 1, 2, 3],
 '4,5': [0, 1, 2, 3],
 '4,7': [0, 1, 3, 5],
 '4,8': [0, 2, 4, 6],
 '4,9': [0, 2, 4, 7],
 '8,1': [0, 0, 0, 0, 0, 0, 0, 0],
 '8,100': [5, 18, 30, 43, 55, 68, 80, 93],
 '8,16': [0, 2, 4, 6, 8, 10, 12, 14],
 '8,2': [0, 1, 1, 1, 1, 1, 1, 1],
 '8,3': [0, 1, 2, 2, 2, 2, 2, 2],
 '8,301': [18, 55, 93, 130, 168, 206, 243, 281],
 '8,31': [1, 4, 8, 12, 16, 20, 24, 28],
 '8,4': [0, 1, 2, 3, 3, 3, 3, 3],
 '8,5': [0, 1, 2, 3, 4, 4, 4, 4],
 '8,7': [0, 1, 2, 3, 4, 5, 6, 6],
 '8,8': [0, 1, 2, 3, 4, 5, 6, 7],
 '8,9': [0, 1, 2, 3, 4, 5, 6, 7]}

# per position, every index get_frame_indices(T, n, "rand") returned over seeds 0..2999
RAND_SUPPORT = {'1,6': [[0, 1, 2, 3, 4]],
 '2,5': [[0], [2, 3]],
 '3,100': [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
            24, 25, 26, 27, 28, 29, 30, 31],
           [33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54,
            55, 56, 57, 58, 59, 60, 61, 62, 63, 64],
           [66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87,
            88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98]],
 '4,12': [[0, 1], [3, 4], [6, 7], [9, 10]],
 '4,3': [[0], [1], [2], [2]],
 '4,4': [[0], [1], [2], [3]],
 '4,7': [[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]],
 '4,8': [[0], [2], [4], [6]],
 '4,9': [[0], [2], [4], [6, 7]],
 '8,20': [[0], [2, 3], [5], [7, 8], [10], [12, 13], [15], [17, 18]]}

# (text, max_l, pre_text(text, max_l))
PRE_TEXT = [('A man -- riding/jumping a Horse!  <person> smiles.',
  None,
  'a man riding jumping a horse person smiles'),
 ('A man -- riding/jumping a Horse!  <person> smiles.', 3, 'a man riding'),
 ("Don't stop (ever); #1 ~ok~: yes?", None, 'dont stop ever 1 ok yes'),
 ("Don't stop (ever); #1 ~ok~: yes?", 3, 'dont stop ever'),
 ('  multiple   spaces\tand\ttabs  ', None, 'multiple spaces\tand\ttabs'),
 ('  multiple   spaces\tand\ttabs  ', 3, 'multiple spaces\tand\ttabs'),
 ('line one\n\nline two\n', None, 'line one line two'),
 ('line one\n\nline two\n', 3, 'line one line'),
 ('e.g. state-of-the-art 3.5', None, 'eg state of the art 35'),
 ('e.g. state-of-the-art 3.5', 3, 'eg state of'),
 ("UPPER <PERSON> <person>'s dog", None, 'upper person persons dog'),
 ("UPPER <PERSON> <person>'s dog", 3, 'upper person persons'),
 ('Été à Paris, café!', None, 'été à paris café'),
 ('Été à Paris, café!', 3, 'été à paris'),
 ('a/b/c-d-e', None, 'a b c d e'),
 ('a/b/c-d-e', 3, 'a b c'),
 ('', None, ''),
 ('', 3, ''),
 ('...', None, ''),
 ('...', 3, ''),
 ('word word word word word word word word word word word word word word word word word word word '
  'word word word word word word word word word word word word word word word word word word word '
  'word word ',
  None,
  'word word word word word word word word word word word word word word word word word word word '
  'word word word word word word word word word word word word word word word word word word word '
  'word word'),
 ('word word word word word word word word word word word word word word word word word word word '
  'word word word word word word word word word word word word word word word word word word word '
  'word word ',
  3,
  'word word word')]


@pytest.mark.parametrize("case", sorted(MIDDLE))
def test_middle_sampler_matches_official(case):
    t, n = map(int, case.split(","))
    assert vl_frame_indices(t, n, "middle") == MIDDLE[case]


@pytest.mark.parametrize("case", sorted(RAND_SUPPORT))
def test_rand_sampler_reaches_exactly_the_official_indices(case):
    t, n = map(int, case.split(","))
    rng = np.random.default_rng(0)
    seen = [set() for _ in range(t)]
    for _ in range(3000):
        idx = vl_frame_indices(t, n, "rand", rng)
        assert len(idx) == t and idx == sorted(idx) and 0 <= idx[0] and idx[-1] < n
        for k, i in enumerate(idx):
            seen[k].add(i)
    assert [sorted(s) for s in seen] == RAND_SUPPORT[case]


def test_rand_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="needs an rng"):
        vl_frame_indices(4, 10, "rand")
    with pytest.raises(ValueError, match="unknown sample type"):
        vl_frame_indices(4, 10, "fps1")
    with pytest.raises(ValueError, match="0 frames"):
        vl_frame_indices(4, 0, "middle")


@pytest.mark.parametrize("text,max_words,expected", PRE_TEXT)
def test_clean_caption_matches_official_pre_text(text, max_words, expected):
    assert clean_caption(text, max_words) == expected
    assert clean_caption(expected, max_words) == expected  # idempotent: cleaning twice is harmless


def _clip(t=3, h=40, w=60, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_train_transform_is_torchvision_resized_crop_with_one_box_per_clip():
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    frames = _clip()
    for seed in range(20):
        out = vl_train_transform(frames, 32, (0.5, 1.0), True, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)  # replay the draws: box, then flip
        top, left, h, w = random_resized_crop_box(40, 60, (0.5, 1.0), rng)
        flipped = rng.random() < 0.5
        u8 = torch.from_numpy(frames).permute(0, 3, 1, 2)
        ref = TF.resized_crop(u8, top, left, h, w, [32, 32], InterpolationMode.BICUBIC, antialias=True)
        if flipped:
            ref = TF.hflip(ref)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        ref = ((ref.float() / 255 - mean) / std).permute(1, 0, 2, 3)
        assert out.shape == (3, 3, 32, 32)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    # One box for every frame: identical frames stay identical.
    same = np.repeat(frames[:1], 4, axis=0)
    out = vl_train_transform(same, 16, (0.5, 1.0), True, np.random.default_rng(3))
    assert all(torch.equal(out[:, 0], out[:, k]) for k in range(4))


def test_crop_box_follows_torchvision_rules():
    rng = np.random.default_rng(0)
    areas, aspects = [], []
    for _ in range(2000):
        top, left, h, w = random_resized_crop_box(100, 150, (0.5, 1.0), rng)
        assert 0 <= top <= 100 - h and 0 <= left <= 150 - w
        areas.append(h * w / 15000)
        aspects.append(w / h)
    assert 0.49 <= min(areas) and max(areas) <= 1.0 and np.mean(areas) > 0.6
    assert 0.72 <= min(aspects) and max(aspects) <= 1.38  # 3/4 .. 4/3, up to integer rounding
    # The fallback after 10 failed draws (a very wide frame): a centre crop at the widest ratio.
    assert random_resized_crop_box(10, 1000, (0.99, 1.0), np.random.default_rng(0)) == (0, 493, 10, 13)


def test_test_transform_is_a_square_bicubic_resize_without_crop():
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    frames = _clip(2, 30, 80)
    out = vl_test_transform(frames, 24)
    ref = TF.resize(torch.from_numpy(frames).permute(0, 3, 1, 2), [24, 24],
                    InterpolationMode.BICUBIC, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, ((ref.float() / 255 - mean) / std).permute(1, 0, 2, 3),
                               rtol=0, atol=1e-6)


def _generate(official: str) -> None:
    """Print MIDDLE, RAND_SUPPORT and PRE_TEXT from the official functions."""
    import pprint
    import random
    import types

    sys.path.insert(0, official)
    for name in ("cv2", "imageio"):  # imported at the top of video_utils, unused here
        sys.modules.setdefault(name, types.ModuleType(name))
    from dataset.utils import pre_text
    from dataset.video_utils import get_frame_indices

    middle = {f"{t},{n}": [int(i) for i in get_frame_indices(t, n, "middle")]
              for t in (1, 4, 8, 12) for n in (1, 2, 3, 4, 5, 7, 8, 9, 16, 31, 100, 301)}
    support = {}
    for t, n in [(4, 3), (4, 4), (4, 7), (4, 8), (4, 9), (4, 12), (2, 5), (8, 20), (1, 6), (3, 100)]:
        seen = [set() for _ in range(t)]
        for seed in range(3000):
            random.seed(seed)
            np.random.seed(seed)
            for k, i in enumerate(get_frame_indices(t, n, "rand")):
                seen[k].add(int(i))
        support[f"{t},{n}"] = [sorted(x) for x in seen]
    texts = ["A man -- riding/jumping a Horse!  <person> smiles.", "Don't stop (ever); #1 ~ok~: yes?",
             "  multiple   spaces\tand\ttabs  ", "line one\n\nline two\n", "e.g. state-of-the-art 3.5",
             "UPPER <PERSON> <person>'s dog", "\u00c9t\u00e9 \u00e0 Paris, caf\u00e9!", "a/b/c-d-e",
             "", "...", "word " * 40]
    for name, value in (("MIDDLE", middle), ("RAND_SUPPORT", support),
                        ("PRE_TEXT", [(x, m, pre_text(x, m)) for x in texts for m in (None, 3)])):
        print(f"{name} = {pprint.pformat(value, width=100, compact=True)}\n")


if __name__ == "__main__":  # regenerate the frozen values (see the module docstring)
    _generate(sys.argv[1])
