"""The official annotation files of UMT's datasets, read as they are distributed.

``umt shard --format F`` (or auto-detection, :func:`detect_csv` / :func:`detect_json`) reads
each of these layouts without hand conversion. A reader turns every entry into a row of
umt's own manifest (:mod:`umt.data.manifest`: ``video``, ``label``, ``caption``,
``start``/``end``, ``id``, ``candidates``/``answer``, ``questions``), which is then checked
like any manifest row, so one set of rules (and error messages) covers every format.

=================  ============================================================================
format             layout (official source)
=================  ============================================================================
``manifest``       umt's own manifest: CSV with a ``video`` column, JSON Lines, a JSON list
``kinetics-csv``   Kinetics CSV, ``label,youtube_id,time_start,time_end,split`` (``label``
                   absent in test lists); videos found by name under the video root
``video-list``     the official single-modality list (UniFormerV2 / VideoMAE): ``path label``
                   or ``path,num_frames,label`` lines without a header; label = class index
``ssv2-json``      Something-Something v2: a JSON list of ``{id, label, template,
                   placeholders}``; class = the template without brackets, indexed by
                   ``something-something-v2-labels.json`` beside it; videos ``<id>.webm``
``webvid-csv``     WebVid: ``videoid,contentUrl,duration,page_dir,name``; video
                   ``<page_dir>/<videoid>.mp4``, caption ``name``
``umt-json``       the official video-text annotation JSON (VINDLU's, ``configs/data.py``):
                   a list of ``{video | image, caption: str | [str]}``; images are 1-frame
                   videos; the entries of one file are merged into one sample
``paragraph-json`` DiDeMo / ActivityNet retrieval: as ``umt-json``, but a caption list is one
                   paragraph, joined with spaces (official ``is_paragraph_retrieval``)
``mc-json``        MSRVTT-MC: ``{video, caption: [candidates], answer: index}``
``qa-json``        MSRVTT-QA (and MSVD-/ANet-QA as VINDLU ships them): ``{video, question,
                   answer: str | [str], question_id}``; the questions of one video are merged
=================  ============================================================================

Relative paths resolve against the video root (``--video-root``, default: the annotation
file's folder), as the official configs join them with their data root. Nothing in a file is
executed: CSV is read with :mod:`csv`, JSON with :mod:`json`, and paths are only ever read.
A malformed entry raises :class:`FormatError` naming the file, the line (CSV) or entry (JSON,
0-based) and the problem; a listed video that does not exist is not an error here but a
recorded failure when sharding, as for every manifest.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

MANIFEST = "manifest"
FORMATS = {
    MANIFEST: "umt's manifest: CSV with a 'video' column, JSON Lines or a JSON list",
    "kinetics-csv": "Kinetics CSV: label,youtube_id,time_start,time_end,split",
    "video-list": "official single-modality list: 'path label' / 'path,frames,label' lines",
    "ssv2-json": "Something-Something v2 JSON: id, template, label",
    "webvid-csv": "WebVid CSV: videoid,contentUrl,duration,page_dir,name",
    "umt-json": "official video-text JSON: video | image, caption",
    "paragraph-json": "DiDeMo / ActivityNet retrieval JSON: caption lists joined to paragraphs",
    "mc-json": "MSRVTT-MC JSON: video, caption (candidates), answer",
    "qa-json": "MSRVTT-QA JSON: video, question, answer, question_id",
}
JSON_FORMATS = ("ssv2-json", "umt-json", "paragraph-json", "mc-json", "qa-json")
# The SSv2 class index file, looked for beside the annotation file when --classes is not given.
SSV2_LABELS = "something-something-v2-labels.json"
KINETICS_COLUMNS = ("youtube_id", "time_start", "time_end")
WEBVID_COLUMNS = ("videoid", "page_dir", "name")
# Columns that only umt's manifest has: a JSON list using one of them is a manifest.
MANIFEST_ONLY = {"label", "start", "end", "id", "candidates", "questions"}
SSV2_KEYS = {"id", "label", "template", "placeholders"}
# YouTube / WebVid / SSv2 ids become file names: letters, digits, '-' and '_' only, so an
# entry can never name a path ('../x') through its id.
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_DIGITS = re.compile(r"[0-9]+")

# stem (file name without extension) -> the media files of that stem under the video root
Finder = Callable[[str], list[str]]
Entries = Optional[list[dict[str, Any]]]  # the JSON list, when detection has parsed it already


class FormatError(ValueError):
    """An annotation file that does not fit its format; the message names file, row, problem."""


@dataclass
class Row:
    """One manifest row made from an official entry (``where`` is its first entry)."""

    where: str  # "<file>: line N" or "<file>: entry N"
    line: int
    fields: dict[str, Any]
    image: bool = False  # listed under 'image': must be an image file


# ----------------------------------------------------------------------------- reading files

def csv_records(text: str, name: str) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """The stripped header and ``(line, row)`` of a CSV with a header; blank lines skipped.

    Raises :class:`FormatError` for a row with more or fewer cells than the header.
    """
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in reader.fieldnames or []]
    except csv.Error as e:
        raise FormatError(f"{name}: line 1: malformed CSV: {e}") from None

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        try:
            for row in reader:
                where = f"{name}: line {reader.line_num}"
                if None in row:  # more cells than header columns
                    raise FormatError(f"{where}: {len(header) + len(row[None])} fields, the "
                                      f"header has {len(header)}")
                if any(v is None for v in row.values()):
                    raise FormatError(f"{where}: fewer fields than the header's {len(header)}")
                row = {k.strip(): v for k, v in row.items()}
                if any(v.strip() for v in row.values()):
                    yield reader.line_num, row
        except csv.Error as e:
            raise FormatError(f"{name}: line {reader.line_num}: malformed CSV: {e}") from None

    return header, rows()


def json_entries(text: str, name: str) -> list[dict[str, Any]]:
    """A JSON file holding one list of objects (every official JSON annotation is one)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(f"{name}: line {e.lineno}: not valid JSON: {e.msg}") from None
    except RecursionError:  # '[[[[...' nested deeper than the parser's stack
        raise FormatError(f"{name}: JSON nested too deeply to be an annotation list") from None
    if not isinstance(value, list):
        raise FormatError(f"{name}: expected a JSON list of entries, got a JSON "
                          f"{type(value).__name__}")
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise FormatError(f"{name}: entry {i}: must be a JSON object, got "
                              f"{type(entry).__name__}")
    return value


