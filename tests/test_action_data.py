"""Action-recognition data: the official frame samplers, the training loader (num_sample views
per video, determinism, resume, bad samples) and the multi-view evaluation loader, on real
shards made by `umt shard`."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds

from umt.configs.finetune_action import ActionAugmentConfig, ActionDataConfig
from umt.data import dataset_json, transforms
from umt.data.action_loader import (
    SyntheticActionStream,
    build_action_eval_loader,
    build_action_loader,
)
from umt.data.action_sampling import frame_indices, segment_train, tsn_test, tsn_train
from umt.data.decoders import get_decoder

# ---------------------------------------------------------------------------- the samplers

def _official_segment_train_support(video_size, num_frames):
    """kinetics_sparse._get_seq_frames (clip_idx=-1): frame i is min(randint(start, end),
    max_frame) with random.randint including both ends; the possible values per position."""
    seg_size = max(0., float(video_size - 1) / num_frames)
    max_frame = int(video_size) - 1
    out = []
    for i in range(num_frames):
        start, end = int(np.round(seg_size * i)), int(np.round(seg_size * (i + 1)))
        out.append({min(v, max_frame) for v in range(start, end + 1)})
    return out


def _official_ssv2_test(length, num_segment, test_num_segment, chunk):
    """ssv2.py loadvideo_decord (mode 'test') then __getitem__'s buffer[chunk::2], verbatim."""
    tick = length / float(num_segment)
    all_index = list(np.array([int(tick / 2.0 + tick * x) for x in range(num_segment)] +
                              [int(tick * x) for x in range(num_segment)]))
    while len(all_index) < (num_segment * test_num_segment):
        all_index.append(all_index[-1])
    all_index = np.sort(np.array(all_index))
    return [int(i) for i in all_index[chunk::2]]


def test_segment_training_positions_cover_the_official_ranges():
    rng = np.random.default_rng(0)
    for n, t in [(16, 8), (16, 4), (80, 8), (7, 8), (1, 4), (250, 16)]:
        seen = [set() for _ in range(t)]
        for _ in range(400):
            idx = segment_train(n, t, rng)
            assert len(idx) == t and all(0 <= i < n for i in idx)
            for pos, i in enumerate(idx):
                seen[pos].add(i)
        assert seen == _official_segment_train_support(n, t), (n, t)


def test_tsn_positions_match_the_official_ssv2_sampler():
    for n in (8, 9, 16, 37, 80, 301):
        for t in (4, 8, 16):
            for chunk in (0, 1):
                assert tsn_test(n, t, chunk, 2) == _official_ssv2_test(n, t, 2, chunk), (n, t, chunk)
            # official validation: the segment centres
            tick = n / t
            assert tsn_test(n, t, 0, 1) == [int(tick / 2.0 + tick * x) for x in range(t)]
            # training: a random frame of each segment i*avg .. i*avg + avg - 1
            rng = np.random.default_rng(n)
            avg = n // t
            if 0 < avg <= 10:  # few enough values to see them all
                seen = [set() for _ in range(t)]
                for _ in range(300):
                    for pos, i in enumerate(tsn_train(n, t, rng)):
                        seen[pos].add(i)
                assert seen == [set(range(i * avg, i * avg + avg)) for i in range(t)]
    # three test clips (the official code breaks there): starts, then 1/3 and 2/3 into segments
    assert [tsn_test(12, 4, c, 3) for c in range(3)] == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    # shorter than T frames: every frame in order, repeated (officially frame 0, T times)
    assert tsn_train(3, 8, np.random.default_rng(0)) == [0, 0, 0, 1, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="sampler='tsm' is not allowed"):
        frame_indices("tsm", 16, 8, train=False)
    with pytest.raises(ValueError, match="needs an rng"):
        frame_indices("segment", 16, 8, train=True)


# ------------------------------------------------------------------------------- training

def shard_labels(info) -> dict[str, int]:
    out = {}
    for uri in info.shard_uris():
        with tarfile.open(uri) as tf:
            for m in tf:
                if m.name.endswith(".cls"):
                    out[m.name[:-4]] = int(tf.extractfile(m).read())
    return out


