"""Data commands, registered by ``umt/cli.py`` as ``umt shard`` and ``umt synthetic``::

    umt shard --input videos.csv --output s3://bucket/k400-train --short-side 320 --max-fps 30
    umt shard --input /data/kinetics/train --output ./shards --samples-per-shard 500 --workers 8
    umt shard --input s3://raw/clips/ --output s3://bucket/clips --shard-bytes 1GB --no-transcode
    umt shard --input k400/train.csv --output s3://bucket/k400-train      # Kinetics CSV, detected
    umt shard --input didemo_ret_train.json --format paragraph-json --video-root /data/didemo \
        --output ./didemo-train --max-seconds 30
    umt shard -i videos.csv -o s3://bucket/k710 --part 3/16     # part 3 of 16, on one of 16 pods
    umt shard merge s3://bucket/k710                             # the parts -> one dataset.json
    umt synthetic --output-dir ./synthetic --num-videos 256

Exit codes: 0 success; 1 too many inputs failed (``--max-failure-rate``) or storage failed (an
S3 error other than not-found: credentials, bucket, endpoint; the finished shards are kept and a
re-run resumes); 2 bad arguments or a manifest that cannot be parsed (nothing was done), or parts
that cannot be merged (one missing, duplicated or inconsistent: the message names it).
"""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import typer

# `umt shard` shards (the group's own options) and `umt shard merge` joins parts: a group that
# runs its callback when no subcommand is given.
shard_app = typer.Typer(invoke_without_command=True, no_args_is_help=False,
                        help="Videos -> WebDataset shards + dataset.json (`merge`: join parts).")


def _fail(message: str, code: int) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def shard(
    ctx: typer.Context,
    input: Annotated[Optional[str], typer.Option(
        "--input", "-i", help="Manifest (.csv / .jsonl) or a folder / s3:// prefix of videos "
                              "(label = parent folder name). Required.")] = None,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", help="Folder or s3://bucket/prefix for the shards and dataset.json. "
                               "Required.")] = None,
    short_side: Annotated[int, typer.Option(
        "--short-side", help="Cap the short side (pixels) when transcoding; never upscales. 0 = keep.")] = 320,
    max_fps: Annotated[float, typer.Option(
        "--max-fps", help="Cap the frame rate when transcoding. 0 = keep.")] = 30.0,
    max_seconds: Annotated[Optional[float], typer.Option(
        "--max-seconds", help="Keep at most this many seconds from each clip's start.")] = None,
    samples_per_shard: Annotated[Optional[int], typer.Option(
        "--samples-per-shard", help="Close a shard at this many samples (default 1000).")] = None,
    shard_bytes: Annotated[Optional[str], typer.Option(
        "--shard-bytes", help="Close a shard at this size, e.g. 1GB or 500MiB (with "
                              "--samples-per-shard: whichever comes first).")] = None,
    workers: Annotated[int, typer.Option(
        "--workers", "-j", help="Worker processes (default: the CPUs this process may use: affinity and cgroup quota).")] = 0,
    max_failure_rate: Annotated[float, typer.Option(
        "--max-failure-rate", help="Fail the step when more than this fraction of inputs fail.")] = 0.05,
    transcode: Annotated[bool, typer.Option(
        "--transcode/--no-transcode", help="Re-encode to H.264 (short side, fps, duration caps, "
                                           "short GOP), or store validated originals.")] = True,
    keyframe_interval: Annotated[int, typer.Option(
        "--keyframe-interval", help="Frames between keyframes in transcoded videos.")] = 16,
    crf: Annotated[int, typer.Option("--crf", help="x264 quality (lower = better, bigger).")] = 23,
    tune: Annotated[str, typer.Option(
        "--tune", help="x264 tune; fastdecode trades ~8% size for ~1/3 faster decoding. "
                       "'none' to disable.")] = "fastdecode",
    classes: Annotated[Optional[str], typer.Option(
        "--classes", help="Class-names file (one per line, or a JSON list): fixes label indices "
                          "so train and val shards agree.")] = None,
    max_bytes: Annotated[str, typer.Option(
        "--max-bytes", help="Refuse inputs (and a manifest) larger than this, e.g. 4GiB; "
                            "FIFOs and devices are always refused.")] = "4GiB",
    part: Annotated[Optional[str], typer.Option(
        "--part", help="I/N: shard only part I of N (0-based; inputs assigned by a hash of their "
                       "id) into <output>/part-IIIII-of-NNNNN/; then `umt shard merge`.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    shuffle: Annotated[bool, typer.Option(
        "--shuffle/--no-shuffle", help="Pack the inputs in a seeded random order (by a hash of "
                                       "each sample id: the same on every rerun and within "
                                       "every --part), so that each shard mixes all classes; "
                                       "--no-shuffle keeps manifest order.")] = True,
    shuffle_seed: Annotated[int, typer.Option(
        "--shuffle-seed", help="Seed of the packing order.")] = 0,
    input_format: Annotated[str, typer.Option(
        "--format", help="How to read --input: auto (by CSV header / JSON keys), manifest, "
                         "kinetics-csv, video-list, ssv2-json, webvid-csv, umt-json, "
                         "paragraph-json, mc-json, qa-json (docs/data.md).")] = "auto",
    video_root: Annotated[Optional[str], typer.Option(
        "--video-root", help="Folder or s3:// prefix that relative video paths (and Kinetics / "
                             "SSv2 ids) resolve against; default: the input file's folder.")] = None,
) -> None:
    """Validate videos, transcode them and write WebDataset shards + dataset.json (local or S3)."""
    if ctx.invoked_subcommand is not None:
        return  # `umt shard merge ...`: the subcommand does the work
    if not input or not output:
        _fail("--input and --output are required (or `umt shard merge OUTPUT`)", 2)
    from umt.data.dataset_json import DatasetJsonError
    from umt.data.manifest import ManifestError, read_classes
    from umt.data.shard import ShardingFailed, available_cpus, parse_size, shard_dataset
    from umt.data.shard_parts import parse_part
    from umt.data.transcode import TranscodeSettings
    from umt.errors import UserError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if short_side < 0 or max_fps < 0 or (max_seconds is not None and max_seconds <= 0):
            raise ValueError("--short-side and --max-fps must be >= 0, --max-seconds > 0")
        if keyframe_interval < 1:
            raise ValueError("--keyframe-interval must be >= 1")
        settings = TranscodeSettings(enabled=transcode, short_side=short_side,
                                     max_fps=max_fps or None, max_seconds=max_seconds,
                                     keyframe_interval=keyframe_interval, crf=crf,
                                     tune=None if tune == "none" else tune,
                                     max_bytes=parse_size(max_bytes))
        class_names = read_classes(classes, max_bytes=settings.max_bytes) if classes else None
        info = shard_dataset(input, output, settings, samples_per_shard=samples_per_shard,
                             shard_bytes=parse_size(shard_bytes), workers=workers or available_cpus(),
                             max_failure_rate=max_failure_rate, classes=class_names,
                             part=parse_part(part) if part else None, progress=not quiet,
                             input_format=input_format, video_root=video_root,
                             shuffle=shuffle, shuffle_seed=shuffle_seed)
    except (ManifestError, DatasetJsonError, ValueError, FileNotFoundError) as e:
        _fail(str(e), 2)
    except (ShardingFailed, UserError) as e:  # UserError: storage.StorageError (S3 failures)
        _fail(str(e), 1)
    _summary(info)