def _entries(text: str, name: str, entries: Entries) -> list[dict[str, Any]]:
    return json_entries(text, name) if entries is None else entries


# ------------------------------------------------------------------------------------ detection

def detect_csv(text: str, name: str) -> str:
    """The format of a CSV file: by its header, or a headerless ``path label`` list."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    try:
        header = [h.strip() for h in next(csv.reader([first]), [])]
    except csv.Error:
        header = []
    if "video" in header:
        return MANIFEST
    if set(KINETICS_COLUMNS) <= set(header):
        return "kinetics-csv"
    if set(WEBVID_COLUMNS) <= set(header):
        return "webvid-csv"
    if _list_fields(first) is not None:
        return "video-list"
    raise FormatError(
        f"{name}: line 1: no 'video' column in the CSV header {header!r}, and not an official "
        f"layout either (kinetics-csv: columns {', '.join(KINETICS_COLUMNS)}; webvid-csv: "
        f"columns {', '.join(WEBVID_COLUMNS)}; video-list: 'path label' lines without a "
        f"header); pass --format to say which")


def detect_json(entries: list[dict[str, Any]], name: str) -> str:
    """The format of a JSON list, by the keys of its entries.

    A video list whose captions are lists is refused: several captions per video (MSVD) and
    one paragraph per video (DiDeMo, ActivityNet) look the same, and the official code tells
    them apart only by a config flag (``is_paragraph_retrieval``).
    """
    if not entries:
        return MANIFEST  # "lists no videos", whatever the format
    keys: set[str] = set().union(*entries)
    media = keys & {"video", "image"}
    if not media and "id" in keys and keys <= SSV2_KEYS:
        return "ssv2-json"
    if media and "question" in keys:
        return "qa-json"
    if "video" in keys and keys & MANIFEST_ONLY:
        return MANIFEST
    if media and "caption" in keys:
        if "answer" in keys and isinstance(entries[0].get("caption"), list):
            return "mc-json"
        for i, e in enumerate(entries):
            if "video" in e and isinstance(e.get("caption"), list) and len(e["caption"]) > 1:
                raise FormatError(
                    f"{name}: entry {i}: a video with a list of {len(e['caption'])} captions: "
                    f"pass --format umt-json (each caption its own, e.g. MSVD) or --format "
                    f"paragraph-json (one paragraph, e.g. DiDeMo, ActivityNet)")
        return "umt-json"
    if "video" in keys:
        return MANIFEST
    raise FormatError(
        f"{name}: entry 0: no known layout for entries with keys {sorted(keys)[:12]}: "
        f"expected 'video' (umt manifest), 'video'/'image' + 'caption' (umt-json, "
        f"paragraph-json, mc-json), 'video' + 'question' (qa-json) or 'id' + 'template' "
        f"(ssv2-json); pass --format to say which")


# ----------------------------------------------------------------------------- field checks

def _token(value: Any, what: str, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _TOKEN.fullmatch(value.strip()):
        raise FormatError(f"{where}: {what!r} must be an id of letters, digits, '-' and '_', "
                          f"got {value!r:.60}")
    return value.strip()


def _seconds(value: str, what: str, where: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise FormatError(f"{where}: {what!r} must be a number of seconds, got {value!r:.40}") from None
    if not 0 <= x < float("inf"):
        raise FormatError(f"{where}: {what!r} must be a finite number >= 0, got {value!r:.40}")
    return x


def _text(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise FormatError(f"{where}: {what!r} must be a non-empty string, got {value!r:.60}")
    return value


def _media(entry: dict[str, Any], where: str) -> tuple[str, bool]:
    """The entry's path and whether it is listed as an image."""
    if ("video" in entry) == ("image" in entry):
        raise FormatError(f"{where}: needs exactly one of 'video' and 'image'")
    key = "video" if "video" in entry else "image"
    value = entry[key]
    if isinstance(value, list):  # official has_multi_vision_gt (one caption, many videos)
        raise FormatError(f"{where}: {key!r} is a list; one media file per entry is supported")
    return _text(value, key, where).strip(), key == "image"


