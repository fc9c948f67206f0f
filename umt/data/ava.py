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
``ava_val_det_person_bbox.json`` + ``ava_val_v2.2_min.json``  the official evaluation's person
                                                            detections (AlphAction layout):
                                                            ``{image_id, bbox: [x, y, w, h]
                                                            px, score}`` and the keyframes
                                                            (``images``: id, movie, timestamp,
                                                            width, height)
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


def read_person_boxes_json(boxes_text: str, boxes_name: str, images_text: str,
                           images_name: str, score_threshold: float = 0.0) -> list[BoxRow]:
    """The person detections of the official evaluation (AlphAction's
    ``ava_val_det_person_bbox.json``: a list of ``{image_id, bbox: [x, y, w, h] in pixels,
    score}``) as normalised rows, with the keyframes of its images file
    (``ava_val_v2.2_min.json``: ``images`` of ``{id, movie, timestamp, width, height}``).
    Boxes with ``score < score_threshold`` are left out (official ``load_box_file``; the UMT
    evaluation uses 0.8). The official corners: ``xyxy = (x, y, x + w - 1, y + h - 1)`` with
    widths clamped at 0, written back as ``(x1, y1, x2 + 1, y2 + 1) / (width, height)`` and
    clipped to [0, 1] (``prepare_for_ava_detection``)."""
    import json

    def load(text: str, name: str):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(f"{name}: line {e.lineno}: not JSON: {e.msg}") from None

    images = load(images_text, images_name)
    if not isinstance(images, dict) or not isinstance(images.get("images"), list):
        raise FormatError(f"{images_name}: expected an object with an 'images' list")
    frames: dict = {}
    for i, img in enumerate(images["images"]):
        where = f"{images_name}: images entry {i}"
        try:
            frames[img["id"]] = (str(img["movie"]), int(img["timestamp"]), float(img["width"]),
                                 float(img["height"]))
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{where}: needs id, movie, timestamp, width, height ({e})") from None
        if frames[img["id"]][2] <= 0 or frames[img["id"]][3] <= 0:
            raise FormatError(f"{where}: width and height must be > 0")
    boxes = load(boxes_text, boxes_name)
    if not isinstance(boxes, list):
        raise FormatError(f"{boxes_name}: expected a list of boxes")
    out = []
    for i, b in enumerate(boxes):
        where = f"{boxes_name}: entry {i}"
        if not isinstance(b, dict) or "image_id" not in b or "bbox" not in b or "score" not in b:
            raise FormatError(f"{where}: needs image_id, bbox and score")
        if b["image_id"] not in frames:
            raise FormatError(f"{where}: image_id {b['image_id']!r} is not in {images_name}")
        try:
            x, y, w, h = (float(v) for v in b["bbox"])
            score = float(b["score"])
        except (TypeError, ValueError):
            raise FormatError(f"{where}: bbox must be 4 numbers and score a number") from None
        if score < score_threshold:
            continue
        movie, ts, width, height = frames[b["image_id"]]
        x2, y2 = x + max(w - 1, 0) + 1, y + max(h - 1, 0) + 1
        box = (x / width, y / height, x2 / width, y2 / height)
        box = tuple(min(max(v, 0.0), 1.0) for v in box)
        out.append(BoxRow(movie, ts, box, None, score=score, line=i))  # type: ignore[arg-type]
    return out


# -- synthetic keyframe clips -----------------------------------------------------------------
# Squares ("people") moving across the frame, one per horizontal band; each has 2 or 3
# actions at the keyframe (the centre frame): its direction (needs time: one frame cannot
# tell), its colour, and "big" when its side is over a fifth of the frame.
SYNTHETIC_ACTIONS = ((1, "move right"), (2, "move left"), (3, "red"), (4, "green"),
                     (5, "blue"), (6, "big"))
_RGB = {3: (220, 40, 40), 4: (40, 200, 40), 5: (50, 80, 230)}


def synthetic_labelmap() -> str:
    """The label map of the synthetic actions, in the official pbtxt layout."""
    return "".join(f'item {{\n  name: "{n}"\n  id: {c}\n}}\n' for c, n in SYNTHETIC_ACTIONS)


