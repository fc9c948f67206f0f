"""Action-recognition evaluation: multi-view testing aggregated per video, as the official
``final_test`` + ``merge`` of ``single_modality/engines/engine_for_finetuning.py``.

1. Every labelled video once (``umt.data.action_loader.build_action_eval_loader``: split over
   ranks and DataLoader workers, each video read exactly once), ``clips x crops`` views each.
2. Logits of every view (a classifier, or zero-shot text similarities: ``umt.eval.zero_shot``).
3. Gathered to every rank, put in dataset order (manifest position, then shard and key), so the
   result does not depend on the number of processes or workers; a video seen twice is an error.
4. ``umt.eval.merge_views``: softmax per view, mean per video (float64).
5. top-1 / top-5 (``topk_accuracy``), mean per-class accuracy, the confusion matrix, the NLL of
   the merged probabilities (``loss``), and the top-k predictions of every video.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import numpy as np
import torch

from umt.eval.metrics import confusion_matrix, mean_class_accuracy, merge_views, topk_accuracy
from umt.runtime import distributed
from umt.runtime.common import autocast

log = logging.getLogger("umt.eval")

# logits of a batch of views: float [N, 3, T, S, S] -> [N, C]
Classify = Callable[[torch.Tensor], torch.Tensor]


def protocol(sampler: str, num_frames: int, img_size: int, num_clips: int, num_crops: int) -> dict:
    """The test settings, written next to every number."""
    positions = {"segment": "official Kinetics _get_seq_frames test positions: "
                            "round(seg*i) + int(seg/(clips+1)*(clip+1)), seg=(n-1)/frames",
                 "tsn": "official SSv2 TSN positions: clip 0 segment starts, clip 1 centres "
                        "(1 clip: centres)"}[sampler]
    return {"frames": num_frames, "sampler": sampler, "positions": positions,
            "clips": num_clips, "crops": num_crops, "views_per_video": num_clips * num_crops,
            "resolution": img_size,
            "spatial": "short side resized to resolution (bilinear, antialiased), crops spread "
                       "along the long side (1 crop: centre)",
            "merge": "softmax per view (float64), mean of the probabilities per video"}


@torch.no_grad()
def collect(classify: Classify, loader, *, device: torch.device, precision: str) -> list[dict]:
    """This rank's videos: ``{"uid", "id", "index", "label", "logits": float32 [V, C]}``."""
    rows = []
    for batch in loader:
        video = batch["video"]                                    # [B, V, 3, T, S, S]
        b, v = video.shape[:2]
        with autocast(device, precision):
            logits = classify(video.flatten(0, 1).to(device, non_blocking=True))  # [B*V, C]
        logits = logits.float().cpu().view(b, v, -1)
        for i in range(b):
            rows.append({"uid": batch["uid"][i], "id": batch["id"][i], "index": int(batch["index"][i]),
                         "label": int(batch["label"][i]), "logits": logits[i]})
    return rows


def gather_videos(rows: list[dict], dist: distributed.DistInfo) -> list[dict]:
    """Every rank's rows on every rank, in dataset order; a repeated video is an error."""
    parts = distributed.gather_objects(rows, dist) if dist.world_size > 1 else [rows]
    out = [r for part in parts for r in part]
    seen: set[str] = set()
    for r in out:
        if r["uid"] in seen:
            raise RuntimeError(f"video {r['uid']} was read twice by the evaluation loader")
        seen.add(r["uid"])
    if not out:
        raise ValueError("the evaluation set has no readable labelled videos")
    # Manifest position when the shards recorded it (-1 otherwise sorts first), then shard:key.
    return sorted(out, key=lambda r: (r["index"], r["uid"]))