def _captions(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(c, str) for c in value):
        return value
    raise FormatError(f"{where}: 'caption' must be a string or a non-empty list of strings, "
                      f"got {value!r:.80}")


def _pick(found: list[str], label: Optional[str], where: str, stem: str) -> Optional[str]:
    """The one file of a stem; among several, the one in the label's folder (Kinetics trees)."""
    if len(found) > 1 and label:
        folders = {label, label.replace(" ", "_")}
        found = [u for u in found if _parent(u) in folders] or found
    if len(found) > 1:
        raise FormatError(f"{where}: {stem!r} matches {len(found)} files under the video root "
                          f"({', '.join(found[:3])}); point --video-root at one copy")
    return found[0] if found else None


def _parent(uri: str) -> str:
    parts = uri.replace("\\", "/").split("/")
    return parts[-2] if len(parts) > 1 else ""


def _list_fields(line: str) -> Optional[tuple[str, str]]:
    """``(path, label)`` of a video-list line, or None when the line is not one."""
    fields = next(csv.reader([line])) if "," in line else line.split()
    fields = [f.strip() for f in fields]
    if len(fields) not in (2, 3) or not fields[0] or not _DIGITS.fullmatch(fields[-1]):
        return None
    if len(fields) == 3 and not _DIGITS.fullmatch(fields[1]):
        return None
    return fields[0], fields[-1]