def data_cfg(source, **kw) -> ActionDataConfig:
    return ActionDataConfig(**{"source": source, "num_workers": 0, "shuffle_buffer": 8, **kw})


AUG = ActionAugmentConfig(flip=False, crop_scale=[0.5, 1.0])  # num_sample 2


def test_views_of_a_video_are_adjacent_rows_and_the_batch_counts_views(synthetic_shards):
    labels = shard_labels(dataset_json.load(synthetic_shards))
    loader = build_action_loader(data_cfg(synthetic_shards), AUG, batch_size=8, num_frames=4,
                                 img_size=32, seed=0)
    assert loader.epoch_steps == 24 // 4  # one pass over the videos: 24 // (8 views / 2)
    for step in range(2):
        b = next(loader)
        assert b["video"].shape == (8, 3, 4, 32, 32) and b["step"] == step
        keys, lab = b["key"], b["label"].tolist()
        assert keys[0::2] == keys[1::2] and len(set(keys)) == 4  # 4 videos x 2 views
        assert lab == [labels[k] for k in keys]
        for v in range(0, 8, 2):  # two independent augmentations of the same decoded clip
            assert not torch.equal(b["video"][v], b["video"][v + 1])
    with pytest.raises(ValueError, match="not a multiple of num_sample"):
        build_action_loader(data_cfg(synthetic_shards), AUG, batch_size=7, num_frames=4, img_size=32)


def test_training_batches_are_deterministic_and_resume_at_the_epoch_position(synthetic_shards):
    def run(start, steps, **kw):
        loader = build_action_loader(data_cfg(synthetic_shards, epoch_steps=3), AUG, batch_size=4,
                                     num_frames=2, img_size=16, start_step=start, **kw)
        return {b["step"]: (b["epoch"], b["key"], b["video"]) for b in (next(loader) for _ in range(steps))}

    a = run(0, 8)
    again = run(0, 8)
    assert all(a[s][1] == again[s][1] and torch.equal(a[s][2], again[s][2]) for s in a)
    assert [a[s][0] for s in range(8)] == [0, 0, 0, 1, 1, 1, 2, 2]
    # resumed inside epoch 1: epoch 2 (steps 6, 7) is exactly the uninterrupted run's,
    # augmentation included; the rest of epoch 1 is freshly drawn
    b = run(4, 4)
    assert sorted(b) == [4, 5, 6, 7]
    for s in (6, 7):
        assert b[s][1] == a[s][1] and torch.equal(b[s][2], a[s][2])
    other_rank = run(0, 2, rank=1, world_size=2)
    assert other_rank[0][1] != a[0][1]
    other_seed = run(0, 1, seed=1)[0]
    assert other_seed[1] != a[0][1] or not torch.equal(other_seed[2], a[0][2])


def test_synthetic_source_is_a_function_of_seed_step_rank():
    cfg = ActionDataConfig(source="synthetic", synthetic_size=16, synthetic_frames=16,
                           synthetic_resolution=32)

    def batch(start, **kw):  # the batch of step 2
        loader = build_action_loader(cfg, AUG, batch_size=4, num_frames=4, img_size=32,
                                     start_step=start, **kw)
        return [next(loader) for _ in range(3 - start)][-1]

    assert isinstance(build_action_loader(cfg, AUG, batch_size=4, num_frames=4, img_size=32),
                      SyntheticActionStream)
    a, b = batch(0), batch(2)  # step 2, uninterrupted vs resumed
    assert a["step"] == b["step"] == 2 and a["key"] == b["key"] and torch.equal(a["video"], b["video"])
    assert a["key"][0::2] == a["key"][1::2] and a["label"].tolist()[0::2] == a["label"].tolist()[1::2]
    assert batch(0, rank=1, world_size=2)["key"] != a["key"]


def _write_shard(path, samples):
    with open(path, "wb") as f, wds.TarWriter(f) as w:
        for s in samples:
            w.write(s)


