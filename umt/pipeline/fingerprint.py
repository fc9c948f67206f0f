"""What the data and checkpoints a run is given *contain*, cheaply: content fingerprints.

    from umt.pipeline.fingerprint import fingerprint
    fingerprint("s3://b/k400/train/dataset.json")   # '3f9c...' (16 hex digits)

KFP's cache key hashes a task's parameters (and input artifact names), and the output folders
hash the resolved config: both see a manifest or a dataset.json by its *path*. Edited in place,
the same path would give a cache hit and resume an old run on new data. So the pipeline's first
planning task (``validate``, never cached) fingerprints every given input and hands the
fingerprints on as parameters: the cache key of each task that reads the input, and the folder
its job writes, change with the content.

* an S3 object: its ETag and size (one HEAD; S3 gives an overwritten object a new ETag);
* a local file: the SHA-256 of its bytes up to ``HASH_LIMIT``, its size and mtime beyond
  (checkpoints);
* a folder or S3 prefix (of videos): its sorted listing (names; locally also sizes and
  mtimes). A video replaced under the same name in an S3 prefix is not seen: give the pipeline
  a new manifest (or name) for new data.
"""

from __future__ import annotations

import hashlib
import json
import os

from umt import storage

HASH_LIMIT = 256 << 20  # manifests and dataset.json files are far smaller; checkpoints are not


def _digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _local_file(path: str) -> dict:
    stat = os.stat(path)
    if stat.st_size > HASH_LIMIT:
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"sha256": h.hexdigest()}


def fingerprint(uri: str) -> str:
    """The content fingerprint of the file, object, folder or prefix at ``uri`` ("" for "");
    ``FileNotFoundError`` when nothing is there."""
    if not uri:
        return ""
    if storage.is_s3(uri):
        if storage.exists(uri):
            return _digest({"etag": storage.etag(uri), "size": storage.size(uri)})
        listing = storage.list_uris(uri)
        if not listing:
            raise FileNotFoundError(f"{uri}: no object or prefix of that name")
        return _digest({"listing": listing})
    path = uri.removeprefix("file://")
    if os.path.isfile(path):
        return _digest(_local_file(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{uri} does not exist")
    entries = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            stat = os.stat(full)
            entries.append([os.path.relpath(full, path), stat.st_size, stat.st_mtime_ns])
    return _digest({"listing": entries})
