"""The Stage-2 loader and the retrieval loader on real shards made by `umt shard` from captioned
synthetic mp4s and PIL images (several captions per video, samples without captions)."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
import torch

from umt.configs.schema import VLDataConfig
from umt.data import dataset_json, synthetic
from umt.data.captions import clean_caption
from umt.data.decoders import get_decoder
from umt.data.retrieval_loader import build_retrieval_loader
from umt.data.sampling import vl_frame_indices
from umt.data.shard import shard_dataset
from umt.data.transcode import TranscodeSettings
from umt.data.transforms import vl_test_transform
from umt.data.vl_loader import batch_order, build_vl_loader, epoch_counts, sample_id

NUM_VIDEOS, NUM_IMAGES = 10, 7


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    """Sharded captioned corpora: {"videos": dataset.json (10 clips, 2 captions each except
    clip 3: none), "images": dataset.json (7 images, 1 caption each except image 5: none),
    "captions": {key: [raw captions]}}."""
    from PIL import Image

    root = tmp_path_factory.mktemp("captioned")
    rows = []
    for i in range(NUM_VIDEOS):
        seed = 1000 + i
        frames, label, _ = synthetic.render_clip(seed, 12, 32)
        (root / f"v{i}.mp4").write_bytes(synthetic.frames_to_mp4(frames))
        caps = [] if i == 3 else [c.upper() + "!" for c in synthetic.clip_captions(seed, label)]
        rows.append({"video": f"v{i}.mp4", "caption": caps})
    (root / "videos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows = []
    for i in range(NUM_IMAGES):
        frame, caption = synthetic.render_image(2000 + i, 40)
        Image.fromarray(frame[0]).save(root / f"i{i}.png")
        rows.append({"video": f"i{i}.png", "caption": [] if i == 5 else [caption]})
    (root / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = TranscodeSettings(enabled=False)
    out = {}
    for name, per_shard in (("videos", 3), ("images", 2)):
        info = shard_dataset(str(root / f"{name}.jsonl"), str(root / name), settings,
                             samples_per_shard=per_shard, workers=2, progress=False)
        out[name] = info.location
    caps = {}
    for name in ("videos", "images"):
        info = dataset_json.load(out[name])
        for uri in info.shard_uris():
            import tarfile

            with tarfile.open(uri) as tf:
                for m in tf:
                    if m.name.endswith(".json"):
                        caps[m.name[:-5]] = json.loads(tf.extractfile(m).read()).get("captions", [])
    out["captions"] = caps
    return out


def cfg_for(sources, **kw) -> VLDataConfig:
    base = dict(sources=list(sources), num_workers=0, shuffle_buffer=8)
    base.update(kw)
    return VLDataConfig(**base)


def test_umt_shard_records_media_and_caption_counts(captioned):
    v, i = dataset_json.load(captioned["videos"]), dataset_json.load(captioned["images"])
    assert v.media == {"video": NUM_VIDEOS} and v.num_captions == 2 * (NUM_VIDEOS - 1)
    assert i.media == {"image": NUM_IMAGES} and i.num_captions == NUM_IMAGES - 1
    assert sum(s.num_captions for s in v.shards) == v.num_captions


def test_batches_layout_captions_and_ids(captioned):
    sources = [captioned["videos"], captioned["images"]]
    loader = build_vl_loader(cfg_for(sources), batch_size=3, num_frames=4, img_size=16, seed=0)
    # Epoch: 18 video pairs // 3 = 6 video batches, 6 image pairs // 3 = 2 image batches.
    assert loader.counts == {"video": 6, "image": 2} and loader.epoch_steps == 8
    seen = Counter()
    for step in range(16):
        b = next(loader)
        assert b["step"] == step and b["epoch"] == step // 8
        assert b["media"] == loader.order(step // 8)[step % 8]
        t = 4 if b["media"] == "video" else 1  # images are 1-frame clips, not repeated
        assert b["video"].shape == (3, 3, t, 16, 16) and b["video"].dtype == torch.float32
        assert b["sample_id"].dtype == torch.long and b["sample_id"].shape == (3,)
        src = 0 if b["media"] == "video" else 1
        for key, cap, sid in zip(b["key"], b["caption"], b["sample_id"].tolist()):
            raw = captioned["captions"][key]
            c = [clean_caption(r) for r in raw].index(cap)  # a cleaned caption of this sample
            assert sid == sample_id(src, key, c)
            assert cap == cap.lower() and "!" not in cap
        seen[b["media"]] += 1
    assert seen == {"video": 12, "image": 4}
    # The captionless samples are skipped and counted (the shards are resampled: by step 16
    # this seed has met at least one of the two), never in a batch.
    assert loader.skip_reasons["no caption"] >= 1 and loader.num_skipped >= 1


def test_every_caption_is_its_own_row_or_one_random_caption_per_visit(captioned):
    def rows(sampling, steps):
        loader = build_vl_loader(cfg_for([captioned["videos"]], caption_sampling=sampling,
                                         shuffle_buffer=20),
                                 batch_size=3, num_frames=2, img_size=16, seed=1)
        out = [(k, c) for _ in range(steps) for b in [next(loader)]
               for k, c in zip(b["key"], b["caption"])]
        return loader, out

    loader, got = rows("all", 12)
    assert loader.counts == {"video": 6}  # 18 (video, caption) pairs
    by_key: dict[str, set] = {}
    for key, cap in got:
        by_key.setdefault(key, set()).add(cap)
    assert max(len(c) for c in by_key.values()) == 2  # both captions of a video appear
    loader, got = rows("random", 6)
    assert loader.counts == {"video": 3}  # 10 videos // 3 (the captionless one counts here)
    assert len({k for k, _ in got}) >= 5


def test_interleaving_is_the_same_on_every_rank_and_reseeded_per_epoch(captioned):
    sources = [captioned["videos"], captioned["images"]]
    medias = []
    for rank in (0, 1):
        loader = build_vl_loader(cfg_for(sources), batch_size=2, num_frames=2, img_size=16,
                                 seed=5, rank=rank, world_size=2)
        assert loader.counts == {"video": 4, "image": 1}  # 18 // 4, 6 // 4
        medias.append([next(loader)["media"] for _ in range(10)])
    assert medias[0] == medias[1]  # no communication needed: both derive the order
    counts = {"video": 6, "image": 3}
    orders = [batch_order(counts, seed=0, epoch=e) for e in range(6)]
    assert all(Counter(o) == counts for o in orders)
    assert len({tuple(o) for o in orders}) > 1
    assert batch_order(counts, seed=0, epoch=2) == orders[2]


def test_epoch_counts_per_media_type():
    sizes = {"video": 4, "image": 8}
    # One pass: rows // (batch x world), at least 1; a type without rows is left out.
    assert epoch_counts({"video": 1000, "image": 100}, sizes, 2) == {"video": 125, "image": 6}
    assert epoch_counts({"video": 3, "image": 0}, sizes, 1) == {"video": 1}
    # epoch_steps rescales to the total, keeping at least one batch of each type.
    assert epoch_counts({"video": 1000, "image": 100}, sizes, 2, epoch_steps=10) == {"video": 9, "image": 1}
    assert epoch_counts({"video": 1000, "image": 1}, sizes, 1, epoch_steps=7) == {"video": 6, "image": 1}
    assert sum(epoch_counts({"video": 999, "image": 333}, sizes, 1, epoch_steps=101).values()) == 101
    with pytest.raises(ValueError, match="cannot hold a batch of each"):
        epoch_counts({"video": 10, "image": 10}, sizes, 1, epoch_steps=1)
    with pytest.raises(ValueError, match="no captioned samples"):
        epoch_counts({"video": 0}, sizes, 1)


def test_resume_positions_the_epoch_and_then_matches_the_uninterrupted_run(captioned):
    sources = [captioned["videos"], captioned["images"]]

    def run(start, steps):
        loader = build_vl_loader(cfg_for(sources, num_workers=2, shuffle_buffer=4), batch_size=3,
                                 num_frames=2, img_size=16, seed=0, start_step=start)
        return {b["step"]: (b["media"], b["key"], b["sample_id"].tolist(), b["video"])
                for b in (next(loader) for _ in range(steps))}

    full = run(0, 16)  # epochs of 8 steps
    resumed = run(5, 11)
    assert sorted(resumed) == list(range(5, 16))
    for s in range(5, 16):
        assert resumed[s][0] == full[s][0]  # same media at every step
    for s in range(8, 16):  # from the next epoch on: the same batches
        assert resumed[s][1:3] == full[s][1:3] and torch.equal(resumed[s][3], full[s][3])


def test_synthetic_source_interleaves_and_replays_exactly(tmp_path):
    cfg = cfg_for(["synthetic"], synthetic_size=12)

    def run(start, steps, rank=0, world=1):
        loader = build_vl_loader(cfg, batch_size=4, num_frames=3, img_size=16, seed=2,
                                 rank=rank, world_size=world, start_step=start)
        return loader, [next(loader) for _ in range(steps)]

    loader, full = run(0, 12)
    assert loader.counts == {"video": 6, "image": 3}  # 24 pairs // 4, 12 images // 4
    assert {b["media"] for b in full} == {"video", "image"}
    for b in full:
        assert b["video"].shape[2] == (3 if b["media"] == "video" else 1)
    _, resumed = run(7, 5)
    for a, b in zip(full[7:], resumed):
        assert (a["step"], a["media"], a["key"], a["caption"]) == (b["step"], b["media"], b["key"], b["caption"])
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["sample_id"], b["sample_id"])
    # One epoch over 2 ranks: every (clip, caption) row once.
    rows = []
    for rank in (0, 1):
        _, batches = run(0, 9, rank=rank, world=2)  # counts: 24 // 8 = 3 video, 12 // 8 = 1 image
        rows += [sid for b in batches[:4] if b["media"] == "video" for sid in b["sample_id"].tolist()]
    assert len(rows) == len(set(rows)) == 24
    captions = {c for b in full for c in b["caption"]}
    assert any("motion of a" in c for c in captions) and any("square in the" in c for c in captions)


def test_config_is_checked_when_it_is_made(captioned, tmp_path):
    for kw, message in [
        (dict(caption_sampling="first"), "data.caption_sampling='first' is not allowed; choose one of: 'all', 'random'"),
        (dict(crop_scale=[0.9, 0.5]), r"data.crop_scale\[1\]=0.5 is out of range"),
        (dict(crop_scale=[0.5]), "data.crop_scale=.* must have exactly 2 values"),
        (dict(decoder="ffmpeg"), "data.decoder='ffmpeg' is not allowed"),
        (dict(video_batch_size=0), "data.video_batch_size=0 is out of range"),
        (dict(max_txt_len=0), "data.max_txt_len=0 is out of range"),
        (dict(sources=[]), r"data.sources=\[\] must list"),
        (dict(sources=["synthetic", captioned["videos"]]), "'synthetic' cannot be mixed"),
    ]:
        with pytest.raises(ValueError, match=message):
            cfg_for(kw.pop("sources", [captioned["videos"]]), **kw)
    # A source that mixes videos and images is refused with what to do.
    d = dataset_json.load(captioned["videos"]).to_dict()
    d["media"] = {"video": 5, "image": 5}
    d["shards"] = [dict(s, uri=os.path.join(os.path.dirname(captioned["videos"]), s["uri"]))
                   for s in d["shards"]]
    (tmp_path / "mixed.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="mixes .* separate datasets"):
        build_vl_loader(cfg_for([str(tmp_path / "mixed.json")]), batch_size=2, num_frames=2,
                        img_size=16)


def test_old_dataset_json_without_summaries_still_loads(captioned, tmp_path):
    d = dataset_json.load(captioned["images"]).to_dict()
    for key in ("media", "num_captions"):
        d.pop(key)
    d["shards"] = [{k: v for k, v in dict(s, uri=os.path.join(os.path.dirname(captioned["images"]),
                                                               s["uri"])).items()
                    if k not in ("media", "num_captions")} for s in d["shards"]]
    (tmp_path / "old.json").write_text(json.dumps(d))
    loader = build_vl_loader(cfg_for([str(tmp_path / "old.json")]), batch_size=2, num_frames=2,
                             img_size=16)
    assert loader.counts == {"image": 3}  # 7 samples, one caption each assumed
    assert next(loader)["media"] == "image"  # media type from the first sample


# ------------------------------------------------------------------------------ retrieval

def _read_all(source, **kw):
    loader = build_retrieval_loader(source, batch_size=3, num_frames=4, img_size=16, **kw)
    out = {}
    for b in loader:
        assert b["video"].shape[1:] == (3, 4 if b["media"] == "video" else 1, 16, 16)
        for key, video, caps, index in zip(b["key"], b["video"], b["captions"], b["index"].tolist()):
            assert key not in out
            out[key] = (video, caps, index)
    return loader, out


# 4 readers (2 ranks x 2 workers) over: 5 shards (2,2,2,2,2: one reader gets two), 4 shards
# (3,3,3,1: uneven sizes), 2 shards (fewer than readers: split by sample).
@pytest.mark.parametrize("per_shard", [2, 3, 5])
def test_retrieval_reads_every_video_once_over_ranks_and_workers(captioned, tmp_path, per_shard):
    manifest = os.path.join(os.path.dirname(os.path.dirname(captioned["videos"])), "videos.jsonl")
    info = shard_dataset(manifest, str(tmp_path / "ds"), TranscodeSettings(enabled=False),
                         samples_per_shard=per_shard, workers=2, progress=False)
    single_loader, single = _read_all(info.location)
    assert len(single) == NUM_VIDEOS and single_loader.num_skipped == 0
    parts = {}
    for rank in (0, 1):  # 2 ranks x 2 workers = 4 readers
        loader, part = _read_all(info.location, rank=rank, world_size=2, num_workers=2)
        assert not set(part) & set(parts)
        parts.update(part)
    assert sorted(parts) == sorted(single)
    for key, (video, caps, index) in single.items():
        assert torch.equal(parts[key][0], video) and parts[key][1:] == (caps, index)
    assert sorted(i for _, _, i in single.values()) == list(range(NUM_VIDEOS))


def test_retrieval_protocol_middle_frames_square_resize_all_captions(captioned):
    loader, got = _read_all(captioned["videos"])
    assert loader.media == "video"
    info = dataset_json.load(captioned["videos"])
    import tarfile

    with tarfile.open(info.shard_uris()[0]) as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf}
    key = next(n[:-4] for n in members if n.endswith(".mp4"))
    frames = get_decoder("pyav").read(members[key + ".mp4"],
                                      lambda n, fps: vl_frame_indices(4, n, "middle"))
    torch.testing.assert_close(got[key][0], vl_test_transform(frames, 16), rtol=0, atol=1e-6)
    for k, (_, caps, _) in got.items():
        assert caps == [clean_caption(c) for c in captioned["captions"][k]]  # every caption
    assert sum(not caps for _, caps, _ in got.values()) == 1  # the captionless video stays in
    loader, images = _read_all(captioned["images"])
    assert loader.media == "image" and len(images) == NUM_IMAGES
