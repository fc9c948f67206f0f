"""Seeded synthetic video clips whose label can only be told from temporal order.

A coloured square crosses the frame in one of four directions. Every single frame is a square
somewhere on the path, and the set of frames of "left to right" equals the set of frames of
"right to left": only the order of the frames gives the label away, so a model that ignores
time cannot beat chance. Used by the CPU demo, the tests and the benchmarks.
"""

from __future__ import annotations

import numpy as np

CLASSES = ["left to right", "right to left", "top to bottom", "bottom to top"]
_COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}


def caption_for(label: int, colour: str) -> str:
    return f"a {colour} square moving {CLASSES[label]}"


def render_clip(seed: int, num_frames: int = 16, size: int = 64,
                label: int | None = None) -> tuple[np.ndarray, int, str]:
    """Render one clip.

    Returns ``(frames uint8 [T, H, W, 3], label, caption)``; the same seed gives the same clip.
    """
    rng = np.random.default_rng(seed)
    if label is None:
        label = int(rng.integers(len(CLASSES)))
    colour = list(_COLOURS)[int(rng.integers(len(_COLOURS)))]
    side = max(4, size // 5)
    background = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    # Path: the moving coordinate goes edge to edge; the other stays at a random offset.
    travel = np.linspace(0, size - side, num_frames).round().astype(int)
    if label in (1, 3):
        travel = travel[::-1]
    fixed = int(rng.integers(0, size - side + 1))
    frames = np.repeat(background[None], num_frames, axis=0)
    for t, pos in enumerate(travel):
        y, x = (fixed, pos) if label in (0, 1) else (pos, fixed)
        frames[t, y:y + side, x:x + side] = _COLOURS[colour]
    return frames, label, caption_for(label, colour)
