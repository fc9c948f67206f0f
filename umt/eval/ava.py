"""AVA v2.2 frame-level mAP@0.5 IoU, as the official evaluation computes it.

    from umt.eval.ava import ava_map
    ava_map("ava_val_v2.2.csv", "detections.csv",
            "ava_action_list_v2.2_for_activitynet_2019.pbtxt",
            "ava_val_excluded_timestamps_v2.2.csv")
    # {'PascalBoxes_Precision/mAP@0.5IOU': 0.2..., 'PascalBoxes_PerformanceByCategory/AP@0.5IOU/bend/bow (at the waist)': ...}

The glue is the official ``alphaction/dataset/datasets/evaluation/ava/ava_eval.py``'s
(``evaluate_predictions_on_ava``): rows whose action is not in the label map are dropped from
both files (the 60 evaluated classes of the ActivityNet 2019 list), excluded keyframes are
dropped from both, every (video, timestamp) is one image, and the TF object-detection
``PascalDetectionEvaluator`` (``umt.eval.detection_map``: VOC AP, IoU >= 0.5, no difficult
boxes) scores the rest. Values are fractions, as the official code returns them; a class of the
label map without ground truth has AP NaN and is left out of the mean.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Optional, Sequence

import numpy as np

from umt import storage
from umt.data.ava import BoxRow, Key, read_boxes, read_exclusions, read_labelmap
from umt.eval.detection_map import pascal_detection_metrics

MAP_KEY = "PascalBoxes_Precision/mAP@0.5IOU"
AP_PREFIX = "PascalBoxes_PerformanceByCategory/AP@0.5IOU/"


def _text(uri: str) -> str:
    return storage.read_bytes(uri).decode("utf-8")


def _group(rows: Iterable[BoxRow], keep: set[int], excluded: set[Key], scored: bool):
    """image key -> (boxes [N, 4], labels [N](, scores [N])), keys in first-seen order."""
    boxes: dict[Key, list] = defaultdict(list)
    labels: dict[Key, list] = defaultdict(list)
    scores: dict[Key, list] = defaultdict(list)
    for r in rows:
        if r.action is None or r.action not in keep or r.key in excluded:
            continue
        boxes[r.key].append(r.box)
        labels[r.key].append(r.action)
        scores[r.key].append(1.0 if r.score is None else r.score)
    out = {}
    for k in boxes:
        b = np.asarray(boxes[k], dtype=float).reshape(-1, 4)
        lab = np.asarray(labels[k], dtype=int)
        out[k] = (b, lab, np.asarray(scores[k], dtype=float)) if scored else (b, lab)
    return out


def ava_map_rows(groundtruth: Sequence[BoxRow], detections: Sequence[BoxRow],
                 categories: Sequence[tuple[int, str]],
                 excluded: Optional[set[Key]] = None) -> dict[str, float]:
    """:func:`ava_map` on rows already read (``umt.data.ava.read_boxes``)."""
    keep = {c for c, _ in categories}
    excluded = excluded or set()
    gt = _group(groundtruth, keep, excluded, scored=False)
    det = _group(detections, keep, excluded, scored=True)
    return pascal_detection_metrics(gt, det, categories, iou_threshold=0.5)


def ava_map(groundtruth_csv: str, detections_csv: str, labelmap: str,
            exclusions: Optional[str] = None) -> dict[str, float]:
    """The official AVA metrics (``PascalBoxes_Precision/mAP@0.5IOU`` and
    ``PascalBoxes_PerformanceByCategory/AP@0.5IOU/<class name>``) of a detections CSV
    (``video_id, timestamp, x1, y1, x2, y2, action_id, score``) against a ground-truth CSV; every
    argument a local path or s3:// URI."""
    categories = read_labelmap(_text(labelmap), labelmap)
    excluded = read_exclusions(_text(exclusions), exclusions) if exclusions else set()
    gt = read_boxes(_text(groundtruth_csv), groundtruth_csv, scored=False)
    det = read_boxes(_text(detections_csv), detections_csv, scored=True)
    return ava_map_rows(gt, det, categories, excluded)
