"""The whole Stage-1 step, ours against the official implementation, side by side in one process.

    # the official code, outside the repository (any clone of OpenGVLab/unmasked_teacher works)
    mkdir -p /tmp/umt_official && git --git-dir=/work/.mirror/OpenGVLab+unmasked_teacher/repo \\
        archive HEAD | tar -x -C /tmp/umt_official
    python benchmarks/bench_stage1_vs_official.py --official /tmp/umt_official              # CPU settings
    python benchmarks/bench_stage1_vs_official.py --official /tmp/umt_official --device cuda \\
        --settings b16 l16 --json out/stage1.json                                          # on a GPU

A step is everything one training iteration does: the frozen teacher's forward on the whole
clip, the semantic mask, the student's forward and backward on the visible tokens, the UTA
loss, the gradient norm and the optimizer update.

* **ours** is the real step of ``umt train stage1``: ``umt.train.stage1.build_models`` and
  ``masked_uta`` (teacher, Gumbel-top-k mask, gathers, student, loss), then
  ``umt.train.loop.apply_gradients`` (the loop's norm + finite check + AdamW from
  ``umt.train.optim``) and the LR schedule; precision from the config (bf16 autocast on GPUs,
  fp32 on CPUs).
* **official** is ``engines/engine_for_pretraining_umt.train_one_epoch`` itself, called on a
  list of batches, with the official student (``modeling_pretrain_umt``), teacher
  (``clip.VisionTransformer``, ``return_attn=True``), ``optim_factory.create_optimizer``
  (AdamW, the official parameter groups) and ``NativeScalerWithGradNormCount`` (fp16
  autocast + GradScaler on GPUs). ``--official-dtypes fp16 bf16`` also times its autocast in
  bf16 (the same 16-bit type as ours; same model and optimizer, GradScaler left on as its code
  has it). On CPUs its ``torch.cuda.synchronize()`` becomes a no-op and
  the disabled GradScaler reports scale 1 (CPU adaptations; nothing else is changed).

Both get the same device-resident batch, random weights of the same shapes, the same optimizer
hyper-parameters (AdamW betas 0.9/0.95, wd 0.05, no clipping), one process, no DDP. Timing: the
two alternate round by round (``--rounds``) after ``--warmup`` steps each; the table shows the
median step time over all timed steps and clips/s = batch / median. Peak memory: on GPUs the
``max_memory_allocated`` of each implementation's steps above what was allocated before it was
built (weights, optimizer state, activations); on CPUs the growth of the peak RSS in a fresh
child process per implementation (``--no-memory`` skips it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
import warnings
from functools import partial
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

# name -> student (embed_dim, depth, heads), teacher (open_clip name, width, layers, heads,
# patch, out dim, input resolution), frames, img size, batch, drop path
SETTINGS: dict[str, dict[str, Any]] = {
    # CPU-sized: ViT-S width students with a ViT-S-wide CLIP teacher
    "s16-4x112": dict(student=(384, 12, 6), teacher=("ViT-B-16", 384, 12, 6, 16, 256, 112),
                      frames=4, img=112, batch=4, drop_path=0.1),
    "s16-8x224": dict(student=(384, 12, 6), teacher=("ViT-B-16", 384, 12, 6, 16, 256, 224),
                      frames=8, img=224, batch=2, drop_path=0.1),
    # the paper's settings (official scripts: batch 64 per GPU)
    "b16": dict(student=(768, 12, 12), teacher=("ViT-B-16", 768, 12, 12, 16, 512, 224),
                frames=8, img=224, batch=64, drop_path=0.1),
    "l16": dict(student=(1024, 24, 16), teacher=("ViT-L-14", 1024, 24, 16, 14, 768, 196),
                frames=8, img=224, batch=32, drop_path=0.2),
    # smoke-test size (tests/test_benchmarks.py)
    "tiny": dict(student=(64, 2, 2), teacher=("ViT-B-16", 64, 2, 2, 16, 32, 64),
                 frames=2, img=64, batch=2, drop_path=0.0, align=2),
}
MASK_RATIO = 0.8
BASE_LR, MIN_LR, WD, BETAS, EPS = 1.5e-4, 1e-5, 0.05, (0.9, 0.95), 1e-8


def setting(name: str, batch: int | None) -> dict[str, Any]:
    s = dict(SETTINGS[name])
    s.setdefault("align", 6)
    if batch:
        s["batch"] = batch
    return s


# ---------------------------------------------------------------- ours
def build_ours(s: dict[str, Any], device: torch.device, precision: str, grad_ckpt: bool = False,
               compile: bool = False, fused_adamw: bool = True):
    """The Stage-1 step of ``umt train stage1`` at setting ``s`` -> (step(video), model, state).

    ``compile``: student and teacher through ``torch.compile``, as the loop does for
    ``train.compile=true``. ``fused_adamw=False``: ``optim.fused=false``, the multi-tensor AdamW
    the official code uses (ours takes the fused kernel on GPUs and CPUs by default)."""
    from umt.configs import Stage1Config, load_config
    from umt.runtime import distributed
    from umt.train.loop import Context, apply_gradients
    from umt.train.optim import build_optimizer, build_scheduler, param_groups, scaled_lrs
    from umt.train.stage1 import build_models, masked_uta

    d, depth, heads = s["student"]
    tname, tw, tl, th, tp, tout, tres = s["teacher"]
    overrides = [
        "data.source=synthetic", "teacher.pretrained=null", f"teacher.model_name={tname}",
        f"teacher.input_resolution={tres}", f"teacher.return_layers={s['align']}",
        f"teacher.vision_cfg={{width: {tw}, layers: {tl}, heads: {th}, patch_size: {tp}, image_size: {tres}}}",
        f"teacher.embed_dim={tout}", f"model.embed_dim={d}", f"model.depth={depth}",
        f"model.num_heads={heads}", f"model.num_frames={s['frames']}", f"model.img_size={s['img']}",
        f"model.align_layers={s['align']}", f"model.drop_path_rate={s['drop_path']}",
        f"model.grad_checkpointing={str(grad_ckpt).lower()}", f"mask.ratio={MASK_RATIO}",
        f"train.batch_size={s['batch']}", f"train.precision={precision}", "train.steps=100000",
        f"optim.base_lr={BASE_LR}", f"optim.min_lr={MIN_LR}", f"optim.weight_decay={WD}",
        f"optim.betas=[{BETAS[0]},{BETAS[1]}]", "optim.warmup_steps=0",
        f"optim.fused={str(fused_adamw).lower()}",
    ]
    cfg = load_config(Stage1Config, "stage1", "b16", overrides)
    models = build_models(cfg, device)
    raw = models.model.to(device)
    lr, min_lr, warmup_lr = scaled_lrs(cfg.optim, s["batch"])
    opt = build_optimizer(param_groups(raw, cfg.optim.weight_decay), cfg.optim, lr, device)
    sched = build_scheduler(opt, cfg.train.steps, 0, min_lr, warmup_lr)
    dist = distributed.DistInfo(0, 1, 0, device)
    ctx = Context(cfg, dist, device, raw, raw, models.frozen, s["batch"], s["batch"])
    if compile:
        ctx.model = torch.compile(raw)
        ctx.frozen = {k: torch.compile(v) for k, v in ctx.frozen.items()}
    raw.train()
    state = {"step": 0, "loss": None, "ctx": ctx}

    def step(video: torch.Tensor) -> None:
        i = state["step"]
        loss, _, _ = masked_uta(ctx, video, i, cfg.mask, loss_kind=cfg.loss)
        loss.backward()
        apply_gradients(raw, opt, cfg.optim.clip_grad)
        sched.step_update(i + 1)
        state["step"] = i + 1
        state["loss"] = loss.detach()

    return step, raw, state


# ---------------------------------------------------------------- official
class _ScalerOnCPU:
    """The official NativeScalerWithGradNormCount on a CPU: its GradScaler disables itself
    (no CUDA) and then has no 'scale' in its state, which the engine reads every step."""

    def __init__(self, scaler):
        self._s = scaler

    def __call__(self, *a, **k):
        return self._s(*a, **k)

    def state_dict(self):
        return self._s.state_dict() or {"scale": 1.0}


@contextlib.contextmanager
def _official_runtime(device: torch.device, dtype: str):
    """CPU: ``torch.cuda.synchronize`` is a no-op. ``dtype='bf16'``: the engine's
    ``torch.cuda.amp.autocast()`` runs in bf16. Restored afterwards."""
    saved_sync, saved_ac = torch.cuda.synchronize, torch.cuda.amp.autocast
    if device.type != "cuda":
        torch.cuda.synchronize = lambda *a, **k: None
    if dtype == "bf16":
        torch.cuda.amp.autocast = partial(torch.autocast, "cuda", dtype=torch.bfloat16)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.cuda.synchronize, torch.cuda.amp.autocast = saved_sync, saved_ac


class _TimedBatches:
    """The 'data loader' handed to the official train_one_epoch: ``n`` times the same batch,
    recording the time each one is asked for (a step's time = the gap to the next request)."""

    def __init__(self, video: torch.Tensor, n: int):
        self.video, self.n, self.stamps, self.cpu = video, n, [], []

    def __len__(self):
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            self.stamps.append(time.perf_counter())
            self.cpu.append(time.process_time())
            yield self.video, None
        self.stamps.append(time.perf_counter())
        self.cpu.append(time.process_time())


def build_official(off: SimpleNamespace, s: dict[str, Any], device: torch.device):
    """The official Stage-1 training at setting ``s`` -> (run(video, n, dtype) -> step seconds,
    model)."""
    d, depth, heads = s["student"]
    _, tw, tl, th, tp, tout, tres = s["teacher"]
    with _official_runtime(device, "fp16"):
        model = off.pt.PretrainVisionTransformer(
            img_size=s["img"], patch_size=16, encoder_embed_dim=d, encoder_depth=depth,
            encoder_num_heads=heads, mlp_ratio=4.0, qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), drop_path_rate=s["drop_path"],
            init_values=0.0, use_learnable_pos_emb=False, num_frames=s["frames"], tubelet_size=1,
            clip_decoder_embed_dim=d, clip_output_dim=tout, clip_norm_type="l2",
            clip_return_layer=s["align"], clip_student_return_interval=1).to(device)
        teacher = off.clip.VisionTransformer(
            input_resolution=tres, patch_size=tp, width=tw, layers=tl, heads=th, output_dim=tout,
            clip_norm_type="l2", kernel_size=1, return_attn=True, clip_return_layer=s["align"],
            clip_return_interval=1).eval().to(device)
        lr = BASE_LR * s["batch"] / 256
        args = SimpleNamespace(opt="adamw", weight_decay=WD, lr=lr, opt_eps=EPS, opt_betas=list(BETAS),
                               momentum=0.9)
        opt = off.optim_factory.create_optimizer(args, model)
        scaler = off.utils.NativeScalerWithGradNormCount()
        if device.type != "cuda":
            scaler = _ScalerOnCPU(scaler)
        total = 100000
        lrs = off.utils.cosine_scheduler(lr, MIN_LR * s["batch"] / 256, 1, total)
        wds = off.utils.cosine_scheduler(WD, WD, 1, total)
    state = {"start": 0, "scale_changes": 0}

    def run(video: torch.Tensor, n: int, cpu: list[float] | None = None,
            dtype: str = "fp16") -> list[float]:
        # GradScaler halves its scale on an overflow and skips that optimizer step (a cheaper
        # step): counted, so a timing that includes skipped steps is visible in the JSON.
        before = scaler.state_dict().get("scale")
        batches = _TimedBatches(video, n)
        with _official_runtime(device, dtype):
            off.engine.train_one_epoch(
                model, batches, opt, device, 0, scaler, max_norm=None, log_writer=None,
                lr_scheduler=None, start_steps=state["start"], lr_schedule_values=lrs,
                wd_schedule_values=wds, teacher_model=teacher, clip_input_resolution=tres,
                clip_loss_type="l2", clip_loss_ratio=1.0, mask_type="attention",
                mask_ratio=MASK_RATIO)
        state["start"] += n
        if before is not None and scaler.state_dict().get("scale") != before:
            state["scale_changes"] += 1
        if cpu is not None:
            cpu += list(np.diff(batches.cpu))
        return list(np.diff(batches.stamps))

    run.state = state
    return run, model


