"""Action-recognition fine-tuning: a classifier (mean-pooled tokens -> fc_norm -> head) on the
video encoder, the official single-modality recipe.

    umt train finetune-action --config tiny                      # CPU demo (synthetic clips)
    umt train finetune-action --config b16 model.pretrained=s3://b/runs/stage1-b16/checkpoints/step_00064000.pt \\
        data.source=s3://b/k710/train/dataset.json eval.source=s3://b/k710/val/dataset.json \\
        train.output_dir=s3://b/runs/ft-k710-b16
    torchrun --nproc-per-node 8 -m umt.train.finetune_action --config b16 ...
    # SSv2-style (temporal) data: data.sampler=tsn augment.flip=false
    # K400 from a K710 fine-tune: model.pretrained=<k710 ckpt> model.head_map=k710_to_k400.json

It starts from a Stage-1 or Stage-2 checkpoint (the video encoder; ``fc_norm`` and the head start
fresh, head init x 0.001) or a fine-tuned classifier (its head too, directly or through
``model.head_map``), ours or official; frames and resolution may differ from pretraining (the
model interpolates its position table). Each step: ``train.batch_size`` views (``batch_size /
augment.num_sample`` decoded videos, ``umt.data.action_loader``), Mixup/CutMix + label
smoothing on the device (``ClipMixup``, drawn per (seed, step, micro-batch, rank)), timm's
``SoftTargetCrossEntropy``; AdamW with the official layer-wise LR decay
(``umt.train.optim.param_groups``) and a cosine schedule with warmup, the LR scaled by the
views-counting global batch / 256. With ``eval.source`` the held-out set is evaluated (one view
per video, as the official validation) every ``train.eval_every`` steps and at the end, and
``checkpoints/best.pt`` keeps the best by ``train.best_metric``. The loop (resume,
checkpoints, metrics, accumulation) is ``umt.train.loop``'s; the multi-view test is ``umt eval
action``.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from umt.configs.finetune_action import FinetuneActionConfig
from umt.configs.loader import load_config
from umt.runtime.common import autocast
from umt.seeds import derive_seed
from umt.train.loop import Context, Models, Stage, train
from umt.train.optim import param_groups as optim_param_groups

log = logging.getLogger("umt.train")


def check_inputs(cfg: FinetuneActionConfig) -> tuple[list[str], int]:
    """Everything that would fail later, now: ``(class names, head size)``."""
    from umt.data.action_loader import dataset_classes

    classes = dataset_classes(cfg.data.source)
    num_classes = cfg.model.num_classes or len(classes)
    if num_classes < len(classes):
        raise ValueError(f"model.num_classes={num_classes} but {cfg.data.source} has "
                         f"{len(classes)} classes: labels {num_classes}..{len(classes) - 1} would be "
                         f"outside the head")
    if cfg.eval.source:
        if cfg.eval.source == "synthetic":
            raise ValueError("eval.source=synthetic is not supported: evaluate on a dataset.json "
                             "(e.g. synthetic clips written by umt.data.synthetic.write_dataset "
                             "and sharded)")
        held_out = dataset_classes(cfg.eval.source, "eval.source")
        if held_out != classes:
            raise ValueError(f"eval.source={cfg.eval.source} has other classes than the training "
                             f"set ({len(held_out)} vs {len(classes)}; first difference: "
                             f"{next((a, b) for a, b in zip(held_out + [None], classes + [None]) if a != b)})")
    return classes, num_classes


def build_models(cfg: FinetuneActionConfig, device: torch.device) -> Models:
    from umt.data.clip_augment import ClipMixup
    from umt.models import build_from_config
    from umt.runtime.weights import load_classifier_init

    classes, num_classes = check_inputs(cfg)
    m = cfg.model
    model = build_from_config(m, num_classes=num_classes)  # random init; the checkpoint next
    if m.pretrained:
        load_classifier_init(model, m.pretrained, head_map=m.head_map, target_classes=classes)
    elif m.head_map:
        raise ValueError("model.head_map is set but model.pretrained is not: a head map needs "
                         "the checkpoint whose head it maps")
    model.set_grad_checkpointing(m.grad_checkpointing)
    return Models(model=model, extras={"classes": classes, "num_classes": num_classes,
                                       "mixup": ClipMixup.from_config(cfg.augment, num_classes)})


def build_loader(cfg: FinetuneActionConfig, ctx: Context, start: int) -> Iterator[dict]:
    from umt.data.action_loader import build_action_loader

    return build_action_loader(cfg.data, cfg.augment, batch_size=cfg.train.batch_size,
                               num_frames=cfg.model.num_frames, img_size=cfg.model.img_size,
                               seed=cfg.train.seed, rank=ctx.dist.rank,
                               world_size=ctx.dist.world_size, start_step=start)


def param_groups(cfg: FinetuneActionConfig, model: nn.Module) -> list[dict]:
    """Official layer-wise LR decay (``optim.layer_decay``; None = off) and weight decay."""
    return optim_param_groups(model, cfg.optim.weight_decay, cfg.optim.layer_decay)


def forward_loss(ctx: Context, batch: dict, step: int) -> tuple[torch.Tensor, dict]:
    from timm.loss import SoftTargetCrossEntropy

    cfg = ctx.cfg
    video = batch["video"].to(ctx.device, non_blocking=True)             # [B, 3, T, S, S] views
    label = batch["label"].to(ctx.device, non_blocking=True)             # [B]
    # One Mixup/CutMix draw per (step, micro-batch, rank), as officially per GPU batch.
    rng = np.random.default_rng(derive_seed("mixup", cfg.train.seed, step, ctx.micro, ctx.dist.rank))
    video, target = ctx.state["mixup"](video, label, rng)                # target [B, C] soft
    with autocast(ctx.device, cfg.train.precision):
        logits = ctx.model(video)                                        # [B, C]
    loss = SoftTargetCrossEntropy()(logits.float(), target)
    top1 = (logits.detach().argmax(1) == label).float().mean() * 100.0   # vs the unmixed labels
    return loss, {"train_top1": top1}


def evaluate(ctx: Context, step: int) -> dict[str, Any]:
    """Single-view accuracy on ``eval.source`` (``umt.eval.action``)."""
    from umt.eval.action import evaluate_classifier

    cfg = ctx.cfg
    return evaluate_classifier(ctx.raw, cfg.eval, data_cfg=cfg.data, class_names=ctx.state["classes"],
                               num_frames=cfg.model.num_frames, img_size=cfg.model.img_size,
                               dist=ctx.dist, precision=cfg.train.precision)


def summary(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {"num_classes": ctx.state["num_classes"], "classes": ctx.state["classes"]}
    if ctx.cfg.eval.source:
        out["eval_split"] = ctx.cfg.eval.split
    return out


def _stage(cfg: FinetuneActionConfig) -> Stage:
    return Stage(name="finetune-action", build_models=build_models, build_loader=build_loader,
                 forward_loss=forward_loss, param_groups=param_groups,
                 evaluate=evaluate if cfg.eval.source else None, summary=summary)


def main(config: Optional[str] = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    cfg = load_config(FinetuneActionConfig, "finetune-action", config, overrides)
    return train(_stage(cfg), cfg)


if __name__ == "__main__":
    from umt.runtime.entry import run_stage_module

    run_stage_module("finetune-action")
