"""Stage-1 step time and memory as the clip grows: frames 4 -> 8 -> 16 at 224 px, 224 -> 320 px
at 8 and 16 frames, 80% semantic masking; cost against visible tokens, with a plot.

    python benchmarks/bench_scaling.py --json benchmarks/results/scaling_cpu.json    # CPU, ViT-Ti widths
    python benchmarks/bench_scaling.py --device cuda --width b16 --batch 16 --json out/scaling_gpu.json
    python benchmarks/bench_scaling.py --plot benchmarks/results/scaling_cpu.json [gpu.json] \\
        --png docs/img/scaling.png                                                  # redraw from JSON

Each point is the real Stage-1 step (``bench_stage1_vs_official.build_ours``: teacher, mask,
student forward/backward, AdamW). ``--width ti16``: ViT-Ti student (192 wide, 12 layers, 3
heads) with a 192-wide 12-layer CLIP teacher (patch 16), small enough for a CPU; ``b16``: the
paper's B/16 student and CLIP-B/16 teacher. The teacher runs at the clip's resolution (its
position table resized, as for any input resolution). Peak memory: CUDA max allocated above
the start (weights, optimizer state, activations); on CPUs the peak RSS growth of a fresh child
process per point (``--no-memory`` skips it). The plot shows step time per clip and memory
against visible tokens per clip, with the model FLOPs of ``umt.train.flops`` for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

POINTS = [(4, 224), (8, 224), (16, 224), (8, 320), (16, 320)]
WIDTHS = {
    "ti16": dict(student=(192, 12, 3), teacher=("ViT-B-16", 192, 12, 3, 16, 512)),
    "b16": dict(student=(768, 12, 12), teacher=("ViT-B-16", 768, 12, 12, 16, 512)),
    "tiny": dict(student=(64, 2, 2), teacher=("ViT-B-16", 64, 2, 2, 16, 32), align=2),
}


def setting(width: str, frames: int, img: int, batch: int) -> dict[str, Any]:
    w = WIDTHS[width]
    name, tw, tl, th, tp, tout = w["teacher"]
    return dict(student=w["student"], teacher=(name, tw, tl, th, tp, tout, img), frames=frames,
                img=img, batch=batch, drop_path=0.0, align=w.get("align", 6))


def run_point(args, device: torch.device, frames: int, img: int) -> dict[str, Any]:
    from bench_stage1_vs_official import build_ours

    import umt.train.loop  # noqa: F401,E401 - not the step's memory
    from umt.masking import visible_count
    from umt.train.flops import stage1_flops_per_clip

    s = setting(args.width, frames, img, args.batch)
    precision = "bf16" if device.type == "cuda" else "fp32"
    video = benchlib.fake_clip(args.batch, frames, img, device, args.seed)
    start = benchlib.peak_rss_bytes()
    with benchlib.PeakMemory(device) as pm:
        step, model, state = build_ours(s, device, precision)
        for _ in range(args.warmup):
            step(video)
        cpu: list[float] = []
        times = benchlib.time_steps(lambda: step(video), args.steps, device, cpu)
    hw = (img // 16) ** 2
    n_vis = visible_count("attention", 0.8, frames, hw)
    teacher = state["ctx"].frozen["teacher"]
    st = benchlib.summary(times)
    row = {"frames": frames, "img": img, "tokens": frames * hw, "visible": n_vis, "batch": args.batch,
           "step_s": st, "s_per_clip": st["median"] / args.batch,
           "cpu_s_per_clip": benchlib.summary(cpu)["median"] / args.batch,
           "gflop_per_clip": stage1_flops_per_clip(model, teacher, frames, n_vis) / 1e9}
    if device.type == "cuda":
        row["peak_mib"] = benchlib.mib(pm.bytes)
    else:
        row["rss_growth_mib"] = benchlib.mib(benchlib.peak_rss_bytes() - start)
    del step, model, state, teacher
    benchlib.free(device)
    return row


def plot(results: list[dict[str, Any]], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for res in results:
        rows = res["results"]
        m = res["machine"]
        label = f"{res['args']['width']} on {m.get('gpu') or 'CPU'} (batch {rows[0]['batch']})"
        # on a (shared) CPU the process's CPU time per clip, steadier than wall time
        key = "s_per_clip" if m.get("gpu") else "cpu_s_per_clip"
        vis = [r["visible"] for r in rows]
        t = [r[key] * 1e3 for r in rows]
        ax_t.plot(vis, t, "o-", label=label + ("" if m.get("gpu") else ", CPU time"))
        for r in rows:
            ax_t.annotate(f"{r['frames']}x{r['img']}", (r["visible"], r[key] * 1e3),
                          textcoords="offset points", xytext=(4, -10), fontsize=7)
        # FLOPs-proportional reference through the first point
        f0, t0 = rows[0]["gflop_per_clip"], t[0]
        ax_t.plot(vis, [r["gflop_per_clip"] / f0 * t0 for r in rows], ":", color="gray",
                  label=f"{res['args']['width']}: model FLOPs, scaled")
        mem = [r.get("peak_mib", r.get("rss_growth_mib")) for r in rows]
        ax_m.plot(vis, [x / 1024 for x in mem], "o-", label=label)
    ax_t.set(xlabel="visible tokens per clip (80% masked)", ylabel="step time per clip (ms)",
             title="Stage-1 step time")
    ax_m.set(xlabel="visible tokens per clip (80% masked)", ylabel="peak memory (GiB)",
             title="Stage-1 peak memory (GPU: allocated; CPU: RSS growth)")
    for ax in (ax_t, ax_m):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    fig.savefig(png, dpi=120)
    print(f"wrote {png}")


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--width", choices=list(WIDTHS), default="ti16")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--points", nargs="+", default=[f"{t}x{s}" for t, s in POINTS],
                   help="frames x pixels, e.g. 4x224 8x320")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--plot", nargs="+", default=None, help="draw the PNG from these JSON files only")
    p.add_argument("--png", default=None, help="write the plot here")
    p.add_argument("--point", default=None, help=argparse.SUPPRESS)  # child: one point
    benchlib.add_common_args(p, steps=3, warmup=1)
    args = p.parse_args(argv)
    if args.plot:
        plot([json.loads(open(f).read()) for f in args.plot], args.png or "scaling.png")
        return {}
    device = benchlib.setup(args)
    if args.point:
        t, s = (int(x) for x in args.point.split("x"))
        print(json.dumps(run_point(args, device, t, s)))
        return {}
    env = benchlib.machine(device)
    rows = []
    for pt in args.points:
        t, s = (int(x) for x in pt.split("x"))
        if device.type == "cpu" and args.memory:
            rows.append(benchlib.child_json(
                [os.path.abspath(__file__), "--point", pt, "--width", args.width, "--batch",
                 str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
                 "--device", "cpu", *(["--threads", str(args.threads)] if args.threads else [])]))
        else:
            rows.append(run_point(args, device, t, s))
        print(f"{pt}: {rows[-1]['s_per_clip'] * 1e3:.0f} ms/clip", flush=True)
    base = rows[0]
    for r in rows:
        r["time_vs_first"] = r["s_per_clip"] / base["s_per_clip"]
        r["cpu_time_vs_first"] = r["cpu_s_per_clip"] / base["cpu_s_per_clip"]
        r["cpu_ms_per_clip"] = r["cpu_s_per_clip"] * 1e3
        r["visible_vs_first"] = r["visible"] / base["visible"]
        r["flops_vs_first"] = r["gflop_per_clip"] / base["gflop_per_clip"]
        r["ms_per_clip"] = r["s_per_clip"] * 1e3
        r["mem_mib"] = r.get("peak_mib", r.get("rss_growth_mib"))
    env["load_average_end"] = benchlib.load_average()
    print(benchlib.table(rows, ["frames", "img", "visible", "ms_per_clip", "cpu_ms_per_clip",
                                "time_vs_first", "cpu_time_vs_first", "visible_vs_first",
                                "flops_vs_first", "gflop_per_clip", "mem_mib"],
                         {"ms_per_clip": ".0f", "cpu_ms_per_clip": ".0f", "time_vs_first": ".2f",
                          "cpu_time_vs_first": ".2f", "visible_vs_first": ".2f",
                          "flops_vs_first": ".2f", "gflop_per_clip": ".1f", "mem_mib": ".0f"}))
    out = {"benchmark": "scaling", "machine": env, "args": vars(args), "results": rows}
    benchlib.write_json(args.json, out)
    if args.png:
        plot([out], args.png)
    return out


if __name__ == "__main__":
    main()
