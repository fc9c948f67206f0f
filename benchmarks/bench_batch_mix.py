"""Batch diversity of the training stream from class-sorted input, against a global shuffle;
and how often one media appears twice in a Stage-2 batch of a multi-caption set.

    PYTHONPATH=. python benchmarks/bench_batch_mix.py [--classes 8 --per-class 24 --shard 16]

A ``<root>/<class>/`` folder of tiny images (the Kinetics layout: a listing is class by class)
is sharded by ``umt shard`` with and without its packing shuffle, then read by the training
stream of ``umt.data.loader_kit`` (resampled shards, ``open_shards`` read at once, the shuffle
buffer as large as a shard -- the ratio of the defaults, 1000 / 1000) with and without the
shard interleaving. Printed: the mean Shannon entropy (nats) of the class histogram of a batch,
and the same for batches of a global random permutation (the official ``DistributedSampler``).
Decoding is left out (the sample function reads the ``.cls`` only): it does not change which
samples meet in a batch.

Duplicate media: ``media`` images with ``captions`` captions each, sharded, read by the Stage-2
stream's row stage (``umt.data.vl_loader``, ``caption_sampling="all"``) or by the old expansion
(every caption of a media one after the other before the buffer), against batches of a global
random permutation of all (media, caption) rows (the official sampler). Printed: the mean
fraction of a batch's rows whose media already is in the batch (``1 - distinct / B``).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
from collections import Counter
from functools import partial

import numpy as np


def class_sorted_folder(root: str, classes: int, per_class: int) -> str:
    """``root/c00/i000.jpg`` ... : ``classes`` x ``per_class`` 8x8 images."""
    from PIL import Image

    for c in range(classes):
        os.makedirs(os.path.join(root, f"c{c:02d}"), exist_ok=True)
        for i in range(per_class):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), (c * 20 % 256, i * 10 % 256, 7)).save(buf, "JPEG")
            with open(os.path.join(root, f"c{c:02d}", f"i{i:03d}.jpg"), "wb") as f:
                f.write(buf.getvalue())
    return root


def entropy(labels) -> float:
    n = len(labels)
    return -sum(k / n * math.log(k / n) for k in Counter(labels).values())


def _label(sample: dict, rng=None) -> dict:
    return {"label": int(sample["cls"])}


def stream_entropy(urls: list[str], *, batch: int, buffer: int, open_shards: int,
                   batches: int, seed: int = 0) -> float:
    """Mean class entropy of ``batches`` batches of the training stream over ``urls``."""
    from umt.data.loader_kit import Skips, TrainStream, train_stages

    make = partial(train_stages, skips=Skips(), sample_fn=_label, shuffle_buffer=buffer,
                   batch_size=batch, collate=lambda rows: {"label": [r["label"] for r in rows]},
                   open_shards=open_shards)
    stream = iter(TrainStream(urls, make, seed=seed, rank=0, start_step=0, epoch_steps=10**9))
    return float(np.mean([entropy(next(stream)["label"]) for _ in range(batches)]))


def global_entropy(labels: list[int], *, batch: int, batches: int, seed: int = 0) -> float:
    """Mean class entropy of batches of a fresh random permutation per epoch."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < batches:
        perm = rng.permutation(labels)
        out += [entropy(perm[s:s + batch].tolist()) for s in range(0, len(perm) - batch + 1, batch)]
    return float(np.mean(out[:batches]))


def measure(workdir: str, *, classes: int = 8, per_class: int = 24, shard: int = 16,
            batch: int = 8, batches: int = 300) -> dict:
    from umt.data import dataset_json
    from umt.data.shard import shard_dataset

    root = class_sorted_folder(os.path.join(workdir, "videos"), classes, per_class)
    urls = {}
    for shuffle in (False, True):
        out = os.path.join(workdir, "shuffled" if shuffle else "sorted")
        shard_dataset(root, out, samples_per_shard=shard, workers=1, progress=False,
                      shuffle=shuffle)
        urls[shuffle] = dataset_json.load(out).shard_uris()
    labels = [c for c in range(classes) for _ in range(per_class)]
    res = {"global": global_entropy(labels, batch=batch, batches=batches),
           "max": math.log(min(batch, classes))}
    for shuffle in (False, True):
        for width in (1, 4):
            res[f"{'shuffled' if shuffle else 'sorted'} shards, open_shards={width}"] = \
                stream_entropy(urls[shuffle], batch=batch, buffer=shard, open_shards=width,
                               batches=batches)
    return res


