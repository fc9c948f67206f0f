"""AVA v2.2 frame-level mAP@0.5 IoU, as the official evaluation computes it.

    from umt.eval.ava import ava_map
    ava_map("ava_val_v2.2.csv", "detections.csv",
            "ava_action_list_v2.2_for_activitynet_2019.pbtxt",
            "ava_val_excluded_timestamps_v2.2.csv")
    # {'PascalBoxes_Precision/mAP@0.5IOU': 0.2..., 'PascalBoxes_PerformanceByCategory/AP@0.5IOU/bend/bow (at the waist)': ...}

``umt eval ava`` (this module's job) scores a fine-tuned checkpoint on keyframe clips::

    umt eval ava --config tiny --model runs/finetune-ava-tiny/checkpoints/best.pt \\
        --data synthetic --output runs/eval-ava-tiny
    torchrun --nproc-per-node 8 -m umt.eval.ava --config b16 model.pretrained=... \\
        data.source=synthetic train.output_dir=...

and writes, beside ``metrics.json`` (the official metric names and fractions, null where the
official value is NaN, ``mAP`` in
percent, ``random_mAP``: the same boxes with random scores, ``num_keyframes``) and
``summary.json``: ``detections.csv`` (the official result CSV), ``groundtruth.csv``,
``labelmap.pbtxt`` and ``per_class_ap.png``.

The glue is the official ``alphaction/dataset/datasets/evaluation/ava/ava_eval.py``'s
(``evaluate_predictions_on_ava``): rows whose action is not in the label map are dropped from
both files (the 60 evaluated classes of the ActivityNet 2019 list), excluded keyframes are
dropped from both, every (video, timestamp) is one image, and the TF object-detection
``PascalDetectionEvaluator`` (``umt.eval.detection_map``: VOC AP, IoU >= 0.5, no difficult
boxes) scores the rest. Values are fractions, as the official code returns them; a class of the
label map without ground truth has AP NaN and is left out of the mean.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from umt import storage
from umt.configs.finetune_ava import EvalAvaConfig
from umt.configs.loader import load_config
from umt.data.ava import BoxRow, Key, read_boxes, read_exclusions, read_labelmap
from umt.eval.detection_map import pascal_detection_metrics

log = logging.getLogger("umt.eval")

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


# -- scoring a model on keyframe clips ------------------------------------------------------------
def detections_csv(rows: Sequence[BoxRow]) -> str:
    """Detection rows in the official result layout (``write_csv``: 5 decimals, timestamp as
    given, ``video_id, timestamp, x1, y1, x2, y2, action_id, score``)."""
    return "".join(f"{r.video},{r.timestamp:04d},{r.box[0]:.5f},{r.box[1]:.5f},{r.box[2]:.5f},"
                   f"{r.box[3]:.5f},{r.action},{r.score:.5f}\n" for r in rows)


def person_boxes(clip: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic stand-in for the official person detector: every ground-truth box moved by
    a little noise, score 0.95, and one decoy box of score 0.3 (dropped at the official box
    threshold 0.8). ``(boxes [P, 4], scores [P])``."""
    from umt.seeds import derive_seed

    rng = np.random.default_rng(derive_seed("ava-person-boxes", seed, clip["key"][0]))
    gt = np.asarray(clip["boxes"], dtype=np.float64).reshape(-1, 4)
    size = np.concatenate([gt[:, 2:] - gt[:, :2]] * 2, 1)
    boxes = np.clip(gt + rng.normal(0, 0.03, gt.shape) * size, 0, 1)
    decoy = np.array([[0.4, 0.4, 0.6, 0.6]])
    return np.concatenate([boxes, decoy]), np.concatenate([np.full(len(gt), 0.95), [0.3]])


def score_clips(model, clips: list[dict], *, num_frames: int, img_size: int, sampling_rate: int,
                num_classes: int, box_threshold: float, action_threshold: float, batch_size: int,
                device, precision: str = "fp32", seed: int = 0) -> list[BoxRow]:
    """Detections of ``model`` (``umt.models.box_head.BoxActionViT``) on keyframe clips: the
    person boxes with score >= ``box_threshold``, enlarged for pooling (official ``test_ext``),
    one row per (box, action) with sigmoid score >= ``action_threshold`` (official
    ``prepare_for_ava_detection``), the box written as detected."""
    import torch

    from umt.data.ava import clip_batch
    from umt.models.box_head import extend_boxes
    from umt.runtime.common import autocast

    rows: list[BoxRow] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(clips), batch_size):
            chunk = clips[start:start + batch_size]
            dets = []
            for c in chunk:
                b, s = person_boxes(c, seed)
                keep = s >= box_threshold
                dets.append(b[keep])
            batch = clip_batch(chunk, num_frames=num_frames, img_size=img_size,
                               sampling_rate=sampling_rate, num_classes=num_classes)
            boxes = torch.as_tensor(np.concatenate(dets), dtype=torch.float32)
            index = torch.tensor([i for i, d in enumerate(dets) for _ in range(len(d))])
            if not len(boxes):
                continue
            with torch.no_grad(), autocast(device, precision):
                logits = model(batch["video"].to(device), extend_boxes(boxes).to(device),
                               index.to(device))
            probs = torch.sigmoid(logits.float()).cpu().numpy()          # [K, C]
            for k, (box, i) in enumerate(zip(boxes.tolist(), index.tolist())):
                video, ts = chunk[i]["key"]
                for a in np.flatnonzero(probs[k] >= action_threshold):
                    rows.append(BoxRow(video, ts, tuple(box), int(a) + 1,
                                       score=float(probs[k, a])))
    finally:
        model.train(was_training)
    return rows


