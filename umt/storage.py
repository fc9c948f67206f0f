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

Errors, the same contract everywhere: something that does not exist raises
``FileNotFoundError`` (local and S3); every other S3 failure (wrong credentials, a missing
bucket, an unreachable endpoint, a throttled or failing service after botocore's retries)
raises :class:`StorageError`, whose one-line message names the operation, the URI, the error
code and what to check. Local failures stay ``OSError``; local paths that are not regular files
(FIFOs, devices) are never read (:class:`NotRegularFileError`).

    >>> from umt import storage
    >>> storage.write_bytes("s3://bucket/run/x.json", b"{}")
    >>> storage.read_bytes(storage.join("s3://bucket/run", "x.json"))
    b'{}'
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import BinaryIO, Iterator, Optional

from umt.errors import UserError

log = logging.getLogger(__name__)

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
# botocore's "standard" retries (exponential backoff, at most 20 s apart) ride out a restarting
# MinIO or S3 throttling; after that the operation fails with a StorageError. botocore reads
# the legacy key max_attempts as retries: 10 means up to 11 attempts.
S3_MAX_ATTEMPTS = 10
# Seconds to connect, and to wait for any bytes of an answer; a request that times out is
# retried like a failed one (a read broken mid-body resumes, see _S3Stream).
S3_CONNECT_TIMEOUT = 10
S3_READ_TIMEOUT = 120


class StorageError(UserError):
    """An S3 operation failed for a reason other than "does not exist" (see the module doc)."""


_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                     "InvalidToken", "TokenRefreshRequired", "AuthorizationHeaderMalformed",
                     "InvalidClientTokenId", "UnrecognizedClientException"}


def _endpoint() -> str:
    return (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            or "AWS S3 (no AWS_ENDPOINT_URL set)")


def s3_error(op: str, uri: str, err: BaseException) -> StorageError:
    """The :class:`StorageError` for botocore / boto3 exception ``err`` raised by ``op`` on ``uri``.

    Public so that code calling the boto3 client directly (conditional writes) reports
    failures the same way.
    """
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ProfileNotFound,
    )

    cause = err
    # boto3's transfer manager re-raises a ClientError as S3UploadFailedError (a string).
    if not isinstance(cause, ClientError) and isinstance(err.__context__, ClientError):
        cause = err.__context__
    if isinstance(cause, ClientError):
        info = cause.response.get("Error", {})
        status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(info.get("Code") or status or "error")
        reason = str(info.get("Message") or "").strip()
        if code in _CREDENTIAL_CODES:
            hint = ("check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / "
                    "AWS_PROFILE, or the pod's S3 Secret) and that AWS_ENDPOINT_URL is the "
                    "service they belong to")
        elif code in ("AccessDenied", "403", "AllAccessDisabled"):
            hint = ("check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / "
                    "AWS_PROFILE, or the pod's S3 Secret) and that they may access this bucket "
                    "and key (S3 also answers 403 for a missing key when s3:ListBucket is not "
                    "granted, and HEAD requests carry no error code)")
        elif code == "NoSuchBucket":
            hint = (f"check the bucket name, and that AWS_ENDPOINT_URL ({_endpoint()}) is the "
                    f"S3 service that holds it")
        elif (code in ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout")
              or (isinstance(status, int) and status >= 500)):
            hint = (f"the S3 service ({_endpoint()}) kept failing after {S3_MAX_ATTEMPTS + 1} "
                    f"attempts; check its health and retry")
        else:
            hint = "check the URI, the credentials and AWS_ENDPOINT_URL"
        what = f"{code} ({reason})" if reason and reason != code else code
    elif isinstance(cause, (NoCredentialsError, PartialCredentialsError)):
        what = type(cause).__name__
        hint = ("no usable credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                "AWS_PROFILE), e.g. from the cluster's S3 Secret")
    elif isinstance(cause, ProfileNotFound):
        what, hint = f"ProfileNotFound ({cause})", "check AWS_PROFILE and ~/.aws/config"
    elif isinstance(cause, ConnectionError):  # endpoint down / unreachable / timeouts
        what = f"{type(cause).__name__} ({cause})"
        hint = (f"cannot reach the S3 endpoint {_endpoint()} (tried {S3_MAX_ATTEMPTS + 1} "
                f"times): check AWS_ENDPOINT_URL and that the service is up and reachable "
                f"from here")
    else:
        what = f"{type(cause).__name__} ({cause})"
        hint = "check the URI, the credentials and AWS_ENDPOINT_URL"
    return StorageError(f"S3 {op} of {uri} failed: {what}; {hint}".replace("\n", " "))


