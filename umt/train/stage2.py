"""Stage 2: vision-language pretraining -- VTC + VTM + MLM with a BERT text encoder, while UTA
with the frozen CLIP teacher continues on the masked video.

    umt train stage2 --config tiny                                   # CPU demo
    umt train stage2 --config b16 model.pretrained=s3://b/runs/stage1-b16/checkpoints/step_00064000.pt \\
        'data.sources=[s3://b/webvid/dataset.json,s3://b/cc3m/dataset.json]' \\
        eval.source=s3://b/msrvtt-1k/dataset.json train.output_dir=s3://b/runs/stage2-b16
    torchrun --nproc-per-node 8 -m umt.train.stage2 --config b16 ...

Each step is one media type (all ranks agree): a video batch (4 frames, 80% semantic masking)
or an image batch (T=1, 50%). The teacher gives the attention for the mask and the UTA targets;
the model runs the video encoder once on the visible tokens (fusion tokens, pooled VTC feature,
UTA outputs), the text-only BERT layers on the captions, the fusion layers on the VTM pairs
(one hard negative of each kind per row, from the local batch, never a row of the same media) and on the MLM-masked captions.
The loss is the weighted sum (default weights 1); each term is logged per media type. The loop
(resume, checkpoints, metrics, accumulation) is ``umt.train.loop``'s; zero-shot retrieval on
``eval.source`` runs every ``train.eval_every`` steps (``umt.eval.retrieval``).

Noise is drawn for the whole global batch from one stream per step (masks, MLM), so a sample's
noise does not depend on how the batch is split; VTM negatives come from each rank's local
batch, as officially, so they do depend on it.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn as nn

from umt.configs.loader import load_config
from umt.configs.stage2 import Stage2Config
from umt.losses import mlm_loss, mlm_mask, uta_loss, vtc_loss, vtm_loss
from umt.masking import make_mask, visible_count
from umt.models import build_from_config
from umt.models.pretrain import gather_tokens, visible_indices
from umt.models.text import load_tokenizer, tokenize
from umt.runtime import weights
from umt.runtime.common import autocast
from umt.runtime.distributed import all_gather_with_grad
from umt.seeds import derive_seed
from umt.train.flops import stage2_flops_per_sample
from umt.train.loop import Context, Models, Stage, train
from umt.train.optim import param_groups as default_param_groups
from umt.train.stage1 import build_teacher, check_token_grid

log = logging.getLogger("umt.train")


def needs_teacher(cfg: Stage2Config) -> bool:
    """The teacher gives the UTA targets and the attention of semantic masks."""
    return cfg.loss.uta > 0 or "attention" in (cfg.mask.video_type, cfg.mask.image_type)


def freeze_unused(model: nn.Module, w) -> int:
    """A loss whose weight is 0 runs nothing; the parameters only it uses are frozen, so DDP
    (which wants a gradient for every trained parameter) and the optimizer leave them out.
    They stay in the checkpoint, in the official layout. ``w``: the loss weights (``vtc``,
    ``vtm``, ``mlm``, ``uta`` attributes). Returns the number frozen."""
    text = model.text_encoder
    unused: list[nn.Module | nn.Parameter] = []
    if w.uta == 0:
        unused.append(model.vision_encoder.clip_decoder)
    if w.vtm == 0:
        unused.append(model.itm_head)
    if w.mlm == 0:  # the decoder weight is the (tied) word embedding: only the head's own parts
        unused += [text.cls.predictions.transform, text.cls.predictions.bias]
    if w.vtm == 0 and w.mlm == 0:
        unused += list(text.bert.encoder.layer[text.fusion_layer:])
    if w.vtc == 0:
        unused += [model.vision_proj, model.text_proj, model.temp]
    params = [p for u in unused for p in ([u] if isinstance(u, nn.Parameter) else u.parameters())]
    for p in params:
        p.requires_grad_(False)
    return len(params)


def build_models(cfg: Stage2Config, device: torch.device) -> Models:
    m = cfg.model
    teacher = build_teacher(cfg) if needs_teacher(cfg) else None
    model = build_from_config(
        m, weights.read_optional(m.pretrained),
        teacher_dim=m.teacher_dim or (teacher.dim if teacher is not None else None))
    if teacher is not None and model.vision_encoder.teacher_dim != teacher.dim:
        raise ValueError(f"model.teacher_dim={m.teacher_dim} but the teacher's output is {teacher.dim} wide")
    if teacher is not None:
        check_token_grid(model.vision_encoder.encoder.patch_embed.grid, m.tubelet_size, teacher,
                         cfg.teacher.input_resolution)
    model.set_grad_checkpointing(m.grad_checkpointing)
    freeze_unused(model, cfg.loss)
    frozen = {"teacher": teacher.to(device)} if teacher is not None else {}
    return Models(model=model, frozen=frozen, extras={"tokenizer": load_tokenizer(m.text_encoder)})


def build_loader(cfg: Stage2Config, ctx: Context, start: int) -> Iterator[dict]:
    from umt.data.vl_loader import build_vl_loader

    return build_vl_loader(cfg.data, batch_size=cfg.train.batch_size,
                           num_frames=cfg.model.num_frames, img_size=cfg.model.img_size,
                           seed=cfg.train.seed, rank=ctx.dist.rank,
                           world_size=ctx.dist.world_size, start_step=start)


def param_groups(cfg: Stage2Config, model: nn.Module) -> list[dict]:
    """Weight decay on matrices, as the official optimizer -- which also decays the 0-dim
    ``temp`` (it exempts only 1-D tensors and biases); we follow it."""
    groups = default_param_groups(model, cfg.optim.weight_decay)
    anyway = {id(p) for n, p in model.named_parameters() if n in model.weight_decay_anyway()}
    decay, no_decay = groups
    moved = [p for p in no_decay["params"] if id(p) in anyway]
    no_decay["params"] = [p for p in no_decay["params"] if id(p) not in anyway]
    decay["params"] = decay["params"] + moved
    return groups


def _mask(ctx: Context, attn: Optional[torch.Tensor], media: str, shape: tuple[int, int, int],
          step: int) -> tuple[torch.Tensor, int]:
    """``(bool [B, T*HW], visible tokens per sample)`` for this micro-batch, the noise drawn
    for the whole global batch from one stream."""
    mc = ctx.cfg.mask
    kind, ratio = (mc.video_type, mc.video_ratio) if media == "video" else (mc.image_type, mc.image_ratio)
    b, t, hw = shape
    gen = torch.Generator(device=ctx.device).manual_seed(ctx.step_seed(f"mask-{media}", step))
    noise = torch.rand((ctx.global_rows(b), t, hw), generator=gen, device=ctx.device)
    if attn is None:
        attn = torch.ones(shape, device=ctx.device)  # tube / random masks ignore it
    return make_mask(kind, ratio, attn, uniform=noise[ctx.batch_rows(b)]), visible_count(kind, ratio, t, hw)


def _mlm_inputs(ctx: Context, ids: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MLM-masked ids and labels; the draws are made for the global batch (rows of all ranks
    and micro-batches), so they do not depend on how the batch is split."""
    tok = ctx.state["tokenizer"]
    b = ids.shape[0]
    full = torch.full((ctx.global_rows(b), ids.shape[1]), tok.pad_token_id, dtype=ids.dtype)
    rows = ctx.batch_rows(b)
    full[rows] = ids.cpu()
    gen = torch.Generator().manual_seed(ctx.step_seed("mlm", step))
    masked, labels = mlm_mask(full, len(tok), tok.pad_token_id, tok.cls_token_id, tok.mask_token_id,
                              prob=ctx.cfg.loss.mlm_prob, generator=gen)
    return masked[rows].to(ctx.device), labels[rows].to(ctx.device)