def render_keyframe_clip(seed: int, num_frames: int = 16, size: int = 64, people: int = 2):
    """``(frames uint8 [T, H, W, 3], boxes [P, 4] normalised at the keyframe T // 2,
    actions: P lists of action ids)``; the same arguments give the same clip."""
    import numpy as np

    rng = np.random.default_rng(seed)
    frames = np.repeat(rng.integers(0, 50, size=(1, size, size, 3), dtype=np.uint8),
                       num_frames, axis=0)
    band = size // people
    key = num_frames // 2
    boxes, actions = [], []
    for p in range(people):
        side = int(rng.integers(max(3, band // 3), max(4, min(band, size // 3)) + 1))
        y = p * band + int(rng.integers(0, max(1, band - side + 1)))
        right = bool(rng.integers(2))
        colour = int(rng.integers(3, 6))
        span = size - side
        xs = np.linspace(0, span, num_frames) * rng.uniform(0.5, 1.0)
        xs = xs + rng.uniform(0, span - xs[-1] + 1e-9)
        if not right:
            xs = xs[::-1]
        for t in range(num_frames):
            x = int(round(xs[t]))
            frames[t, y:y + side, x:x + side] = _RGB[colour]
        x = int(round(xs[key]))
        boxes.append((x / size, y / size, (x + side) / size, (y + side) / size))
        acts = [1 if right else 2, colour] + ([6] if side * 5 > size else [])
        actions.append(acts)
    return frames, np.asarray(boxes, dtype=np.float32), actions


def sample_indices(raw: int, num_frames: int, rate: int) -> list[int]:
    """The official sparse ``TemporalCrop``: ``num_frames`` at stride ``rate`` centred in a clip of
    ``raw`` frames (indices clipped to the clip)."""
    start = (raw - num_frames * rate) // 2 + (rate - 1) // 2
    return [min(max(start + i * rate, 0), raw - 1) for i in range(num_frames)]


def synthetic_keyframes(seed: int, count: int, *, frames: int, resolution: int,
                        people: int) -> list[dict]:
    """``count`` synthetic keyframe clips: ``{key, frames, boxes, actions}`` each (video id
    ``syn<seed>_<i>``, timestamp 902)."""
    from umt.seeds import derive_seed

    out = []
    for i in range(count):
        f, b, a = render_keyframe_clip(derive_seed("ava-clip", seed, i), frames, resolution,
                                       people)
        out.append({"key": (f"syn{seed}_{i:05d}", KEYFRAMES[0]), "frames": f, "boxes": b,
                    "actions": a})
    return out


def groundtruth_rows(clips: list[dict]) -> list[BoxRow]:
    """The ground-truth rows (``read_boxes`` layout) of synthetic clips."""
    rows = []
    for c in clips:
        for p, (box, acts) in enumerate(zip(c["boxes"], c["actions"])):
            for a in acts:
                rows.append(BoxRow(c["key"][0], c["key"][1], tuple(float(v) for v in box), a,
                                   person=p))
    return rows


def clip_batch(clips: list[dict], *, num_frames: int, img_size: int, sampling_rate: int,
               num_classes: int, flip_rng=None):
    """A model batch of clips: ``video [B, 3, T, S, S]`` (ImageNet-normalised), ``boxes
    [K, 4]``, ``batch_index [K]``, ``labels [K, num_classes]`` (multi-hot, action id i at
    column i - 1), ``keys`` (B). ``flip_rng``: mirror each clip with p = 0.5 (boxes too)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from umt.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    videos, boxes, index, labels = [], [], [], []
    for b, c in enumerate(clips):
        f = c["frames"][sample_indices(len(c["frames"]), num_frames, sampling_rate)]
        v = torch.from_numpy(np.ascontiguousarray(f)).permute(3, 0, 1, 2).float() / 255.0
        bx = torch.as_tensor(c["boxes"], dtype=torch.float32).reshape(-1, 4)
        if flip_rng is not None and flip_rng.uniform() < 0.5:
            v = v.flip(-1)
            bx = torch.stack([1 - bx[:, 2], bx[:, 1], 1 - bx[:, 0], bx[:, 3]], 1)
        if v.shape[-1] != img_size or v.shape[-2] != img_size:
            v = F.interpolate(v, size=(img_size, img_size), mode="bilinear", align_corners=False)
        videos.append(v)
        boxes.append(bx)
        index += [b] * len(bx)
        for acts in c["actions"]:
            row = torch.zeros(num_classes)
            row[[a - 1 for a in acts if a <= num_classes]] = 1.0
            labels.append(row)
    video = torch.stack(videos)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    return {"video": (video - mean) / std, "boxes": torch.cat(boxes),
            "batch_index": torch.tensor(index, dtype=torch.long),
            "labels": torch.stack(labels) if labels else torch.zeros(0, num_classes),
            "keys": [c["key"] for c in clips]}


def build_synthetic_loader(cfg, *, batch_size: int, num_frames: int, img_size: int,
                           num_classes: int, seed: int, rank: int = 0, world_size: int = 1,
                           start_step: int = 0):
    """Endless training batches (:func:`clip_batch`) of ``cfg.synthetic_size`` clips, a new
    order each epoch; rank ``r`` takes every ``world_size``-th clip; micro-batch ``start_step``
    first (resume)."""
    import numpy as np

    from umt.seeds import derive_seed

    clips = synthetic_keyframes(seed, cfg.synthetic_size, frames=cfg.synthetic_frames,
                                resolution=cfg.synthetic_resolution, people=cfg.synthetic_people)
    per_epoch = max(1, len(clips) // (batch_size * world_size))
    step = start_step
    while True:
        epoch, pos = divmod(step, per_epoch)
        order = np.random.default_rng(derive_seed("ava-order", seed, epoch)).permutation(len(clips))
        first = (pos * world_size + rank) * batch_size
        pick = [clips[int(i)] for i in order[first:first + batch_size]]
        flip = np.random.default_rng(derive_seed("ava-flip", seed, step, rank)) if cfg.flip else None
        yield clip_batch(pick, num_frames=num_frames, img_size=img_size,
                         sampling_rate=cfg.sampling_rate, num_classes=num_classes, flip_rng=flip)
        step += 1
