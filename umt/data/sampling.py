"""Sparse segment sampling of frame indices, as the official UMT / VideoMAE code does it.

The video (or its ``[first, last)`` clip range) is cut into ``num_frames`` equal segments and one
frame is taken from each: a random one for training (TSN-style, every epoch sees other frames),
a fixed one for testing. Test positions are exactly those of the official
``kinetics_sparse._get_seq_frames``: with ``seg = (n - 1) / T``, frame ``i`` of clip ``k`` (of
``K = num_clips``) is ``round(seg * i) + int(seg / (K + 1) * (k + 1))``, capped at ``n - 1``; one
clip is (about) the middle frame of every segment.
"""

from __future__ import annotations

import numpy as np


def segment_indices(num_video_frames: int, num_frames: int, *, train: bool,
                    rng: np.random.Generator | None = None, clip_idx: int = 0,
                    num_clips: int = 1, first: int = 0, last: int | None = None) -> list[int]:
    """Frame indices for one clip.

    Args:
        num_video_frames: frames in the decoded video (>= 1).
        num_frames: T, frames per clip.
        train: random frame per segment (needs ``rng``) vs the fixed test position.
        clip_idx, num_clips: which of the ``num_clips`` test views (ignored for training).
        first, last: restrict sampling to frames ``[first, last)`` (a clip range).

    Returns:
        ``T`` non-decreasing indices in ``[first, last)``. Videos shorter than ``T`` frames repeat
        frames (each segment then spans < 1 frame), as the official code pads with the last frame.
    """
    if num_video_frames < 1:
        raise ValueError(f"cannot sample from a video with {num_video_frames} frames")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    last = num_video_frames if last is None else min(last, num_video_frames)
    first = min(max(first, 0), last - 1)
    length = last - first
    # Segment boundaries as floats: with length < T the segments are shorter than a frame and
    # neighbouring segments map to the same frame (padding) instead of failing.
    bounds = np.linspace(0, length, num_frames + 1)
    if train:
        if rng is None:
            raise ValueError("training sampling needs an rng")
        offsets = bounds[:-1] + rng.random(num_frames) * (bounds[1:] - bounds[:-1])
    else:
        if not 0 <= clip_idx < num_clips:
            raise ValueError(f"clip_idx {clip_idx} not in [0, {num_clips})")
        # Official _get_seq_frames (test mode), on the clip range.
        seg = max(0.0, float(length - 1) / num_frames)
        shift = int(seg / (num_clips + 1) * (clip_idx + 1))
        idx = [min(int(np.round(seg * i)) + shift, length - 1) + first for i in range(num_frames)]
        return [int(i) for i in idx]
    idx = np.minimum(np.floor(offsets).astype(np.int64), length - 1) + first
    return [int(i) for i in idx]


def vl_frame_indices(num_frames: int, length: int, sample: str = "rand",
                     rng: np.random.Generator | None = None) -> list[int]:
    """Frame indices of the official multi-modality sampler (``video_utils.get_frame_indices``).

    ``min(T, length)`` equal intervals ``[a_k, a_{k+1})`` with ``a = int(linspace(0, length,
    n + 1))``; then, as officially (quirks included, so clips match the recipe's):

    - ``rand`` (Stage-2 training): a random frame in ``[a_k, a_{k+1} - 1)`` -- the last frame of
      each interval is never drawn; if any interval is shorter than 2 frames the official code
      falls back to ``n`` distinct random frames, sorted.
    - ``middle`` (retrieval evaluation): ``(a_k + a_{k+1} - 1) // 2``.

    Fewer frames than ``T``: padded with the last index. Returns ``T`` indices in ``[0, length)``.
    """
    if length < 1:
        raise ValueError(f"cannot sample from a video with {length} frames")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    n = min(num_frames, length)
    bounds = np.linspace(0, length, n + 1).astype(int)
    lo, hi = bounds[:-1], bounds[1:] - 1  # official ranges (a_k, a_{k+1} - 1)
    if sample == "middle":
        idx = [int(i) for i in (lo + hi) // 2]
    elif sample == "rand":
        if rng is None:
            raise ValueError("'rand' sampling needs an rng")
        if np.all(hi > lo):
            idx = [int(rng.integers(a, b)) for a, b in zip(lo, hi)]
        else:  # the official fallback (its random.choice on an empty range raised)
            idx = sorted(int(i) for i in rng.permutation(length)[:n])
    else:
        raise ValueError(f"unknown sample type {sample!r}; choose 'rand' or 'middle'")
    return idx + [idx[-1]] * (num_frames - len(idx))