def merge(
    output: Annotated[str, typer.Argument(help="The --output of the parts (folder or s3:// prefix).")],
    parts: Annotated[Optional[int], typer.Option(
        "--parts", help="Merge the parts of this count N (needed only when folders of several "
                        "counts are there).")] = None,
) -> None:
    """Join the parts of `umt shard --part I/N` into one dataset.json (refuses a missing or
    duplicated part)."""
    from umt.data.shard_parts import PartError, merge_parts
    from umt.errors import UserError

    try:
        info = merge_parts(output, parts)
    except (PartError, ValueError) as e:
        _fail(str(e), 2)
    except UserError as e:  # storage.StorageError
        _fail(str(e), 1)
    _summary(info)


shard_app.callback()(shard)
shard_app.command("merge")(merge)


def _summary(info) -> None:
    from collections import Counter

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    console.print(f"[green]wrote {info.num_samples} samples in {len(info.shards)} shards "
                  f"({info.num_bytes / 1e6:.1f} MB), {info.num_failed} inputs failed[/green]")
    if info.failures:
        table = Table("reason", "inputs", "example", title="failed inputs (all listed in dataset.json)")
        reasons = Counter(f.reason.split(":")[0] for f in info.failures)
        for reason, n in reasons.most_common(10):
            example = next(f.source for f in info.failures if f.reason.split(":")[0] == reason)
            table.add_row(reason, str(n), example)
        console.print(table)
    typer.echo(info.location)


def synthetic(
    output_dir: Annotated[str, typer.Option(
        "--output-dir", "-o", help="Folder or s3:// prefix for videos/, manifest.csv, classes.txt.")],
    num_videos: Annotated[int, typer.Option("--num-videos", "-n", help="How many clips.")] = 64,
    num_frames: Annotated[int, typer.Option("--num-frames", help="Frames per clip.")] = 16,
    size: Annotated[int, typer.Option("--size", help="Frame side in pixels (even).")] = 64,
    fps: Annotated[float, typer.Option("--fps", help="Frame rate of the mp4s.")] = 8.0,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same files.")] = 0,
) -> None:
    """Write synthetic mp4 clips (label = direction of motion) and a manifest for `umt shard`."""
    from tqdm import tqdm

    from umt.data import synthetic as syn

    if num_videos < 1 or size < 2 or size % 2 or num_frames < 1 or fps <= 0:
        _fail("--num-videos and --num-frames must be >= 1, --size even, --fps > 0", 2)
    with tqdm(total=num_videos, unit="video", desc="synthetic") as bar:
        manifest = syn.write_dataset(output_dir, num_videos, num_frames=num_frames, size=size,
                                     fps=fps, seed=seed, progress=bar.update)
    typer.echo(manifest)
