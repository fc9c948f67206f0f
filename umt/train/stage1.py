"""Stage 1: video-only Unmasked Teacher pretraining (semantic masking + UTA).

    umt train stage1 --config tiny                       # CPU demo, seconds per step
    umt train stage1 --config b16 data.source=s3://bucket/k710/dataset.json \\
        train.output_dir=s3://bucket/runs/umt-b16        # one process per GPU below
    torchrun --nproc-per-node 8 -m umt.train.stage1 --config b16 train.batch_size=64 ...

Each step: the frozen CLIP teacher sees the whole clip and gives per-layer targets and its
class-token attention; 80% of the tokens are masked with the visible ones drawn in proportion
to that attention; the student runs on the visible tokens only and its last K layers are
aligned to the teacher's at the same positions. The loop, resume and checkpoints are
``umt.train.loop``'s.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import torch

from umt.configs import Stage1Config, load_config
from umt.data import build_pretrain_loader
from umt.losses import uta_loss
from umt.masking import make_mask, visible_count
from umt.models import CLIPTeacher, build_from_config
from umt.models.pretrain import gather_tokens, visible_indices
from umt.models.teacher import names_weights_file
from umt.runtime import weights
from umt.runtime.common import autocast
from umt.train.flops import stage1_flops_per_clip
from umt.train.loop import Context, Models, Stage, train


def build_teacher(cfg: Any) -> CLIPTeacher:
    """The frozen CLIP teacher of ``cfg.teacher`` (also used by Stage 2)."""
    t = cfg.teacher
    pretrained = t.pretrained  # an open_clip tag ('openai') is open_clip's to fetch
    if names_weights_file(pretrained):  # a file, local or s3://: read here, never by the model
        pretrained = weights.read_checkpoint(pretrained)
    return CLIPTeacher(t.model_name, pretrained, t.return_layers, t.input_resolution,
                       vision_cfg=dict(t.vision_cfg), embed_dim=t.embed_dim,
                       autocast_dtype=torch.bfloat16 if cfg.train.precision == "bf16" else None)


def check_token_grid(grid: tuple[int, int, int], tubelet_size: int, teacher: CLIPTeacher,
                     input_resolution: int) -> None:
    """The student's tokens and the teacher's patches must be the same positions."""
    if tubelet_size != 1 or tuple(grid[1:]) != (teacher.grid, teacher.grid):
        raise ValueError(f"student token grid {grid} must be frames x {teacher.grid} x {teacher.grid} "
                         f"(teacher input {input_resolution} / patch {teacher.patch_size}) with tubelet 1")


def build_models(cfg: Stage1Config, device: torch.device) -> Models:
    """The frozen teacher and the student, checked to share one token grid."""
    m = cfg.model
    teacher = build_teacher(cfg)
    student = build_from_config(m, weights.read_optional(m.pretrained), teacher_dim=teacher.dim)
    check_token_grid(student.encoder.patch_embed.grid, m.tubelet_size, teacher, cfg.teacher.input_resolution)
    student.set_grad_checkpointing(m.grad_checkpointing)
    return Models(model=student, frozen={"teacher": teacher.to(device)})


def build_loader(cfg: Stage1Config, ctx: Context, start: int) -> Iterator[dict]:
    return build_pretrain_loader(cfg.data, batch_size=cfg.train.batch_size,
                                 num_frames=cfg.model.num_frames, img_size=cfg.model.img_size,
                                 seed=cfg.train.seed, rank=ctx.dist.rank,
                                 world_size=ctx.dist.world_size, start_step=start)


def masked_uta(ctx: Context, video: torch.Tensor, step: int, mask_cfg: Any, model=None,
               loss_kind: str = "l2") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher forward, semantic mask and the UTA loss of ``model`` on one micro-batch.

    ``video [B, 3, T, H, W]`` -> ``(loss, mask bool [B, N], visible_idx [B, N_vis])``. The mask
    noise comes from one stream per step for the global batch, so a clip's mask does not depend
    on how the batch is split across processes and micro-batches (or on resuming).
    """
    targets, attn = ctx.frozen["teacher"](video)                          # [K,B,N,C], [B,T,HW]
    n_vis = visible_count(mask_cfg.type, mask_cfg.ratio, attn.shape[1], attn.shape[2])
    gen = torch.Generator(device=ctx.device).manual_seed(ctx.step_seed("mask", step))
    noise = torch.rand((ctx.global_batch, *attn.shape[1:]), generator=gen, device=ctx.device)
    mask = make_mask(mask_cfg.type, mask_cfg.ratio, attn, uniform=noise[ctx.batch_rows()])  # [B, N]
    idx = visible_indices(mask, n_vis)                                    # [B, N_vis], no sync
    with autocast(ctx.device, ctx.cfg.train.precision):
        out = (model or ctx.model)(video, mask, visible_idx=idx)          # [K, B, N_vis, C]
        loss = uta_loss(out, gather_tokens(targets, idx), kind=loss_kind)
    return loss, mask, idx


def forward_loss(ctx: Context, batch: dict, step: int) -> tuple[torch.Tensor, dict]:
    video = batch["video"].to(ctx.device, non_blocking=True)              # [B, 3, T, H, W]
    loss, _, _ = masked_uta(ctx, video, step, ctx.cfg.mask, loss_kind=ctx.cfg.loss)
    return loss, {}


def flops(ctx: Context, batch: dict) -> float:
    """Model FLOPs of one micro-batch (teacher forward, student forward + backward on the
    visible tokens; ``umt.train.flops``), for the loop's ``tflops`` / ``mfu``."""
    b, _, t, h, _ = batch["video"].shape
    key = ("flops_per_clip", t, h)
    if key not in ctx.state:
        grid = ctx.raw.encoder.patch_embed.grid
        n_vis = visible_count(ctx.cfg.mask.type, ctx.cfg.mask.ratio, grid[0], grid[1] * grid[2])
        ctx.state[key] = stage1_flops_per_clip(ctx.raw, ctx.frozen["teacher"], t, n_vis)
    return ctx.state[key] * b


STAGE = Stage(name="stage1", build_models=build_models, build_loader=build_loader,
              forward_loss=forward_loss, flops=flops)


def main(config: Optional[str] = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    return train(STAGE, load_config(Stage1Config, "stage1", config, overrides))


if __name__ == "__main__":
    from umt.runtime.entry import run_stage_module

    run_stage_module("stage1")
