"""Pascal VOC-style detection AP, computed the way the TF object-detection API's
``PascalDetectionEvaluator`` computes it (the evaluator behind the ActivityNet frame mAP of
spatio-temporal action detection; the official UMT detection code ships a copy of it). Numpy
only.

Per class ``c`` (ids 1..max id of the categories):

1. every image's detections of ``c`` are kept when the box is valid (``x1 < x2`` and
   ``y1 < y2``, strictly; the evaluator's ``_remove_invalid_boxes``) and ordered by score,
   high first, with the evaluator's ``np.argsort(scores)[::-1]`` (so ties fall as they do there);
2. each detection in that order takes the ground-truth box of ``c`` in the same image with the
   highest IoU; it is a true positive when that IoU >= the threshold and that box is not taken
   yet, else a false positive (VOC: no second choice). Detections in an image without ground
   truth of ``c`` are false positives. There are no difficult or group-of boxes;
3. all images' detections of ``c`` are sorted again by score (``argsort[::-1]``), precision and
   recall are cumulated (recall over the ground-truth count of ``c``), precision is made
   non-increasing from the right, and AP = sum over recall steps of (delta recall) x precision
   (the VOC devkit's area, no 11-point sampling);
4. a class without ground truth has AP NaN; one with ground truth but no detection has AP 0.
   The mean is ``nanmean`` over all classes 1..max id.

The result uses the evaluator's names: ``<prefix>_Precision/mAP@<t>IOU`` and
``<prefix>_PerformanceByCategory/AP@<t>IOU/<name>`` per category, as fractions.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np

# The evaluator's per-image limit (ObjectDetectionEvaluation: nms_max_output_boxes=10000, NMS
# itself off at IoU threshold 1.0) and its score floor (filter_scores_greater_than(-10.0)).
MAX_PER_IMAGE = 10000
SCORE_FLOOR = -10.0

# image key -> (boxes [M, 4] x1 y1 x2 y2, class ids [M])
GroundTruth = Mapping[Hashable, tuple[np.ndarray, np.ndarray]]
# image key -> (boxes [N, 4], class ids [N], scores [N])
Detections = Mapping[Hashable, tuple[np.ndarray, np.ndarray, np.ndarray]]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a`` [N, 4] and ``b`` [M, 4] (x1, y1, x2, y2) -> [N, M]."""
    ix = np.maximum(0.0, np.minimum(a[:, None, 2], b[None, :, 2])
                    - np.maximum(a[:, None, 0], b[None, :, 0]))
    iy = np.maximum(0.0, np.minimum(a[:, None, 3], b[None, :, 3])
                    - np.maximum(a[:, None, 1], b[None, :, 1]))
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (area_a[:, None] + area_b[None, :] - inter)


def match_image(det_boxes: np.ndarray, det_scores: np.ndarray, gt_boxes: np.ndarray,
                iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One image, one class: ``(scores [K], true_positive bool [K])``, scores high first."""
    keep = det_scores > SCORE_FLOOR
    det_boxes, det_scores = det_boxes[keep], det_scores[keep]
    order = np.argsort(det_scores)[::-1][:MAX_PER_IMAGE]
    det_boxes, det_scores = det_boxes[order], det_scores[order]
    tp = np.zeros(len(det_scores), dtype=bool)
    if len(gt_boxes) == 0 or len(det_scores) == 0:
        return det_scores, tp
    iou = box_iou(det_boxes, gt_boxes)                                   # [K, M]
    best = np.argmax(iou, axis=1)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for i, g in enumerate(best):
        if iou[i, g] >= iou_threshold and not taken[g]:
            tp[i] = True
            taken[g] = True
    return det_scores, tp


def average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    """VOC-devkit AP of one class from all its detections ``scores`` [K], ``tp`` [K]."""
    if num_gt == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(scores)[::-1]
    hits = tp[order].astype(int)
    cum_tp = np.cumsum(hits)
    cum_fp = np.cumsum(1 - hits)
    precision = cum_tp.astype(float) / (cum_tp + cum_fp)
    recall = cum_tp.astype(float) / num_gt
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    steps = np.where(recall[1:] != recall[:-1])[0] + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def pascal_detection_metrics(groundtruth: GroundTruth, detections: Detections,
                             categories: Sequence[tuple[int, str]], iou_threshold: float = 0.5,
                             prefix: str = "PascalBoxes") -> dict[str, float]:
    """The ``PascalDetectionEvaluator`` metrics of ``detections`` against ``groundtruth``.

    ``categories``: ``(id, name)`` with ids >= 1; only ids in it should appear in the inputs
    (the caller filters, as the official glue does with the label map's whitelist). Images are keyed
    by anything hashable; the order of ``detections`` is the order images are added (it decides
    how score ties fall, as in the evaluator).
    """
    if not categories:
        raise ValueError("no categories: at least one class is needed")
    if min(c for c, _ in categories) < 1:
        raise ValueError("category ids must be 1-indexed")
    num_class = max(c for c, _ in categories)
    num_gt = np.zeros(num_class + 1, dtype=int)
    for key, (boxes, labels) in groundtruth.items():
        labels = np.asarray(labels, dtype=int)
        if len(labels) and not (labels.min() >= 1 and labels.max() <= num_class):
            raise ValueError(f"image {key!r}: ground-truth class ids {sorted(set(labels.tolist()))} "
                             f"outside the categories' 1..{num_class}")
        np.add.at(num_gt, labels, 1)
    scores: list[list[np.ndarray]] = [[] for _ in range(num_class + 1)]
    hits: list[list[np.ndarray]] = [[] for _ in range(num_class + 1)]
    empty = np.zeros((0, 4), dtype=float)
    for key, (boxes, labels, conf) in detections.items():
        boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
        labels = np.asarray(labels, dtype=int)
        conf = np.asarray(conf, dtype=float)
        if not len(boxes) == len(labels) == len(conf):
            raise ValueError(f"image {key!r}: {len(boxes)} boxes, {len(labels)} labels and "
                             f"{len(conf)} scores")
        valid = (boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])
        boxes, labels, conf = boxes[valid], labels[valid], conf[valid]
        gt_boxes, gt_labels = groundtruth.get(key, (empty, np.zeros(0, dtype=int)))
        gt_boxes = np.asarray(gt_boxes, dtype=float).reshape(-1, 4)
        gt_labels = np.asarray(gt_labels, dtype=int)
        for c in np.unique(labels):
            if not 1 <= c <= num_class:
                continue
            s, t = match_image(boxes[labels == c], conf[labels == c], gt_boxes[gt_labels == c],
                               iou_threshold)
            if len(s):
                scores[c].append(s)
                hits[c].append(t)
    ap = np.full(num_class + 1, np.nan)
    for c in range(1, num_class + 1):
        if num_gt[c]:
            s = np.concatenate(scores[c]) if scores[c] else np.zeros(0)
            t = np.concatenate(hits[c]) if hits[c] else np.zeros(0, dtype=bool)
            ap[c] = average_precision(s, t, int(num_gt[c]))
    with np.errstate(all="ignore"):
        mean = float(np.nanmean(ap[1:])) if np.isfinite(ap[1:]).any() else float("nan")
    out = {f"{prefix}_Precision/mAP@{iou_threshold}IOU": mean}
    names = dict(categories)
    for c in sorted(names):
        out[f"{prefix}_PerformanceByCategory/AP@{iou_threshold}IOU/{names[c]}"] = float(ap[c])
    return out
