"""Validate one input video / image and (optionally) transcode it for fast training reads.

Transcoding is the largest throughput lever (VideoMAE issue #81: decoding 720p originals starves
the GPUs): H.264 with the short side capped (default 320, what the official code's K400 copies
use), the frame rate and duration capped, no B-frames and a short keyframe interval so that
sparse segment sampling -- 8 frames spread over the clip -- decodes only a few frames from the
nearest keyframe instead of the whole group of pictures. Audio is dropped (training never uses it).

Every input is decoded before it is accepted, with FFmpeg's error detection on
(``err_detect=explode``: a damaged bitstream is an error, not a concealed frame): with
transcoding, PyAV decodes every frame and the result is test-decoded with decord (the loader's
default decoder); without, PyAV decodes every frame of the original and decord test-decodes it
(first, middle and last frame). Problems raise :class:`InputError` with
a short reason that ends up in dataset.json's ``failures``.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, Optional

from umt.data.decoders import DecodeError, DecordDecoder, PyAVDecoder, short_error


class InputError(Exception):
    """This input cannot be used; ``str(e)`` is the recorded reason."""


@dataclass
class TranscodeSettings:
    enabled: bool = True
    codec: str = "h264"
    short_side: int = 320  # never upscaled
    max_fps: Optional[float] = 30.0
    max_seconds: Optional[float] = None
    keyframe_interval: int = 16  # frames; ~0.5 s at 30 fps
    crf: int = 23
    preset: str = "veryfast"
    # x264 --tune. fastdecode (no CABAC, no deblocking): ~1/3 less decode time per clip for
    # ~8% more bytes (bigbuckbunny at 320p); decoding, not storage, is what limits training.
    tune: Optional[str] = "fastdecode"
    image_quality: int = 90  # JPEG quality for transcoded images
    # Inputs with more pixels per frame than this are rejected before decoding (a 16K frame
    # would take gigabytes per worker); 8K UHD (7680x4320) passes.
    max_pixels: int = 8192 * 8192
    # Inputs (and the manifest) larger than this many bytes are refused before they are read
    # (`umt shard --max-bytes`); generous, but an endless or absurd input cannot take a
    # worker's memory.
    max_bytes: int = 4 << 30

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _even(x: float) -> int:
    """H.264 with 4:2:0 chroma needs even sizes."""
    return max(2, int(round(x / 2)) * 2)


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """``(w, h)`` with the short side capped at ``short_side`` (aspect kept, even, no upscaling)."""
    s = min(width, height)
    if not short_side or s <= short_side:
        return _even(width) if width % 2 else width, _even(height) if height % 2 else height
    scale = short_side / s
    return _even(width * scale), _even(height * scale)


def _probe_container(data: bytes):
    import av

    if not data:
        raise InputError("empty file (0 bytes)")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except Exception as e:  # av.error.InvalidDataError etc.
        raise InputError(f"not a readable video: {short_error(e)}") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        raise InputError(f"no video stream (streams: {', '.join(kinds) or 'none'}; audio-only?)")
    return container


def _check_pixels(width: int, height: int, settings: TranscodeSettings) -> None:
    if width <= 0 or height <= 0:
        raise InputError(f"invalid frame size {width}x{height}")
    if width * height > settings.max_pixels:
        raise InputError(f"resolution {width}x{height} exceeds the limit of {settings.max_pixels} "
                         f"pixels per frame")


def test_decode(data: bytes) -> dict[str, Any]:
    """Open with decord (the loader's default decoder; PyAV where decord has no wheels) and
    decode the first, middle and last frame; return basic metadata."""
    try:
        dec = DecordDecoder(num_threads=1)
    except ImportError:
        dec = PyAVDecoder(num_threads=1)
    try:
        n, fps = dec.probe(data)
        frames = dec.read(data, lambda n, fps: sorted({0, n // 2, n - 1}))
    except DecodeError as e:
        raise InputError(f"undecodable: {e}") from None
    return {"num_frames": n, "fps": fps, "height": int(frames.shape[1]), "width": int(frames.shape[2])}


# FFmpeg conceals damaged macroblocks by default and returns a "successfully" decoded frame;
# with err_detect=explode any bitstream error raises instead, so damaged inputs are rejected
# (and recorded) at sharding time rather than trained on.
STRICT_DECODE_OPTIONS = {"err_detect": "explode"}


def _strict(stream) -> None:
    stream.codec_context.options = dict(STRICT_DECODE_OPTIONS)


def _check_frame(frame) -> None:
    if getattr(frame, "is_corrupt", False):
        raise InputError(f"corrupt video stream: damaged frame at pts {frame.pts}")


def strict_decode(data: bytes) -> int:
    """Decode every frame of the first video stream with FFmpeg's error detection on; raise
    :class:`InputError` on any bitstream error or corrupt frame. Returns the frame count."""
    container = _probe_container(data)
    n = 0
    try:
        st = container.streams.video[0]
        st.thread_count = 1
        _strict(st)
        for frame in container.decode(st):
            _check_frame(frame)
            n += 1
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"corrupt video stream: {short_error(e)}") from None
    finally:
        container.close()
    if n == 0:
        raise InputError("no frames decoded")
    return n


def inspect_video(data: bytes, settings: TranscodeSettings) -> dict[str, Any]:
    """Metadata of the first video stream (PyAV), after the resolution check."""
    container = _probe_container(data)
    try:
        st = container.streams.video[0]
        _check_pixels(st.width, st.height, settings)
        fps = float(st.average_rate or st.guessed_rate or 0.0)
        duration = float(st.duration * st.time_base) if st.duration else (
            container.duration / 1e6 if container.duration else 0.0)
        return {"width": st.width, "height": st.height, "fps": fps, "duration": duration,
                "num_frames": int(st.frames or 0), "codec": st.codec_context.name}
    finally:
        container.close()


def transcode_video(data: bytes, settings: TranscodeSettings, start: Optional[float] = None,
                    end: Optional[float] = None) -> tuple[bytes, dict[str, Any]]:
    """Decode every frame in ``[start, end)`` and re-encode it as an H.264 mp4 in memory.

    Returns ``(mp4 bytes, metadata of the output and the source)``.
    """
    import av

    src = inspect_video(data, settings)
    container = _probe_container(data)
    out_buf = io.BytesIO()
    try:
        ist = container.streams.video[0]
        ist.thread_count = 1  # processes are the parallelism; see decoders.py
        _strict(ist)
        src_fps = src["fps"] if src["fps"] > 0 else 25.0
        fps = min(src_fps, settings.max_fps) if settings.max_fps else src_fps
        rate = Fraction(fps).limit_denominator(1001)
        if rate <= 0:  # a patched / broken time base (1 frame per hour): 1 / rate would fail
            raise InputError(f"unusable frame rate: {src_fps:g} fps declared by the container")
        start = start or 0.0
        stop = end if end is not None else math.inf
        if settings.max_seconds:
            stop = min(stop, start + settings.max_seconds)
        w, h = output_size(ist.width, ist.height, settings.short_side)

        out = av.open(out_buf, mode="w", format="mp4")
        ost = out.add_stream("libx264", rate=rate)
        ost.width, ost.height, ost.pix_fmt = w, h, "yuv420p"
        ost.thread_count = 1
        # No B-frames and a fixed GOP: any frame is at most keyframe_interval-1 decodes away.
        g = settings.keyframe_interval
        ost.options = {"crf": str(settings.crf), "preset": settings.preset,
                       "x264-params": f"keyint={g}:min-keyint={g}:scenecut=0:bframes=0"}
        if settings.tune:
            ost.options = {**ost.options, "tune": settings.tune}

        if start > 0:
            container.seek(int(start / float(ist.time_base)) + (ist.start_time or 0), stream=ist,
                           backward=True, any_frame=False)
        t0 = float((ist.start_time or 0) * ist.time_base)
        last_k, decoded, written = -1, 0, 0
        for frame in container.decode(ist):
            if frame.pts is None:
                continue
            t = float(frame.pts * frame.time_base) - t0
            if t < start - 1e-6:
                continue
            if t >= stop - 1e-6:
                break
            _check_frame(frame)
            decoded += 1
            # Frame-rate cap: output slot k covers [k, k+1) / rate; the first source frame in a
            # slot wins. Timestamps are shifted by half a source frame before flooring, so a
            # timestamp rounded down by the container (.mkv/.webm store milliseconds: frame 1
            # at 30 fps is 33 ms, i.e. 0.99 slots) still lands in its own slot -- plain
            # flooring dropped a third of the frames. Uncapped (rate == source fps) this is
            # rounding to the nearest slot; capped, the last slot stays inside the clip.
            k = int(math.floor((t - start) * float(rate) + 0.5 * float(rate) / src_fps))
            if k <= last_k:
                continue
            last_k = k
            small = frame.reformat(width=w, height=h, format="yuv420p", interpolation="AREA",
                                   threads=1)  # see decoders.PyAVDecoder._rgb
            small.pts = k
            small.time_base = 1 / rate
            for packet in ost.encode(small):
                out.mux(packet)
            written += 1
        for packet in ost.encode(None):
            out.mux(packet)
        out.close()
    except InputError:
        raise
    except Exception as e:  # corrupt packets (err_detect=explode), FFmpeg errors
        raise InputError(f"corrupt video stream: cannot decode while transcoding: {short_error(e)}") from e
    finally:
        container.close()
    if written == 0:
        raise InputError("no frames decoded" + (f" in [{start}, {end})" if end else ""))
    # Truncated files decode "successfully" up to where the data stops: compare with what the
    # container promises for this range.
    expected_s = min(stop, src["duration"]) - start if src["duration"] else 0.0
    expected = expected_s * src_fps
    if expected >= 4 and decoded < 0.9 * expected - 1:
        raise InputError(f"truncated: decoded {decoded} of ~{int(expected)} frames")
    # Frame-rate conversion must keep every frame when the rate is not capped, and about
    # rate / source fps of them when it is; fewer means frames were dropped on the way.
    expected_written = decoded * min(1.0, float(rate) / src_fps)
    if written < 0.95 * expected_written - 1:
        raise InputError(f"dropped frames: wrote {written} of {decoded} decoded frames "
                         f"(expected ~{expected_written:.0f} at {float(rate):g} fps)")
    mp4 = out_buf.getvalue()
    check = test_decode(mp4)
    if check["num_frames"] != written:
        raise InputError(f"output has {check['num_frames']} frames, {written} were written")
    meta = {"num_frames": check["num_frames"], "fps": float(rate), "width": w, "height": h,
            "duration": round(check["num_frames"] / float(rate), 3),
            "source_width": src["width"], "source_height": src["height"],
            "source_fps": round(src_fps, 3), "source_duration": round(src["duration"], 3),
            "source_codec": src["codec"]}
    return mp4, meta


def check_video(data: bytes, settings: TranscodeSettings) -> dict[str, Any]:
    """No-transcode path: metadata, a strict PyAV decode of every frame (bitstream errors
    reject the input) and a decord test-decode of the original bytes."""
    src = inspect_video(data, settings)
    strict_decode(data)
    check = test_decode(data)
    return {"num_frames": check["num_frames"], "fps": round(check["fps"], 3),
            "width": check["width"], "height": check["height"],
            "duration": round(src["duration"], 3), "source_codec": src["codec"]}


def process_image(data: bytes, settings: TranscodeSettings) -> tuple[bytes, str, dict[str, Any]]:
    """Validate an image; with transcoding, downscale and re-encode as JPEG.

    Returns ``(bytes, extension, metadata)``.
    """
    from PIL import Image

    if not data:
        raise InputError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = (im.format or "").lower()
            _check_pixels(im.width, im.height, settings)
            im.load()  # decode fully: truncated images fail here, not in training
            rgb = im.convert("RGB")
    except InputError:
        raise
    except Image.DecompressionBombError as e:  # PIL's own size check, on the header
        raise InputError(f"resolution exceeds the limit: {short_error(e)}") from None
    except Exception as e:
        raise InputError(f"not a readable image: {short_error(e)}") from None
    meta = {"num_frames": 1, "fps": 0.0, "source_width": rgb.width, "source_height": rgb.height}
    if not settings.enabled:
        ext = {"jpeg": "jpg", "png": "png", "webp": "webp", "bmp": "bmp"}.get(fmt)
        if ext is None:
            raise InputError(f"unsupported image format {fmt!r}")
        meta.update(width=rgb.width, height=rgb.height)
        return data, ext, meta
    w, h = output_size(rgb.width, rgb.height, settings.short_side)
    if (w, h) != rgb.size:
        rgb = rgb.resize((w, h), Image.BILINEAR, reducing_gap=3.0)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=settings.image_quality)
    meta.update(width=w, height=h)
    return buf.getvalue(), "jpg", meta