def score(rows: list[dict], class_names: list[str], top_k: int = 5) -> tuple[dict, list[dict], np.ndarray]:
    """``(metrics, predictions, confusion [C, C])`` of the gathered videos."""
    num_classes = len(class_names)
    logits = torch.cat([r["logits"] for r in rows])               # [sum V, C]
    if logits.shape[1] != num_classes:
        raise ValueError(f"the model scores {logits.shape[1]} classes but the evaluation set has "
                         f"{num_classes}")
    ids = [i for i, r in enumerate(rows) for _ in range(len(r["logits"]))]
    order, probs = merge_views(logits, ids)                       # [videos, C] float64
    assert order == list(range(len(rows)))
    labels = np.array([r["label"] for r in rows], dtype=np.int64)
    pred = probs.argmax(1)
    metrics: dict[str, Any] = topk_accuracy(probs, labels, ks=(1, 5))
    cm = confusion_matrix(pred, labels, num_classes)
    metrics["mean_class_accuracy"] = mean_class_accuracy(pred, labels, num_classes)
    metrics["loss"] = float(-np.mean(np.log(np.clip(probs[np.arange(len(rows)), labels], 1e-12, None))))
    metrics["num_videos"] = len(rows)
    metrics["num_views"] = int(logits.shape[0])
    support = cm.sum(1)
    metrics["per_class_accuracy"] = {name: (100.0 * cm[c, c] / support[c]) if support[c] else None
                                     for c, name in enumerate(class_names)}
    k = min(top_k, num_classes)
    predictions = []
    for r, p in zip(rows, probs):
        top = np.argsort(-p, kind="stable")[:k]
        predictions.append({"id": r["id"], "uid": r["uid"], "label": r["label"],
                            "label_name": class_names[r["label"]],
                            "top": [int(c) for c in top], "top_names": [class_names[c] for c in top],
                            "top_scores": [float(p[c]) for c in top]})
    return metrics, predictions, cm


def evaluate_views(classify: Classify, source: str, *, class_names: list[str], num_frames: int,
                   img_size: int, num_clips: int, num_crops: int, sampler: str, batch_size: int,
                   dist: distributed.DistInfo, precision: str = "fp32", num_workers: int = 0,
                   decoder: str = "decord", max_pixels: Optional[int] = None,
                   top_k: int = 5) -> tuple[dict, list[dict], np.ndarray]:
    """The whole protocol on ``source``; ``(metrics, predictions, confusion)`` on every rank."""
    from umt.data.action_loader import build_action_eval_loader
    from umt.data.loader_kit import DEFAULT_MAX_PIXELS

    loader = build_action_eval_loader(source, batch_size=batch_size, num_frames=num_frames,
                                      img_size=img_size, num_clips=num_clips, num_crops=num_crops,
                                      sampler=sampler, rank=dist.rank, world_size=dist.world_size,
                                      num_workers=num_workers, decoder=decoder,
                                      max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    rows = gather_videos(collect(classify, loader, device=dist.device, precision=precision), dist)
    metrics, predictions, cm = score(rows, class_names, top_k)
    metrics["samples_skipped"] = int(distributed.sum_over_ranks(getattr(loader, "num_skipped", 0), dist))
    metrics["protocol"] = protocol(sampler, num_frames, img_size, num_clips, num_crops)
    return metrics, predictions, cm


def evaluate_classifier(model: torch.nn.Module, cfg, *, data_cfg, class_names: list[str],
                        num_frames: int, img_size: int, dist: distributed.DistInfo,
                        precision: str = "fp32") -> dict[str, Any]:
    """Evaluation during fine-tuning (``cfg``: ``ActionEvalConfig``): flat numbers for
    ``metrics.jsonl`` and the best-checkpoint choice, plus the split's name."""
    was_training = model.training
    model.eval()
    try:
        metrics, _, _ = evaluate_views(model, cfg.source, class_names=class_names,
                                       num_frames=num_frames, img_size=img_size,
                                       num_clips=cfg.num_clips, num_crops=cfg.num_crops,
                                       sampler=data_cfg.sampler, batch_size=cfg.batch_size,
                                       dist=dist, precision=precision,
                                       num_workers=cfg.num_workers, decoder=data_cfg.decoder,
                                       max_pixels=data_cfg.max_pixels)
    finally:
        model.train(was_training)
    keep = ("top1", "top5", "mean_class_accuracy", "loss", "num_videos", "num_views", "samples_skipped")
    return {**{k: metrics[k] for k in keep}, "split": cfg.split}
