"""What the per-step SIGTERM check costs: the training loop's one all-reduce of a scalar per
step (``umt.train.loop._Run.stop_if_sigterm`` -> ``umt.runtime.distributed.sum_over_ranks``),
timed alone between processes of one machine.

    torchrun --standalone --nproc-per-node 2 benchmarks/bench_sigterm_flag.py               # CPU: gloo
    torchrun --standalone --nproc-per-node 2 benchmarks/bench_sigterm_flag.py --device cuda  # NCCL

Each call is what the loop does after a step: the flag as a float64 tensor on the device, an
all-reduce, and ``float()`` of the result (a host sync on GPUs). Rank 0 prints the median and
90th percentile over ``--calls`` calls, after ``--warmup`` untimed ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

from umt.runtime import distributed  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL)")
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--json", default=None, help="write the results here (JSON)")
    args = p.parse_args()
    info = distributed.setup(args.device)
    times = []
    for i in range(args.warmup + args.calls):
        benchlib.sync(info.device)
        t0 = time.perf_counter()
        distributed.sum_over_ranks(False, info)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    distributed.cleanup()
    if not info.is_main:
        return
    times.sort()
    result = {"world_size": info.world_size, "device": str(info.device), "calls": args.calls,
              "median_us": round(statistics.median(times) * 1e6, 1),
              "p90_us": round(times[int(0.9 * len(times))] * 1e6, 1),
              "load_average": benchlib.load_average()}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": benchlib.machine(info.device), "result": result}, f, indent=2)


if __name__ == "__main__":
    main()