def gathered_vtc(out, idx: torch.Tensor, gather_grad: str) -> torch.Tensor:
    """VTC over the batch of all ranks (features and ids all-gathered; ``gather_grad``:
    ``loss.vtc_gather_grad``, 'official' or 'full')."""
    full = gather_grad == "full"
    return vtc_loss(all_gather_with_grad(out.video_feat, sum_grads=full),
                    all_gather_with_grad(out.text_feat, sum_grads=full),
                    all_gather_with_grad(idx), out.temp)


def forward_loss(ctx: Context, batch: dict, step: int) -> tuple[torch.Tensor, dict]:
    cfg, w = ctx.cfg, ctx.cfg.loss
    media = batch["media"]
    video = batch["video"].to(ctx.device, non_blocking=True)             # [B, 3, T, H, W]
    idx = batch["sample_id"].to(ctx.device)                              # [B]
    media_ids = batch["media_id"].to(ctx.device) if "media_id" in batch else None  # [B]
    ids, att = tokenize(ctx.state["tokenizer"], batch["caption"], cfg.data.max_txt_len, ctx.device)

    teacher = ctx.frozen.get("teacher")
    targets = attn = None
    if teacher is not None:
        targets, attn = teacher(video)                                   # [K,B,N,C], [B,T,HW]
    grid = ctx.raw.vision_encoder.encoder.patch_embed.grid
    t = ctx.raw.frames_of(video)
    mask, n_vis = _mask(ctx, attn, media, (video.shape[0], t, grid[1] * grid[2]), step)
    vis = visible_indices(mask, n_vis)                                   # [B, N_vis], no sync
    mlm_ids = mlm_labels = None
    if w.mlm > 0:
        mlm_ids, mlm_labels = _mlm_inputs(ctx, ids, step)
    gen = torch.Generator(device=ctx.device).manual_seed(
        derive_seed("vtm", cfg.train.seed, step, ctx.micro, ctx.dist.rank))
    with autocast(ctx.device, cfg.train.precision):
        out = ctx.model(video, ids, att, idx, mask=mask, visible_idx=vis, uta=w.uta > 0,
                        vtm=w.vtm > 0, mlm_input_ids=mlm_ids, mlm_labels=mlm_labels, generator=gen,
                        media=media_ids)
        terms: dict[str, torch.Tensor] = {}
        if w.vtc > 0:
            terms["vtc"] = gathered_vtc(out, idx, cfg.loss.vtc_gather_grad)
        if w.vtm > 0:
            terms["vtm"] = vtm_loss(out.vtm_logits)
        if w.mlm > 0:
            terms["mlm"] = mlm_loss(out.mlm_logits, out.mlm_targets)
        if w.uta > 0:
            terms["uta"] = uta_loss(out.uta, gather_tokens(targets, vis), kind=cfg.loss.uta_kind)
    loss = sum(getattr(w, k) * v for k, v in terms.items())
    metrics = {f"{media}/loss_{k}": v.detach() for k, v in terms.items()}
    metrics.update({f"loss_{k}": v.detach() for k, v in terms.items()})
    metrics["temp"] = out.temp.detach()
    if w.vtm > 0:
        metrics["vtm_rows_skipped"] = torch.tensor(float(out.vtm_skipped))
    return loss, metrics


