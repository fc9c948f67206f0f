"""Seeded synthetic video clips whose label can only be told from temporal order.

A coloured square sits at a random row ``y`` and visits the fixed column positions
``x_0 < x_1 < ... < x_{T-1}`` (``y`` is drawn from the same grid), one per frame. The four classes
are four *orders* of visiting the same positions:

- ``left to right``: ``x_0, x_1, ..., x_{T-1}``
- ``right to left``: ``x_{T-1}, ..., x_1, x_0``
- ``left to right in jumps``: the even positions, then the odd ones (``x_0, x_2, ..., x_1, x_3, ...``)
- ``right to left in jumps``: the mirror of that (``x_{T-1}, x_{T-3}, ..., x_{T-2}, x_{T-4}, ...``)

Everything else (colour, background noise, row) is drawn from the seed independently of the
label, so for a given seed the four classes are temporal permutations of exactly the same
frames: the multiset of frames -- and hence any single frame, or any bag of frames -- has the
same distribution for every class, and a model that ignores frame order is at chance (25 %).
Only the order gives the label away. (With ``num_frames < 3`` the "jumps" orders coincide with
the plain ones; use at least 3 frames, better 8+, to have four distinguishable classes.)

Used by the CPU demo, the tests and the benchmarks.
"""

from __future__ import annotations

import numpy as np

from umt.seeds import derive_seed

CLASSES = ["left to right", "right to left", "left to right in jumps", "right to left in jumps"]
_COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}


def caption_for(label: int, colour: str) -> str:
    return f"a {colour} square moving {CLASSES[label]}"


def visit_order(label: int, num_frames: int) -> list[int]:
    """Which grid position the square is at in each frame, for class ``label``."""
    forward = list(range(0, num_frames, 2)) + list(range(1, num_frames, 2))
    orders = [list(range(num_frames)), list(range(num_frames))[::-1],
              forward, [num_frames - 1 - i for i in forward]]
    return orders[label]


def render_clip(seed: int, num_frames: int = 16, size: int = 64,
                label: int | None = None) -> tuple[np.ndarray, int, str]:
    """Render one clip.

    Returns ``(frames uint8 [T, H, W, 3], label, caption)``; the same seed gives the same clip.
    The frames of one seed are the same multiset for every label (only their order differs);
    with ``label=None`` the label is drawn from the seed last, independently of everything else.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    rng = np.random.default_rng(seed)
    colour = list(_COLOURS)[int(rng.integers(len(_COLOURS)))]
    side = max(4, size // 5)
    background = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    grid = np.linspace(0, size - side, num_frames).round().astype(int)
    y = int(grid[int(rng.integers(num_frames))])
    if label is None:
        label = int(rng.integers(len(CLASSES)))
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"label must be in [0, {len(CLASSES)}), got {label}")
    frames = np.repeat(background[None], num_frames, axis=0)
    for t, j in enumerate(visit_order(label, num_frames)):
        x = int(grid[j])
        frames[t, y:y + side, x:x + side] = _COLOURS[colour]
    return frames, label, caption_for(label, colour)


def clip_captions(seed: int, label: int) -> list[str]:
    """Two captions of the clip ``render_clip(seed, ...)`` with class ``label`` (Stage 2: several
    captions per video, each its own (video, caption) pair)."""
    colour = list(_COLOURS)[int(np.random.default_rng(seed).integers(len(_COLOURS)))]  # its first draw
    return [caption_for(label, colour), f"{CLASSES[label]} motion of a {colour} square"]


def render_image(seed: int, size: int = 64) -> tuple[np.ndarray, str]:
    """A captioned still image: a coloured square in one quadrant of a noisy background.

    Returns ``(frame uint8 [1, H, W, 3], caption)``, e.g. "a red square in the top left"; what
    the caption says is visible in the image (the Stage-2 demo learns to match them).
    """
    rng = np.random.default_rng(seed)
    colour = list(_COLOURS)[int(rng.integers(len(_COLOURS)))]
    side = max(4, size // 5)
    frame = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    qy, qx = int(rng.integers(2)), int(rng.integers(2))
    half = size // 2
    y = qy * half + int(rng.integers(0, max(1, half - side)))
    x = qx * half + int(rng.integers(0, max(1, half - side)))
    frame[y:y + side, x:x + side] = _COLOURS[colour]
    where = f"{('top', 'bottom')[qy]} {('left', 'right')[qx]}"
    return frame[None], f"a {colour} square in the {where}"


def frames_to_mp4(frames: np.ndarray, fps: float = 8.0, keyframe_interval: int = 16,
                  crf: int = 18) -> bytes:
    """Encode uint8 ``[T, H, W, 3]`` RGB frames as an H.264 mp4 (in memory, with PyAV)."""
    import io
    from fractions import Fraction

    import av

    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 with 4:2:0 chroma needs even frame sizes, got {w}x{h}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.thread_count = 1
        # Near-lossless (crf 18): the moving square must stay crisp after 4:2:0 + compression.
        stream.options = {"crf": str(crf), "preset": "veryfast",
                          "x264-params": f"keyint={keyframe_interval}:bframes=0"}
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def write_dataset(output_dir: str, num_videos: int, *, num_frames: int = 16, size: int = 64,
                  fps: float = 8.0, seed: int = 0, manifest_name: str = "manifest.csv",
                  progress=None) -> str:
    """Write ``num_videos`` synthetic mp4s and a CSV manifest for ``umt shard``; return its path.

    ``output_dir`` is a local folder or an s3:// prefix.

    Layout: ``<output_dir>/videos/<index>.mp4``, ``<output_dir>/<manifest_name>`` with columns
    ``video,label,caption,id`` (video paths relative to the manifest; labels are class names
    from :data:`CLASSES`) and ``<output_dir>/classes.txt`` (pass it to ``umt shard --classes``
    to keep :data:`CLASSES`' order as the label indices). Labels are balanced (index % 4) so
    small datasets cover every class. The same arguments give byte-identical files.
    ``progress``, if given, is called with 1 after each video (e.g. ``tqdm.update``).
    """
    import csv
    import io

    from umt import storage

    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    if size % 2:
        raise ValueError(f"size must be even (H.264), got {size}")
    rows = []
    for i in range(num_videos):
        label = i % len(CLASSES)
        frames, label, caption = render_clip(derive_seed("clip", seed, i), num_frames, size, label=label)
        rel = f"videos/{i:06d}.mp4"
        storage.write_bytes(storage.join(output_dir, rel), frames_to_mp4(frames, fps))
        rows.append({"video": rel, "label": CLASSES[label], "caption": caption,
                     "id": f"synthetic-{i:06d}"})
        if progress is not None:
            progress(1)
    storage.write_bytes(storage.join(output_dir, "classes.txt"), ("\n".join(CLASSES) + "\n").encode())
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=["video", "label", "caption", "id"])
    writer.writeheader()
    writer.writerows(rows)
    manifest = storage.join(output_dir, manifest_name)
    storage.write_bytes(manifest, text.getvalue().encode())
    return manifest
