"""One bad sample never stops a run: malformed metadata and oversized media in real tar shards
are skipped and counted by the training and evaluation loaders (issue 7 §2)."""

from __future__ import annotations

import io
import json
import logging
import tarfile

import pytest
import webdataset as wds

from umt.configs.schema import DataConfig
from umt.data import dataset_json
from umt.data.stream import build_pretrain_loader
from umt.data.webdataset_loader import build_eval_loader


def _good_samples(synthetic_shards, n=3) -> list[dict]:
    """The first ``n`` samples of the synthetic shards, as raw tar members."""
    info = dataset_json.load(synthetic_shards)
    out: dict[str, dict] = {}
    with tarfile.open(info.shard_uris()[0]) as tf:
        for m in tf:
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {"__key__": key})[ext] = tf.extractfile(m).read()
    return list(out.values())[:n]


def _huge_png() -> bytes:
    """A 12000x12000 PNG of 18 KB (1-bit): decoded to RGB it is 432 MB (x T frames)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, format="PNG")
    return buf.getvalue()


# (key, what replaces / is added to a good sample, skip reason the loader must report)
BAD = [
    ("json-list", {"json": b"[1, 2]"}, "bad json"),
    ("captions-int", {"json": b'{"captions": 5}'}, "bad captions"),
    ("captions-mixed", {"json": b'{"captions": ["ok", 5]}'}, "bad captions"),
    ("start-text", {"json": b'{"start": "abc"}'}, "bad start"),
    ("start-huge", {"json": b'{"start": 1e308}'}, "bad clip range"),
    ("start-nan", {"json": b'{"start": NaN}'}, "bad start"),
    ("start-negative", {"json": b'{"start": -1}'}, "bad start"),
    ("end-before-start", {"json": b'{"start": 1.0, "end": 0.5}'}, "bad clip range"),
    ("end-inf", {"json": b'{"end": Infinity}'}, "bad end"),
    ("cls-huge", {"cls": b"99999999999999999999999"}, "bad cls"),
    ("cls-float", {"cls": b"1.5"}, "bad cls"),
    ("cls-superscript", {"cls": "\u00b2".encode()}, "bad cls"),
    ("cls-out-of-range", {"cls": b"7"}, "bad label"),  # the dataset has 4 classes
    ("json-label-huge", {"json": b'{"label": 100000000000000000000}'}, "bad label"),
]


@pytest.fixture
def mixed_dataset(tmp_path, synthetic_shards):
    """A real tar: 3 good samples + every malformed kind + a huge image; its dataset.json."""
    good = _good_samples(synthetic_shards)
    samples = list(good)
    for key, change, _ in BAD:
        s = dict(good[0], __key__=key)
        s.pop("cls", None) if "json" in change else None
        s.update(change)
        samples.append(s)
    samples.append({"__key__": "huge-png", "png": _huge_png(), "cls": b"0"})
    path = tmp_path / "mixed.tar"
    with open(path, "wb") as f, wds.TarWriter(f) as w:
        for s in samples:
            w.write(s)
    d = dataset_json.load(synthetic_shards).to_dict()
    d["shards"] = [{"uri": "mixed.tar", "num_samples": len(samples), "num_bytes": path.stat().st_size}]
    d["num_samples"] = len(samples)
    (tmp_path / "dataset.json").write_text(json.dumps(d))
    return str(tmp_path / "dataset.json"), {g["__key__"] for g in good}


def test_training_loader_skips_every_malformed_field_and_goes_on(mixed_dataset, caplog):
    source, good_keys = mixed_dataset
    cfg = DataConfig(source=source, num_workers=0, shuffle_buffer=0, crop_scales=[1.0])
    loader = build_pretrain_loader(cfg, batch_size=3, num_frames=4, img_size=16, seed=0)
    with caplog.at_level(logging.WARNING, logger="umt.data.loader_kit"):
        for _ in range(3):
            batch = next(loader)
            assert set(batch["key"]) == good_keys  # only the good ones, never a stand-in
    reasons = set(loader.skip_reasons)
    for key, _, reason in BAD:
        assert reason in reasons, (key, reasons)
    assert "too large" in reasons, reasons
    assert loader.num_skipped >= 3 * (len(BAD) + 1)
    for key, _, _ in BAD:  # the sample key is in the log
        assert any(f"mixed.tar:{key}" in r.getMessage() for r in caplog.records), key


def test_eval_loader_skips_them_too(mixed_dataset):
    source, good_keys = mixed_dataset
    loader = build_eval_loader(source, batch_size=2, num_frames=2, img_size=16)
    keys = [k for b in loader for k in b["key"]]
    assert sorted(keys) == sorted(good_keys)
    assert loader.num_skipped == len(BAD) + 1


def test_pixel_limit_is_configurable_and_checked_before_decoding(synthetic_shards):
    """64x64 clips, 4 frames = 16384 decoded pixels: refused just below that, read at it."""
    def run(max_pixels):
        cfg = DataConfig(source=synthetic_shards, num_workers=0, shuffle_buffer=0,
                         crop_scales=[1.0], max_pixels=max_pixels)
        return build_eval_loader(cfg, batch_size=4, num_frames=4, img_size=16)

    refused = run(64 * 64 * 4 - 1)
    assert [b for b in refused] == [] and refused.num_skipped == 24
    assert set(refused.skip_reasons) == {"too large"}
    ok = run(64 * 64 * 4)
    assert sum(len(b["key"]) for b in ok) == 24 and ok.num_skipped == 0
    with pytest.raises(ValueError, match="data.max_pixels"):
        DataConfig(source=synthetic_shards, max_pixels=0)
