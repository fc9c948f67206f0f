"""Video decoding behind one small interface, so the backend can be swapped.

decord is the default (what the official UMT code uses, fast random access) but unmaintained
with known leaks and crashes; PyAV is the alternative that ships FFmpeg in its wheel. Both decode
from bytes held in memory (a sample read from a tar), one thread each: DataLoader workers are
the parallelism, and more decoder threads per worker only oversubscribe the cores.

    >>> dec = get_decoder("decord")
    >>> frames = dec.read(mp4_bytes, lambda n, fps: [0, n // 2, n - 1])   # uint8 [3, H, W, 3]
"""

from __future__ import annotations

import io
import re
from typing import Callable, Protocol, Sequence

import numpy as np

# pick(num_frames_in_video, fps) -> frame indices to return (any order, repeats allowed)
Picker = Callable[[int, float], Sequence[int]]


class DecodeError(RuntimeError):
    """The bytes are not a decodable video (corrupt, truncated, no video stream, ...)."""


class VideoDecoder(Protocol):
    name: str

    def read(self, data: bytes, pick: Picker) -> np.ndarray:
        """Decode the frames ``pick`` asks for: uint8 ``[len(indices), H, W, 3]`` RGB."""

    def probe(self, data: bytes) -> tuple[int, float]:
        """``(num_frames, fps)`` of the first video stream."""


class DecordDecoder:
    name = "decord"

    def __init__(self, num_threads: int = 1):
        try:
            import decord  # noqa: F401
        except ImportError:  # no wheels for aarch64 / macOS arm64
            raise ImportError("decord is not installed (it has no wheels for this platform); "
                              "use the 'pyav' decoder (DataConfig.decoder=pyav)") from None
        self.num_threads = num_threads

    def _open(self, data: bytes):
        import decord

        if not data:
            raise DecodeError("empty file")
        try:
            vr = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=self.num_threads)
        except Exception as e:  # decord raises DECORDError / RuntimeError with FFmpeg's message
            raise DecodeError(f"decord cannot open video: {short_error(e)}") from None
        if len(vr) < 1:
            raise DecodeError("video has no frames")
        return vr

    def probe(self, data: bytes) -> tuple[int, float]:
        vr = self._open(data)
        return len(vr), float(vr.get_avg_fps() or 0.0)

    def read(self, data: bytes, pick: Picker) -> np.ndarray:
        vr = self._open(data)
        n = len(vr)
        idx = [int(i) for i in pick(n, float(vr.get_avg_fps() or 0.0))]
        if not idx or min(idx) < 0 or max(idx) >= n:
            raise DecodeError(f"frame indices {idx} out of range for {n} frames")
        try:
            frames = vr.get_batch(idx).asnumpy()
        except Exception as e:
            raise DecodeError(f"decord cannot decode frames {idx}: {short_error(e)}") from None
        if frames.ndim != 4 or frames.shape[0] != len(idx) or frames.shape[-1] != 3:
            raise DecodeError(f"decord returned frames of shape {frames.shape}")
        return frames


