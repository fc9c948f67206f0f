"""Video-text retrieval fine-tuning: VTC + VTM from a Stage-2 checkpoint.

    umt train finetune-retrieval --config tiny                                    # CPU demo
    umt train finetune-retrieval --config b16 \\
        model.pretrained=s3://b/runs/stage2-b16/checkpoints/step_00060000.pt \\
        'data.sources=[s3://b/msrvtt-9k/dataset.json]' eval.source=s3://b/msrvtt-1k/dataset.json \\
        train.best_metric=r_mean train.output_dir=s3://b/runs/ret-msrvtt-b16
    torchrun --nproc-per-node 8 -m umt.train.finetune_retrieval --config b16 ...

As the official ``multi_modality/tasks/retrieval.py``: no teacher, no masking and no MLM/UTA;
the video encoder runs on every token of 12 frames (its 1-D sinusoid table extended to 12
frames, as the official multi-modality code) and keeps one feature per frame (official
``keep_temporal``): the VTC similarity -- in training too -- and the hard-negative weights of
VTM are means over frames of per-frame cosines. The VTC id is the video (captions of one video
are positives of each other), or with ``data.match_by=caption`` the caption (official
``has_multi_vision_gt``). ``data.caption_sampling=paragraph`` trains on each video's captions
joined (DiDeMo / ActivityNet paragraph retrieval; evaluate with ``eval.paragraph=true``).

Optimizer: AdamW, the LR as given (official 1e-5 for MSRVTT B/16), no layer decay, weight decay
0.02 on matrices and on ``temp`` (as officially). Evaluation on ``eval.source`` every
``train.eval_every`` steps with the official protocol (``umt.eval.retrieval``); with
``train.best_metric`` (e.g. ``r_mean``) the best checkpoint is kept too. ``summary.json``
reports the last checkpoint's numbers (``last``) and the best one's as ``best_on_eval``: picked
on ``eval.source`` -- an optimistic number when that is the test split, as in the official
MSRVTT recipe.

The loop (resume, checkpoints, metrics, accumulation) is ``umt.train.loop``'s; the pieces
shared with Stage 2 (the model, freezing what no loss uses, the gathered VTC, the optimizer
groups, the evaluation hook) are ``umt.train.stage2``'s.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any, Iterator, Optional, Sequence

import torch

from umt.configs.finetune_retrieval import FinetuneRetrievalConfig
from umt.configs.loader import load_config
from umt.losses import vtm_loss
from umt.models import build_from_config
from umt.models.text import load_tokenizer, tokenize
from umt.runtime import weights
from umt.runtime.common import autocast
from umt.seeds import derive_seed
from umt.train import stage2
from umt.train.loop import Context, Models, Stage, train

log = logging.getLogger("umt.train")


def match_ids(batch: dict, match_by: str) -> torch.Tensor:
    """The VTC / VTM ids of a batch ``[B]``: equal ids are positives. ``video``: the sample key
    (captions of one video share it); ``caption``: the cleaned caption text."""
    if match_by == "caption":
        return torch.tensor([derive_seed("caption-id", c) for c in batch["caption"]], dtype=torch.long)
    return torch.tensor([derive_seed("video-id", k) for k in batch["key"]], dtype=torch.long)


def build_models(cfg: FinetuneRetrievalConfig, device: torch.device) -> Models:
    m = cfg.model
    if not m.pretrained:
        log.warning("model.pretrained is not set: fine-tuning a randomly initialised video "
                    "encoder (the text side starts from %s)", m.text_encoder)
    model = build_from_config(m, weights.read_optional(m.pretrained))
    model.set_grad_checkpointing(m.grad_checkpointing)
    w = cfg.loss
    stage2.freeze_unused(model, SimpleNamespace(vtc=w.vtc, vtm=w.vtm, mlm=0.0, uta=0.0))
    return Models(model=model, extras={"tokenizer": load_tokenizer(m.text_encoder)})


def build_loader(cfg: FinetuneRetrievalConfig, ctx: Context, start: int) -> Iterator[dict]:
    from umt.data.vl_loader import build_vl_loader

    return build_vl_loader(cfg.data, batch_size=cfg.train.batch_size,
                           num_frames=cfg.model.num_frames, img_size=cfg.model.img_size,
                           seed=cfg.train.seed, rank=ctx.dist.rank,
                           world_size=ctx.dist.world_size, start_step=start)


def forward_loss(ctx: Context, batch: dict, step: int) -> tuple[torch.Tensor, dict]:
    cfg, w = ctx.cfg, ctx.cfg.loss
    video = batch["video"].to(ctx.device, non_blocking=True)             # [B, 3, T, H, W]
    idx = match_ids(batch, cfg.data.match_by).to(ctx.device)             # [B]
    ids, att = tokenize(ctx.state["tokenizer"], batch["caption"], cfg.data.max_txt_len, ctx.device)
    gen = torch.Generator(device=ctx.device).manual_seed(
        derive_seed("vtm", cfg.train.seed, step, ctx.micro, ctx.dist.rank))
    with autocast(ctx.device, cfg.train.precision):
        # With match_by=caption, two rows of one video have distinct ids: the video ids still
        # keep them from being each other's VTM negatives.
        out = ctx.model(video, ids, att, idx, uta=False, vtm=w.vtm > 0, per_frame=True,
                        generator=gen, media=match_ids(batch, "video").to(ctx.device))
        terms: dict[str, torch.Tensor] = {}
        if w.vtc > 0:
            terms["vtc"] = stage2.gathered_vtc(out, idx, w.vtc_gather_grad)
        if w.vtm > 0:
            terms["vtm"] = vtm_loss(out.vtm_logits)
    loss = sum(getattr(w, k) * v for k, v in terms.items())
    metrics = {f"loss_{k}": v.detach() for k, v in terms.items()}
    metrics["temp"] = out.temp.detach()
    if w.vtm > 0:
        metrics["vtm_rows_skipped"] = torch.tensor(float(out.vtm_skipped))
    return loss, metrics


def check_inputs(cfg: FinetuneRetrievalConfig) -> None:
    """Fail before training on data that cannot train retrieval: a dataset.json whose samples
    carry no captions."""
    from umt.data import dataset_json

    for uri in (list(cfg.data.sources) if list(cfg.data.sources) != ["synthetic"] else []):
        info = dataset_json.load(uri)
        if info.num_captions == 0:
            raise ValueError(f"{uri} holds no captions: retrieval fine-tuning trains on "
                             f"(video, caption) pairs; shard a manifest with a 'caption' column")
    if cfg.eval.source:
        info = dataset_json.load(cfg.eval.source)
        if info.num_captions == 0:
            raise ValueError(f"eval.source={cfg.eval.source} holds no captions: every "
                             f"evaluation video needs one")


def _stage(cfg: FinetuneRetrievalConfig) -> Stage:
    return Stage(name="finetune-retrieval", build_models=build_models, build_loader=build_loader,
                 forward_loss=forward_loss, param_groups=stage2.param_groups,
                 evaluate=stage2.evaluate if cfg.eval.source else None)


def main(config: Optional[str] = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    cfg = load_config(FinetuneRetrievalConfig, "finetune-retrieval", config, overrides)
    check_inputs(cfg)
    return train(_stage(cfg), cfg)


if __name__ == "__main__":
    from umt.runtime.entry import run_stage_module

    run_stage_module("finetune-retrieval")
