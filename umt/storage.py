"""One small API over local paths and ``s3://`` URIs (boto3), used for shards, dataset.json,
checkpoints and anything else a job reads or writes.

S3 goes through boto3 with its standard configuration chain: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE`` / ``~/.aws/config``, and ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) for S3-compatible stores such as MinIO. Retries with exponential
backoff come from botocore's ``standard`` retry mode; large uploads are multipart through
boto3's transfer manager.

Only two kinds of location exist: a local path (optionally ``file://``) and ``s3://bucket/key``.
Every other scheme -- in particular WebDataset's ``pipe:`` -- is rejected, so a URI that came
from a data file can never run a shell command.

    >>> from umt import storage
    >>> storage.write_bytes("s3://bucket/run/x.json", b"{}")
    >>> storage.read_bytes(storage.join("s3://bucket/run", "x.json"))
    b'{}'
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import tempfile
import threading
from typing import BinaryIO, Optional

def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; finished files get the usual umask-based mode instead (shards on a
# shared volume must be readable by other pods). Read once: os.umask is process-global.
FILE_MODE = 0o666 & ~_read_umask()
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()

# Multipart above 64 MiB, in 64 MiB parts: a 1 GB shard becomes 16 parts uploaded in parallel,
# and a failed part is retried alone instead of restarting the whole object.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNKSIZE = 64 * 1024 * 1024


class NotRegularFileError(OSError):
    """A local path that is a FIFO, a device, a socket (``/dev/zero``...): never read, since it
    can block forever or never end."""


class TooLargeError(OSError):
    """A file / object larger than the caller's ``max_bytes``."""


def _too_large(uri: str, size: int, max_bytes: int) -> TooLargeError:
    return TooLargeError(f"{uri}: {size} bytes, larger than the limit of {max_bytes} bytes "
                         f"(--max-bytes)")