def _samples_of(uri):
    """The samples of a tar as WebDataset dicts (``__key__`` + extension -> bytes)."""
    out: dict[str, dict] = {}
    with tarfile.open(uri) as tf:
        for m in tf:
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {"__key__": key})[ext] = tf.extractfile(m).read()
    return list(out.values())


def _dataset(tmp_path, samples, classes):
    _write_shard(tmp_path / "s.tar", samples)
    info = {"format": "umt-webdataset", "format_version": 1, "classes": classes,
            "shards": [{"uri": "s.tar", "num_samples": len(samples), "num_bytes": 1}]}
    (tmp_path / "dataset.json").write_text(json.dumps(info))
    return str(tmp_path / "dataset.json")


def test_unlabelled_and_out_of_range_samples_are_skipped_and_counted(tmp_path, synthetic_shards):
    info = dataset_json.load(synthetic_shards)
    samples = _samples_of(info.shard_uris()[0])  # 4 labelled videos
    unlabelled = dict(samples[0])
    del unlabelled["cls"]
    meta = json.loads(unlabelled["json"])
    meta.pop("label")
    unlabelled["json"] = json.dumps(meta).encode()
    unlabelled["__key__"] = "nolabel"
    outside = dict(samples[1], cls=b"7", __key__="outside")
    source = _dataset(tmp_path, [unlabelled, outside] + samples, info.classes)
    loader = build_action_loader(data_cfg(source, shuffle_buffer=0), AUG, batch_size=8,
                                 num_frames=2, img_size=16)
    b = next(loader)
    assert sorted(set(b["key"])) == sorted(s["__key__"] for s in samples)
    # (the resampled shard is read again before the batch is handed on: both skipped again)
    assert loader.num_skipped >= 2 and loader.num_skipped % 2 == 0
    assert set(loader.skip_reasons) == {"no label", "bad label"}
    # a dataset.json without classes cannot be trained on
    (tmp_path / "bare").mkdir()
    bare = _dataset(tmp_path / "bare", samples, [])
    with pytest.raises(ValueError, match="lists no classes"):
        build_action_loader(data_cfg(bare), AUG, batch_size=4, num_frames=2, img_size=16)


# ----------------------------------------------------------------------------- evaluation

def test_eval_loader_reads_every_video_once_in_the_official_views(synthetic_shards):
    info = dataset_json.load(synthetic_shards)
    labels = shard_labels(info)
    parts = []
    for rank in range(2):
        loader = build_action_eval_loader(synthetic_shards, batch_size=5, num_frames=4, img_size=32,
                                          num_clips=2, num_crops=3, rank=rank, world_size=2,
                                          num_workers=2)
        uids = []
        for b in loader:
            assert b["video"].shape[1:] == (6, 3, 4, 32, 32)
            uids += b["uid"]
            assert b["label"].tolist() == [labels[u.rsplit(":", 1)[1]] for u in b["uid"]]
            assert all(i >= 0 for i in b["index"])  # manifest positions recorded by umt shard
        parts.append(uids)
    assert len(parts[0] + parts[1]) == 24 and len(set(parts[0]) | set(parts[1])) == 24

    # each view is the official test clip (sampler positions) and crop of the decoded video
    sample = _samples_of(info.shard_uris()[0])[0]
    for sampler, positions in (("segment", lambda n, c: frame_indices("segment", n, 4, train=False,
                                                                      clip_idx=c, num_clips=2)),
                               ("tsn", lambda n, c: tsn_test(n, 4, c, 2))):
        b = next(iter(build_action_eval_loader(synthetic_shards, batch_size=1, num_frames=4,
                                               img_size=32, num_clips=2, num_crops=3,
                                               sampler=sampler)))
        assert b["uid"][0].endswith(sample["__key__"])
        for c in range(2):
            frames = get_decoder("decord").read(sample["mp4"], lambda n, fps: positions(n, c))
            for k, view in enumerate(transforms.test_transforms(frames, 32, 3)):
                assert torch.equal(b["video"][0, c * 3 + k], view), (sampler, c, k)
