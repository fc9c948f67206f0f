"""The sample format of umt shards, read defensively: every field of a sample is untrusted.

A sample in a tar is ``<key>.<ext>`` members grouped by key (WebDataset)::

    <key>.mp4 | .mkv | ... | .jpg | .png ...   the media (exactly one; images are 1-frame videos)
    <key>.json   {"media": "video"|"image", "captions": [str, ...], "label": int,
                  "start": s, "end": s (untranscoded clips keep their range), "fps", ...}
    <key>.txt    the first caption (for tools that read plain WebDataset)
    <key>.cls    the class index as ASCII digits

Everything here raises :class:`SampleError` (or :class:`~umt.data.decoders.DecodeError`) whose
message starts with a short reason (``"bad captions: ..."``): loaders skip the sample and count
it under that reason. Nothing is ever executed or unpickled: ``.json`` is parsed as JSON, every
other member is bytes.
"""

from __future__ import annotations

import io
import json
import math
import re
from typing import Callable, Optional, Sequence

import numpy as np

from umt.data.decoders import DecodeError, decode_image
from umt.data.manifest import IMAGE_EXTS as MANIFEST_IMAGE_EXTS
from umt.data.manifest import MAX_CAPTION_CHARS
from umt.data.manifest import VIDEO_EXTS as MANIFEST_VIDEO_EXTS

# Sample keys in a tar are the file extensions without the dot (one list: umt.data.manifest).
VIDEO_EXTS = tuple(e.lstrip(".") for e in MANIFEST_VIDEO_EXTS)
IMAGE_EXTS = tuple(e.lstrip(".") for e in MANIFEST_IMAGE_EXTS)
# Class indices are small; anything longer is not one (and would overflow a long tensor).
MAX_LABEL = 2**31 - 1
_CLS = re.compile(rb"\s*([0-9]{1,10})\s*")
# A sample's .json (captions, questions, candidates) is a few KB; parsing a huge one costs
# memory and time for nothing a model could use.
MAX_META_BYTES = 4 << 20


class SampleError(Exception):
    """One sample cannot be used; the message is the skip reason."""


def media_of(sample: dict) -> tuple[str, bytes, str]:
    """``(ext, bytes, "video" | "image")`` of the sample's media member."""
    for ext in VIDEO_EXTS:
        if ext in sample:
            return ext, sample[ext], "video"
    for ext in IMAGE_EXTS:
        if ext in sample:
            return ext, sample[ext], "image"
    members = sorted(k for k in sample if not k.startswith("__"))
    raise SampleError(f"no video or image file (has: {members})")


def _number(meta: dict, name: str) -> Optional[float]:
    value = meta.get(name)
    if value is None:
        return None
    # bool is an int in Python; JSON NaN / Infinity parse to floats and are rejected here.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0:
        raise SampleError(f"bad {name}: {value!r:.40} is not a finite number of seconds >= 0")
    return float(value)


def parse_meta(sample: dict) -> dict:
    """The sample's ``.json`` as a dict whose known fields are checked (``{}`` without one)."""
    if "json" not in sample:
        return {}
    if len(sample["json"]) > MAX_META_BYTES:
        raise SampleError(f"bad json: {len(sample['json'])} bytes, more than the limit of "
                          f"{MAX_META_BYTES}")
    try:
        meta = json.loads(sample["json"])  # JSON only: nothing in a shard is ever executed
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise SampleError(f"bad json: {e}"[:200]) from None
    if not isinstance(meta, dict):
        raise SampleError("bad json: not an object")
    caps = meta.get("captions")
    if caps is not None and not (isinstance(caps, list) and all(isinstance(c, str) for c in caps)):
        raise SampleError(f"bad captions: must be a list of strings, got {caps!r:.60}")
    if caps and max(map(len, caps)) > MAX_CAPTION_CHARS:
        raise SampleError(f"bad captions: a caption of {max(map(len, caps))} characters, longer "
                          f"than the limit of {MAX_CAPTION_CHARS}")
    start, end = _number(meta, "start"), _number(meta, "end")
    if end is not None and end <= (start or 0.0):
        raise SampleError(f"bad clip range: end {end} <= start {start or 0.0}")
    label = meta.get("label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, int)
                              or not -1 <= label <= MAX_LABEL):
        raise SampleError(f"bad label: {label!r:.40} in .json is not a class index")
    kind = meta.get("media")
    if kind is not None and kind not in ("video", "image"):
        raise SampleError(f"bad media: {kind!r:.40} is neither 'video' nor 'image'")
    return meta