def _open_regular(path: str) -> BinaryIO:
    """Open a local file for reading only if it is a regular file (symlinks followed).

    O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer; the fstat on the
    open descriptor (not a stat of the name before) leaves no window to swap the file.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(f"{path}: is a directory")
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{path}: not a regular file (a FIFO, device or socket); "
                                      f"only regular files are read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def check_uri(uri: str) -> str:
    """Return ``uri`` if it is a local path or ``s3://`` URI; raise ``ValueError`` otherwise.

    Why so strict: shard lists come from dataset.json files that anyone may write, and
    WebDataset would happily run ``pipe:curl ... | sh``.
    """
    uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"empty or non-string location: {uri!r}")
    m = _SCHEME.match(uri)
    if m and not is_s3(uri) and not uri.startswith("file://"):
        # One-letter "schemes" are Windows drive letters ("C:\\data"), i.e. local paths.
        if len(m.group(1)) > 1:
            raise ValueError(f"unsupported location {uri!r}: only local paths and s3:// URIs are "
                             f"allowed (scheme {m.group(1)!r} rejected)")
    if is_s3(uri):
        bucket = uri[5:].split("/", 1)[0]
        if not bucket:
            raise ValueError(f"s3 URI without a bucket: {uri!r}")
    return uri


def _local(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    check_uri(uri)
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def s3_client():
    """A boto3 S3 client for this process (cached; rebuilt after fork or when AWS env changes).

    Why per process: boto3 clients are thread-safe but must not cross a fork, and DataLoader
    workers are forked. Why keyed on the environment: tests and tools switch endpoints.
    """
    import boto3
    from botocore.config import Config

    env = tuple(os.environ.get(k) for k in (
        "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION"))
    key = (os.getpid(),) + env
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            config = Config(retries={"max_attempts": 10, "mode": "standard"},
                            connect_timeout=10, read_timeout=120,
                            max_pool_connections=32)
            # botocore reads AWS_ENDPOINT_URL(_S3) itself (>= 1.31); passing it explicitly
            # keeps older botocore versions working with MinIO too.
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            session = boto3.session.Session()
            client = session.client("s3", endpoint_url=endpoint or None, config=config)
            _clients.clear()  # drop clients of a parent process / old environment
            _clients[key] = client
    return client


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=MULTIPART_THRESHOLD,
                          multipart_chunksize=MULTIPART_CHUNKSIZE, use_threads=True)


def _is_not_found(err: Exception) -> bool:
    code = str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def join(base: str, *parts: str) -> str:
    """Join path parts with ``/`` for S3 and ``os.path.join`` locally."""
    base = os.fspath(base)
    if is_s3(base):
        out = base.rstrip("/")
        for p in parts:
            p = str(p).strip("/")
            if p:
                out = f"{out}/{p}"
        return out
    return os.path.join(base, *[str(p) for p in parts])


def read_bytes(uri: str, max_bytes: Optional[int] = None) -> bytes:
    """The whole object / file. Raises ``FileNotFoundError`` when it does not exist,
    :class:`NotRegularFileError` for a local FIFO / device / socket and :class:`TooLargeError`
    when it holds more than ``max_bytes`` (checked before reading, and while reading for files
    that grow)."""
    uri = check_uri(uri)
    if not is_s3(uri):
        with _open_regular(_local(uri)) as f:
            if max_bytes is None:
                return f.read()
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise _too_large(uri, size, max_bytes)
            data = f.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise _too_large(uri, len(data), max_bytes)
            return data
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    try:
        resp = s3_client().get_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if _is_not_found(e):
            raise FileNotFoundError(f"no such object: {uri}") from None
        raise
    body = resp["Body"]
    try:
        if max_bytes is not None and int(resp.get("ContentLength", 0)) > max_bytes:
            raise _too_large(uri, int(resp["ContentLength"]), max_bytes)
        return body.read()
    finally:
        body.close()


def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically: a reader sees the old content or the new one, never a prefix.

    Local: temp file in the same directory + fsync + ``os.replace``. S3: a PUT (or a multipart
    upload, completed in one call) only becomes visible when complete.
    """
    uri = check_uri(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client().upload_fileobj(io.BytesIO(data), bucket, key, Config=_transfer_config())
        return
    path = _local(uri)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def upload_file(local_path: str, uri: str) -> None:
    """Copy a local file to ``uri`` (multipart on S3 above 64 MiB; atomic either way)."""
    uri = check_uri(uri)
    if is_s3(uri):
        _open_regular(os.fspath(local_path)).close()  # a FIFO or /dev/zero would never end
        bucket, key = split_s3(uri)
        s3_client().upload_file(os.fspath(local_path), bucket, key, Config=_transfer_config())
        return
    dst = _local(uri)
    if os.path.abspath(dst) == os.path.abspath(local_path):
        return
    src = _open_regular(os.fspath(local_path))  # a FIFO or /dev/zero would never end
    folder = os.path.dirname(os.path.abspath(dst))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(dst), dir=folder)
    try:
        with src, os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def download_file(uri: str, local_path: str) -> None:
    """Copy ``uri`` to a local file; the destination appears only when complete."""
    uri = check_uri(uri)
    if not is_s3(uri):
        if not os.path.exists(_local(uri)):
            raise FileNotFoundError(f"no such file: {uri}")
        upload_file(_local(uri), os.fspath(local_path))
        return
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    local_path = os.fspath(local_path)
    folder = os.path.dirname(os.path.abspath(local_path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    os.close(fd)
    try:
        s3_client().download_file(bucket, key, tmp, Config=_transfer_config())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, local_path)
    except ClientError as e:
        if _is_not_found(e):
            raise FileNotFoundError(f"no such object: {uri}") from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def exists(uri: str) -> bool:
    uri = check_uri(uri)
    if not is_s3(uri):
        return os.path.exists(_local(uri))
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as e:
        if _is_not_found(e):
            return False
        raise


def etag(uri: str) -> str:
    """The S3 ETag of an object (identifies its content version)."""
    bucket, key = split_s3(check_uri(uri))
    return str(s3_client().head_object(Bucket=bucket, Key=key)["ETag"])


def size(uri: str) -> int:
    """Size in bytes. Raises ``FileNotFoundError`` when it does not exist."""
    uri = check_uri(uri)
    if not is_s3(uri):
        return os.path.getsize(_local(uri))
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    try:
        return int(s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"])
    except ClientError as e:
        if _is_not_found(e):
            raise FileNotFoundError(f"no such object: {uri}") from None
        raise


def list_uris(prefix_uri: str) -> list[str]:
    """All files / objects under a folder or key prefix, recursively, sorted.

    For S3 the prefix is taken as a folder (``s3://b/data`` lists ``s3://b/data/...``, not
    ``s3://b/data2``). A missing folder lists as empty.
    """
    prefix_uri = check_uri(prefix_uri)
    if not is_s3(prefix_uri):
        root = _local(prefix_uri)
        if os.path.isfile(root):
            return [prefix_uri]
        out = []
        for folder, _, files in os.walk(root):
            out.extend(os.path.join(folder, f) for f in files)
        return sorted(out)
    bucket, key = split_s3(prefix_uri)
    if key and not key.endswith("/"):
        key += "/"
    out = []
    paginator = s3_client().get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=key):
        out.extend(f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", []))
    return sorted(out)


def delete(uri: str) -> None:
    """Delete a file / object; deleting something that does not exist is not an error."""
    uri = check_uri(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client().delete_object(Bucket=bucket, Key=key)
        return
    try:
        os.unlink(_local(uri))
    except FileNotFoundError:
        pass


class _S3Stream(io.RawIOBase):
    """A read-only, forward-streaming view of an S3 object's body (what tarfile ``r|`` needs)."""

    def __init__(self, body):
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = self._body.read(len(buf))
        buf[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def open_read(uri: str) -> BinaryIO:
    """A binary stream of ``uri``; S3 objects are streamed, not downloaded first.

    Use as a context manager. Raises ``FileNotFoundError`` when it does not exist.
    """
    uri = check_uri(uri)
    if not is_s3(uri):
        return _open_regular(_local(uri))
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    try:
        body = s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as e:
        if _is_not_found(e):
            raise FileNotFoundError(f"no such object: {uri}") from None
        raise
    return io.BufferedReader(_S3Stream(body), buffer_size=1 << 20)
