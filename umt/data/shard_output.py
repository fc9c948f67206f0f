"""Where ``umt shard`` (``umt.data.shard``) puts its shards: tar files that appear under their
final name only when complete, each followed by its ``shard-NNNNNN_stats.json`` (the mark of a
finished shard, verified before a re-run reuses it), locally (temp + rename) or on S3 (local
temp + background upload, at most two in flight).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

import umt
from umt import storage

SHARD_PATTERN = "shard-{:06d}.tar"
STATS_SUFFIX = "_stats.json"
TAR_MTIME = 0  # fixed: identical inputs give byte-identical tars


@dataclass
class OpenShard:
    index: int
    first_index: int
    tmp_path: str
    file: Any
    writer: Any
    keys: list[str] = field(default_factory=list)
    num_bytes: int = 0
    failures: list[dict] = field(default_factory=list)
    media: dict[str, int] = field(default_factory=dict)  # samples per media type
    num_captions: int = 0
    num_questions: int = 0  # video QA questions (umt.data.downstream)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_stats(output: str, k: int, fingerprint: str, first_index: int) -> Optional[dict]:
    """The stats of shard k if it is complete and intact, else None."""
    tar_uri = storage.join(output, SHARD_PATTERN.format(k))
    try:
        stats = json.loads(storage.read_bytes(tar_uri[:-4] + STATS_SUFFIX))
    except (FileNotFoundError, ValueError):
        return None
    if (not isinstance(stats, dict) or stats.get("fingerprint") != fingerprint
            or stats.get("first_index") != first_index):
        return None
    try:
        if storage.size(tar_uri) != stats.get("num_bytes"):
            return None
        if storage.is_s3(tar_uri):
            if storage.etag(tar_uri) != stats.get("etag"):
                return None
        elif sha256_file(tar_uri) != stats.get("sha256"):
            return None
    except FileNotFoundError:
        return None
    return stats


class ShardSink:
    """Writes shards to a local folder (temp + rename) or S3 (local temp + background upload)."""

    MAX_PENDING_UPLOADS = 2

    def __init__(self, output: str, fingerprint: str):
        self.output = output
        self.fingerprint = fingerprint
        self.remote = storage.is_s3(output)
        self.staging = tempfile.mkdtemp(prefix="umt-shard-") if self.remote else output
        if not self.remote:
            os.makedirs(output, exist_ok=True)
        # Two uploads in flight: overlap network with encoding, bound local disk use.
        self.uploader = ThreadPoolExecutor(self.MAX_PENDING_UPLOADS) if self.remote else None
        self.uploads: list[Future] = []
        self.finished: dict[int, dict] = {}

    def open(self, index: int, first_index: int) -> OpenShard:
        import webdataset as wds

        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{SHARD_PATTERN.format(index)}-", dir=self.staging)
        f = os.fdopen(fd, "wb")
        return OpenShard(index, first_index, tmp, f, wds.TarWriter(f, mtime=TAR_MTIME))

    def close(self, shard: OpenShard, next_index: int) -> None:
        shard.writer.close()
        shard.file.flush()
        os.fsync(shard.file.fileno())
        shard.file.close()
        name = SHARD_PATTERN.format(shard.index)
        stats = {"shard": name, "num_samples": len(shard.keys), "num_bytes": os.path.getsize(shard.tmp_path),
                 "sha256": sha256_file(shard.tmp_path), "first_index": shard.first_index,
                 "next_index": next_index, "keys": shard.keys, "failures": shard.failures,
                 "media": shard.media, "num_captions": shard.num_captions,
                 "num_questions": shard.num_questions,
                 "fingerprint": self.fingerprint, "created_by": f"umt {umt.__version__}"}
        if self.remote:
            # At most MAX_PENDING_UPLOADS shards waiting (bounds local disk use when the network
            # is slower than encoding); an upload error surfaces here, not at the very end.
            for fut in [f for f in self.uploads if f.done()]:
                fut.result()
                self.uploads.remove(fut)
            while len(self.uploads) >= self.MAX_PENDING_UPLOADS:
                self.uploads.pop(0).result()
            self.uploads.append(self.uploader.submit(self._publish, shard.tmp_path, name, stats))
        else:
            self._publish(shard.tmp_path, name, stats)

    def _publish(self, tmp_path: str, name: str, stats: dict) -> None:
        uri = storage.join(self.output, name)
        if self.remote:
            storage.upload_file(tmp_path, uri)
            stats["etag"] = storage.etag(uri)
            os.unlink(tmp_path)
        else:
            os.chmod(tmp_path, storage.FILE_MODE)
            os.replace(tmp_path, uri)  # atomic: readers never see a partial tar under this name
        # Stats last: their presence is what marks the shard complete.
        storage.write_bytes(uri[:-4] + STATS_SUFFIX, json.dumps(stats).encode())
        self.finished[int(name[6:12])] = stats

    def abort(self, shard: Optional[OpenShard]) -> None:
        if shard is not None:
            shard.file.close()
            if os.path.exists(shard.tmp_path):
                os.unlink(shard.tmp_path)

    def wait(self) -> None:
        for fut in self.uploads:
            fut.result()  # re-raises an upload error: the step must not report success
        self.uploads.clear()

    def cleanup(self) -> None:
        """Always, success or not: stop the uploads and remove the local staging folder.

        Why always: a failed S3 run would otherwise leave its staging folder (``umt-shard-*``,
        up to two shards) in the system temp folder.
        """
        if self.uploader:
            # Queued uploads are cancelled; one in flight ends (fails fast when the endpoint is
            # gone) before its file is removed under it.
            self.uploader.shutdown(wait=True, cancel_futures=True)
        if self.remote:
            shutil.rmtree(self.staging, ignore_errors=True)


def sample_record(key: str, result: dict) -> dict[str, bytes]:
    meta = dict(result["meta"], key=key)
    sample = {"__key__": key, result["ext"]: result["media"],
              "json": json.dumps(meta, ensure_ascii=False, sort_keys=True).encode()}
    if meta.get("captions"):
        sample["txt"] = meta["captions"][0].encode()
    if meta.get("label") is not None:
        sample["cls"] = str(meta["label"]).encode()
    return sample


def remove_stale(output: str, num_shards: int) -> None:
    """Shards numbered past the end, left by an earlier run with other settings.

    Only direct children of ``output``: a dataset sharded into a sub-folder (or, on S3, under a
    longer key prefix) is another dataset, never this run's leftovers.
    """
    for uri in storage.list_uris(output):
        if storage.is_s3(output):
            parent, name = uri.rsplit("/", 1)
            if parent != output.rstrip("/"):
                continue
        else:
            parent, name = os.path.split(uri)
            if os.path.normpath(parent) != os.path.normpath(output):
                continue
        if name.startswith("shard-") and (name.endswith(".tar") or name.endswith(STATS_SUFFIX)):
            try:
                k = int(name[6:12])
            except ValueError:
                continue
            if k >= num_shards:
                storage.delete(uri)