def evaluate(ctx: Context, step: int) -> dict[str, float]:
    """Zero-shot retrieval on ``eval.source`` (the official protocol, ``umt.eval.retrieval``)."""
    from umt.eval.retrieval import evaluate_retrieval

    return evaluate_retrieval(ctx.raw, ctx.cfg.eval.source, ctx.state["tokenizer"], ctx.cfg.eval,
                              dist=ctx.dist, precision=ctx.cfg.train.precision)


def flops(ctx: Context, batch: dict) -> float:
    """Model FLOPs of one micro-batch (``umt.train.flops``; MLM positions counted as
    ``loss.mlm_prob`` x the padded caption length), for the loop's ``tflops`` / ``mfu``."""
    video, media = batch["video"], batch["media"]
    key = ("flops_per_sample", media, video.shape[2])
    if key not in ctx.state:
        cfg, w = ctx.cfg, ctx.cfg.loss
        grid = ctx.raw.vision_encoder.encoder.patch_embed.grid
        kind, ratio = ((cfg.mask.video_type, cfg.mask.video_ratio) if media == "video"
                       else (cfg.mask.image_type, cfg.mask.image_ratio))
        t = ctx.raw.frames_of(video)
        n_vis = visible_count(kind, ratio, t, grid[1] * grid[2])
        teacher = ctx.frozen.get("teacher")
        ctx.state[key] = stage2_flops_per_sample(
            ctx.raw, teacher, video.shape[2], n_vis, cfg.data.max_txt_len, vtm=w.vtm > 0,
            mlm=w.mlm > 0, mlm_prob=w.mlm_prob, uta=w.uta > 0)
    return ctx.state[key] * video.shape[0]


def _stage(cfg: Stage2Config) -> Stage:
    return Stage(name="stage2", build_models=build_models, build_loader=build_loader,
                 forward_loss=forward_loss, param_groups=param_groups,
                 evaluate=evaluate if cfg.eval.source else None, flops=flops)


def main(config: Optional[str] = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    cfg = load_config(Stage2Config, "stage2", config, overrides)
    return train(_stage(cfg), cfg)


if __name__ == "__main__":
    from umt.runtime.entry import run_stage_module

    run_stage_module("stage2")
