"""Read what ``umt shard`` is asked to shard: a CSV / JSON Lines manifest, or a folder of videos.

Manifest columns (CSV header or JSON keys):

==========  ========  ==========================================================================
column      required  meaning
==========  ========  ==========================================================================
video       yes       local path, ``s3://`` URI, or a path relative to the manifest's folder
label       no        class name, or a class index (when every label is a non-negative integer)
caption     no        one caption, or several: a JSON list in JSONL, a JSON list string in CSV
start, end  no        clip range in seconds (float); ``end`` > ``start``
id          no        your identifier, kept in the sample's ``.json``
candidates  no        multiple choice: a JSON list of candidate captions (with ``answer``: the
                      0-based index of the right one); see :mod:`umt.data.downstream`
questions   no        video QA: a JSON list of ``{"question", "answer", "id", "type"}``; see
                      :mod:`umt.data.downstream`
==========  ========  ==========================================================================

The official annotation files of UMT's datasets (Kinetics CSV, the single-modality
``path label`` lists, SSv2 JSON, WebVid CSV, the official video-text / retrieval / MC / QA
JSON) are read as they are distributed: ``format="auto"`` detects them by header or keys,
or name one (``umt shard --format``); :mod:`umt.data.annotation_formats` turns their
entries into the rows above. Relative paths resolve against ``video_root`` (default: the
manifest's folder).

A folder (or ``s3://`` prefix) is listed recursively; each video's label is its parent folder's
name (the Kinetics layout ``<root>/<class>/<video>.mp4``); files directly under the root have no
label. Images (jpg/png/webp/bmp) are accepted everywhere and become 1-frame videos.

Everything is checked before any work starts: a problem with the manifest itself raises
:class:`ManifestError` naming the file, line and problem. A listed file that turns out to be
missing or broken is *not* a manifest error; sharding records it as a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from umt import storage
from umt.data import annotation_formats as official
from umt.data.annotation_formats import MANIFEST, FormatError
from umt.data.downstream import AnnotationError, manifest_fields

# Longest caption accepted (characters). Captions are tokenized to at most a few hundred
# tokens, so nothing longer ever reaches a model; a longer one only costs tokenizer time on
# every draw (10 MB took 18 s, each time its sample came up). Paragraph captions are far below.
MAX_CAPTION_CHARS = 16_384
VIDEO_EXTS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv",
              ".3gp", ".ts", ".gif")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
COLUMNS = ("video", "label", "caption", "start", "end", "id", "candidates", "answer", "questions")
# Integer labels index a dense class list ("0", "1", ...): bound them, so that one row with
# label 999999999999 cannot build a 10^12-entry list. Labels that are identifiers, not indices,
# belong in the manifest as names (strings that are not all digits) or in a --classes file.
MAX_LABEL_INDEX = 100_000
# Only ASCII digits make an index: '²'.isdigit() is True but int('²') fails.
_INDEX = re.compile(r"[0-9]+")
# What `umt shard` reads at most from one manifest, class file or input (--max-bytes).
DEFAULT_MAX_BYTES = 4 << 30


class ManifestError(ValueError):
    """The manifest itself cannot be used (unreadable, no ``video`` column, a malformed row)."""


@dataclass
class Item:
    """One input to shard."""

    index: int  # position in the manifest / listing; failures are reported by it
    video: str  # absolute local path or s3:// URI
    label: Optional[int] = None
    captions: list[str] = field(default_factory=list)
    start: Optional[float] = None
    end: Optional[float] = None
    id: Optional[str] = None
    line: int = 0  # manifest line (1-based) for messages; 0 for folder listings
    where: str = ""  # "<manifest>: line N" (or "entry N" in a JSON list) for messages
    # Downstream annotations (multiple-choice candidates + answer, QA questions), checked by
    # umt.data.downstream and copied into the sample's .json.
    extra: dict = field(default_factory=dict)

    @property
    def is_image(self) -> bool:
        return self.video.lower().endswith(IMAGE_EXTS)


@dataclass
class Manifest:
    items: list[Item]
    classes: list[str]
    # Of the manifest bytes (or of the sorted listing for a folder); for an official format
    # or a --video-root, of the bytes together with the format and the resolved video paths,
    # so that a resumed run never reuses shards made from other files.
    sha256: str
    input: str
    format: str = MANIFEST


def is_media(uri: str) -> bool:
    return uri.lower().endswith(VIDEO_EXTS + IMAGE_EXTS)


def _resolve_video(base_dir: str, value: str, where: str) -> str:
    value = value.strip()
    if not value:
        raise ManifestError(f"{where}: empty 'video' value")
    try:
        storage.check_uri(value)
    except ValueError as e:
        raise ManifestError(f"{where}: {e}") from None
    if storage.is_s3(value) or os.path.isabs(value) or value.startswith("file://"):
        return value
    return storage.join(base_dir, value) if base_dir else value


def _parse_float(value: Any, name: str, where: str) -> Optional[float]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ManifestError(f"{where}: {name!r} must be a number of seconds, got {value!r}") from None
    if not x >= 0 or x == float("inf"):
        raise ManifestError(f"{where}: {name!r} must be a finite number >= 0, got {value!r}")
    return x


def _parse_captions(value: Any, where: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{where}: 'caption' looks like a JSON list but is not: {e}") from None
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and all(isinstance(c, str) for c in value):
        for c in value:
            if len(c) > MAX_CAPTION_CHARS:
                raise ManifestError(f"{where}: a caption of {len(c)} characters, longer than the "
                                    f"limit of {MAX_CAPTION_CHARS}")
        return [c for c in value if c]
    raise ManifestError(f"{where}: 'caption' must be a string or a list of strings, got {value!r:.80}")


def _row_to_item(row: dict, index: int, line: int, base_dir: str, where: str) -> tuple[Item, Any]:
    if "video" not in row or row["video"] is None:
        raise ManifestError(f"{where}: no 'video' value")
    if not isinstance(row["video"], str):
        raise ManifestError(f"{where}: 'video' must be a string, got {row['video']!r}")
    item = Item(index=index, video=_resolve_video(base_dir, row["video"], where), line=line,
                where=where)
    item.captions = _parse_captions(row.get("caption"), where)
    item.start = _parse_float(row.get("start"), "start", where)
    item.end = _parse_float(row.get("end"), "end", where)
    if item.end is not None and item.end <= (item.start or 0.0):
        raise ManifestError(f"{where}: 'end' ({item.end}) must be greater than 'start' ({item.start or 0})")
    if row.get("id") not in (None, ""):
        item.id = str(row["id"])
    try:
        item.extra = manifest_fields(row)
    except AnnotationError as e:
        raise ManifestError(f"{where}: {e}") from None
    label = row.get("label")
    if label is not None and not isinstance(label, (str, int)) or isinstance(label, bool):
        raise ManifestError(f"{where}: 'label' must be a class name or index, got {label!r}")
    if isinstance(label, str):
        label = label.strip() or None
    return item, label


def _read_csv(text: str, name: str, base_dir: str) -> list[tuple[Item, Any]]:
    header, records = official.csv_records(text, name)
    if "video" not in header:
        raise ManifestError(f"{name}: line 1: no 'video' column in the CSV header {header!r}")
    out = []
    try:
        for line, row in records:
            out.append(_row_to_item(row, len(out), line, base_dir, f"{name}: line {line}"))
    except FormatError as e:
        raise ManifestError(str(e)) from None
    return out


def _read_jsonl(text: str, name: str, base_dir: str,
                entries: Optional[list[dict]] = None) -> list[tuple[Item, Any]]:
    if entries is not None or text.lstrip().startswith("["):  # a .json file: one list of objects
        try:
            rows = official.json_entries(text, name) if entries is None else entries
        except FormatError as e:
            raise ManifestError(str(e)) from None
        return [_row_to_item(row, i, i + 1, base_dir, f"{name}: entry {i}")
                for i, row in enumerate(rows)]
    out = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name}: line {line_no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{where}: not valid JSON: {e}") from None
        except RecursionError:
            raise ManifestError(f"{where}: JSON nested too deeply") from None
        if not isinstance(row, dict):
            raise ManifestError(f"{where}: each line must be a JSON object, got {type(row).__name__}")
        out.append(_row_to_item(row, len(out), line_no, base_dir, where))
    return out


def _is_index(lab: Any) -> bool:
    return isinstance(lab, int) or (isinstance(lab, str) and _INDEX.fullmatch(lab) is not None)


def _index(item: Item, lab: Any, name: str) -> int:
    where = item.where or f"{name}: line {item.line}"
    value = lab if isinstance(lab, int) else int(lab)  # ASCII digits only: cannot fail
    if value < 0:
        raise ManifestError(f"{where}: label index must be >= 0")
    if value > MAX_LABEL_INDEX:
        raise ManifestError(f"{where}: label index {value} is above the limit of "
                            f"{MAX_LABEL_INDEX} class indices; if labels are identifiers, not "
                            f"indices, give them as names or pass --classes")
    return value


def _assign_labels(rows: list[tuple[Item, Any]], name: str,
                   classes: Optional[list[str]]) -> list[str]:
    """Turn raw labels into indices; return the class names.

    Indices when every label is a non-negative integer (or a string of ASCII digits), at most
    :data:`MAX_LABEL_INDEX`; names otherwise, mapped through ``classes`` when given (so train
    and val shards share one mapping) or through the sorted set of names.
    """
    raw = [(item, lab) for item, lab in rows if lab is not None]
    if not raw:
        return list(classes or [])
    as_int = all(_is_index(lab) for _, lab in raw)
    if as_int and not classes:
        for item, lab in raw:
            item.label = _index(item, lab, name)
        return [str(i) for i in range(max(i.label for i, _ in raw) + 1)]
    names = list(classes) if classes else sorted({str(lab) for _, lab in raw})
    lookup = {c: i for i, c in enumerate(names)}
    for item, lab in raw:
        where = item.where or f"{name}: line {item.line}"
        if as_int and str(lab) not in lookup:
            item.label = _index(item, lab, name)
            if item.label >= len(names):
                raise ManifestError(f"{where}: label index {lab} out of range for "
                                    f"{len(names)} classes")
            continue
        if str(lab) not in lookup:
            raise ManifestError(f"{where}: label {lab!r} is not one of the "
                                f"{len(names)} given classes")
        item.label = lookup[str(lab)]
    return names


def _list_folder(root: str, classes: Optional[list[str]]) -> Manifest:
    uris = [u for u in storage.list_uris(root) if is_media(u)]
    if not uris:
        raise ManifestError(f"{root}: no videos or images found (extensions: "
                            f"{', '.join(VIDEO_EXTS + IMAGE_EXTS)})")
    rows = []
    prefix = root.rstrip("/") + "/" if storage.is_s3(root) else os.path.join(root, "")
    for i, uri in enumerate(uris):
        rel = uri[len(prefix):] if uri.startswith(prefix) else os.path.basename(uri)
        parts = rel.replace(os.sep, "/").split("/")
        label = parts[-2] if len(parts) >= 2 else None
        rows.append((Item(index=i, video=uri), label))
    names = _assign_labels(rows, root, classes) if any(lab for _, lab in rows) else list(classes or [])
    listing = "\n".join(uris).encode()
    return Manifest(items=[it for it, _ in rows], classes=names,
                    sha256=hashlib.sha256(listing).hexdigest(), input=root)


def _read_text(uri: str, what: str, max_bytes: Optional[int]) -> tuple[bytes, str]:
    """Bytes and UTF-8 text of a manifest or class file; every problem as a ManifestError."""
    try:
        data = storage.read_bytes(uri, max_bytes=max_bytes)
    except FileNotFoundError:
        raise ManifestError(f"{uri}: no such {what}") from None
    except OSError as e:  # not a regular file, too large, permissions, a directory
        raise ManifestError(f"{uri}: cannot read {what}: {str(e).removeprefix(uri + ': ')}") from None
    try:
        return data, data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{uri}: {what} is not UTF-8 text: {e}") from None


def _class_map(mapping: dict, uri: str) -> list[str]:
    """Names ordered by index from ``{name: index}`` (SSv2's labels file: indices as strings)."""
    by_index: dict[int, str] = {}
    for name, index in mapping.items():
        if isinstance(index, str) and _INDEX.fullmatch(index.strip()):
            index = int(index)
        if isinstance(index, bool) or not isinstance(index, int):
            raise ManifestError(f"{uri}: class {name!r}: the index must be an integer, got {index!r:.40}")
        if index in by_index:
            raise ManifestError(f"{uri}: classes {by_index[index]!r} and {name!r} both have index {index}")
        by_index[index] = name
    missing = sorted(set(range(len(by_index))) - set(by_index))
    if missing:
        raise ManifestError(f"{uri}: class indices must be 0..{len(by_index) - 1}; "
                            f"{missing[0]} is missing")
    return [by_index[i] for i in range(len(by_index))]


def read_classes(uri: str, max_bytes: Optional[int] = DEFAULT_MAX_BYTES) -> list[str]:
    """A class-names file: one name per line (line order = index), a JSON list, or a JSON
    object mapping each name to its index (SSv2's ``something-something-v2-labels.json``)."""
    try:
        uri = storage.check_uri(str(uri))
    except ValueError as e:
        raise ManifestError(str(e)) from None
    _, text = _read_text(uri, "file", max_bytes)
    if text.lstrip()[:1] in ("[", "{"):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{uri}: line {e.lineno}: not valid JSON: {e.msg}") from None
        except RecursionError:
            raise ManifestError(f"{uri}: JSON nested too deeply") from None
        if isinstance(names, dict):
            names = _class_map(names, uri)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ManifestError(f"{uri}: a JSON class list must be a list of strings")
        lines = list(range(1, len(names) + 1))
        where = "entry"
    else:
        numbered = [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1)
                    if line.strip()]
        names, lines, where = [n for _, n in numbered], [i for i, _ in numbered], "line"
    if not names:
        raise ManifestError(f"{uri}: class list must be non-empty")
    seen: set[str] = set()
    for n, line in zip(names, lines):
        if n in seen:
            raise ManifestError(f"{uri}: {where} {line}: duplicate class name {n!r}")
        seen.add(n)
    return names