def captions_of(sample: dict, meta: dict) -> list[str]:
    """The sample's non-blank captions: ``.json`` ``captions``, else its ``.txt``; may be empty."""
    caps = meta.get("captions")
    if not caps and "txt" in sample:
        if len(sample["txt"]) > 4 * MAX_CAPTION_CHARS:  # utf-8: at most 4 bytes a character
            raise SampleError(f"bad captions: a .txt of {len(sample['txt'])} bytes, longer than "
                              f"the limit of {MAX_CAPTION_CHARS} characters")
        caps = [sample["txt"].decode("utf-8", "replace")[:MAX_CAPTION_CHARS]]
    return [c for c in caps or [] if c.strip()]


def label_of(sample: dict, meta: dict, num_classes: int = 0) -> int:
    """The class index (``.cls``, else ``.json`` ``label``); -1 when unlabelled.

    With ``num_classes`` (dataset.json lists the classes) it must be in ``[0, num_classes)``.
    """
    if "cls" in sample:
        raw = sample["cls"]
        m = _CLS.fullmatch(raw) if isinstance(raw, bytes) else None
        if m is None or int(m.group(1)) > MAX_LABEL:
            raise SampleError(f"bad cls: {raw[:20]!r} is not a class index")
        label = int(m.group(1))
    else:
        label = meta.get("label", -1)
        label = -1 if label is None else label
    if num_classes and label >= num_classes:
        raise SampleError(f"bad label: {label} out of range for {num_classes} classes")
    return label


def check_pixels(width: int, height: int, frames: int, max_pixels: Optional[int]) -> None:
    """Refuse a sample that would decode more than ``max_pixels`` pixels (width x height x frames)."""
    if max_pixels and width * height * frames > max_pixels:
        raise SampleError(f"too large: {width}x{height} x {frames} frames exceeds the limit of "
                          f"{max_pixels} decoded pixels per sample (data.max_pixels)")


def read_image(data: bytes, max_pixels: Optional[int] = None) -> np.ndarray:
    """An image sample as uint8 ``[1, H, W, 3]``, its size checked before it is decoded."""
    import warnings

    from PIL import Image

    if max_pixels:
        try:
            with warnings.catch_warnings():  # PIL's bomb warning: we check the size ourselves
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as im:  # reads the header only
                    im.draft("RGB", (4096, 4096))  # JPEGs decode at a reduced scale: check that
                    w, h = im.size
        except Image.DecompressionBombError as e:
            raise SampleError(f"too large: {e}"[:200]) from None
        except Exception:
            w = h = 0  # not an image: decode_image below says why
        check_pixels(w, h, 1, max_pixels)
    return decode_image(data)


# pick(length) -> frame indices in [0, length) of the clip range
RangePicker = Callable[[int], Sequence[int]]


def read_video(data: bytes, meta: dict, decoder, pick: RangePicker,
               max_frames: int, max_pixels: Optional[int] = None) -> np.ndarray:
    """Decode the frames ``pick`` chooses inside the sample's clip range: uint8 ``[T, H, W, 3]``.

    ``max_frames`` is how many frames ``pick`` returns at most (for the pixel check, made on the
    container's declared frame size before anything is decoded).
    """
    from umt.data.decoders import frame_size

    if max_pixels:
        w, h = frame_size(data)
        check_pixels(w, h, max_frames, max_pixels)

    def in_range(n: int, fps: float) -> list[int]:
        first, last = 0, n
        # Untranscoded clips keep their [start, end) range in the metadata (checked finite and
        # ordered by parse_meta). The products are clamped in float before int(): 1e308 * fps
        # is inf, and int(inf) raises.
        if fps > 0 and meta.get("start") is not None:
            first = float(meta["start"]) * fps
            if first >= n:
                raise DecodeError(f"bad clip range: starts at {meta['start']} s, after the "
                                  f"video's end ({n / fps:.3f} s)")
            first = int(first)
        if fps > 0 and meta.get("end") is not None:
            last = max(first + 1, int(min(float(n), math.ceil(min(float(meta["end"]) * fps, 2.0**62)))))
        return [first + int(i) for i in pick(last - first)]

    return decoder.read(data, in_range)


def read_clip(sample: dict, meta: dict, decoder, pick: RangePicker, num_frames: int,
              max_pixels: Optional[int] = None) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` of one clip: the video's frames ``pick`` chooses (see
    :func:`read_video`), or an image repeated ``T = num_frames`` times as a read-only broadcast
    view (a crop taken from it materialises only the crop)."""
    _, data, kind = media_of(sample)
    if kind == "image":
        image = read_image(data, max_pixels)  # [1, H, W, 3]
        return np.broadcast_to(image, (num_frames,) + image.shape[1:])
    return read_video(data, meta, decoder, pick, num_frames, max_pixels)
