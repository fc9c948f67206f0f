"""AVA v2.2 spatio-temporal action detection fine-tuning: per-box action logits on the video
encoder (temporal mean of the token grid, RoIAlign of each person box, max pool, a linear
head; ``umt.models.box_head``), sigmoid BCE, the official recipe.

    umt train finetune-ava --config tiny                         # CPU demo (synthetic clips)
    umt train finetune-ava --config b16 model.pretrained=s3://b/runs/ft-k710-b16/checkpoints/best.pt \\
        train.output_dir=s3://b/runs/ft-ava-b16
    torchrun --nproc-per-node 8 -m umt.train.finetune_ava --config b16 ...

It starts from a Stage-1 / Stage-2 checkpoint, a fine-tuned classifier (the official recipe:
the K710 model; its ``fc_norm`` is dropped, ``norm`` and the 80-way head start fresh, head init
x 0.001) or an AVA checkpoint (ours or the official release's layout, strictly). Each step:
``train.batch_size`` keyframe clips per process with their ground-truth boxes (at most
``data.max_boxes`` per clip, jittered as the official ``sample_box``), loss = BCE with logits
averaged over boxes and classes, times the number of boxes (the official
``train_class_batch``). AdamW with layer-wise LR decay, cosine schedule with warmup. With
``eval.source`` the held-out clips are scored with the frame mAP@0.5 (``umt.eval.ava``) every
``train.eval_every`` steps and at the end; ``checkpoints/best.pt`` keeps the best ``mAP``. The
loop (resume, checkpoints, metrics, accumulation, DDP) is ``umt.train.loop``'s.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from umt.configs.finetune_ava import FinetuneAvaConfig
from umt.configs.loader import load_config
from umt.runtime.common import autocast
from umt.train.loop import Context, Models, Stage, train
from umt.train.optim import param_groups as optim_param_groups

log = logging.getLogger("umt.train")


def build_models(cfg: FinetuneAvaConfig, device: torch.device) -> Models:
    from umt.models.box_head import build_box_model, load_box_state_dict
    from umt.models.checkpoint import state_dict_of
    from umt.models.registry import model_kwargs
    from umt.runtime.weights import read_checkpoint

    m = cfg.model
    model = build_box_model(m.name, **model_kwargs(m))
    if m.pretrained:
        sd, source = state_dict_of(read_checkpoint(m.pretrained))
        report = load_box_state_dict(model, sd, source)
        log.info("loaded %s (%s): ignored %s; left at init %s", source, report.kind,
                 report.dropped, report.fresh)
    model.set_grad_checkpointing(m.grad_checkpointing)
    return Models(model=model)


def build_loader(cfg: FinetuneAvaConfig, ctx: Context, start: int) -> Iterator[dict]:
    from umt.data.ava import build_synthetic_loader

    if cfg.data.source != "synthetic":
        raise ValueError(f"data.source={cfg.data.source!r}: only the synthetic keyframe clips "
                         f"are supported yet (umt shard does not write AVA clips yet)")
    return build_synthetic_loader(cfg.data, batch_size=cfg.train.batch_size,
                                  num_frames=cfg.model.num_frames, img_size=cfg.model.img_size,
                                  num_classes=cfg.model.num_classes, seed=cfg.train.seed,
                                  rank=ctx.dist.rank, world_size=ctx.dist.world_size,
                                  start_step=start)


def param_groups(cfg: FinetuneAvaConfig, model: nn.Module) -> list[dict]:
    return optim_param_groups(model, cfg.optim.weight_decay, cfg.optim.layer_decay)


def _train_boxes(cfg: FinetuneAvaConfig, batch: dict, seed: int):
    """At most ``data.max_boxes`` boxes per clip (a random subset, official ``sample_box``),
    jittered."""
    from umt.models.box_head import jitter_boxes

    g = torch.Generator().manual_seed(seed)
    keep = []
    index = batch["batch_index"]
    for b in index.unique().tolist():
        rows = torch.nonzero(index == b).flatten()
        if len(rows) > cfg.data.max_boxes:
            rows = rows[torch.randperm(len(rows), generator=g)[:cfg.data.max_boxes]]
        keep.append(rows)
    keep = torch.cat(keep) if keep else torch.zeros(0, dtype=torch.long)
    boxes = jitter_boxes(batch["boxes"][keep], g, tuple(cfg.data.box_jitter))
    return boxes, index[keep], batch["labels"][keep]


def forward_loss(ctx: Context, batch: dict, step: int) -> tuple[torch.Tensor, dict]:
    from umt.seeds import derive_seed

    cfg = ctx.cfg
    seed = derive_seed("box-jitter", cfg.train.seed, step, ctx.micro, ctx.dist.rank)
    boxes, index, labels = _train_boxes(cfg, batch, seed)
    video = batch["video"].to(ctx.device, non_blocking=True)            # [B, 3, T, S, S]
    with autocast(ctx.device, cfg.train.precision):
        logits = ctx.model(video, boxes.to(ctx.device), index.to(ctx.device))  # [K, C]
    labels = labels.to(ctx.device)                                       # [K, C] multi-hot
    # Official train_class_batch: mean BCE over boxes and classes, times the number of boxes.
    loss = F.binary_cross_entropy_with_logits(logits.float(), labels) * logits.shape[0]
    return loss, {"boxes": torch.tensor(float(logits.shape[0]))}


def evaluate(ctx: Context, step: int) -> dict[str, Any]:
    """Frame mAP@0.5 on the held-out synthetic clips (every rank scores all of them)."""
    from umt.data.ava import SYNTHETIC_ACTIONS, synthetic_keyframes
    from umt.eval.ava import MAP_KEY, clip_metrics

    cfg = ctx.cfg
    d, e = cfg.data, cfg.eval
    clips = synthetic_keyframes(e.synthetic_seed, e.synthetic_size, frames=d.synthetic_frames,
                                resolution=d.synthetic_resolution, people=d.synthetic_people)
    metrics, _, _ = clip_metrics(
        ctx.raw, clips, list(SYNTHETIC_ACTIONS), num_frames=cfg.model.num_frames,
        img_size=cfg.model.img_size, sampling_rate=d.sampling_rate,
        num_classes=cfg.model.num_classes, box_threshold=e.box_threshold,
        action_threshold=e.action_threshold, batch_size=e.batch_size, device=ctx.device,
        precision=cfg.train.precision, seed=e.synthetic_seed)
    return {"mAP": metrics["mAP"], "random_mAP": metrics["random_mAP"],
            "frame_map": metrics[MAP_KEY]}


def summary(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {"num_classes": ctx.cfg.model.num_classes}
    if ctx.cfg.eval.source:
        out["eval_split"] = ctx.cfg.eval.split
    return out


def _stage(cfg: FinetuneAvaConfig) -> Stage:
    return Stage(name="finetune-ava", build_models=build_models, build_loader=build_loader,
                 forward_loss=forward_loss, param_groups=param_groups,
                 evaluate=evaluate if cfg.eval.source else None, summary=summary)


def main(config: Optional[str] = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    cfg = load_config(FinetuneAvaConfig, "finetune-ava", config, overrides)
    return train(_stage(cfg), cfg)


if __name__ == "__main__":
    from umt.runtime.entry import run_stage_module

    run_stage_module("finetune-ava")
