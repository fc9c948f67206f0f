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

    from umt.data import storage

    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    if size % 2:
        raise ValueError(f"size must be even (H.264), got {size}")
    rows = []
    for i in range(num_videos):
        label = i % len(CLASSES)
        frames, label, caption = render_clip(seed * 1_000_003 + i, num_frames, size, label=label)
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