def _media_finder(root: str, name: str):
    """``find(stem) -> [uri, ...]`` over the media files under ``root``, listed once, lazily
    (only the formats that name videos by id, not by path, look files up)."""
    index: Optional[dict[str, list[str]]] = None

    def find(stem: str) -> list[str]:
        nonlocal index
        if index is None:
            index = {}
            for uri in storage.list_uris(root or "."):
                if is_media(uri):
                    base = uri.replace("\\", "/").rsplit("/", 1)[-1]
                    index.setdefault(base.rsplit(".", 1)[0], []).append(uri)
            if not index:
                raise FormatError(f"{name}: no videos under the video root {root or '.'!r} to "
                                  f"match its entries against; pass --video-root")
        return index.get(stem, [])

    return find


def _detect(text: str, uri: str) -> tuple[str, Optional[list[dict]]]:
    """The format of a manifest file, and its JSON list when detection had to parse it."""
    if uri.lower().endswith(".csv"):
        return official.detect_csv(text, uri), None
    if not text.lstrip().startswith("["):
        return MANIFEST, None  # JSON Lines: only umt's own manifest has them
    entries = official.json_entries(text, uri)
    return official.detect_json(entries, uri), entries


def _official_items(fmt: str, text: str, uri: str, base_dir: str,
                    entries: Optional[list[dict]]) -> list[tuple[Item, Any]]:
    out = []
    for row in official.read(fmt, text, uri, _media_finder(base_dir, uri), entries):
        item, label = _row_to_item(row.fields, len(out), row.line, base_dir, row.where)
        if row.image and not item.is_image:
            raise ManifestError(f"{row.where}: 'image' must name an image file "
                                f"({', '.join(IMAGE_EXTS)}), got {row.fields['video']!r:.80}")
        out.append((item, label))
    return out


