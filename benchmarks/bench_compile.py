"""``torch.compile`` of the Stage-2 step when image (T=1) and video (T=4) batches alternate:
compiles, recompiles, graph breaks, compile time and steady-state step time per strategy.

    python benchmarks/bench_compile.py --json benchmarks/results/compile_cpu.json      # CPU, tiny preset
    python benchmarks/bench_compile.py --device cuda --setting b16 --json out/compile_gpu.json

The step is ``bench_stage2_step.build_ours`` (the real ``umt.train.stage2.forward_loss``) with
the model and the teacher wrapped as the training loop does for ``train.compile=true``
(``torch.compile`` of the trained module and of every frozen one). Batches alternate
``video, image, video, image, ...`` (the official MetaLoader interleaves whole batches per
media type). Strategies:

* ``eager``: no compile (the reference);
* ``auto``: ``torch.compile(m)`` -- dynamo's automatic dynamic shapes: the first shape change
  recompiles with the changed sizes symbolic;
* ``static``: ``torch.compile(m, dynamic=False)`` -- one specialised graph per shape (compile
  per shape); nothing recompiles after both media were seen;
* ``mark_dynamic``: the frame axis of the video batches marked dynamic up front
  (``torch._dynamo.mark_dynamic``); images (T=1) still get their own graph because dynamo
  specialises sizes 0 and 1.

Counted from ``torch._dynamo.utils.counters`` and ``torch._dynamo.utils.compile_times``: frames
compiled, recompilations, unique graphs, graph breaks (with their reasons), total compile time;
steady-state: the median step time per media type after ``--warmup`` alternating pairs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

STRATEGIES = ("eager", "auto", "static", "mark_dynamic")


def counters_snapshot() -> dict[str, Any]:
    """Dynamo's counts since the last ``counters.clear()``: frames compiled (a recompile is one
    more), the recompiles themselves (guard failures, with their first reasons), graphs, graph
    breaks (with their reasons)."""
    from torch._dynamo.utils import counters, guard_failures

    stats, breaks = dict(counters["stats"]), dict(counters["graph_break"])
    reasons = [str(r)[:160] for v in guard_failures.values() for r in v]
    return {"frames_compiled": dict(counters["frames"]).get("total", 0),
            "unique_graphs": stats.get("unique_graphs", 0),
            "recompiles": len(reasons), "recompile_reasons": reasons[:6],
            "graph_breaks": sum(breaks.values()), "graph_break_reasons": Counter(
                {" ".join(k.split())[:160]: v for k, v in breaks.items()}).most_common(5)}


def run_strategy(args, device: torch.device, strategy: str) -> dict[str, Any]:
    import torch._dynamo
    from bench_stage2_step import SETTINGS, batch_for, build_ours

    torch._dynamo.reset()
    s = SETTINGS[args.setting]
    batch = args.batch or s["batch"]
    step, cfg, ctx = build_ours(s, device, batch, [])
    if strategy != "eager":
        kw = {"dynamic": False} if strategy == "static" else {}
        ctx.model = torch.compile(ctx.raw, **kw)
        ctx.frozen = {k: torch.compile(v, **kw) for k, v in ctx.frozen.items()}
    batches = {m: batch_for(cfg, m, batch, device, args.seed) for m in ("video", "image")}
    if strategy == "mark_dynamic":
        torch._dynamo.mark_dynamic(batches["video"]["video"], 2)
    order = ["video", "image"]
    t0 = time.perf_counter()
    first = {}
    for i in range(2 * args.warmup):  # the compiles happen here
        m = order[i % 2]
        t = time.perf_counter()
        step(batches[m])
        benchlib.sync(device)
        first.setdefault(m, time.perf_counter() - t)
    warm_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {"video": [], "image": []}
    for i in range(2 * args.steps):
        m = order[i % 2]
        times[m] += benchlib.time_steps(lambda: step(batches[m]), 1, device)
    row = {"strategy": strategy, "setting": args.setting, "batch": batch,
           "warmup_s": warm_s, "first_video_s": first["video"], "first_image_s": first["image"],
           **{f"{m}_ms": benchlib.summary(v)["median"] * 1e3 for m, v in times.items()}}
    if strategy != "eager":
        from torch._dynamo.utils import compile_times

        row.update(counters_snapshot())
        try:
            ct = compile_times(repr="csv", aggregate=True)
            row["compile_times"] = {k: v for k, v in zip(ct[0], ct[1])}
        except Exception:  # noqa: BLE001 - the format of this internal helper varies by version
            pass
    # steady state: did anything compile again after the warm-up?
    del step, ctx
    benchlib.free(device)
    return row


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--setting", default="tiny", choices=("tiny", "s16-minilm", "b16"))
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--batch", type=int, default=None)
    benchlib.add_common_args(p, steps=3, warmup=2)
    args = p.parse_args(argv)
    device = benchlib.setup(args)
    env = benchlib.machine(device)
    rows = []
    import torch._dynamo.utils
    from torch._dynamo.utils import counters

    for strat in args.strategies:
        counters.clear()
        torch._dynamo.utils.guard_failures.clear()
        try:
            rows.append(run_strategy(args, device, strat))
        except Exception as e:  # noqa: BLE001 - a strategy that cannot compile is a result too
            msg = " ".join(str(e).split())
            rows.append({"strategy": strat, "setting": args.setting, "error": f"{type(e).__name__}: {msg[:600]}",
                         **counters_snapshot()})
            torch._dynamo.reset()
            benchlib.free(device)
        print(f"{strat}: {'failed: ' + rows[-1]['error'][:200] if 'error' in rows[-1] else 'done'}",
              flush=True)
    env["load_average_end"] = benchlib.load_average()
    print(benchlib.table(rows, ["strategy", "batch", "frames_compiled", "recompiles", "unique_graphs",
                                "graph_breaks", "warmup_s", "video_ms", "image_ms"],
                         {"warmup_s": ".1f", "video_ms": ".0f", "image_ms": ".0f"}))
    for r in rows:
        if r.get("error"):
            print(f"{r['strategy']}: {r['error']}")
        if r.get("graph_break_reasons"):
            print(f"{r['strategy']} graph breaks: {r['graph_break_reasons']}")
    out = {"benchmark": "compile_alternating_shapes", "machine": env, "args": vars(args),
           "results": rows}
    benchlib.write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
