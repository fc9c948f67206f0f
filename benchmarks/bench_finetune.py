"""Where users wait after pretraining: the fine-tune step on all tokens (8x224 = 1568, 16x224 =
3136) per attention kernel, and the retrieval ITM re-ranking (``umt.eval.retrieval.itm_rerank``).

    python benchmarks/bench_finetune.py --json benchmarks/results/finetune_cpu.json     # CPU
    python benchmarks/bench_finetune.py --device cuda --sizes base --batch 8 --rerank-size b16 \\
        --json out/finetune_gpu.json

**Fine-tune step**: ``create_model('umt_vit_<size>_patch16_224', num_frames=T)`` (the action
classifier: every token, mean pooling, 400 classes), cross-entropy, backward, AdamW with the
official layer decay (``umt.train.optim``), bf16 autocast on GPUs. Attention variants:
``sdpa`` (PyTorch picks the kernel), ``flash`` / ``efficient`` / ``cudnn`` / ``math`` (one
``torch.nn.attention.sdpa_kernel`` backend forced; GPUs), and ``explicit`` (the official
formulation ``softmax(q k^T * d^-0.5) @ v`` materialised). A variant a device cannot run is
reported as unsupported.

**Re-ranking**: ``itm_rerank`` on random encoded sets of ``--videos`` videos and ``--texts``
captions, top ``--k`` per row in both directions (``2 x V x k`` fusion pairs, official
``k_test=128``); reported per pair and extrapolated to MSRVTT-1k (1000 x 1000 at k=128), with
the share of the fusion FLOPs that goes into the cross-attention keys/values of the video
tokens if every pair computed them: text-to-video pairs (a different video each) do; in the
video-to-text direction one video is broadcast over its ``k`` captions and projected once
(``umt.models.text``), so that share is saved there. CPU: CPU-time columns beside wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

SIZES = {"tiny": "umt_vit_tiny_patch16_224", "small": "umt_vit_small_patch16_224",
         "base": "umt_vit_base_patch16_224", "large": "umt_vit_large_patch16_224"}


def explicit_attention(self, x: torch.Tensor) -> torch.Tensor:
    """The official ``modeling_finetune.Attention``: the attention matrix materialised."""
    b, n, d = x.shape
    bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
    qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (d // self.num_heads) ** -0.5, qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1)).softmax(-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


def attention_context(variant: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    return sdpa_kernel([backends[variant]]) if variant in backends else contextlib.nullcontext()


def finetune_rows(args, device: torch.device, size: str, frames: int,
                  variants: list[str]) -> list[dict[str, Any]]:
    """One model per (size, frames); each attention variant timed on it in turn."""
    from umt.configs import OptimConfig
    from umt.models import create_model
    from umt.models.vit import Attention
    from umt.runtime.common import autocast
    from umt.train.loop import apply_gradients
    from umt.train.optim import build_optimizer, param_groups

    torch.manual_seed(args.seed)
    model = create_model(SIZES[size], num_frames=frames, num_classes=400, drop_path_rate=0.1).to(device)
    layer_decay = 0.75 if size != "large" else 0.85
    opt = build_optimizer(param_groups(model, 0.05, layer_decay), OptimConfig(), 1e-4, device)
    x = benchlib.fake_clip(args.batch, frames, 224, device, args.seed)
    y = torch.randint(0, 400, (args.batch,), device=device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    original = Attention.forward
    rows = []
    for variant in variants:
        def step():
            with attention_context(variant), autocast(device, precision):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            apply_gradients(model, opt, None)

        row = {"size": size, "frames": frames, "tokens": frames * 196, "batch": args.batch,
               "attention": variant}
        if variant == "explicit":
            Attention.forward = explicit_attention
        try:
            for _ in range(args.warmup):
                step()
            cpu: list[float] = []
            with benchlib.PeakMemory(device) as pm:
                times = benchlib.time_steps(step, args.steps, device, cpu)
            st = benchlib.summary(times)
            row.update(step_s=st, ms=st["median"] * 1e3, clips_per_s=args.batch / st["median"],
                       cpu_ms=benchlib.summary(cpu)["median"] * 1e3)
            if device.type == "cuda":
                row["peak_mib"] = benchlib.mib(pm.start + pm.bytes)
        except RuntimeError as e:  # a kernel this device / dtype / shape cannot run
            row["unsupported"] = str(e).splitlines()[0][:160]
            opt.zero_grad(set_to_none=True)
        finally:
            Attention.forward = original
        rows.append(row)
        print(f"{size} {frames}x224 {variant}: {row.get('ms', float('nan')):.0f} ms "
              f"{row.get('unsupported', '')}", flush=True)
    del model, opt
    benchlib.free(device)
    return rows


def rerank_row(args, device: torch.device) -> dict[str, Any]:
    from umt.eval.retrieval import RetrievalSet, itm_rerank
    from umt.models import create_model
    from umt.runtime import distributed
    from umt.train.flops import count_params

    torch.manual_seed(args.seed)
    if args.rerank_size == "tiny":  # the Stage-2 tiny preset's model (MiniLM text side)
        kw = dict(num_frames=4, img_size=64, embed_dim=96, depth=4, num_heads=3, align_layers=2,
                  teacher_dim=32, text_encoder="sentence-transformers/all-MiniLM-L6-v2",
                  fusion_layer=4, proj_dim=64)
        name, frames, img = "umt_vl_tiny_patch16_224", 4, 64
    else:  # B/16 with BERT-base's shape (random weights, built from its config)
        from bench_stage2_step import bert_base_folder

        kw = dict(num_frames=4, text_encoder=bert_base_folder(), fusion_layer=9)
        name, frames, img = "umt_vl_base_patch16_224", 4, 224
    model = create_model(name, **kw).to(device).eval()
    n_tok = frames * (img // 16) ** 2
    d, w, L = model.vision_width, model.text_width, args.text_len
    V, X = args.videos, args.texts
    g = torch.Generator().manual_seed(args.seed)
    data = RetrievalSet(keys=[str(i) for i in range(V)],
                        video_feat=F.normalize(torch.randn(V, frames, model.proj_dim, generator=g), dim=-1),
                        video_tokens=torch.randn(V, n_tok, d, generator=g),
                        text_feat=F.normalize(torch.randn(X, model.proj_dim, generator=g), dim=-1),
                        text_hidden=torch.randn(X, L, w, generator=g),
                        text_mask=torch.ones(X, L, dtype=torch.long), text_to_video=list(range(X)))
    sim = data.video_feat.mean(1) @ data.text_feat.t()
    info = distributed.DistInfo(0, 1, 0, device)
    precision = "bf16" if device.type == "cuda" else "fp32"

    def run():
        itm_rerank(model, data, sim, args.k, itm_batch=args.itm_batch, device=device,
                   precision=precision, info=info)

    run()  # warm-up
    cpu: list[float] = []
    times = benchlib.time_steps(run, args.steps, device, cpu)
    st = benchlib.summary(times)
    pairs = (V + X) * min(args.k, max(V, X))
    per_pair = st["median"] / pairs
    layers = model.text_encoder.bert.encoder.layer[model.text_encoder.fusion_layer:]
    kv = sum(count_params(layer.crossattention.self.key) + count_params(layer.crossattention.self.value)
             for layer in layers)
    rest = sum(count_params(layer) for layer in layers) - kv
    kv_flops = 2 * kv * n_tok
    other = 2 * rest * L + 4 * L * L * w * len(layers) + 4 * L * n_tok * w * len(layers)
    return {"model": name, "videos": V, "texts": X, "k": args.k, "itm_batch": args.itm_batch,
            "video_tokens": n_tok, "text_len": L, "pairs": pairs, "step_s": st,
            "s": st["median"], "ms_per_pair": per_pair * 1e3,
            "cpu_ms_per_pair": benchlib.summary(cpu)["median"] / pairs * 1e3,
            "msrvtt_1k_k128_s": per_pair * 2 * 1000 * 128,
            "kv_share_of_fusion_flops": kv_flops / (kv_flops + other)}


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--sizes", nargs="+", default=["tiny"], choices=list(SIZES))
    p.add_argument("--frames", nargs="+", type=int, default=[8, 16])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--attention", nargs="+", default=None,
                   help="variants (default: sdpa explicit on CPU; + flash efficient cudnn math on GPU)")
    p.add_argument("--rerank-size", choices=("tiny", "b16", "none"), default="tiny")
    p.add_argument("--videos", type=int, default=32)
    p.add_argument("--texts", type=int, default=32)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--itm-batch", type=int, default=32)
    p.add_argument("--text-len", type=int, default=32)
    benchlib.add_common_args(p, steps=2, warmup=1)
    args = p.parse_args(argv)
    device = benchlib.setup(args)
    variants = args.attention or (["sdpa", "flash", "efficient", "cudnn", "math", "explicit"]
                                  if device.type == "cuda" else ["sdpa", "math", "explicit"])
    env = benchlib.machine(device)
    rows = []
    for size in args.sizes:
        for frames in args.frames:
            rows += finetune_rows(args, device, size, frames, variants)
    rerank = rerank_row(args, device) if args.rerank_size != "none" else None
    env["load_average_end"] = benchlib.load_average()
    print(benchlib.table(rows, ["size", "frames", "tokens", "batch", "attention", "ms", "cpu_ms",
                                "clips_per_s", "peak_mib", "unsupported"],
                         {"ms": ".0f", "cpu_ms": ".0f", "clips_per_s": ".3g", "peak_mib": ".0f"}))
    if rerank:
        print(benchlib.table([rerank], ["model", "videos", "texts", "k", "pairs", "s", "ms_per_pair",
                                        "cpu_ms_per_pair", "msrvtt_1k_k128_s",
                                        "kv_share_of_fusion_flops"],
                             {"s": ".2f", "ms_per_pair": ".3f", "cpu_ms_per_pair": ".3f",
                              "msrvtt_1k_k128_s": ".0f",
                              "kv_share_of_fusion_flops": ".0%"}))
    out = {"benchmark": "finetune", "machine": env, "args": vars(args), "results": rows,
           "rerank": rerank}
    benchlib.write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