def load_manifest(uri: str, classes: Optional[list[str]] = None,
                  max_bytes: Optional[int] = DEFAULT_MAX_BYTES, format: str = "auto",
                  video_root: Optional[str] = None) -> Manifest:
    """Parse a manifest or official annotation file, or list a folder / s3:// prefix.

    ``format`` is ``auto`` (a CSV by its header, a JSON list by its keys: see
    :mod:`umt.data.annotation_formats`) or one of ``official.FORMATS``. Relative video paths
    resolve against ``video_root`` (default: the file's folder). The file must be a regular
    file of at most ``max_bytes`` bytes.
    """
    try:
        uri = storage.check_uri(str(uri))
        if video_root is not None:
            video_root = storage.check_uri(str(video_root))
    except ValueError as e:
        raise ManifestError(str(e)) from None
    if format != "auto" and format not in official.FORMATS:
        raise ManifestError(f"unknown format {format!r}; choose one of: auto, "
                            f"{', '.join(official.FORMATS)}")
    lower = uri.lower()
    is_file = lower.endswith((".csv", ".jsonl", ".json", ".ndjson"))
    if format not in ("auto", MANIFEST):  # a named annotation format: any file name
        if os.path.isdir(uri):
            raise ManifestError(f"{uri}: --format {format} reads an annotation file, not a folder")
        is_file = True
    if not is_file:
        if not storage.is_s3(uri) and not os.path.isdir(uri):
            if os.path.isfile(uri):
                raise ManifestError(f"{uri}: unknown manifest type; use .csv or .jsonl, or a "
                                    f"folder, or name the format (--format)")
            raise ManifestError(f"{uri}: no such manifest or folder")
        return _list_folder(uri, classes)
    data, text = _read_text(uri, "manifest", max_bytes)
    folder = uri.rsplit("/", 1)[0] if "/" in uri else ""
    base_dir = folder if video_root is None else video_root
    try:
        fmt, entries = _detect(text, uri) if format == "auto" else (format, None)
        if fmt == MANIFEST:
            rows = (_read_csv(text, uri, base_dir) if lower.endswith(".csv")
                    else _read_jsonl(text, uri, base_dir, entries))
        else:
            rows = _official_items(fmt, text, uri, base_dir, entries)
    except FormatError as e:
        raise ManifestError(str(e)) from None
    if not rows:
        raise ManifestError(f"{uri}: the manifest lists no videos")
    if classes is None and fmt == "ssv2-json":
        # The official class indices; without the file, classes are the sorted templates.
        labels = storage.join(folder or ".", official.SSV2_LABELS)
        if storage.exists(labels):
            classes = read_classes(labels, max_bytes=max_bytes)
    names = _assign_labels(rows, uri, classes)
    digest = hashlib.sha256(data).hexdigest()
    if fmt != MANIFEST or video_root is not None:
        digest = hashlib.sha256(json.dumps(
            {"format": fmt, "sha256": digest, "videos": [it.video for it, _ in rows]}).encode()
        ).hexdigest()
    return Manifest(items=[it for it, _ in rows], classes=names, sha256=digest, input=uri,
                    format=fmt)