def _is_boto_error(err: BaseException) -> bool:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(err, (ClientError, BotoCoreError, Boto3Error))


@contextmanager
def _s3_errors(op: str, uri: str) -> Iterator[None]:
    """Translate what boto3 raises: not found -> FileNotFoundError, the rest -> StorageError."""
    try:
        yield
    except (FileNotFoundError, StorageError):
        raise
    except Exception as e:
        if not _is_boto_error(e):
            raise
        if _is_not_found(e):
            raise FileNotFoundError(f"no such object: {uri}") from None
        raise s3_error(op, uri, e) from e


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
    key = (os.getpid(), S3_MAX_ATTEMPTS, S3_CONNECT_TIMEOUT, S3_READ_TIMEOUT) + env
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            config = Config(retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
                            connect_timeout=S3_CONNECT_TIMEOUT, read_timeout=S3_READ_TIMEOUT,
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
    # NoSuchBucket is *not* "not found": it is a configuration error (wrong bucket or endpoint).
    code = str((getattr(err, "response", None) or {}).get("Error", {}).get("Code", ""))
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
    bucket, key = split_s3(uri)
    with _s3_errors("read", uri):
        resp = s3_client().get_object(Bucket=bucket, Key=key)
    stream = _S3Stream(bucket, key, uri, resp)  # a connection broken mid-body is resumed
    try:
        if max_bytes is not None and stream._size is not None and stream._size > max_bytes:
            raise _too_large(uri, stream._size, max_bytes)
        return stream.readall()
    finally:
        stream.close()


def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically: a reader sees the old content or the new one, never a prefix.

    Local: temp file in the same directory + fsync + ``os.replace``. S3: a PUT (or a multipart
    upload, completed in one call) only becomes visible when complete.
    """
    uri = check_uri(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors("write", uri):
            s3_client().upload_fileobj(io.BytesIO(data), bucket, key, Config=_transfer_config())
        return
    with _replacing(_local(uri)) as f:
        f.write(data)


@contextmanager
def _replacing(path: str) -> Iterator[BinaryIO]:
    """A temp file beside local ``path`` that replaces it, synced to disk and with the usual
    mode, when the block ends; removed (``path`` untouched) when the block raises."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def upload_file(local_path: str, uri: str) -> None:
    """Copy a local file to ``uri`` (multipart on S3 above 64 MiB; atomic either way).

    On S3 a failed multipart upload is aborted by boto3's transfer manager when the service can
    still be reached; when it cannot, :func:`abort_multipart_uploads` cleans up later.
    """
    uri = check_uri(uri)
    if is_s3(uri):
        _open_regular(os.fspath(local_path)).close()  # a FIFO or /dev/zero would never end
        bucket, key = split_s3(uri)
        with _s3_errors("upload", uri):
            s3_client().upload_file(os.fspath(local_path), bucket, key, Config=_transfer_config())
        return
    dst = _local(uri)
    if os.path.abspath(dst) == os.path.abspath(local_path):
        return
    src = _open_regular(os.fspath(local_path))  # a FIFO or /dev/zero would never end
    with src, _replacing(dst) as out:
        shutil.copyfileobj(src, out, 1 << 20)


def download_file(uri: str, local_path: str) -> None:
    """Copy ``uri`` to a local file; the destination appears only when complete."""
    uri = check_uri(uri)
    if not is_s3(uri):
        if not os.path.exists(_local(uri)):
            raise FileNotFoundError(f"no such file: {uri}")
        upload_file(_local(uri), os.fspath(local_path))
        return
    bucket, key = split_s3(uri)
    local_path = os.fspath(local_path)
    folder = os.path.dirname(os.path.abspath(local_path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    os.close(fd)
    try:
        with _s3_errors("download", uri):
            try:
                s3_client().download_file(bucket, key, tmp, Config=_transfer_config())
            except Exception as e:
                if _is_boto_error(e) and _is_not_found(e):
                    _check_bucket(bucket, uri)  # a HEAD 404 may be a missing bucket
                raise
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, local_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check_bucket(bucket: str, uri: str) -> None:
    """Raise StorageError if ``bucket`` does not exist or cannot be reached.

    Why: S3 answers HEAD of a missing key and HEAD of a key in a missing bucket alike (404, no
    body); a missing bucket is a configuration error, not "no such object".
    """
    with _s3_errors("read", uri):
        try:
            s3_client().head_bucket(Bucket=bucket)
        except Exception as e:
            if _is_boto_error(e) and _is_not_found(e):
                from botocore.exceptions import ClientError

                raise s3_error("read", uri, ClientError(
                    {"Error": {"Code": "NoSuchBucket", "Message": f"bucket {bucket!r} does not exist"}},
                    "HeadBucket")) from None
            raise


def _head(uri: str, op: str) -> dict:
    bucket, key = split_s3(uri)
    with _s3_errors(op, uri):
        try:
            return s3_client().head_object(Bucket=bucket, Key=key)
        except Exception as e:
            if _is_boto_error(e) and _is_not_found(e):
                _check_bucket(bucket, uri)
            raise


def exists(uri: str) -> bool:
    uri = check_uri(uri)
    if not is_s3(uri):
        return os.path.exists(_local(uri))
    try:
        _head(uri, "exists check")
        return True
    except FileNotFoundError:
        return False


def etag(uri: str) -> str:
    """The S3 ETag of an object (identifies its content version)."""
    return str(_head(check_uri(uri), "etag read")["ETag"])


def size(uri: str) -> int:
    """Size in bytes. Raises ``FileNotFoundError`` when it does not exist."""
    uri = check_uri(uri)
    if not is_s3(uri):
        return os.path.getsize(_local(uri))
    return int(_head(uri, "size read")["ContentLength"])


def list_uris(prefix_uri: str) -> list[str]:
    """All files / objects under a folder or key prefix, recursively, sorted.

    For S3 the prefix is taken as a folder (``s3://b/data`` lists ``s3://b/data/...``, not
    ``s3://b/data2``). A missing folder lists as empty; a missing bucket is a StorageError.
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
    with _s3_errors("listing", prefix_uri):
        paginator = s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=key):
            out.extend(f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", []))
    return sorted(out)


def delete(uri: str) -> None:
    """Delete a file / object; deleting something that does not exist is not an error."""
    uri = check_uri(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors("delete", uri):
            s3_client().delete_object(Bucket=bucket, Key=key)
        return
    try:
        os.unlink(_local(uri))
    except FileNotFoundError:
        pass


def abort_multipart_uploads(prefix_uri: str, keep=None) -> list[str]:
    """Abort the incomplete multipart uploads under an S3 folder; return their URIs.

    An upload that failed while the service was unreachable cannot be aborted at the time; its
    parts stay stored (and billed) until someone aborts it. Writers that own a folder (``umt
    shard``) call this before they start. ``keep(uri) -> bool`` spares uploads it returns True
    for.
    """
    bucket, key = split_s3(check_uri(prefix_uri))
    if key and not key.endswith("/"):
        key += "/"
    aborted = []
    with _s3_errors("multipart cleanup", prefix_uri):
        client = s3_client()
        paginator = client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=bucket, Prefix=key):
            for up in page.get("Uploads", []):
                uri = f"s3://{bucket}/{up['Key']}"
                if keep is not None and keep(uri):
                    continue
                client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
                aborted.append(uri)
    return aborted


def _is_transfer_error(err: BaseException) -> bool:
    """A connection that broke while an object's body was being read (reset, cut short, read
    timeout): botocore raises ResponseStreamingError / IncompleteReadError / ReadTimeoutError,
    and urllib3 or the socket layer may leak their own errors."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError

    return (isinstance(err, (ResponseStreamingError, IncompleteReadError, ReadTimeoutError,
                             BotoConnectionError, ConnectionError, TimeoutError))
            or "urllib3" in type(err).__module__)


class _S3Stream(io.RawIOBase):
    """A read-only, forward-streaming view of an S3 object's body (what tarfile ``r|`` needs).

    A connection that breaks mid-object is resumed where it broke: a ranged GET
    (``Range: bytes=<position>-``) pinned to the first answer's ETag (``If-Match``), so the
    bytes that follow are from the same version of the object. botocore retries requests, not
    a body that is already streaming; without this a dropped connection cost the rest of a
    shard (skipped as corrupt) or a checkpoint load. ``S3_MAX_ATTEMPTS`` resumes in a row
    without progress, then :class:`StorageError`.
    """

    def __init__(self, bucket: str, key: str, uri: str, resp: dict):
        self._bucket, self._key, self._uri = bucket, key, uri
        self._body = resp["Body"]
        size = resp.get("ContentLength")
        self._size = int(size) if size is not None else None  # None: read until the end
        self._etag = resp.get("ETag")
        self._pos = 0
        self._failures = 0  # resumes in a row without a byte of progress
        self.resumes = 0  # resumes in total (tests and logs)

    def readable(self) -> bool:
        return True

    def _read(self, n: int) -> bytes:
        while True:
            if self._size is not None and self._pos >= self._size:
                return b""
            try:
                data = self._body.read(n)
            except Exception as e:
                if not _is_transfer_error(e):
                    if _is_boto_error(e):
                        raise s3_error("read", self._uri, e) from e
                    raise
                self._resume(e)
                continue
            if data or self._size is None or n == 0:
                self._pos += len(data)
                self._failures = 0 if data else self._failures
                return data
            # An empty read before the end: the server closed the body early.
            self._resume(ConnectionError(f"body ended at byte {self._pos} of {self._size}"))

    def _resume(self, err: BaseException) -> None:
        self._failures += 1
        if self._failures > S3_MAX_ATTEMPTS:
            raise StorageError(
                f"S3 read of {self._uri} failed: the connection broke {self._failures} times in "
                f"a row at byte {self._pos} of {self._size} ({type(err).__name__}: "
                f"{str(err)[:160]}); check the network and the health of the S3 service "
                f"({_endpoint()})".replace("\n", " ")) from err
        self.resumes += 1
        try:
            self._body.close()
        except Exception:
            pass
        # Back off like botocore's standard mode (capped), so a restarting endpoint can return.
        time.sleep(min(0.1 * 2 ** (self._failures - 1), 5.0))
        log.warning("S3 read of %s broke at byte %d of %d (%s); resuming with a ranged GET "
                    "(%d/%d)", self._uri, self._pos, self._size, str(err)[:120],
                    self._failures, S3_MAX_ATTEMPTS)
        kwargs = {"Range": f"bytes={self._pos}-"}
        if self._etag:
            kwargs["IfMatch"] = self._etag
        try:
            with _s3_errors("read", self._uri):
                resp = s3_client().get_object(Bucket=self._bucket, Key=self._key, **kwargs)
        except StorageError as e:
            if "PreconditionFailed" in str(e):
                raise StorageError(f"S3 read of {self._uri} failed: the object was replaced "
                                   f"while it was being read (ETag {self._etag} is gone); read "
                                   f"it again") from None
            raise
        if not str(resp.get("ContentRange") or "").startswith(f"bytes {self._pos}-"):
            resp["Body"].close()  # a server that ignored the Range: its bytes start elsewhere
            raise StorageError(f"S3 read of {self._uri} failed: the endpoint ignored a ranged GET "
                               f"(Content-Range {resp.get('ContentRange')!r}), so the read cannot "
                               f"resume at byte {self._pos}; check that AWS_ENDPOINT_URL "
                               f"({_endpoint()}) is an S3-compatible service")
        self._body = resp["Body"]

    def readinto(self, buf) -> int:
        data = self._read(len(buf))
        buf[:len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        chunks = []
        while True:
            data = self._read(8 << 20)
            if not data:
                return b"".join(chunks)
            chunks.append(data)

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
    bucket, key = split_s3(uri)
    with _s3_errors("read", uri):
        resp = s3_client().get_object(Bucket=bucket, Key=key)
    return io.BufferedReader(_S3Stream(bucket, key, uri, resp), buffer_size=1 << 20)