# ---------------------------------------------------------------- measurement
def measure(args, name: str, device: torch.device, off) -> dict[str, Any]:
    s = setting(name, args.batch)
    precision = "bf16" if device.type == "cuda" else "fp32"
    video = benchlib.fake_clip(s["batch"], s["frames"], s["img"], device, args.seed)
    dtypes = args.official_dtypes if device.type == "cuda" else ["fp32"]
    res: dict[str, Any] = {"setting": name, **{k: v for k, v in s.items()},
                           "ours_precision": precision,
                           "official_precision": (f"{dtypes[0]} autocast + GradScaler")
                           if device.type == "cuda" else "fp32"}
    peak: dict[str, int] = {}
    # Build and warm ours, then the official code; on GPUs each one's peak memory is taken
    # while only it runs (the other's weights are resident but not counted).
    base = benchlib.cuda_mem(device)
    ours, ours_model, ours_state = build_ours(s, device, precision, args.grad_ckpt)
    for _ in range(args.warmup):
        ours(video)
    if device.type == "cuda":
        with benchlib.PeakMemory(device) as pm:
            ours(video)
        peak["ours"] = pm.start - base + pm.bytes
    base_off = benchlib.cuda_mem(device)
    official, off_model = build_official(off, s, device)
    official(video, args.warmup, dtype=dtypes[0])
    if device.type == "cuda":
        with benchlib.PeakMemory(device) as pm:
            official(video, 1, dtype=dtypes[0])
        peak["official"] = pm.start - base_off + pm.bytes
        for dt in dtypes[1:]:
            official(video, args.warmup, dtype=dt)
    res["params_student_m"] = sum(p.numel() for p in ours_model.parameters()) / 1e6
    res["params_student_official_m"] = sum(p.numel() for p in off_model.parameters()) / 1e6
    # ours with one option changed (--ours-variants), built and warmed after the two
    variants = {}
    for v in args.ours_variants:
        base_v = benchlib.cuda_mem(device)
        t0 = time.perf_counter()
        fn, _, _ = build_ours(s, device, precision, grad_ckpt=args.grad_ckpt or v == "grad-ckpt",
                              compile=v == "compile", fused_adamw=v != "unfused-adamw")
        for _ in range(args.warmup):
            fn(video)
        benchlib.sync(device)
        res[f"ours_{v}_build_and_warmup_s"] = time.perf_counter() - t0  # incl. compile time
        if device.type == "cuda":
            with benchlib.PeakMemory(device) as pm:
                fn(video)
            peak[f"ours_{v}"] = pm.start - base_v + pm.bytes
        variants[f"ours_{v}"] = fn

    official.state["scale_changes"] = 0  # count from here: the timed rounds only
    impls = ["ours", "official"] + [f"official_{dt}" for dt in dtypes[1:]] + list(variants)
    times: dict[str, list[float]] = {k: [] for k in impls}
    cpu: dict[str, list[float]] = {k: [] for k in impls}
    for _ in range(args.rounds):
        times["official"] += official(video, args.steps, cpu["official"], dtype=dtypes[0])
        times["ours"] += benchlib.time_steps(lambda: ours(video), args.steps, device, cpu["ours"])
        for dt in dtypes[1:]:
            times[f"official_{dt}"] += official(video, args.steps, cpu[f"official_{dt}"], dtype=dt)
        for k, fn in variants.items():
            times[k] += benchlib.time_steps(lambda: fn(video), args.steps, device, cpu[k])
    # model FLOPs of one step (umt.train.flops), the same work for both implementations
    from umt.masking import visible_count
    from umt.train.flops import stage1_flops_per_clip, throughput

    grid = ours_model.encoder.patch_embed.grid
    n_vis = visible_count("attention", MASK_RATIO, grid[0], grid[1] * grid[2])
    flops = s["batch"] * stage1_flops_per_clip(ours_model, ours_state["ctx"].frozen["teacher"],
                                               s["frames"], n_vis)
    res["tflop_per_step"] = flops / 1e12
    for impl in impls:
        st = benchlib.summary(times[impl])
        res[f"{impl}_step_s"] = st
        res[f"{impl}_clips_per_s"] = s["batch"] / st["median"]
        res[f"{impl}_cpu_s"] = benchlib.summary(cpu[impl])
        tp = throughput(flops, st["median"], device)
        res[f"{impl}_tflops"], res[f"{impl}_mfu"] = tp["tflops"], tp["mfu"]
    for dt in dtypes[1:]:
        res[f"speedup_vs_official_{dt}"] = res["ours_clips_per_s"] / res[f"official_{dt}_clips_per_s"]
    for k in variants:
        res[f"{k}_speedup_vs_official"] = res[f"{k}_clips_per_s"] / res["official_clips_per_s"]
        res[f"{k}_speedup_cpu_time_vs_official"] = (res["official_cpu_s"]["median"]
                                                   / res[f"{k}_cpu_s"]["median"])
    res["speedup"] = res["ours_clips_per_s"] / res["official_clips_per_s"]
    res["official_rounds_with_loss_scale_change"] = official.state["scale_changes"]
    # CPU seconds of this process per step: on a shared CPU machine the steadier comparison
    res["speedup_cpu_time"] = res["official_cpu_s"]["median"] / res["ours_cpu_s"]["median"]
    # per-pair ratios (round by round) show whether drift of a shared machine decided it
    pairs = [o / u for o, u in zip(times["official"], times["ours"])]
    res["speedup_pairs"] = benchlib.summary(pairs)
    res["ours_final_loss"] = float(ours_state["loss"]) if ours_state["loss"] is not None else None

    if device.type != "cuda" and args.memory:
        for impl in ("ours", "official"):
            probe = benchlib.child_json(
                [os.path.abspath(__file__), "--probe", impl, "--settings", name, "--official",
                 args.official, "--steps", "2", "--warmup", "1", "--device", "cpu",
                 *(["--batch", str(args.batch)] if args.batch else []),
                 *(["--threads", str(args.threads)] if args.threads else []),
                 *(["--grad-ckpt"] if args.grad_ckpt else [])])
            peak[impl] = probe["peak_bytes"]
    for impl, b in peak.items():
        res[f"{impl}_peak_mib"] = benchlib.mib(b)
    if len(peak) == 2 and peak["official"] > 0:
        res["memory_ratio"] = peak["ours"] / peak["official"]
    del ours, official, ours_model, off_model, variants
    benchlib.free(device)
    return res


