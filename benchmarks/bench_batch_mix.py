"""Batch diversity of the training stream from class-sorted input, against a global shuffle.

    PYTHONPATH=. python benchmarks/bench_batch_mix.py [--classes 8 --per-class 24 --shard 16]

A ``<root>/<class>/`` folder of tiny images (the Kinetics layout: a listing is class by class)
is sharded by ``umt shard`` with and without its packing shuffle, then read by the training
stream of ``umt.data.loader_kit`` (resampled shards, ``open_shards`` read at once, the shuffle
buffer as large as a shard -- the ratio of the defaults, 1000 / 1000) with and without the
shard interleaving. Printed: the mean Shannon entropy (nats) of the class histogram of a batch,
and the same for batches of a global random permutation (the official ``DistributedSampler``).
Decoding is left out (the sample function reads the ``.cls`` only): it does not change which
samples meet in a batch.
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


def main(argv=None) -> None:
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=24)
    ap.add_argument("--shard", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=300)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        res = measure(d, classes=a.classes, per_class=a.per_class, shard=a.shard, batch=a.batch,
                      batches=a.batches)
    print(json.dumps({k: round(v, 3) for k, v in res.items()}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