class PyAVDecoder:
    """FFmpeg through PyAV; seeks to the keyframe before far-away frames, else decodes forward."""

    name = "pyav"

    def __init__(self, num_threads: int = 1, seek_gap: int = 8):
        self.num_threads = num_threads
        # Seeking costs a flush and a decode from the previous keyframe; for short gaps decoding
        # forward is cheaper. 8 measured best on umt-transcoded shards (keyframe every 16).
        self.seek_gap = seek_gap

    @staticmethod
    def _open(data: bytes):
        import av

        if not data:
            raise DecodeError("empty file")
        try:
            container = av.open(io.BytesIO(data), mode="r")
        except Exception as e:
            raise DecodeError(f"PyAV cannot open video: {short_error(e)}") from None
        if not container.streams.video:
            container.close()
            raise DecodeError("no video stream")
        return container

    @staticmethod
    def _count(stream) -> tuple[int, float]:
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        n = int(stream.frames or 0)
        if n <= 0 and stream.duration and stream.time_base and fps > 0:
            n = int(round(float(stream.duration * stream.time_base) * fps))
        return n, fps

    def probe(self, data: bytes) -> tuple[int, float]:
        container = self._open(data)
        try:
            n, fps = self._count(container.streams.video[0])
            if n <= 0:  # no count in the container: decode to count
                n = sum(1 for _ in container.decode(video=0))
            if n <= 0:
                raise DecodeError("video has no frames")
            return n, fps
        finally:
            container.close()

    def read(self, data: bytes, pick: Picker) -> np.ndarray:
        container = self._open(data)
        try:
            return self._read(container, pick)
        except DecodeError:
            raise
        except Exception as e:  # av.error.* (InvalidDataError, ...), corrupt packets
            raise DecodeError(f"PyAV cannot decode: {short_error(e)}") from None
        finally:
            container.close()

    def _rgb(self, frame) -> np.ndarray:
        """(H, W, 3) uint8. swscale's thread count is pinned too: its default (0 = one thread
        per CPU) starts a thread pool that PyAV caches per process, and a DataLoader worker
        forked after the parent converted a frame inherits that pool's locks without its
        threads -- the worker's first conversion then waits forever."""
        return frame.to_ndarray(format="rgb24", threads=self.num_threads)

    def _read(self, container, pick: Picker) -> np.ndarray:
        stream = container.streams.video[0]
        stream.thread_count = self.num_threads
        n, fps = self._count(stream)
        if n <= 0 or fps <= 0:  # no usable metadata: decode everything once, then pick
            frames = [self._rgb(f) for f in container.decode(stream)]
            if not frames:
                raise DecodeError("video has no frames")
            idx = [min(int(i), len(frames) - 1) for i in pick(len(frames), fps)]
            return np.stack([frames[i] for i in idx])
        idx = [int(i) for i in pick(n, fps)]
        if not idx or min(idx) < 0 or max(idx) >= n:
            raise DecodeError(f"frame indices {idx} out of range for {n} frames")
        tb = float(stream.time_base)
        start = stream.start_time or 0

        def index_of(frame) -> int:
            return int(round((frame.pts - start) * tb * fps)) if frame.pts is not None else -1

        wanted = sorted(set(idx))
        got: dict[int, np.ndarray] = {}
        pos = -1  # index of the last decoded frame
        frames_iter = None
        seek_helps = True
        for w in wanted:
            before_seek = None
            if frames_iter is None or (seek_helps and w - pos > self.seek_gap):
                if w > 0:
                    container.seek(int(start + w / fps / tb), stream=stream, backward=True,
                                   any_frame=False)
                frames_iter, before_seek = container.decode(stream), pos
            frame = None
            for frame in frames_iter:
                pos = index_of(frame)
                if before_seek is not None:
                    # Landed on a keyframe at or behind where we already were: this video has
                    # long GOPs (typical of untranscoded originals), so seeking only re-decodes.
                    if 0 <= pos <= before_seek:
                        seek_helps = False
                    before_seek = None
                if pos >= w:
                    break
            else:
                frame = None
            if frame is None:
                break  # stream ended before frame w: truncated or short metadata
            got[w] = self._rgb(frame)
        missing = [w for w in wanted if w not in got]
        if missing:
            # Container frame counts are sometimes a frame or two high; pad those with the last
            # decoded frame (as the official code pads short videos). Anything more is corruption.
            if not got or min(missing) < n - max(2, n // 50):
                raise DecodeError(f"video ended before frame {min(missing)} of {n} (truncated?)")
            last = got[max(got)]
            for w in missing:
                got[w] = last
        return np.stack([got[i] for i in idx])


_DECODERS = {"decord": DecordDecoder, "pyav": PyAVDecoder}


def frame_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of the first video stream, from the container header.

    Why not decord or a plain ``av.open``: both decode a frame while opening (FFmpeg's stream
    probing), which for a 12000x12000 clip is ~300 MB before anyone could look at the size.
    ``skip_frame=all`` makes the probe skip decoding (2 ms instead of 250 ms there); formats
    whose streams appear only while probing (MPEG-TS) still decode a frame.
    """
    import av

    if not data:
        raise DecodeError("empty file")
    try:
        container = av.open(io.BytesIO(data), mode="r", options={"skip_frame": "all"})
    except Exception as e:
        raise DecodeError(f"PyAV cannot open video: {short_error(e)}") from None
    try:
        if not container.streams.video:
            raise DecodeError("no video stream")
        ctx = container.streams.video[0].codec_context
        w, h = int(ctx.width or 0), int(ctx.height or 0)
    finally:
        container.close()
    if w <= 0 or h <= 0:
        raise DecodeError(f"video stream without a frame size ({w}x{h})")
    return w, h


def get_decoder(name: str = "decord", num_threads: int = 1) -> VideoDecoder:
    """A decoder by name: ``decord`` (default) or ``pyav``."""
    try:
        return _DECODERS[name](num_threads=num_threads)
    except KeyError:
        raise ValueError(f"unknown decoder {name!r}; choose one of {sorted(_DECODERS)}") from None


def decode_image(data: bytes) -> np.ndarray:
    """An image file (jpg/png/webp/...) as a 1-frame video: uint8 ``[1, H, W, 3]`` RGB."""
    from PIL import Image

    if not data:
        raise DecodeError("empty file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            # Huge JPEGs decode at a reduced scale (cheap); PIL's MAX_IMAGE_PIXELS check stops
            # decompression bombs before they take a worker's memory.
            im.draft("RGB", (4096, 4096))
            return np.asarray(im.convert("RGB"))[None]
    except Exception as e:
        raise DecodeError(f"cannot decode image: {short_error(e)}") from None


_NOISE = [
    re.compile(r"\[Errno -?\d+\] "),                        # PyAV's errno prefix
    re.compile(r": '(<none>|avcodec_send_packet\(\))'"),    # PyAV's "filename" of in-memory I/O
    re.compile(r"\[\d\d:\d\d:\d\d\] \S+?:\d+: "),          # decord's "[time] file.cc:123: "
]


def short_error(e: BaseException, limit: int = 200) -> str:
    """A one-line, bounded description of a decoder exception for logs and failure reasons."""
    msg = f"{type(e).__name__}: {e}".replace("\n", " ")
    for pattern in _NOISE:
        msg = pattern.sub("", msg)
    return msg if len(msg) <= limit else msg[:limit] + "..."


