"""``umt eval action``: multi-view action-recognition testing of a fine-tuned classifier, or
zero-shot classification with a Stage-2 model.

    umt eval action --config b16 --model s3://b/runs/ft-k400-b16/checkpoints/best.pt \\
        --data s3://b/k400/val/dataset.json --output s3://b/evals/k400-b16        # 4 x 3 views
    umt eval action --config b16 --model ... --data s3://b/ssv2/val/dataset.json --output ... \\
        eval.num_clips=2 data.sampler=tsn                                         # SSv2: 2 x 3
    umt eval action --config b16 --zero-shot --classes k400_names.txt \\
        --model s3://b/runs/stage2-b16/checkpoints/step_00060000.pt --data ... --output ...
    torchrun --nproc-per-node 8 -m umt.eval.action_job --config b16 model.pretrained=... \\
        data.source=... train.output_dir=... [eval.zero_shot=true eval.classes=...]

``--config`` takes the ``model`` section of the ``finetune-action`` preset (frames, resolution,
sizes). Every video of ``--data`` is read once (over processes and DataLoader workers), as
``eval.num_clips`` clips (the sampler's test positions) x ``eval.num_crops`` crops; the views'
softmaxes are averaged per video (``umt.eval.action``). Files in ``--output``:

- ``metrics.json``: ``top1``, ``top5``, ``mean_class_accuracy``, ``loss``, ``num_videos``,
  ``num_views``, ``per_class_accuracy``, ``class_names``, ``confusion_matrix``, ``protocol``
  (every test setting), ``mode`` (``classifier`` | ``zero_shot``) and, zero-shot, the prompts;
- ``predictions.jsonl``: one line per video (``id``, ``label``, the top-k classes and scores);
- ``confusion_matrix.json`` and ``confusion_matrix.png`` (the ``eval.confusion_max_classes``
  most frequent classes in the picture);
- ``summary.json`` (the headline numbers) and ``config.yaml``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Optional, Sequence

import numpy as np

from umt.configs.finetune_action import EvalActionConfig
from umt.configs.loader import load_config
from umt.eval.job import run_evaluation

log = logging.getLogger("umt.eval")




def _classifier(cfg: EvalActionConfig, class_names: list[str], device):
    """The fine-tuned classifier (its head must come from the checkpoint) and mode info."""
    from umt.models import build_from_config
    from umt.runtime.weights import load_classifier_init

    m = cfg.model
    model = build_from_config(m, num_classes=m.num_classes or len(class_names))
    load_classifier_init(model, m.pretrained, head_map=m.head_map, target_classes=class_names,
                         require_head=True)
    return model.to(device).eval(), {"mode": "classifier"}


def _zero_shot(cfg: EvalActionConfig, class_names: list[str], device):
    """The Stage-2 model wrapped as a classifier over the prompts of ``class_names``."""
    from umt.eval.zero_shot import (
        ZeroShotClassifier,
        class_text_features,
        load_vl_model,
        read_class_names,
    )

    e, m = cfg.eval, cfg.model
    names = class_names
    if e.classes:
        names = read_class_names(e.classes)
        if len(names) != len(class_names):
            raise ValueError(f"eval.classes={e.classes} lists {len(names)} classes but "
                             f"{cfg.data.source} has {len(class_names)} (labels index into it)")
    model, tokenizer, arch = load_vl_model(
        m.pretrained, size_name=m.name, num_frames=m.num_frames, img_size=m.img_size,
        text_encoder=e.text_encoder, text_pool=e.text_pool,
        overrides={"embed_dim": m.embed_dim, "depth": m.depth, "num_heads": m.num_heads})
    model = model.to(device).eval()
    text = class_text_features(model, tokenizer, names, e.templates, max_txt_len=e.max_txt_len,
                               device=device, precision=cfg.train.precision)
    info = {"mode": "zero_shot", "prompt_names": names, "templates": list(e.templates),
            "text_encoder": arch["text_encoder"], "text_pool": arch["text_pool"],
            "temperature": float(model.temp.detach().clamp(0.001, 0.5)),
            "score": "mean over frames of cos(frame feature, class feature) / temperature; class "
                     "feature = normalised mean of the templates' normalised text features"}
    return ZeroShotClassifier(model, text).to(device).eval(), info


def confusion_png(cm: np.ndarray, names: list[str], limit: int) -> bytes:
    """The confusion matrix of the ``limit`` most frequent classes (rows: true, columns:
    predicted), counts written in the cells when they fit."""
    from umt.report import figures

    plt = figures.pyplot()

    support = cm.sum(1)
    keep = sorted(sorted(range(len(names)), key=lambda i: (-support[i], i))[:limit])
    sub = cm[np.ix_(keep, keep)]
    n = len(keep)
    side = min(14.0, 3.0 + 0.4 * n)
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    image = ax.imshow(sub, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    labels = [names[i][:30] for i in keep]
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if sub[i, j]:
                    ax.text(j, i, str(sub[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if sub[i, j] > sub.max() / 2 else "black")
    shown = "" if n == len(names) else f" ({n} most frequent of {len(names)} classes)"
    ax.set_title(f"confusion matrix{shown}", fontsize=9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return figures.png_bytes(fig)


def _body(cfg: EvalActionConfig, dist) -> dict:
    from umt import storage
    from umt.data.action_loader import dataset_classes
    from umt.eval.action import evaluate_views

    class_names = dataset_classes(cfg.data.source)
    build = _zero_shot if cfg.eval.zero_shot else _classifier
    classify, info = build(cfg, class_names, dist.device)
    e, m = cfg.eval, cfg.model
    metrics, predictions, cm = evaluate_views(
        classify, cfg.data.source, class_names=class_names, num_frames=m.num_frames,
        img_size=m.img_size, num_clips=e.num_clips, num_crops=e.num_crops,
        sampler=cfg.data.sampler, batch_size=e.batch_size, dist=dist,
        precision=cfg.train.precision, num_workers=cfg.data.num_workers,
        decoder=cfg.data.decoder, max_pixels=cfg.data.max_pixels, top_k=e.top_k)
    out = cfg.train.output_dir
    result = {"task": "action", "source": cfg.data.source, "split": e.split, **info, **metrics,
              "num_classes": len(class_names), "class_names": class_names,
              "confusion_matrix": cm.tolist(),
              "files": {"predictions": "predictions.jsonl", "confusion_json": "confusion_matrix.json",
                        "confusion_png": "confusion_matrix.png"}}
    if dist.is_main:
        lines = "".join(json.dumps(p) + "\n" for p in predictions)
        storage.write_bytes(storage.join(out, "predictions.jsonl"), lines.encode())
        storage.write_bytes(storage.join(out, "confusion_matrix.json"), json.dumps(
            {"class_names": class_names, "matrix": cm.tolist(),
             "rows": "true class", "columns": "predicted class"}).encode())
        storage.write_bytes(storage.join(out, "confusion_matrix.png"),
                            confusion_png(cm, class_names, e.confusion_max_classes))
    return result


def headline(result: dict) -> dict:
    return {k: result[k] for k in ("top1", "top5", "mean_class_accuracy", "num_videos", "num_views")}


def main(config: Optional[str] = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    cfg = load_config(EvalActionConfig, "eval-action", config, overrides)
    return run_evaluation("action", cfg, _body, headline)


if __name__ == "__main__":
    from umt.runtime.entry import run_stage_module

    run_stage_module("eval-action")
