"""Small pieces every job process uses: console logging, precision (autocast), the non-finite
guard of a training loop and a run's small files (config.yaml, metrics.jsonl, summary.json)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

from umt import storage
from umt.configs import to_yaml

log = logging.getLogger("umt.runtime")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record arrives: a handler bound to the
    stream of the moment outlives it when a caller swaps and closes it (a CLI runner, an
    in-process run of a stage), and every later log line then fails."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.setStream; always sys.stderr
        pass


def setup_logging(rank: int = 0) -> None:
    """Readable console logs: time, rank, level, message (only rank 0 logs INFO)."""
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, handlers=[_StderrHandler()], force=True,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def autocast(device: torch.device, precision: str):
    """bf16 autocast on GPUs when asked; plain fp32 on CPUs (bf16 there is slow, not faster)."""
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be bf16 or fp32, got {precision!r}")
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class NonFiniteGuard:
    """Counts skipped non-finite steps (loss or gradients); stops the run after ``limit`` in a row."""

    def __init__(self, limit: int):
        self.limit, self.consecutive, self.total = limit, 0, 0

    def update(self, finite: bool, step: int) -> None:
        if finite:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        log.warning("step %d: non-finite loss or gradients, update skipped (%d in a row, %d in total)",
                    step, self.consecutive, self.total)
        if self.consecutive >= self.limit:
            raise FloatingPointError(
                f"loss or gradients were non-finite for {self.consecutive} consecutive steps (up to step {step}); "
                f"stopping. Lower optim.base_lr, enable optim.clip_grad, or check the data; "
                f"resume continues from the last good checkpoint.")


class RunFiles:
    """A run's small files (config.yaml, metrics.jsonl, summary.json) in a local folder or
    under an s3:// prefix. For S3 the metrics file is kept locally and uploaded on ``flush``."""

    def __init__(self, output_dir: str, enabled: bool = True):
        self.output_dir, self.enabled = output_dir, enabled
        if output_dir.startswith("s3://"):
            # Readable, and unique: "s3://b/x_y/z" and "s3://b/x/y_z" flatten alike.
            digest = hashlib.sha256(output_dir.encode()).hexdigest()[:12]
            safe = f"{output_dir[5:].replace('/', '_')[:80]}-{digest}"
            self.local = Path(os.environ.get("UMT_CACHE", Path.home() / ".cache" / "umt")) / "runs" / safe
        else:
            self.local = Path(output_dir)
        if enabled:
            self.local.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.local / "metrics.jsonl"
        self._last = time.time()

    def write_config(self, cfg: Any) -> None:
        if self.enabled:
            storage.write_bytes(storage.join(self.output_dir, "config.yaml"), to_yaml(cfg).encode())

    def resume(self, step: int) -> None:
        """Continue the metrics history of a resumed run: fetch it when it lives on S3 (the
        local cache may be a fresh container's) and drop records after ``step``, which the
        resumed run logs again."""
        if not self.enabled:
            return
        remote = storage.join(self.output_dir, "metrics.jsonl")
        if self.output_dir.startswith("s3://") and storage.exists(remote):
            storage.download_file(remote, str(self.metrics_path))
        if self.metrics_path.exists():
            kept = []
            lines = self.metrics_path.read_text(errors="replace").splitlines()
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:  # a line torn by a crash mid-write: the rest is intact
                    log.warning("%s line %d is not valid JSON (torn by a crash?): dropped",
                                remote, n)
                    continue
                if isinstance(record, dict) and record.get("step", 0) <= step:
                    kept.append(line)
            self.metrics_path.write_text("".join(f"{line}\n" for line in kept))

    def log_metrics(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        if self.enabled and self.output_dir.startswith("s3://") and self.metrics_path.exists():
            storage.upload_file(str(self.metrics_path), storage.join(self.output_dir, "metrics.jsonl"))

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.enabled:
            storage.write_bytes(storage.join(self.output_dir, "summary.json"),
                                json.dumps(summary, indent=2).encode())
            self.flush()


def finite_or_none(x: Optional[float]) -> Optional[float]:
    return x if x is not None and math.isfinite(x) else None