# ------------------------------------------------------------------------------------ readers

def _csv_with_columns(text: str, name: str, fmt: str, columns, note: str = ""):
    """The ``(line, record)`` pairs of a CSV file whose header must hold ``columns``."""
    header, records = csv_records(text, name)
    missing = [c for c in columns if c not in header]
    if missing:
        raise FormatError(f"{name}: line 1: {fmt} needs the columns {', '.join(columns)}{note}; "
                          f"the header {header!r} lacks {', '.join(missing)}")
    return records


def _kinetics(text: str, name: str, find: Finder, entries: Entries) -> list[Row]:
    records = _csv_with_columns(text, name, "kinetics-csv", KINETICS_COLUMNS,
                                " (label, split optional)")
    out = []
    for line, r in records:
        where = f"{name}: line {line}"
        yid = _token(r["youtube_id"], "youtube_id", where)
        start = _seconds(r["time_start"], "time_start", where)
        end = _seconds(r["time_end"], "time_end", where)
        if end <= start:
            raise FormatError(f"{where}: 'time_end' ({end}) must be greater than 'time_start' "
                              f"({start})")
        label = (r.get("label") or "").strip() or None
        # Downloaders save the trimmed clip as <id>_<start:06d>_<end:06d>.<ext>, flat or in
        # <label>/ folders; a full video saved as <id>.<ext> is trimmed here instead.
        clip = f"{yid}_{int(start):06d}_{int(end):06d}"
        row: dict[str, Any] = {"id": clip, "label": label}
        video = _pick(find(clip), label, where, clip)
        if video is None:
            video = _pick(find(yid), label, where, yid)
            if video is not None:
                row.update(start=start, end=end)
        row["video"] = video or f"{clip}.mp4"  # absent: a recorded failure when sharding
        out.append(Row(where, line, row))
    return out


def _video_list(text: str, name: str, find: Finder, entries: Entries) -> list[Row]:
    out = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name}: line {line_no}"
        fields = _list_fields(line)
        if fields is None:
            raise FormatError(f"{where}: expected 'path label' or 'path num_frames label' (comma "
                              f"or space separated, label = class index), got {line.strip()!r:.80}")
        path, label = fields
        stem = path.replace("\\", "/").rsplit("/", 1)[-1].split(".")[0]  # official video id
        out.append(Row(where, line_no, {"video": path, "label": label, "id": stem}))
    return out


def _ssv2(text: str, name: str, find: Finder, entries: Entries) -> list[Row]:
    out = []
    for i, e in enumerate(_entries(text, name, entries)):
        where = f"{name}: entry {i}"
        if "id" not in e:
            raise FormatError(f"{where}: no 'id'")
        vid = _token(e["id"], "id", where)
        row: dict[str, Any] = {"id": vid}
        if "template" in e:  # absent in the test list
            # The class is the template without its brackets, as the labels file spells it.
            row["label"] = _text(e["template"], "template", where).replace("[", "").replace("]", "")
        if "label" in e:  # the template filled in: a caption of the clip
            row["caption"] = [_text(e["label"], "label", where)]
        row["video"] = _pick(find(vid), None, where, vid) or f"{vid}.webm"
        out.append(Row(where, i + 1, row))
    return out


def _webvid(text: str, name: str, find: Finder, entries: Entries) -> list[Row]:
    records = _csv_with_columns(text, name, "webvid-csv", WEBVID_COLUMNS)
    out = []
    for line, r in records:
        where = f"{name}: line {line}"
        vid = _token(r["videoid"], "videoid", where)
        page = _token(r["page_dir"], "page_dir", where)
        # A list, so that a title starting with '[' is not read as a JSON caption list.
        caption = [_text(r["name"], "name", where).strip()]
        out.append(Row(where, line, {"video": f"{page}/{vid}.mp4", "caption": caption, "id": vid}))
    return out


