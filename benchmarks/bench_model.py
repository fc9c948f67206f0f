"""Model-side speed: fused attention vs the official explicit attention, the teacher's fused
path vs ``need_weights=True``, and Gumbel-top-k masking vs ``torch.multinomial``.

    python benchmarks/bench_model.py                 # CPU here; --device cuda on a GPU
    python benchmarks/bench_model.py --size base --batch 4 --tokens 320

Prints one line per measurement (median of --repeats timed runs after warm-up; CPU time with
one thread on CPUs, wall time on GPUs); copy them into BENCHMARKS.md with the command and the
machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from umt.masking import semantic_mask
from umt.models import CLIPTeacher, create_model
from umt.models.vit import Attention


def timed(fn, repeats: int, device: str) -> float:
    """Median seconds per call: wall time on GPUs, this process's CPU time on CPUs (with one
    thread that is the compute time, unaffected by other jobs sharing the machine)."""
    clock = time.perf_counter if device == "cuda" else time.process_time
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(clock() - t0)
    return statistics.median(times)


def explicit_attention(self: Attention, x: torch.Tensor) -> torch.Tensor:
    """The official formulation: softmax(q k^T * d^-0.5) materialised, then @ v."""
    b, n, d = x.shape
    bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
    qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (d // self.num_heads) ** -0.5, qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1)).softmax(-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", default="base")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--tokens", type=int, default=320, help="visible tokens (8x224 at 80%% mask: 320)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable CPU-time numbers)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dev = a.device
    torch.manual_seed(0)

    model = create_model(f"umt_vit_{a.size}_patch16_224", depth=2).to(dev)
    blk = model.blocks[0]
    x = torch.randn(a.batch, a.tokens, model.embed_dim, device=dev, requires_grad=True)

    def fwd_bwd(attn_fn):
        def run():
            y = attn_fn(blk.attn, x)
            y.sum().backward()
        return run

    t_sdpa = timed(fwd_bwd(lambda m, z: m(z)), a.repeats, dev)
    t_expl = timed(fwd_bwd(explicit_attention), a.repeats, dev)
    print(f"attention fwd+bwd, {a.size}, batch {a.batch} x {a.tokens} tokens on {dev}: "
          f"SDPA {t_sdpa * 1e3:.1f} ms, explicit {t_expl * 1e3:.1f} ms ({t_expl / t_sdpa:.2f}x)")

    teacher = CLIPTeacher("ViT-B-16", pretrained=None, return_layers=6).to(dev)
    clip = torch.randn(1, 3, 8, 224, 224, device=dev)
    t_ours = timed(lambda: teacher(clip), a.repeats, dev)
    last = teacher.blocks[-1]
    real_attention = last.attention

    def need_weights_attention(q_x, k_x=None, v_x=None, attn_mask=None):
        return last.attn(q_x, q_x, q_x, need_weights=True)[0]

    last.attention = need_weights_attention
    t_nw = timed(lambda: teacher(clip), a.repeats, dev)
    last.attention = real_attention
    print(f"teacher ViT-B/16, 1x8x224 clip on {dev}: fused + class-token attention "
          f"{t_ours * 1e3:.0f} ms, last layer need_weights=True {t_nw * 1e3:.0f} ms")

    attn = torch.rand(64 * 8, 196, device=dev).softmax(-1)
    t_g = timed(lambda: semantic_mask(attn.view(64, 8, 196), 0.8), a.repeats, dev)
    t_m = timed(lambda: torch.multinomial(attn, 196)[:, :40], a.repeats, dev)
    print(f"semantic mask, batch 64 x 8 frames on {dev}: Gumbel-top-k {t_g * 1e3:.2f} ms, "
          f"multinomial {t_m * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
