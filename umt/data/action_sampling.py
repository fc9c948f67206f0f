"""Frame positions of action-recognition fine-tuning and testing, as the official code samples.

Two samplers (``data.sampler``), each with a training and a test form; ``n`` is the number of
frames of the video (or of its clip range), ``T`` the frames per clip, ``N`` the test clips:

``segment`` -- Kinetics / MiT (``single_modality/datasets/kinetics_sparse.py::_get_seq_frames``),
  with ``seg = (n - 1) / T``:

  - train: frame ``i`` is ``min(randint(round(seg*i), round(seg*(i+1))), n - 1)`` (both ends
    included; ``round`` is numpy's, half to even);
  - test clip ``c`` of ``N``: ``round(seg*i) + int(seg / (N + 1) * (c + 1))`` capped at
    ``n - 1`` (:func:`umt.data.sampling.segment_indices`); ``N = 1`` is the validation centre.

``tsn`` -- Something-Something (``ssv2.py::loadvideo_decord``), TSN segments:

  - train: ``i * (n // T) + randint(n // T)`` (videos shorter than T: see below);
  - test: ``tick = n / T``; clip 0 of 2 takes the segment starts ``int(tick*i)``, clip 1 the
    centres ``int(tick/2 + tick*i)`` (the official sorted starts + centres taken ``[c::2]``);
    ``N = 1`` (validation) the centres. The official code only works with ``N = 2``; for
    ``N > 2`` clip ``c`` takes ``int(tick*i + tick*c/N)``, the same rule spread evenly.

Videos shorter than ``T`` frames: ``segment`` repeats frames by construction; officially
``tsn`` training then takes frame 0 ``T`` times, here it takes ``floor(i * n / T)`` (every
frame, in order, repeated) -- a deliberate difference: a static clip of frame 0 carries no
temporal information and a label that often depends on it.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from umt.data.sampling import segment_indices

SAMPLERS = ("segment", "tsn")


def segment_train(n: int, num_frames: int, rng: np.random.Generator) -> list[int]:
    """Official Kinetics training positions (``_get_seq_frames`` with ``clip_idx=-1``)."""
    seg = max(0.0, float(n - 1) / num_frames)
    out = []
    for i in range(num_frames):
        start, end = int(np.round(seg * i)), int(np.round(seg * (i + 1)))
        out.append(min(int(rng.integers(start, end + 1)), n - 1))
    return out


def tsn_train(n: int, num_frames: int, rng: np.random.Generator) -> list[int]:
    """Official SSv2 training positions (TSN: a random frame of each of T equal segments)."""
    avg = n // num_frames
    if avg > 0:
        return [int(i * avg + rng.integers(avg)) for i in range(num_frames)]
    return [int(i * n // num_frames) for i in range(num_frames)]  # n < T: see module docstring


def tsn_test(n: int, num_frames: int, clip_idx: int = 0, num_clips: int = 1) -> list[int]:
    """Official SSv2 test / validation positions (see the module docstring)."""
    if not 0 <= clip_idx < num_clips:
        raise ValueError(f"clip_idx {clip_idx} not in [0, {num_clips})")
    tick = n / float(num_frames)
    offset = tick / 2.0 if num_clips == 1 else tick * clip_idx / num_clips
    return [min(int(offset + tick * i), n - 1) for i in range(num_frames)]


def frame_indices(sampler: str, n: int, num_frames: int, *, train: bool,
                  rng: Optional[np.random.Generator] = None, clip_idx: int = 0,
                  num_clips: int = 1) -> list[int]:
    """``T`` frame indices in ``[0, n)`` for one clip of a video of ``n`` frames."""
    if n < 1:
        raise ValueError(f"cannot sample from a video with {n} frames")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r} is not allowed; choose one of: {', '.join(SAMPLERS)}")
    if train and rng is None:
        raise ValueError("training sampling needs an rng")
    if sampler == "segment":
        if train:
            return segment_train(n, num_frames, rng)
        return segment_indices(n, num_frames, train=False, clip_idx=clip_idx, num_clips=num_clips)
    if train:
        return tsn_train(n, num_frames, rng)
    return tsn_test(n, num_frames, clip_idx, num_clips)


def picker(sampler: str, num_frames: int, *, train: bool, rng: Optional[np.random.Generator] = None,
           clip_idx: int = 0, num_clips: int = 1) -> Callable[[int], list[int]]:
    """``pick(length) -> indices`` for :func:`umt.data.samples.read_video`."""
    return lambda n: frame_indices(sampler, n, num_frames, train=train, rng=rng,
                                   clip_idx=clip_idx, num_clips=num_clips)
