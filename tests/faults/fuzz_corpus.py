"""A generated corpus of broken media inputs (issue 12 §3), built from real encoded clips.

    corpus = build(folder)   # -> list[Case], every file written under ``folder``

Each :class:`Case` is one file with a name, a category and what we know about it:

* ``valid``: a well-formed input (a real clip, one under another video extension, a still
  image) that must be kept;
* ``broken``: a damaged or foreign input; ``reason`` (when set) is the start of the failure
  reason sharding must record for it. Broken inputs whose damage a decoder may tolerate (a bit
  flip in padding, a patched box FFmpeg ignores) carry no expected reason: the test then only
  requires that the outcome is recorded one way or the other, and that anything kept decodes.

The sources are tiny (32x32, 12 frames, a few KB): the whole corpus is well under 1 MB, so the
fuzz tests cost seconds, not minutes. Everything is seeded: the same corpus every run.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

SIZE, FRAMES, FPS = 32, 12, 8


@dataclass
class Case:
    name: str  # file name, with the extension the manifest shows
    category: str
    valid: bool
    reason: Optional[str] = None  # expected start of sharding's failure reason (broken only)
    path: str = ""


def _encode(frames: np.ndarray, fmt: str = "mp4", codec: str = "libx264",
            faststart: bool = False) -> bytes:
    import tempfile

    import av

    # faststart rewrites the finished file to put the index first: it needs a real file.
    tmp = tempfile.NamedTemporaryFile(suffix="." + fmt) if faststart else None
    buf = tmp.name if tmp else io.BytesIO()
    opts = {"movflags": "faststart"} if faststart else {}
    with av.open(buf, "w", format=fmt, options=opts) as out:
        st = out.add_stream(codec, rate=FPS)
        st.height, st.width = frames.shape[1:3]
        st.pix_fmt = "yuv420p"
        if codec == "mjpeg":
            st.pix_fmt = "yuvj420p"
        if codec == "libx264":
            st.options = {"preset": "ultrafast", "x264-params": "bframes=0:keyint=4"}
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            for p in st.encode(vf):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    if tmp is not None:
        with tmp:
            return Path(tmp.name).read_bytes()
    return buf.getvalue()


def _audio(fmt: str, codec: str) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        st = out.add_stream(codec, rate=8000)
        for i in range(4):
            fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32 if codec == "aac" else np.int16),
                                            format="fltp" if codec == "aac" else "s16", layout="mono")
            fr.sample_rate, fr.pts = 8000, i * 1024
            for p in st.encode(fr):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return buf.getvalue()


def _image(frames: np.ndarray, fmt: str, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    if fmt == "GIF":
        ims = [Image.fromarray(f) for f in frames[:3]]
        ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=100)
    else:
        Image.fromarray(frames[0]).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _box(data: bytes, name: bytes, nth: int = 0) -> int:
    """Offset of the payload (after size + type) of the ``nth`` MP4 box called ``name``."""
    at = -1
    for _ in range(nth + 1):
        at = data.index(name, at + 1)
    return at + 4


def _patch(data: bytes, name: bytes, offset: int, fmt: str, value) -> bytes:
    """``data`` with the field at ``offset`` bytes into box ``name``'s payload set to ``value``."""
    out = bytearray(data)
    struct.pack_into(fmt, out, _box(data, name) + offset, value)
    return bytes(out)


def _flip(data: bytes, n: int, seed: int, start: float = 0.0, end: float = 1.0) -> bytes:
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    lo, hi = int(len(data) * start), max(int(len(data) * start) + 1, int(len(data) * end))
    for i in rng.integers(lo, hi, n):
        out[i] ^= 1 << int(rng.integers(8))
    return bytes(out)


def _sof(data: bytes, width: int, height: int) -> bytes:
    """``data`` with every JPEG start-of-frame (SOF0) header declaring ``width`` x ``height``."""
    out, at = bytearray(data), 0
    while (at := out.find(b"\xff\xc0", at)) >= 0:
        struct.pack_into(">HH", out, at + 5, height, width)
        at += 2
    return bytes(out)


