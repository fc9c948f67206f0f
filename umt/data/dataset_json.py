"""``dataset.json``: the one description of a sharded dataset that every loader and component reads.

Written by ``umt shard`` next to its shards; a KFP Dataset artifact points at it; training and
evaluation jobs load it with :func:`load` and never list buckets themselves. Example::

    {
      "format": "umt-webdataset",
      "format_version": 1,
      "created_by": "umt 0.1.0",
      "source": {"input": "s3://raw/k400/train.csv", "sha256": "9f2c...", "num_inputs": 1002},
      "transcode": {"enabled": true, "codec": "h264", "short_side": 320, "max_fps": 30.0,
                    "max_seconds": 10.0, "keyframe_interval": 16, "crf": 23, "preset": "veryfast"},
      "shards": [{"uri": "shard-000000.tar", "num_samples": 1000, "num_bytes": 734003200,
                  "sha256": "b1e4..."}, ...],
      "classes": ["abseiling", "air drumming", ...],
      "num_samples": 1000, "num_bytes": 734003200, "num_failed": 2,
      "media": {"video": 1000}, "num_captions": 1000,
      "failures": [{"index": 17, "source": "s3://raw/k400/x.mp4", "reason": "truncated: ..."}]
    }

``media`` (samples per media type), ``num_captions`` (captions over all samples: the
(media, caption) pairs of a Stage-2 epoch) and ``num_questions`` (video QA questions over all
samples: the rows of a QA epoch) are summaries written by ``umt shard``, also per shard; files
without them stay valid (the Stage-2 loader then looks at the
first sample and assumes one caption per sample).

Shard ``uri`` values are relative to the folder holding dataset.json (so a dataset can be copied
between buckets or to local disk as one folder) or absolute local paths / ``s3://`` URIs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from umt import storage

FORMAT = "umt-webdataset"
FORMAT_VERSION = 1
# Shards and failures take ~200 bytes each: a million failed inputs is 200 MB. Anything larger
# is not a dataset.json, and is refused before it is read.
MAX_BYTES = 1 << 30
FILENAME = "dataset.json"


class DatasetJsonError(ValueError):
    """dataset.json is missing, unreadable or does not follow the schema."""


@dataclass
class ShardInfo:
    uri: str  # relative to dataset.json's folder, or an absolute path / s3:// URI
    num_samples: int
    num_bytes: int
    sha256: str = ""
    num_captions: Optional[int] = None  # None: not recorded (older files)
    media: dict[str, int] = field(default_factory=dict)  # {"video": n, "image": m}
    num_questions: Optional[int] = None  # video QA questions (None: not recorded)


@dataclass
class Failure:
    index: int  # position of the input in the manifest / listing (0-based)
    source: str
    reason: str


@dataclass
class DatasetInfo:
    shards: list[ShardInfo]
    classes: list[str] = field(default_factory=list)
    num_samples: int = 0
    num_bytes: int = 0
    num_failed: int = 0
    failures: list[Failure] = field(default_factory=list)
    media: dict[str, int] = field(default_factory=dict)
    num_captions: Optional[int] = None
    num_questions: Optional[int] = None
    source: dict[str, Any] = field(default_factory=dict)
    transcode: dict[str, Any] = field(default_factory=dict)
    created_by: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    # Where this file was read from (not serialised); relative shard URIs resolve against it.
    location: str = ""

    def shard_uris(self) -> list[str]:
        """Absolute shard locations (local paths or s3:// URIs), in dataset order."""
        return [resolve(self.location, s.uri) for s in self.shards]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("location")
        # Keep the identifying fields first: a human opening the file sees what it is.
        head = {k: d.pop(k) for k in ("format", "format_version", "created_by")}
        return {**head, **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"


def resolve(location: str, uri: str) -> str:
    """A shard URI as written in dataset.json -> an absolute local path / s3:// URI."""
    storage.check_uri(uri)
    if storage.is_s3(uri) or uri.startswith("/") or uri.startswith("file://") or not location:
        return uri
    folder = location.rsplit("/", 1)[0] if "/" in location else "."
    return storage.join(folder, uri)


def _require(d: dict, key: str, kind: type | tuple, where: str) -> Any:
    if key not in d:
        raise DatasetJsonError(f"{where}: missing field {key!r}")
    value = d[key]
    # bool is an int in Python; a count of True is a schema error, not 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DatasetJsonError(f"{where}: field {key!r} must be {getattr(kind, '__name__', kind)}, "
                               f"got {type(value).__name__}")
    return value


def _count(d: dict, key: str, where: str) -> Optional[int]:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DatasetJsonError(f"{where}: field {key!r} must be an int >= 0, got {value!r:.40}")
    return value


def _media_counts(d: dict, where: str) -> dict[str, int]:
    media = d.get("media") or {}
    if not isinstance(media, dict) or not all(
            k in ("video", "image") and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in media.items()):
        raise DatasetJsonError(f"{where}: 'media' must map 'video' / 'image' to counts >= 0")
    return dict(media)


def from_dict(d: Any, location: str = "") -> DatasetInfo:
    """Validate a parsed dataset.json; raises :class:`DatasetJsonError` naming the bad field."""
    where = location or FILENAME
    if not isinstance(d, dict):
        raise DatasetJsonError(f"{where}: top level must be a JSON object")
    if d.get("format") != FORMAT:
        raise DatasetJsonError(f"{where}: 'format' must be {FORMAT!r}, got {d.get('format')!r} "
                               f"(is this a dataset.json written by `umt shard`?)")
    version = _require(d, "format_version", int, where)
    if version > FORMAT_VERSION:
        raise DatasetJsonError(f"{where}: format_version {version} is newer than this umt "
                               f"understands ({FORMAT_VERSION}); upgrade umt")
    shards = []
    for i, s in enumerate(_require(d, "shards", list, where)):
        w = f"{where}: shards[{i}]"
        if not isinstance(s, dict):
            raise DatasetJsonError(f"{w} must be an object")
        uri = _require(s, "uri", str, w)
        try:
            storage.check_uri(uri)
        except ValueError as e:
            raise DatasetJsonError(f"{w}: {e}") from None
        n = _require(s, "num_samples", int, w)
        b = _require(s, "num_bytes", int, w)
        if n < 0 or b < 0:
            raise DatasetJsonError(f"{w}: num_samples and num_bytes must be >= 0")
        shards.append(ShardInfo(uri=uri, num_samples=n, num_bytes=b, sha256=str(s.get("sha256", "")),
                                num_captions=_count(s, "num_captions", w),
                                media=_media_counts(s, w),
                                num_questions=_count(s, "num_questions", w)))
    classes = d.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise DatasetJsonError(f"{where}: 'classes' must be a list of strings")
    failures = []
    for i, f in enumerate(d.get("failures", [])):
        if not isinstance(f, dict):
            raise DatasetJsonError(f"{where}: failures[{i}] must be an object")
        failures.append(Failure(index=int(f.get("index", -1)), source=str(f.get("source", "")),
                                reason=str(f.get("reason", ""))))
    info = DatasetInfo(
        shards=shards, classes=classes, media=_media_counts(d, where),
        num_captions=_count(d, "num_captions", where),
        num_questions=_count(d, "num_questions", where),
        num_samples=int(d.get("num_samples", sum(s.num_samples for s in shards))),
        num_bytes=int(d.get("num_bytes", sum(s.num_bytes for s in shards))),
        num_failed=int(d.get("num_failed", len(failures))), failures=failures,
        source=dict(d.get("source", {})), transcode=dict(d.get("transcode", {})),
        created_by=str(d.get("created_by", "")), format=FORMAT, format_version=version,
        location=location)
    if info.num_samples != sum(s.num_samples for s in shards):
        raise DatasetJsonError(f"{where}: num_samples {info.num_samples} != sum of the shards' "
                               f"num_samples {sum(s.num_samples for s in shards)}")
    return info


def load(uri: str) -> DatasetInfo:
    """Read and validate a dataset.json (local path or s3:// URI; a folder means its dataset.json).

    Raises :class:`DatasetJsonError` with the location and the problem; never executes anything
    from the file (plain JSON, URIs restricted to local paths and s3://).
    """
    uri = storage.check_uri(str(uri))
    if not uri.endswith(".json"):
        uri = storage.join(uri, FILENAME)
    try:
        raw = storage.read_bytes(uri, max_bytes=MAX_BYTES)
    except FileNotFoundError:
        raise DatasetJsonError(f"{uri}: not found (run `umt shard` first?)") from None
    except storage.TooLargeError as e:
        raise DatasetJsonError(f"{e}: not a dataset.json") from None
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetJsonError(f"{uri}: not valid JSON: {e}") from None
    except RecursionError:
        raise DatasetJsonError(f"{uri}: not a dataset.json (JSON nested too deeply)") from None
    info = from_dict(d, location=uri)
    if not info.shards:
        raise DatasetJsonError(f"{uri}: the dataset has no shards")
    return info


def save(info: DatasetInfo, uri: str) -> None:
    """Write atomically (storage.write_bytes); readers never see a half-written file."""
    storage.write_bytes(uri, info.to_json().encode("utf-8"))
