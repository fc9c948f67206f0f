"""AVA v2.2 (spatio-temporal action detection): the official files, read as they are distributed.

==========================================================  ==================================
file                                                        layout
==========================================================  ==================================
``ava_train_v2.2.csv`` / ``ava_val_v2.2.csv``               no header; ``video_id, timestamp,
                                                            x1, y1, x2, y2, action_id,
                                                            person_id``: one row per (person
                                                            box, action); box corners
                                                            normalised to [0, 1]; timestamp in
                                                            whole seconds of the movie
person boxes / detections CSV                               the same first 7 columns and a
(``ava_val_predicted_boxes.csv``, ``umt eval ava``'s        ``score`` last; ``action_id`` may
``detections.csv``)                                         be empty (a person box)
``ava_action_list_v2.2_for_activitynet_2019.pbtxt``         ``item { name: "..." id: N }``
                                                            blocks (``label_id`` too): the 60
                                                            evaluated classes
``ava_{train,val}_excluded_timestamps_v2.2.csv``            ``video_id, timestamp`` rows
==========================================================  ==================================

Keyframes are annotated at 1 s spacing from 902 s to 1798 s of each movie (``KEYFRAMES``).
The official evaluation keys an image by ``"%s,%04d" % (video_id, int(timestamp))``; here the
key is the tuple ``(video_id, timestamp)`` with an integer timestamp, the same grouping.

Nothing is executed: CSV is read with :mod:`csv`, the label map with a small tokenizer (no
protobuf). A malformed row raises :class:`FormatError` naming the file, the line and the
problem.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from typing import Iterator, Optional

from umt.data.annotation_formats import FormatError

KEYFRAMES = range(902, 1799)  # the annotated seconds of every AVA movie
NUM_CLASSES = 80  # action ids 1..80 (the head's width); 60 of them are evaluated

Key = tuple[str, int]  # (video_id, timestamp in seconds)


@dataclass(frozen=True)
class BoxRow:
    """One row of an AVA box CSV (``box`` normalised x1, y1, x2, y2)."""

    video: str
    timestamp: int
    box: tuple[float, float, float, float]
    action: Optional[int]  # None: a person box without an action
    person: Optional[int] = None  # ground truth: the person id
    score: Optional[float] = None  # detections: the score
    line: int = 0

    @property
    def key(self) -> Key:
        return (self.video, self.timestamp)


def _rows(text: str, name: str) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            if row and any(c.strip() for c in row):
                yield reader.line_num, [c.strip() for c in row]
    except csv.Error as e:
        raise FormatError(f"{name}: line {reader.line_num}: malformed CSV: {e}") from None


def _int(value: str, what: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise FormatError(f"{where}: {what} {value!r} is not an integer") from None


def _float(value: str, what: str, where: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise FormatError(f"{where}: {what} {value!r} is not a number") from None
    if not math.isfinite(x):
        raise FormatError(f"{where}: {what} {value!r} is not finite")
    return x


def read_boxes(text: str, name: str, scored: bool = False) -> list[BoxRow]:
    """Rows of an AVA box CSV: ground truth (``scored=False``: 7 or 8 columns, the 8th the
    person id) or detections / person boxes (``scored=True``: 8 columns, the 8th the score).
    Corners must lie in [0, 1] with x1 <= x2 and y1 <= y2."""
    out = []
    for line, row in _rows(text, name):
        where = f"{name}: line {line}"
        allowed = (8,) if scored else (7, 8)
        if len(row) not in allowed:
            raise FormatError(f"{where}: {len(row)} columns, expected "
                              f"{' or '.join(map(str, allowed))} (video_id, timestamp, x1, y1, "
                              f"x2, y2, action_id, {'score' if scored else 'person_id'})")
        video = row[0]
        if not video:
            raise FormatError(f"{where}: empty video_id")
        ts = _int(row[1], "timestamp", where)
        box = tuple(_float(v, c, where) for v, c in zip(row[2:6], ("x1", "y1", "x2", "y2")))
        if not all(0.0 <= v <= 1.0 for v in box):
            raise FormatError(f"{where}: box {list(box)} is not normalised to [0, 1]")
        if box[0] > box[2] or box[1] > box[3]:
            raise FormatError(f"{where}: box {list(box)} has x1 > x2 or y1 > y2")
        action = None
        if row[6] or not scored:
            action = _int(row[6], "action_id", where)
            if action < 1:
                raise FormatError(f"{where}: action_id {action} < 1 (ids are 1-based)")
        extra = {}
        if len(row) == 8:
            if scored:
                extra["score"] = _float(row[7], "score", where)
            else:
                extra["person"] = _int(row[7], "person_id", where)
        out.append(BoxRow(video, ts, box, action, line=line, **extra))  # type: ignore[arg-type]
    return out


def read_exclusions(text: str, name: str) -> set[Key]:
    """The excluded keyframes: ``video_id, timestamp`` rows."""
    out = set()
    for line, row in _rows(text, name):
        where = f"{name}: line {line}"
        if len(row) != 2:
            raise FormatError(f"{where}: {len(row)} columns, expected 2 (video_id, timestamp)")
        out.add((row[0], _int(row[1], "timestamp", where)))
    return out


_PBTXT = re.compile(r'(#[^\n]*)|([A-Za-z_][A-Za-z0-9_]*)|(\{)|(\})|(:)|'
                    r'"((?:[^"\\\n]|\\.)*)"|(-?[0-9]+)|(\s+)|(.)')
_KINDS = ("comment", "ident", "open", "close", "colon", "string", "int", "space", "bad")


def read_labelmap(text: str, name: str) -> list[tuple[int, str]]:
    """``(id, name)`` of every ``item { name: "..." id: N }`` of a label-map pbtxt, in file
    order (``label_id`` is read as ``id``; other fields are skipped)."""
    tokens: list[tuple[str, str, int]] = []
    for m in _PBTXT.finditer(text):
        kind = _KINDS[(m.lastindex or 9) - 1]
        line = text.count("\n", 0, m.start()) + 1
        if kind == "bad":
            raise FormatError(f"{name}: line {line}: unexpected character {m.group()!r}")
        if kind not in ("comment", "space"):
            tokens.append((kind, m.group(m.lastindex or 0), line))
    items: list[tuple[int, str]] = []
    i = 0
    while i < len(tokens):
        kind, value, ln = tokens[i]
        if not (kind == "ident" and value == "item" and i + 1 < len(tokens)
                and tokens[i + 1][0] == "open"):
            raise FormatError(f"{name}: line {ln}: expected 'item {{', found {value!r}")
        i += 2
        fields: dict[str, str] = {}
        start = ln
        while True:
            if i >= len(tokens):
                raise FormatError(f"{name}: line {start}: item not closed with '}}'")
            kind, value, ln = tokens[i]
            if kind == "close":
                i += 1
                break
            if kind != "ident" or i + 2 >= len(tokens) or tokens[i + 1][0] != "colon" \
                    or tokens[i + 2][0] not in ("string", "int", "ident"):
                raise FormatError(f"{name}: line {ln}: expected 'field: value' in an item, "
                                  f"found {value!r}")
            fields[value] = tokens[i + 2][1]
            i += 3
        ident = fields.get("id", fields.get("label_id"))
        if ident is None or "name" not in fields:
            raise FormatError(f"{name}: line {start}: item without a name and an id")
        try:
            items.append((int(ident), fields["name"]))
        except ValueError:
            raise FormatError(f"{name}: line {start}: id {ident!r} is not an integer") from None
    if not items:
        raise FormatError(f"{name}: no 'item {{ name: ... id: ... }}' in the label map")
    ids = [c for c, _ in items]
    if len(set(ids)) != len(ids):
        dup = next(c for c in ids if ids.count(c) > 1)
        raise FormatError(f"{name}: id {dup} appears more than once")
    if min(ids) < 1:
        raise FormatError(f"{name}: id {min(ids)} < 1 (ids are 1-based)")
    return items