def _tar_of(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip_of(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(name, data)
    return buf.getvalue()


def build(folder: str | Path) -> list[Case]:
    """Write the corpus under ``folder``; return its cases (valid ones first)."""
    from umt.data import synthetic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frames, _, _ = synthetic.render_clip(3, FRAMES, SIZE)
    mp4 = _encode(frames)
    fast = _encode(frames, faststart=True)
    mkv = _encode(frames, fmt="matroska")
    webm = _encode(frames, fmt="webm", codec="libvpx")
    png, jpg = _image(frames, "PNG"), _image(frames, "JPEG", quality=90)
    files: list[tuple[Case, bytes]] = []

    def add(name, category, data, valid=False, reason=None):
        files.append((Case(name, category, valid, reason), data))

    # -- valid: must all be kept ------------------------------------------------------------
    add("good.mp4", "valid", mp4, True)
    add("good_faststart.mp4", "valid", fast, True)
    add("good.mkv", "valid", mkv, True)
    add("good.webm", "valid", webm, True)
    add("mp4_named.mkv", "valid: other video extension", mp4, True)
    add("mp4_named.avi", "valid: other video extension", mp4, True)
    add("mkv_named.mov", "valid: other video extension", mkv, True)
    add("still.png", "valid: image", png, True)
    add("still.jpg", "valid: image", jpg, True)

    # -- truncations: every length from a few bytes to one short of whole ---------------------
    for src_name, src in (("mp4", mp4), ("faststart", fast), ("mkv", mkv), ("webm", webm)):
        cuts = [1, 8, 32, 100] + [int(len(src) * f) for f in (0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.95)]
        cuts.append(len(src) - 1)
        for cut in cuts:
            reason = "not a readable video" if cut <= 32 else None
            add(f"trunc_{src_name}_{cut}.{'mp4' if src_name in ('mp4', 'faststart') else src_name}",
                "truncated", src[:cut], reason=reason)
    add("trunc_png.png", "truncated", png[: len(png) // 2], reason="not a readable image")
    add("trunc_jpg.jpg", "truncated", jpg[: len(jpg) // 2], reason="not a readable image")

    # -- bit flips: few and many, in the header, the index and the payload --------------------
    for i, (n, start, end) in enumerate([(1, 0, .05), (1, .3, .9), (4, .3, .9), (16, .3, .9),
                                         (64, .3, .9), (256, 0, 1), (8, .9, 1), (8, 0, .1)]):
        add(f"flip_mp4_{i}.mp4", "bit flips", _flip(mp4, n, seed=i, start=start, end=end))
        add(f"flip_faststart_{i}.mp4", "bit flips", _flip(fast, n, seed=100 + i, start=start, end=end))
    for i in range(4):
        add(f"flip_mkv_{i}.mkv", "bit flips", _flip(mkv, 4 ** i, seed=200 + i, start=.2, end=1))
    for i in range(2):
        add(f"flip_png_{i}.png", "bit flips", _flip(png, 8 * (i + 1), seed=300 + i, start=.2, end=1))

    # -- byte-level damage: zeroed, duplicated, swapped regions ------------------------------
    n = len(mp4)
    for i, (a, b) in enumerate([(0.2, 0.4), (0.5, 0.6), (0.8, 1.0), (0.0, 0.05)]):
        add(f"zeroed_{i}.mp4", "zeroed region",
            mp4[:int(n * a)] + bytes(int(n * b) - int(n * a)) + mp4[int(n * b):])
    add("dup_chunk.mp4", "duplicated region", mp4[:n // 2] + mp4[n // 4:n // 2] + mp4[n // 2:])
    add("swapped.mp4", "swapped halves", mp4[n // 2:] + mp4[:n // 2])
    add("doubled.mp4", "two files glued", mp4 + mp4)

    # -- wrong containers and foreign files under video extensions ---------------------------
    rng = np.random.default_rng(7)
    add("text.mp4", "wrong container", b"this is a text file, not a video\n" * 30,
        reason="not a readable video")
    add("html.mp4", "wrong container", b"<!doctype html><html><body>404 Not Found</body></html>\n",
        reason="not a readable video")
    add("json.mkv", "wrong container", json.dumps({"video": "x.mp4"}).encode(),
        reason="not a readable video")
    add("tar_of_mp4.mp4", "wrong container", _tar_of("a.mp4", mp4))
    add("zip_of_mp4.mp4", "wrong container", _zip_of("a.mp4", mp4))
    add("gzip_of_mp4.mp4", "wrong container", gzip.compress(mp4, mtime=0))
    add("pdf.mp4", "wrong container", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n",
        reason="not a readable video")
    add("elf.mp4", "wrong container", b"\x7fELF\x02\x01\x01" + bytes(57) + rng.bytes(512))
    for size in (16, 4096, 65536):
        add(f"random_{size}.mp4", "random bytes", rng.bytes(size))
    for size in (16, 4096):
        add(f"zeros_{size}.mp4", "all zeros", bytes(size))
    add("wav.mp4", "audio only", _audio("wav", "pcm_s16le"), reason="no video stream")
    add("aac.mp4", "audio only", _audio("mp4", "aac"), reason="no video stream")
    add("aac_audio.mkv", "audio only", _audio("matroska", "aac"), reason="no video stream")
    add("mp3ish.webm", "audio only", _audio("matroska", "pcm_s16le"), reason="no video stream")

    # -- images with video extensions (FFmpeg may read some as 1-frame videos) ----------------
    add("png_named.mp4", "image with a video extension", png)
    add("jpg_named.mp4", "image with a video extension", jpg)
    add("gif_named.mkv", "image with a video extension", _image(frames, "GIF"))
    add("bmp_named.webm", "image with a video extension", _image(frames, "BMP"))
    add("video_named.png", "video with an image extension", mp4, reason="not a readable image")

    # -- zero sizes -----------------------------------------------------------------------
    for ext in ("mp4", "mkv", "png"):
        add(f"empty.{ext}", "zero bytes", b"", reason="empty file")

    # -- absurd declared dimensions, frame counts, durations (patched MP4 boxes) ---------------
    # mvhd/mdhd v0: version+flags(4) ctime(4) mtime(4) timescale(4) duration(4)
    # tkhd v0: ... width(4, 16.16) at 76, height at 80; avc1: width(2) at 24, height(2) at 26
    # stts: version+flags(4) entry_count(4) sample_count(4) delta(4); stsz: ... count at 8
    patches = [
        ("mvhd", 12, ">I", 0, "timescale 0"), ("mvhd", 16, ">I", 0xFFFFFFFF, "duration 2^32-1"),
        ("mdhd", 12, ">I", 0, "track timescale 0"), ("mdhd", 12, ">I", 1, "track timescale 1"),
        ("mdhd", 16, ">I", 0xFFFFFFFF, "track duration 2^32-1"), ("mdhd", 16, ">I", 0, "track duration 0"),
        ("tkhd", 76, ">I", 0xFFFF0000, "tkhd width 65535"), ("tkhd", 80, ">I", 0, "tkhd height 0"),
        ("avc1", 24, ">H", 0xFFFF, "avc1 width 65535"), ("avc1", 26, ">H", 0xFFFF, "avc1 height 65535"),
        ("avc1", 24, ">H", 0, "avc1 width 0"),
        ("stts", 8, ">I", 0xFFFFFFFF, "2^32-1 frames declared"), ("stts", 12, ">I", 0, "frame delta 0"),
        ("stsz", 8, ">I", 0xFFFFFFFF, "2^32-1 sample sizes declared"),
        ("stco", 8, ">I", 0x7FFFFFFF, "chunk offset past the end"),
    ]
    for i, (box, off, fmt, value, what) in enumerate(patches):
        for src_name, src in (("mp4", mp4), ("faststart", fast)):
            add(f"absurd_{i}_{src_name}.mp4", f"absurd header: {what}", _patch(src, box.encode(), off, fmt, value))

    # Frame sizes declared far beyond any limit, in a few hundred bytes: a JPEG whose header
    # says 60000x60000 (refused on the header, before decoding) and MJPEG frames in an AVI
    # whose container says 16x16 but whose frames say 16000x16000.
    add("huge_declared.jpg", "absurd header: 60000x60000 image", _sof(jpg, 60000, 60000),
        reason="resolution exceeds the limit")
    add("huge_frames.avi", "absurd header: 16000x16000 frames in a 16x16 video",
        _sof(_encode(frames[:4], fmt="avi", codec="mjpeg"), 16000, 16000))

    cases = []
    for case, data in files:
        case.path = str(folder / case.name)
        Path(case.path).write_bytes(data)
        cases.append(case)
    names = [c.name for c in cases]
    assert len(set(names)) == len(names), "duplicate corpus names"
    return cases
