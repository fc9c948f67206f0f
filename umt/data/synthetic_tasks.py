"""Synthetic downstream data sets (retrieval, multiple choice, video QA) on the synthetic clips
of :mod:`umt.data.synthetic`, for the tests, the demo and the acceptance checks in benchmarks/.

A clip shows a coloured square (red, green, blue, yellow) visiting fixed positions in one of
four temporal orders (:data:`umt.data.synthetic.CLASSES`). Its class-level caption
``"a <colour> square moving <order>"`` is one of 16; only the frame order tells the four
orders apart, so a model that ignores time is right on the colour only.

- **retrieval**: the plain synthetic manifest (``caption`` = the class-level caption); evaluate
  with ``eval.match_by=caption`` (every video with the same caption is a positive).
- **mc**: ``candidates`` = the 4 order captions of the clip's colour + the right order in
  another colour (5 options, shuffled), ``answer`` = the index of the right one.
- **qa**: two questions per video with single-token answers, ``type`` colour / direction:

  ==============================  =========================================================
  question                        answers
  ==============================  =========================================================
  what colour is the square       red, green, blue, yellow
  which way does the square move  right (left to right), left (right to left),
                                  jumping (left to right in jumps), skipping (right to left
                                  in jumps)
  ==============================  =========================================================

  plus ``answer_list.json`` (the 8 answers) next to the manifest.
- **all**: one manifest with every column above (label, caption, candidates + answer,
  questions) and the answer list: one data set for every downstream task (the local pipeline).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from umt.data import synthetic

COLOURS = ("red", "green", "blue", "yellow")
DIRECTION_ANSWERS = ("right", "left", "jumping", "skipping")  # by synthetic.CLASSES index
COLOUR_QUESTION = "what colour is the square"
DIRECTION_QUESTION = "which way does the square move"
ALL = "all"  # one manifest with every column: one data set for every downstream task
TASKS = ("retrieval", "mc", "qa", ALL)


def colour_of(caption: str) -> str:
    """The colour named by a synthetic clip caption (``"a <colour> square moving ..."``)."""
    words = caption.split()
    if len(words) < 3 or words[0] != "a" or words[1] not in COLOURS or words[2] != "square":
        raise ValueError(f"not a synthetic clip caption: {caption!r}")
    return words[1]


def answer_list() -> list[str]:
    return list(COLOURS) + list(DIRECTION_ANSWERS)


def questions_for(label: int, colour: str, video_id: str) -> list[dict[str, Any]]:
    """The colour and the direction question of one clip (manifest ``questions`` entries)."""
    return [{"id": f"{video_id}-colour", "question": COLOUR_QUESTION, "answer": colour,
             "type": "colour"},
            {"id": f"{video_id}-direction", "question": DIRECTION_QUESTION,
             "answer": DIRECTION_ANSWERS[label], "type": "direction"}]


def mc_candidates(label: int, colour: str, rng: np.random.Generator) -> tuple[list[str], int]:
    """5 candidate captions (the 4 orders in the clip's colour + the right order in another
    colour), shuffled; returns ``(candidates, index of the right one)``."""
    other = [c for c in COLOURS if c != colour][int(rng.integers(len(COLOURS) - 1))]
    options = [synthetic.caption_for(k, colour) for k in range(len(synthetic.CLASSES))]
    options.append(synthetic.caption_for(label, other))
    order = rng.permutation(len(options))
    shuffled = [options[i] for i in order]
    return shuffled, int(np.flatnonzero(order == label)[0])


def write_task_dataset(output_dir: str, num_videos: int, task: str, *, num_frames: int = 16,
                       size: int = 64, seed: int = 0) -> str:
    """Videos + a manifest for ``umt shard``; returns the manifest's path.

    ``task="retrieval"``: ``manifest.csv`` (video, label, caption, id); ``"mc"`` /
    ``"qa"`` / ``"all"``: ``manifest.jsonl`` with the columns above (and ``answer_list.json``
    for qa and all). The same arguments give the same files.
    """
    from umt import storage

    if task not in TASKS:
        raise ValueError(f"task={task!r}: choose one of {', '.join(TASKS)}")
    csv_manifest = synthetic.write_dataset(output_dir, num_videos, num_frames=num_frames,
                                           size=size, seed=seed)
    if task == "retrieval":
        return csv_manifest
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(storage.read_bytes(csv_manifest).decode())))
    rng = np.random.default_rng(seed)
    lines = []
    for row in rows:
        label, colour = synthetic.CLASSES.index(row["label"]), colour_of(row["caption"])
        out = {"video": row["video"], "id": row["id"], "label": row["label"]}
        if task == "all":
            out["caption"] = row["caption"]
        if task in ("mc", "all"):
            out["candidates"], out["answer"] = mc_candidates(label, colour, rng)
        if task in ("qa", "all"):
            out["questions"] = questions_for(label, colour, row["id"])
        lines.append(json.dumps(out))
    manifest = storage.join(output_dir, "manifest.jsonl")
    storage.write_bytes(manifest, ("\n".join(lines) + "\n").encode())
    if task in ("qa", "all"):
        storage.write_bytes(storage.join(output_dir, "answer_list.json"),
                            json.dumps(answer_list()).encode())
    return manifest