def probe(args, device: torch.device, off) -> None:
    """Child process: build one implementation, run a few steps, print the RSS growth."""
    s = setting(args.settings[0], args.batch)
    video = benchlib.fake_clip(s["batch"], s["frames"], s["img"], device, args.seed)
    import umt.train.loop
    import umt.train.optim
    import umt.train.stage1  # noqa: F401,E401 - imports are not the step's memory
    start = benchlib.peak_rss_bytes()
    if args.probe == "ours":
        ours, _, _ = build_ours(s, device, "fp32", args.grad_ckpt)
        for _ in range(args.warmup + args.steps):
            ours(video)
    else:
        official, _ = build_official(off, s, device)
        official(video, args.warmup + args.steps)
    print(f'{{"peak_bytes": {benchlib.peak_rss_bytes() - start}}}')


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--official", required=True, help="checkout of OpenGVLab/unmasked_teacher")
    p.add_argument("--settings", nargs="+", default=["s16-4x112", "s16-8x224"], choices=list(SETTINGS))
    p.add_argument("--batch", type=int, default=None, help="override the setting's batch")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--official-dtypes", nargs="+", choices=("fp16", "bf16"), default=["fp16"],
                   help="the official autocast type(s) on GPUs; the first is the reference "
                        "(its own choice: fp16)")
    p.add_argument("--grad-ckpt", action="store_true", help="ours with activation checkpointing")
    p.add_argument("--ours-variants", nargs="*", default=[],
                   choices=("unfused-adamw", "compile", "grad-ckpt"),
                   help="also time ours with this one option changed (interleaved with the rest)")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="CPU: skip the peak-RSS child processes")
    p.add_argument("--probe", choices=("ours", "official"), help=argparse.SUPPRESS)
    benchlib.add_common_args(p, steps=3, warmup=1)
    args = p.parse_args(argv)
    device = benchlib.setup(args)
    warnings.filterwarnings("ignore", message=".*Overwriting.*in registry.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    from official import load_single_modality

    with contextlib.redirect_stdout(io.StringIO()):
        off = load_single_modality(args.official)
    if args.probe:
        probe(args, device, off)
        return {}
    env = benchlib.machine(device)
    rows = [measure(args, name, device, off) for name in args.settings]
    env["load_average_end"] = benchlib.load_average()
    out = {"benchmark": "stage1_vs_official", "machine": env, "official_stubs": off.stubs,
           "official_sha256": off.sha256, "official_commit": off.commit,
           "args": {k: v for k, v in vars(args).items() if k != "probe"}, "results": rows}
    for r in rows:
        r["ours_ms"] = r["ours_step_s"]["median"] * 1e3
        r["official_ms"] = r["official_step_s"]["median"] * 1e3
    print(benchlib.table(rows, ["setting", "batch", "ours_ms", "official_ms", "ours_clips_per_s",
                                "official_clips_per_s", "speedup", "speedup_cpu_time",
                                "ours_peak_mib", "official_peak_mib", "ours_tflops", "ours_mfu",
                                "official_mfu"],
                         {"ours_ms": ".0f", "official_ms": ".0f", "speedup": ".2f",
                          "speedup_cpu_time": ".2f", "ours_tflops": ".3g", "ours_mfu": ".1%",
                          "official_mfu": ".1%",
                          "ours_peak_mib": ".0f", "official_peak_mib": ".0f",
                          "ours_clips_per_s": ".3g", "official_clips_per_s": ".3g"}))
    for r in rows:
        for k in [k for k in r if k.endswith("_speedup_vs_official") or k.startswith("speedup_vs_official_")]:
            print(f"{r['setting']}: {k} = {r[k]:.2f}")
        for k in [k for k in r if k.endswith("_speedup_cpu_time_vs_official")]:
            print(f"{r['setting']}: {k} = {r[k]:.2f}")
    print(f"machine: {env['device']} {env.get('gpu', env['cpu'])}, torch {env['torch']}, "
          f"threads {env['torch_threads']}, load {env['load_average']} -> {env['load_average_end']}")
    benchlib.write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
