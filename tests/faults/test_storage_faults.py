"""Storage faults (issue 12 §2): HTTP 500/503, connection resets, slow answers and transfers cut
mid-object, injected by a proxy in front of the real S3-protocol server (moto) while umt
stores, streams, shards, checkpoints and uploads metrics through unpatched boto3.

Wanted everywhere: retried with backoff and successful, or one clear error after the retry
budget; never a partial object that a reader takes as complete. Reads broken mid-object resume
with ranged GETs instead of starting over or dropping the shard.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

from umt import storage

SLOW = ("slow", 1.5)  # longer than the read timeout the tests set (S3_READ_TIMEOUT = 0.5 s)


def _key(uri: str) -> str:
    return uri.split("/", 3)[3]


def _requests(proxy, needle: str, method: str | None = None):
    return [(m, p, a) for m, p, a in proxy.log if needle in p and (method is None or m == method)]


# ------------------------------------------------------------------ every storage operation

def _ops(base: str, tmp_path):
    """(name, method of its first request, key it touches, run() -> check())."""
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(50_000))
    storage.write_bytes(f"{base}/r.bin", b"read me")
    storage.write_bytes(f"{base}/s.bin", b"stream me" * 1000)
    storage.write_bytes(f"{base}/d.bin", src.read_bytes())
    storage.write_bytes(f"{base}/gone.bin", b"x")
    return [
        ("write", "PUT", "w.bin", lambda: storage.write_bytes(f"{base}/w.bin", b"new"),
         lambda: storage.read_bytes(f"{base}/w.bin") == b"new"),
        ("read", "GET", "r.bin", lambda: storage.read_bytes(f"{base}/r.bin"),
         lambda got: got == b"read me"),
        ("stream", "GET", "s.bin", lambda: storage.open_read(f"{base}/s.bin").read(),
         lambda got: got == b"stream me" * 1000),
        ("upload", "PUT", "u.bin", lambda: storage.upload_file(str(src), f"{base}/u.bin"),
         lambda: storage.read_bytes(f"{base}/u.bin") == src.read_bytes()),
        ("download", "GET", "d.bin",
         lambda: storage.download_file(f"{base}/d.bin", str(tmp_path / "d.copy")),
         lambda: (tmp_path / "d.copy").read_bytes() == src.read_bytes()),
        ("size", "HEAD", "r.bin", lambda: storage.size(f"{base}/r.bin"), lambda got: got == 7),
        ("list", "GET", "list-type", lambda: storage.list_uris(base),
         lambda got: f"{base}/r.bin" in got),
        ("delete", "DELETE", "gone.bin", lambda: storage.delete(f"{base}/gone.bin"),
         lambda: not storage.exists(f"{base}/gone.bin")),
    ]


def test_every_operation_retries_through_500s_and_resets_and_succeeds(proxy, tmp_path):
    """The first two attempts of each operation fail (an InternalError, then a connection
    reset without an answer); the third succeeds with the right result."""
    base = f"{proxy.bucket}/ops"
    for name, method, needle, run, check in _ops(base, tmp_path):
        _fail_twice_then_succeed(proxy, name, method, needle, run, check, [500, "reset"])


def test_throttling_and_slow_answers_are_retried_too(proxy, tmp_path, monkeypatch):
    """503 SlowDown (botocore backs off up to 1 s: throttling) and an answer slower than the
    read timeout, on a write and a streamed read."""
    monkeypatch.setattr(storage, "S3_READ_TIMEOUT", 0.5)
    base = f"{proxy.bucket}/slow"
    ops = {op[0]: op for op in _ops(base, tmp_path)}
    for name in ("write", "stream"):
        _fail_twice_then_succeed(proxy, *ops[name], [503, SLOW])


def _fail_twice_then_succeed(proxy, name, method, needle, run, check, faults):
    proxy.faults.clear()
    rules = [proxy.faults.add(method, needle, fault) for fault in faults]
    before = len(proxy.log)
    got = run()
    assert check(got) if got is not None else check(), name
    assert [proxy.faults.hits[r] for r in rules] == [1] * len(faults), name
    attempts = [a for m, p, a in proxy.log[before:] if m == method and needle in p]
    assert attempts == faults + [None], (name, attempts)


def test_after_the_retry_budget_one_clear_error_and_no_object(proxy, direct, tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "S3_MAX_ATTEMPTS", 2)  # 3 attempts
    base = f"{proxy.bucket}/budget"
    proxy.faults.add("PUT", "w.bin", 500, times=-1)
    with pytest.raises(storage.StorageError) as e:
        storage.write_bytes(f"{base}/w.bin", b"never stored")
    msg = str(e.value)
    assert f"S3 write of {base}/w.bin failed: InternalError" in msg and "after 3 attempts" in msg
    assert "\n" not in msg and len(_requests(proxy, "w.bin", "PUT")) == 3
    assert direct.list_objects_v2(Bucket=proxy.bucket[5:], Prefix="budget/").get("KeyCount") == 0

    proxy.faults.add("GET", "r.bin", "reset", times=-1)
    storage.write_bytes(f"{base}/r.bin", b"x")
    with pytest.raises(storage.StorageError, match=r"S3 read of .*r.bin failed: .*Connection"):
        storage.read_bytes(f"{base}/r.bin")


def test_multipart_upload_with_a_failing_part_retries_it_alone_or_leaves_nothing(
        proxy, direct, tmp_path, monkeypatch):
    """11 MiB in 5 MiB parts: part 2 fails twice and is retried alone (parts 1 and 3 are sent
    once); when it always fails, no object appears and the upload is aborted."""
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 5 << 20)
    monkeypatch.setattr(storage, "MULTIPART_CHUNKSIZE", 5 << 20)
    monkeypatch.setattr(storage, "S3_MAX_ATTEMPTS", 2)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(11 << 20))
    uri = f"{proxy.bucket}/mp/big.bin"
    proxy.faults.add("PUT", "partNumber=2", 503, times=2)
    storage.upload_file(str(src), uri)
    parts = [p for m, p, _ in _requests(proxy, "big.bin", "PUT")]
    assert sum("partNumber=2" in p for p in parts) == 3
    assert sum("partNumber=1" in p for p in parts) == 1 and sum("partNumber=3" in p for p in parts) == 1
    assert hashlib.sha256(storage.read_bytes(uri)).digest() == hashlib.sha256(src.read_bytes()).digest()

    proxy.faults.add("PUT", "partNumber=2", 500, times=-1)
    other = f"{proxy.bucket}/mp/never.bin"
    with pytest.raises(storage.StorageError, match="S3 upload of .*never.bin failed"):
        storage.upload_file(str(src), other)
    assert not storage.exists(other)
    assert direct.list_multipart_uploads(Bucket=proxy.bucket[5:]).get("Uploads", []) == []


# ----------------------------------------------------------------- reads broken mid-object

def test_a_read_cut_mid_object_resumes_with_range_requests(proxy):
    uri = f"{proxy.bucket}/cut/x.bin"
    data = os.urandom(3_000_000)
    storage.write_bytes(uri, data)
    etag = storage.etag(uri)
    for read in (lambda: storage.read_bytes(uri), lambda: storage.open_read(uri).read()):
        proxy.faults.clear()
        before = len(proxy.log)
        proxy.faults.add("GET", "x.bin", ("cut", 1_000_000))   # 1 MB, then the connection drops
        proxy.faults.add("GET", "x.bin", ("cut", 500_000))     # the resumed one drops too
        assert read() == data
        ranges = [h.get("Range") for (m, p, _), h in zip(proxy.log[before:], proxy.headers[before:])
                  if m == "GET" and "x.bin" in p]
        assert ranges == [None, "bytes=1000000-", "bytes=1500000-"]
        assert all(h.get("If-Match") == etag for (m, p, _), h in
                   zip(proxy.log[before + 1:], proxy.headers[before + 1:]) if "x.bin" in p)


def test_a_resume_never_mixes_two_versions_of_an_object(proxy):
    uri = f"{proxy.bucket}/cut/v.bin"
    storage.write_bytes(uri, b"a" * 2_000_000)
    proxy.faults.add("GET", "v.bin", ("cut", 100))
    with storage.open_read(uri) as stream:
        storage.write_bytes(uri, b"b" * 2_000_000)  # replaced while we read it
        with pytest.raises(storage.StorageError, match="replaced while it was being read"):
            stream.read()


def test_a_read_that_keeps_breaking_stops_with_a_clear_error(proxy, monkeypatch):
    monkeypatch.setattr(storage, "S3_MAX_ATTEMPTS", 2)
    uri = f"{proxy.bucket}/cut/y.bin"
    storage.write_bytes(uri, os.urandom(1_000_000))
    proxy.faults.add("GET", "y.bin", ("cut", 300_000))
    proxy.faults.add("GET", "y.bin", ("cut", 0), times=-1)  # no progress any more
    with pytest.raises(storage.StorageError) as e:
        storage.read_bytes(uri)
    assert "connection broke 3 times in a row at byte 300000 of 1000000" in str(e.value)
    assert len(_requests(proxy, "y.bin", "GET")) == 3  # the first + 2 resumes, then it gives up


# ------------------------------------------------------------------- umt shard to S3

@pytest.fixture(scope="module")
def small_manifest(tmp_path_factory):
    """6 synthetic clips (8 frames, 32 px): 3 shards of 2."""
    from umt.data import synthetic

    return synthetic.write_dataset(str(tmp_path_factory.mktemp("small")), 6, num_frames=8, size=32)


def test_umt_shard_to_s3_through_faults_resumes_and_publishes_only_whole_objects(
        proxy, direct, small_manifest, monkeypatch):
    from umt.data import dataset_json
    from umt.data.shard import shard_dataset

    bucket = proxy.bucket[5:]
    out = f"{proxy.bucket}/ds"

    def listing():
        return {o["Key"][3:]: o for o in direct.list_objects_v2(Bucket=bucket, Prefix="ds/")
                .get("Contents", [])}

    # 1. The second shard's upload fails on every attempt: a clear error after the budget,
    #    the first shard kept whole, nothing of the second one and no dataset.json visible.
    monkeypatch.setattr(storage, "S3_MAX_ATTEMPTS", 1)
    proxy.faults.add("PUT", "ds/shard-000001.tar", 500, times=-1)
    with pytest.raises(storage.StorageError) as e:
        shard_dataset(small_manifest, out, samples_per_shard=2, workers=1, progress=False)
    msg = str(e.value)
    assert "S3 upload of" in msg and "shard-000001.tar failed: InternalError" in msg, msg
    assert "a re-run of the same command resumes" in msg and "\n" not in msg
    stored = listing()
    # Two uploads overlap: shard 2 may have made it. Whatever is there is whole (its stats
    # say so), nothing of shard 1 is, and there is no dataset.json.
    assert {"shard-000000.tar", "shard-000000_stats.json"} <= set(stored)
    assert not {k for k in stored if "000001" in k or k == "dataset.json"}, sorted(stored)
    for name in (k for k in stored if k.endswith(".tar")):
        stats = json.loads(direct.get_object(Bucket=bucket, Key=f"ds/{name[:-4]}_stats.json")
                           ["Body"].read())
        body = direct.get_object(Bucket=bucket, Key=f"ds/{name}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == stats["sha256"]

    # 2. The re-run meets transient faults on every kind of object it writes and reads back;
    #    it resumes after shard 0 (not uploaded again) and completes.
    monkeypatch.setattr(storage, "S3_MAX_ATTEMPTS", 10)
    proxy.faults.clear()
    for method, needle, fault in [("PUT", "ds/shard-000001.tar", 500),
                                  ("PUT", "ds/shard-000001.tar", "reset"),
                                  ("PUT", "ds/shard-000002.tar", 503),
                                  ("HEAD", "ds/shard-000002.tar", 500),     # its ETag read
                                  ("PUT", "ds/shard-000001_stats.json", "reset"),
                                  ("GET", "ds/shard-000000_stats.json", 500),  # resume check
                                  ("PUT", "ds/dataset.json", 500)]:
        proxy.faults.add(method, needle, fault)
    before = len(proxy.log)
    info = shard_dataset(small_manifest, out, samples_per_shard=2, workers=1, progress=False)
    assert proxy.faults.hits == [1] * 7
    assert not [p for m, p, _ in proxy.log[before:] if m == "PUT" and "shard-000000" in p]
    assert info.num_samples == 6 and [s.num_samples for s in info.shards] == [2, 2, 2]
    stored = listing()
    assert set(stored) == {"dataset.json"} | {f"shard-00000{i}{x}" for i in range(3)
                                              for x in (".tar", "_stats.json")}
    for shard in dataset_json.load(out).shards:  # every object whole: the recorded bytes
        body = direct.get_object(Bucket=bucket, Key=f"ds/{shard.uri}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == shard.sha256 and len(body) == shard.num_bytes


# ----------------------------------------------------------- streaming shards in training

def test_loaders_resume_shards_cut_mid_stream_and_lose_no_sample(proxy, direct, synthetic_shards):
    """Every shard's first GET is cut halfway: the eval loader still reads every sample once,
    the training loader (in a DataLoader worker) skips none; each cut resumed with a Range."""
    from umt.configs.schema import DataConfig
    from umt.data import dataset_json
    from umt.data.stream import build_pretrain_loader
    from umt.data.webdataset_loader import build_eval_loader

    info = dataset_json.load(synthetic_shards)
    bucket = proxy.bucket[5:]
    for uri, shard in zip(info.shard_uris(), info.shards):
        direct.upload_file(uri, bucket, f"stream/{shard.uri}")
        proxy.faults.add("GET", f"stream/{shard.uri}", ("cut", shard.num_bytes // 2))
    direct.put_object(Bucket=bucket, Key="stream/dataset.json", Body=info.to_json().encode())
    source = f"{proxy.bucket}/stream/dataset.json"

    loader = build_eval_loader(source, batch_size=4, num_frames=2, img_size=16)
    keys = [k for batch in loader for k in batch["key"]]
    assert len(keys) == len(set(keys)) == info.num_samples and loader.num_skipped == 0
    assert proxy.faults.injected == len(info.shards)
    ranged = [h.get("Range") for (m, p, _), h in zip(proxy.log, proxy.headers)
              if m == "GET" and p.endswith(".tar") and h.get("Range")]
    assert len(ranged) == len(info.shards)
    assert sorted(ranged) == sorted(f"bytes={s.num_bytes // 2}-" for s in info.shards)

    proxy.faults.clear()
    for shard in info.shards:  # cut the first two reads of each shard, wherever they start
        proxy.faults.add("GET", f"stream/{shard.uri}", ("cut", shard.num_bytes // 3), times=2)
    cfg = DataConfig(source=source, num_workers=1, shuffle_buffer=0, crop_scales=[1.0])
    train = build_pretrain_loader(cfg, batch_size=4, num_frames=2, img_size=16)
    for _ in range(4):
        assert len(next(train)["key"]) == 4
    assert train.num_skipped == 0 and proxy.faults.injected >= 2


# ------------------------------------------------------- checkpoints and metrics on S3

def test_training_checkpoints_and_metrics_survive_faults_or_stop_clearly(proxy, tmp_path, monkeypatch):
    """Saving (step_*.pt, latest, metrics.jsonl, summary.json) and resuming (the checkpoint
    read cut mid-object, the metrics download failing) through faults; then a save that
    fails for good is a clear error, and latest still names a loadable checkpoint."""
    from umt.runtime import checkpoint
    from umt.train.stage1 import main

    monkeypatch.setenv("UMT_CACHE", str(tmp_path / "cache"))
    out = f"{proxy.bucket}/run"
    args = [f"train.output_dir={out}", "train.log_every=1", "train.ckpt_every=1",
            "train.batch_size=2"]
    for method, needle, fault in [("PUT", "checkpoints/step_00000001.pt", 500),
                                  ("PUT", "checkpoints/step_00000002.pt", "reset"),
                                  ("PUT", "checkpoints/latest", 503),
                                  ("PUT", "run/metrics.jsonl", 500),
                                  ("PUT", "run/summary.json", "reset")]:
        proxy.faults.add(method, needle, fault)
    assert main("tiny", args + ["train.steps=2"])["steps"] == 2
    assert proxy.faults.hits == [1] * 5

    proxy.faults.clear()
    size = storage.size(f"{out}/checkpoints/step_00000002.pt")
    proxy.faults.add("GET", "checkpoints/step_00000002.pt", ("cut", size // 2))
    proxy.faults.add("GET", "run/metrics.jsonl", 500)
    summary = main("tiny", args + ["train.steps=3"])
    assert summary["steps"] == 3 and proxy.faults.hits == [1, 1]
    assert any(h.get("Range") == f"bytes={size // 2}-" for (m, p, _), h in
               zip(proxy.log, proxy.headers) if "step_00000002.pt" in p)
    steps = [json.loads(line)["step"] for line in
             storage.read_bytes(f"{out}/metrics.jsonl").decode().splitlines()]
    assert steps == [1, 2, 3]  # resumed at 2: history kept, nothing twice

    # The loop's checkpoint writer, when the save fails for good (step 4, after the budget).
    proxy.faults.clear()
    monkeypatch.setattr(storage, "S3_MAX_ATTEMPTS", 1)
    proxy.faults.add("PUT", "checkpoints/step_00000004.pt", 500, times=-1)
    writer = checkpoint.CheckpointWriter(out, keep_last=2)
    writer.adopt(3)
    with pytest.raises(storage.StorageError, match=r"S3 write of .*step_00000004.pt failed: "
                                                   r"InternalError.*after 2 attempts"):
        writer.save(4, {"model": {"w": torch.zeros(3)}})
    assert storage.read_bytes(f"{out}/checkpoints/latest") == b"step_00000003.pt"
    assert checkpoint.load_latest(out)["step"] == 3  # not pruned, still loads
    assert not storage.exists(f"{out}/checkpoints/step_00000004.pt")
    assert not storage.exists(f"{out}/lease.json")  # the runs released it


def test_a_metrics_upload_that_fails_for_good_is_a_clear_error(proxy, tmp_path, monkeypatch):
    from umt.runtime.common import RunFiles

    monkeypatch.setenv("UMT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(storage, "S3_MAX_ATTEMPTS", 1)
    files = RunFiles(f"{proxy.bucket}/m")
    files.log_metrics({"step": 1, "loss": 1.0})
    proxy.faults.add("PUT", "m/metrics.jsonl", 503)  # transient: retried
    files.flush()
    assert storage.read_bytes(f"{proxy.bucket}/m/metrics.jsonl") == b'{"step": 1, "loss": 1.0}\n'
    proxy.faults.add("PUT", "m/metrics.jsonl", "reset", times=-1)
    with pytest.raises(storage.StorageError, match=r"S3 upload of .*m/metrics.jsonl failed"):
        files.flush()