def clip_metrics(model, clips: list[dict], categories: Sequence[tuple[int, str]],
                 **kwargs) -> tuple[dict, list[BoxRow], list[BoxRow]]:
    """``(metrics, detections, ground truth)`` of ``model`` on synthetic keyframe clips:
    the official metrics of the detections as written to the official CSV, plus ``mAP`` (the
    same number in percent), ``random_mAP`` (the same boxes with uniform random scores: the
    chance level) and ``num_keyframes``."""
    from umt.data.ava import groundtruth_rows

    gt = groundtruth_rows(clips)
    det = score_clips(model, clips, **kwargs)
    written = read_boxes(detections_csv(det), "detections.csv", scored=True)
    metrics: dict = dict(ava_map_rows(gt, written, categories))
    rng = np.random.default_rng(0)
    shuffled = [BoxRow(r.video, r.timestamp, r.box, r.action, score=float(rng.uniform()))
                for r in written]
    chance = ava_map_rows(gt, shuffled, categories)[MAP_KEY]
    metrics.update(mAP=100.0 * metrics[MAP_KEY], random_mAP=100.0 * chance,
                   num_keyframes=len(clips))
    return metrics, det, gt


# -- umt eval ava ----------------------------------------------------------------------------------
def per_class_png(metrics: dict, title: str) -> bytes:
    """A bar chart of every class's AP (in percent; NaN classes left out)."""
    from umt.report import figures

    plt = figures.pyplot()

    items = [(k[len(AP_PREFIX):], v * 100) for k, v in metrics.items()
             if k.startswith(AP_PREFIX) and isinstance(v, float) and v == v]
    fig, ax = plt.subplots(figsize=(6, 1.0 + 0.25 * max(1, len(items))))
    ax.barh([n[:40] for n, _ in items][::-1], [v for _, v in items][::-1], color="tab:blue")
    ax.set_xlim(0, 100)
    ax.set_xlabel("AP@0.5 IoU (%)")
    ax.set_title(title, fontsize=9)
    return figures.png_bytes(fig)


def _body(cfg: EvalAvaConfig, dist) -> dict:
    from umt.data.ava import SYNTHETIC_ACTIONS, synthetic_keyframes, synthetic_labelmap
    from umt.models.box_head import build_box_model, load_box_state_dict
    from umt.models.checkpoint import state_dict_of
    from umt.models.registry import model_kwargs
    from umt.runtime.weights import read_checkpoint

    m, d, e = cfg.model, cfg.data, cfg.eval
    model = build_box_model(m.name, **model_kwargs(m))
    sd, source = state_dict_of(read_checkpoint(m.pretrained))
    load_box_state_dict(model, sd, source, require_head=True)
    model = model.to(dist.device).eval()
    if d.source != "synthetic":
        raise ValueError(f"data.source={d.source!r}: only synthetic keyframe clips are "
                         f"supported yet (umt shard does not write AVA clips yet)")
    clips = synthetic_keyframes(e.synthetic_seed, e.synthetic_size, frames=d.synthetic_frames,
                                resolution=d.synthetic_resolution, people=d.synthetic_people)
    categories = list(SYNTHETIC_ACTIONS)
    metrics, det, gt = clip_metrics(
        model, clips, categories, num_frames=m.num_frames, img_size=m.img_size,
        sampling_rate=d.sampling_rate, num_classes=m.num_classes,
        box_threshold=e.box_threshold, action_threshold=e.action_threshold,
        batch_size=e.batch_size, device=dist.device, precision=cfg.train.precision,
        seed=e.synthetic_seed)
    out = cfg.train.output_dir
    # metrics.json is strict JSON: a class without ground truth (the official NaN) is null.
    metrics = {k: (None if isinstance(v, float) and v != v else v) for k, v in metrics.items()}
    result = {"task": "ava", "source": d.source, "split": e.split, **metrics,
              "num_detections": len(det),
              "protocol": {"box_threshold": e.box_threshold,
                           "action_threshold": e.action_threshold, "iou": 0.5,
                           "num_frames": m.num_frames, "sampling_rate": d.sampling_rate,
                           "img_size": m.img_size},
              "files": {"detections": "detections.csv", "groundtruth": "groundtruth.csv",
                        "labelmap": "labelmap.pbtxt", "per_class_ap_png": "per_class_ap.png"}}
    if dist.is_main:
        gt_text = "".join(f"{r.video},{r.timestamp:04d},{r.box[0]:.5f},{r.box[1]:.5f},"
                          f"{r.box[2]:.5f},{r.box[3]:.5f},{r.action},{r.person}\n" for r in gt)
        storage.write_bytes(storage.join(out, "detections.csv"), detections_csv(det).encode())
        storage.write_bytes(storage.join(out, "groundtruth.csv"), gt_text.encode())
        storage.write_bytes(storage.join(out, "labelmap.pbtxt"), synthetic_labelmap().encode())
        storage.write_bytes(storage.join(out, "per_class_ap.png"), per_class_png(
            metrics, f"per-class AP, frame mAP {metrics['mAP']:.1f}% "
                     f"(random scores {metrics['random_mAP']:.1f}%)"))
    return result


def headline(result: dict) -> dict:
    return {k: result[k] for k in ("mAP", "random_mAP", "num_keyframes")}


def main(config: Optional[str] = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    from umt.eval.job import run_evaluation

    cfg = load_config(EvalAvaConfig, "eval-ava", config, overrides)
    return run_evaluation("ava", cfg, _body, headline)


if __name__ == "__main__":
    from umt.runtime.entry import run_stage_module

    run_stage_module("eval-ava")
