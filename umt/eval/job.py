"""What every evaluation job shares: its run settings, the run folder, metrics.json and
summary.json. An evaluation is a stage of the catalogue (``umt.catalogue``) like a training
stage (so it runs as one process, under torchrun, or as a PyTorchJob), but it has no training
loop.

Files in ``train.output_dir`` (local or s3://): ``config.yaml`` (the resolved config: every
evaluation setting, so each number can be reproduced from its folder), ``metrics.json`` (the
task's full result) and ``summary.json`` (``stage``, ``task``, ``metrics``: the headline
numbers, ``checkpoint``, ``output_dir``), which ``umt.launch.run_training_job`` returns.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from umt import storage
from umt.configs import to_yaml
from umt.runtime import distributed
from umt.runtime.common import setup_logging
from umt.runtime.lease import RunLease

log = logging.getLogger("umt.eval")


def run_evaluation(task: str, cfg: Any, body: Callable[[Any, distributed.DistInfo], dict],
                   headline: Callable[[dict], dict]) -> dict[str, Any]:
    """Set up the process group, hold the output folder's lease, run ``body(cfg, dist)`` (every
    rank; it returns the full result on every rank), write the files (rank 0)."""
    tc = cfg.train
    dist = distributed.setup(tc.device)
    setup_logging(dist.rank)
    lease = RunLease(tc.output_dir, tc.lease_ttl_s).acquire() if dist.is_main else None
    try:
        if dist.is_main:
            storage.write_bytes(storage.join(tc.output_dir, "config.yaml"), to_yaml(cfg).encode())
        result = body(cfg, dist)
        summary = {"stage": f"eval-{task}", "task": task, "metrics": headline(result),
                   "checkpoint": getattr(getattr(cfg, "model", None), "pretrained", None),
                   "output_dir": tc.output_dir,
                   "metrics_uri": storage.join(tc.output_dir, "metrics.json")}
        if dist.is_main:
            lease.check()
            storage.write_bytes(summary["metrics_uri"], json.dumps(result, indent=2).encode())
            storage.write_bytes(storage.join(tc.output_dir, "summary.json"),
                                json.dumps(summary, indent=2).encode())
        return summary
    finally:
        if lease is not None:
            lease.release()
        distributed.cleanup()