def _grouped(entries: list[dict[str, Any]], name: str, fill) -> list[Row]:
    """One row per media path (first-seen order); ``fill(fields, entry, i, where)`` adds entry i.

    Why merge: MSRVTT's train9k lists each video once per caption (20 times); as separate
    samples every video would be stored 20 times, and its captions would not be positives
    of each other as they are officially (one ``match_ids`` per video).
    """
    rows: dict[str, Row] = {}
    for i, e in enumerate(entries):
        where = f"{name}: entry {i}"
        path, image = _media(e, where)
        row = rows.get(path)
        if row is None:
            row = rows[path] = Row(where, i + 1, {"video": path, "id": path}, image=image)
        fill(row.fields, e, i, where)
    return list(rows.values())


def _umt_json(text: str, name: str, find: Finder, entries: Entries,
              paragraph: bool = False) -> list[Row]:
    def fill(row, e, i, where):
        if "caption" not in e:
            raise FormatError(f"{where}: no 'caption'")
        caps = _captions(e["caption"], where)
        row.setdefault("caption", []).extend([" ".join(caps)] if paragraph else caps)

    return _grouped(_entries(text, name, entries), name, fill)


def _paragraph_json(text: str, name: str, find: Finder, entries: Entries) -> list[Row]:
    return _umt_json(text, name, find, entries, paragraph=True)


def _mc_json(text: str, name: str, find: Finder, entries: Entries) -> list[Row]:
    out = []
    for i, e in enumerate(_entries(text, name, entries)):
        where = f"{name}: entry {i}"
        path, image = _media(e, where)
        cands = e.get("caption")
        if not isinstance(cands, list) or len(cands) < 2:
            raise FormatError(f"{where}: 'caption' must be the list of candidate captions "
                              f"(at least 2), got {cands!r:.80}")
        answer = e.get("answer")
        if isinstance(answer, bool) or not isinstance(answer, int):
            raise FormatError(f"{where}: 'answer' must be the index of the right caption, an "
                              f"integer, got {answer!r:.40}")
        out.append(Row(where, i + 1, {"video": path, "id": path, "candidates": cands,
                                      "answer": answer}, image=image))
    return out


def _qa_json(text: str, name: str, find: Finder, entries: Entries) -> list[Row]:
    seen: dict[str, int] = {}

    def fill(row, e, i, where):
        q = {"question": _text(e.get("question"), "question", where)}
        answer = e.get("answer")
        if not (isinstance(answer, str) and answer.strip()) and not (
                isinstance(answer, list) and answer and all(isinstance(a, str) for a in answer)):
            raise FormatError(f"{where}: 'answer' must be a string or a non-empty list of "
                              f"strings, got {answer!r:.60}")
        q["answer"] = answer
        if e.get("question_id") is not None:
            qid = str(e["question_id"])
            if qid in seen:
                raise FormatError(f"{where}: question_id {qid!r} is already used by entry "
                                  f"{seen[qid]}")
            seen[qid] = i
            q["id"] = qid
        kind = next((e[k] for k in ("type", "question_type", "answer_type") if e.get(k) is not None), None)
        if kind is not None:
            q["type"] = str(kind)
        row.setdefault("questions", []).append(q)

    return _grouped(_entries(text, name, entries), name, fill)


_READERS = {
    "kinetics-csv": _kinetics,
    "video-list": _video_list,
    "ssv2-json": _ssv2,
    "webvid-csv": _webvid,
    "umt-json": _umt_json,
    "paragraph-json": _paragraph_json,
    "mc-json": _mc_json,
    "qa-json": _qa_json,
}


def read(fmt: str, text: str, name: str, find: Finder, entries: Entries = None) -> list[Row]:
    """The manifest rows of the official annotation file ``name`` (its ``text``) in format
    ``fmt``; ``find`` looks media files up by stem under the video root (Kinetics, SSv2)."""
    if fmt not in _READERS:
        raise FormatError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return _READERS[fmt](text, name, find, entries)
