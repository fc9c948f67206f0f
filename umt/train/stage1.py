"""Stage 1: video-only Unmasked Teacher pretraining (semantic masking + UTA).

    umt train stage1 --config tiny                       # CPU demo, seconds per step
    umt train stage1 --config b16 data.source=s3://bucket/k710/dataset.json \
        train.output_dir=s3://bucket/runs/umt-b16        # one process per GPU below
    torchrun --nproc-per-node 8 -m umt.train.stage1 --config b16 train.batch_size=64 ...

Each step: the frozen CLIP teacher sees the whole clip and gives per-layer targets and its
class-token attention; 80% of the tokens are masked with the visible ones drawn in proportion
to that attention; the student runs on the visible tokens only and its last K layers are
aligned to the teacher's at the same positions. Resumes from ``<output_dir>/checkpoints``.
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from umt.configs import Stage1Config, load_config, to_yaml
from umt.data import build_pretrain_loader
from umt.losses import uta_loss
from umt.masking import make_mask, visible_count
from umt.models import CLIPTeacher, create_model
from umt.models.pretrain import gather_tokens, visible_indices
from umt.train import checkpoint, distributed
from umt.train.common import (NonFiniteGuard, RunFiles, autocast, build_optimizer,
                              build_scheduler, finite_or_none, log, scaled_lrs, setup_logging)

CONFIG_SCHEMA = Stage1Config


def build_models(cfg: Stage1Config, device: torch.device):
    """The frozen teacher and the student, checked to share one token grid."""
    t, m = cfg.teacher, cfg.model
    if t.return_layers != m.align_layers:  # checked before any weights are downloaded
        raise ValueError(f"teacher.return_layers ({t.return_layers}) must equal model.align_layers ({m.align_layers})")
    teacher = CLIPTeacher(t.model_name, t.pretrained, t.return_layers, t.input_resolution,
                          vision_cfg=dict(t.vision_cfg), embed_dim=t.embed_dim,
                          autocast_dtype=torch.bfloat16 if cfg.train.precision == "bf16" else None
                          ).to(device)
    student = create_model(m.name, pretrained=m.pretrained, num_frames=m.num_frames,
                           img_size=m.img_size, tubelet_size=m.tubelet_size,
                           drop_path_rate=m.drop_path_rate, embed_dim=m.embed_dim, depth=m.depth,
                           num_heads=m.num_heads, teacher_dim=teacher.dim,
                           align_layers=m.align_layers)
    grid = student.encoder.patch_embed.grid
    if m.tubelet_size != 1 or grid[1:] != (teacher.grid, teacher.grid):
        raise ValueError(f"student token grid {grid} must be frames x {teacher.grid} x {teacher.grid} "
                         f"(teacher input {t.input_resolution} / patch {teacher.patch_size}) with tubelet 1")
    student.set_grad_checkpointing(m.grad_checkpointing)
    return teacher, student.to(device)


def train(cfg: Stage1Config) -> dict[str, Any]:
    dist = distributed.setup(cfg.train.device)
    setup_logging(dist.rank)
    tc = cfg.train
    device = dist.device
    # Same seed on every rank while building, so a random (test/demo) teacher is the same
    # everywhere; then a per-rank seed for stochastic depth.
    torch.manual_seed(tc.seed)
    teacher, student = build_models(cfg, device)
    torch.manual_seed(tc.seed + dist.rank)
    files = RunFiles(tc.output_dir, enabled=dist.is_main)
    files.write_config(cfg)

    global_batch = tc.batch_size * dist.world_size
    lr, min_lr, warmup_lr = scaled_lrs(cfg.optim, global_batch)
    optimizer = build_optimizer(student, cfg.optim, lr, device)
    # The schedule always follows this run's config (steps, warmup, lr, world size); a resumed
    # run restores the position in it, not the old shape.
    scheduler = build_scheduler(optimizer, tc.steps, cfg.optim.warmup_steps, min_lr, warmup_lr)

    start, last_ckpt = 0, ""
    state = checkpoint.load_latest(tc.output_dir) if tc.resume else None
    if state is not None:
        student.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, last_ckpt = state["step"], state["uri"]
        rngs = state["rng"]
        if isinstance(rngs, list) and len(rngs) == dist.world_size:
            checkpoint.set_rng_state(rngs[dist.rank], device)
        else:
            log.warning("checkpoint has RNG states for %s ranks, this run has %d: reseeding",
                        len(rngs) if isinstance(rngs, list) else 1, dist.world_size)
            torch.manual_seed(tc.seed * 1_000_003 + start * 1009 + dist.rank)
        if state.get("scheduler") and state["scheduler"].get("t_initial") != scheduler.t_initial:
            log.warning("the LR schedule changed since the checkpoint; following this config")
        log.info("resumed from step %d of %s", start, tc.output_dir)
    start = distributed.agree_on_step(start, dist)
    files.resume(start)
    scheduler.step_update(start)
    # Buffers (fixed position tables) never change: no need to broadcast them every step.
    model = DDP(student, device_ids=[dist.local_rank] if device.type == "cuda" else None,
                broadcast_buffers=False) if dist.world_size > 1 else student
    if tc.compile:  # the frozen teacher is compiled too: it costs about as much as the student
        model, teacher = torch.compile(model), torch.compile(teacher)

    loader = build_pretrain_loader(cfg.data, batch_size=tc.batch_size, num_frames=cfg.model.num_frames,
                                   img_size=cfg.model.img_size, seed=tc.seed, rank=dist.rank,
                                   world_size=dist.world_size, start_step=start)
    grid = student.encoder.patch_embed.grid
    n_vis = visible_count(cfg.mask.type, cfg.mask.ratio, grid[0], grid[1] * grid[2])
    n_params = sum(p.numel() for p in student.parameters())
    log.info("stage1: %s (%.1fM params), teacher %s, global batch %d, lr %.2e, steps %d -> %d",
             cfg.model.name, n_params / 1e6, cfg.teacher.model_name, global_batch, lr, start, tc.steps)

    guard = NonFiniteGuard(tc.max_nonfinite)
    model.train()
    loss_val: Optional[float] = None
    end = min(tc.steps, tc.stop_at) if tc.stop_at else tc.steps
    t_last, steps_since = time.perf_counter(), 0
    bar = tqdm(total=tc.steps, initial=start, disable=not dist.is_main, desc="stage1", unit="step")
    for step in range(start, end):
        video = next(loader)["video"].to(device, non_blocking=True)        # [B, 3, T, H, W]
        targets, attn = teacher(video)                                      # [K,B,N,C], [B,T,HW]
        # Mask noise comes from one stream per step for the global batch, so a clip's mask does
        # not depend on how the batch is split across processes (or on resuming).
        gen = torch.Generator(device=device).manual_seed(tc.seed * 1_000_003 + step)
        noise = torch.rand((global_batch, *attn.shape[1:]), generator=gen, device=device)
        rows = slice(dist.rank * tc.batch_size, (dist.rank + 1) * tc.batch_size)
        mask = make_mask(cfg.mask.type, cfg.mask.ratio, attn, uniform=noise[rows])  # [B, N]
        idx = visible_indices(mask, n_vis)                                  # [B, N_vis], no sync
        with autocast(device, tc.precision):
            out = model(video, mask, visible_idx=idx)                       # [K, B, N_vis, C]
            loss = uta_loss(out, gather_tokens(targets, idx), kind=cfg.loss)
        loss.backward()
        # DDP has averaged the gradients, so every rank sees the same norm and takes the same
        # decision; a NaN/inf loss on any rank makes it non-finite. One host sync per step.
        grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.optim.clip_grad or math.inf)
        finite = bool(torch.isfinite(grad_norm))
        guard.update(finite, step + 1)
        if finite:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step_update(step + 1)
        steps_since += 1
        bar.update(1)

        done = step + 1
        if done % tc.log_every == 0 or done == end:
            loss_val = distributed.mean_over_ranks(loss.detach(), dist)
            elapsed = time.perf_counter() - t_last
            record = {"step": done, "loss": finite_or_none(loss_val),
                      "grad_norm": finite_or_none(float(grad_norm)),
                      "lr": optimizer.param_groups[0]["lr"],
                      "clips_per_s": global_batch * steps_since / elapsed,
                      "step_time_s": elapsed / steps_since, "nonfinite_skipped": guard.total,
                      # corrupt samples the WebDataset loaders of all ranks skipped so far
                      "samples_skipped": int(distributed.sum_over_ranks(
                          getattr(loader, "num_skipped", 0), dist))}
            files.log_metrics(record)
            bar.set_postfix(loss=f"{loss_val:.4f}", lr=f"{record['lr']:.2e}")
            log.info("step %d/%d loss %.4f lr %.3e %.1f clips/s %.3f s/step", done, tc.steps,
                     loss_val, record["lr"], record["clips_per_s"], record["step_time_s"])
            t_last, steps_since = time.perf_counter(), 0
        if done % tc.ckpt_every == 0 or done == end:
            rngs = distributed.gather_objects(checkpoint.rng_state(device), dist)  # every rank's
            if dist.is_main:
                last_ckpt = checkpoint.save(tc.output_dir, done, {
                    "model": student.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "rng": rngs,
                    # Data position: the loaders are functions of (seed, step, rank), so the
                    # step and the batch geometry are what a resumed run needs to continue.
                    "data": {"next_step": done, "samples_seen": done * global_batch,
                             "world_size": dist.world_size, "source": cfg.data.source},
                    "config": to_yaml(cfg)}, keep_last=tc.keep_last)
                files.flush()
                log.info("saved %s", last_ckpt)
    bar.close()

    summary = {"stage": "stage1", "steps": end, "total_steps": tc.steps,
               "final_loss": finite_or_none(loss_val), "nonfinite_skipped": guard.total,
               "global_batch": global_batch, "checkpoint": last_ckpt, "output_dir": tc.output_dir}
    files.write_summary(summary)
    distributed.cleanup()
    return summary


def main(config: Optional[str] = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    return train(load_config(Stage1Config, "stage1", config, overrides))


if __name__ == "__main__":
    from umt.train.entry import run_stage_module

    run_stage_module("stage1")
