"""Shared helpers of the benchmark scripts: timing, memory, machine description, tables, JSON.

Not a benchmark itself. The scripts import it as ``benchlib`` (they run as
``python benchmarks/<script>.py``, which puts this folder on ``sys.path``).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]


def add_common_args(p: argparse.ArgumentParser, steps: int = 5, warmup: int = 2) -> None:
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--steps", type=int, default=steps, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed steps before the first round")
    p.add_argument("--json", default=None, help="write the results here (JSON)")
    p.add_argument("--seed", type=int, default=0)


def setup(args: argparse.Namespace) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    # torch's own defaults (TF32 etc.) are left alone: the official code does not change them
    return torch.device(args.device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_average() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: versions, device, CPU, load, commit, date."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "python": platform.python_version(),
        "device": str(device), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "load_average": load_average(),
        "commit": _git_commit(),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    for mod in ("timm", "transformers", "open_clip"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional library is just not recorded
            pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "umt"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def time_steps(step: Callable[[], Any], n: int, device: torch.device,
               cpu: Optional[list[float]] = None) -> list[float]:
    """Wall seconds of ``n`` consecutive calls (the device is synchronised around each); with
    ``cpu``, this process's CPU seconds of each call are appended to it (on a shared CPU
    machine they vary less with the other jobs' load than wall time does)."""
    out = []
    for _ in range(n):
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        sync(device)
        out.append(time.perf_counter() - t0)
        if cpu is not None:
            cpu.append(time.process_time() - c0)
    return out


def summary(times: Iterable[float]) -> dict[str, float]:
    t = sorted(times)
    return {"min": t[0], "median": statistics.median(t), "max": t[-1], "n": len(t)}


def interleaved(steps: dict[str, Callable[[], Any]], rounds: int, n: int, warmup: int,
                device: torch.device) -> dict[str, list[float]]:
    """Time each named step in turn, A B A B ..., so slow drifts of a shared machine hit all
    alike; ``warmup`` untimed calls of each first. Returns every timed step's seconds."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    sync(device)
    out: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            out[name] += time_steps(fn, n, device)
    return out


# ---------------------------------------------------------------- memory
def cuda_mem(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far: ``VmHWM`` of /proc/self/status (unlike
    ``ru_maxrss``, which Linux carries over ``exec`` from the parent's fork, this belongs to
    this program alone)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class PeakMemory:
    """Peak device memory of a block above what was allocated when it started (CUDA), or the
    growth of the process's peak RSS (CPU: only meaningful in a fresh process, since the
    high-water mark never goes down)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.bytes = 0

    def __enter__(self):
        free(self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = peak_rss_bytes()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self.bytes = peak_rss_bytes() - self.start
        return False


def child_json(argv: list[str], timeout: float = 1800) -> dict[str, Any]:
    """Run ``python argv...`` in a fresh process and parse the last stdout line as JSON
    (CPU peak-memory probes need a fresh process each)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout,
                       env=env, cwd=str(ROOT))
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- output
def mib(b: float) -> float:
    return b / 2**20


def table(rows: list[dict[str, Any]], cols: list[str], fmt: Optional[dict[str, str]] = None) -> str:
    """A Markdown table of ``rows`` (dicts) over ``cols``."""
    fmt = fmt or {}

    def cell(r, c):
        v = r.get(c)
        if v is None:
            return "-"
        if isinstance(v, float):
            return format(v, fmt.get(c, ".3g"))
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r, c) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: Optional[str], obj: dict[str, Any]) -> None:
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, default=str) + "\n")
    print(f"wrote {path}")


def fake_clip(batch: int, frames: int, size: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """An ImageNet-normalised-looking clip ``[B, 3, T, H, W]`` (content does not change cost)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, frames, size, size, generator=g).to(device)