def _key(row: dict, rng=None) -> dict:
    return {"key": row["sample"]["__key__"]}


def _expand_all(src, *, inner, seed_parts=()):
    """The rows stage before issue 22: every caption of a media, one after the other."""
    for sample in src:
        rows = inner(iter([sample]), seed_parts=seed_parts)
        first = next(rows, None)
        if first is not None:
            yield from (dict(first, caption_idx=i) for i in range(len(first["captions"])))


def duplicate_fraction(batches: list[list[str]]) -> float:
    return float(np.mean([1 - len(set(b)) / len(b) for b in batches]))


def measure_rows(workdir: str, *, media: int = 48, captions: int = 5, shard: int = 12,
                 batch: int = 8, batches: int = 300) -> dict:
    """Duplicate-media fraction per batch: the row stage now, the old expansion, a global
    permutation of rows."""
    from PIL import Image

    from umt.data import dataset_json
    from umt.data.loader_kit import Skips, TrainStream, train_stages
    from umt.data.shard import shard_dataset
    from umt.data.vl_loader import _rows

    os.makedirs(os.path.join(workdir, "img"), exist_ok=True)
    with open(os.path.join(workdir, "manifest.jsonl"), "w") as f:
        for i in range(media):
            path = os.path.join(workdir, "img", f"m{i:03d}.jpg")
            Image.new("RGB", (8, 8), (i * 5 % 256, 3, 9)).save(path, "JPEG")
            f.write(json.dumps({"video": path, "caption": [f"media {i} caption {c}"
                                                           for c in range(captions)]}) + "\n")
    out = os.path.join(workdir, "shards")
    shard_dataset(os.path.join(workdir, "manifest.jsonl"), out, samples_per_shard=shard,
                  workers=1, progress=False)
    info = dataset_json.load(out)
    urls = info.shard_uris()
    rate_of = {u: s.num_captions / s.num_samples for u, s in zip(urls, info.shards)}
    res = {}
    for name in ("rows now", "expanded before"):
        skips = Skips()
        inner = partial(_rows, media="image", caption_sampling="all", source_of={}, skips=skips,
                        rate_of=rate_of, spread=shard)
        rows = inner if name == "rows now" else partial(
            _expand_all, inner=partial(_rows, media="image", caption_sampling="random",
                                       source_of={}, skips=skips, rate_of={}, spread=shard))
        make = partial(train_stages, skips=skips, sample_fn=_key, shuffle_buffer=shard,
                       batch_size=batch, collate=lambda r: {"key": [x["key"] for x in r]},
                       rows=rows)
        weights = [rate_of[u] if name == "rows now" else float(s.num_captions)
                   for u, s in zip(urls, info.shards)]
        stream = iter(TrainStream(urls, make, seed=0, rank=0, start_step=0, epoch_steps=10**9,
                                  weights=weights))
        res[name] = duplicate_fraction([next(stream)["key"] for _ in range(batches)])
    rng = np.random.default_rng(0)
    glob = []
    while len(glob) < batches:
        perm = rng.permutation(media * captions) // captions
        glob += [perm[s:s + batch].tolist() for s in range(0, len(perm) - batch + 1, batch)]
    res["global row shuffle"] = duplicate_fraction(glob[:batches])
    res["birthday bound (B-1)/(2M)"] = (batch - 1) / (2 * media)
    return res


def main(argv=None) -> None:
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=24)
    ap.add_argument("--shard", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--media", type=int, default=48)
    ap.add_argument("--captions", type=int, default=5)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        res = measure(d, classes=a.classes, per_class=a.per_class, shard=a.shard, batch=a.batch,
                      batches=a.batches)
        rows = measure_rows(os.path.join(d, "rows"), media=a.media, captions=a.captions,
                            shard=a.shard, batch=a.batch, batches=a.batches)
    print("class entropy per batch (nats):")
    print(json.dumps({k: round(v, 3) for k, v in res.items()}, indent=1))
    print("fraction of a batch's rows whose media is already in it:")
    print(json.dumps({k: round(v, 4) for k, v in rows.items()}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
