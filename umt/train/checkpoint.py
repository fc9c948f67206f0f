"""Training checkpoints in a local folder or under an ``s3://`` prefix.

Layout: ``<output_dir>/checkpoints/step_00001000.pt`` plus ``latest`` (a small text file naming
the newest complete one). A checkpoint is written in full first (local: temp file + fsync +
rename; S3: one PUT or a completed multipart upload, both atomic), and only then is ``latest``
replaced, so a crash while saving never leaves a broken "latest". Pruning never touches the
checkpoint just written, and temp files that a killed writer left behind are swept.

Contents: ``model`` (the student's state dict, in the official key layout), ``optimizer``,
``scheduler``, ``step``, ``rng`` (one entry per rank: torch CPU and current-CUDA-device
states), ``data`` (the stream position), ``config`` (resolved YAML) and ``format``. The frozen
teacher is never saved. Reading uses ``weights_only=True``: nothing in a checkpoint is executed.
"""

from __future__ import annotations

import io
import logging
import os
import re
from typing import Any, Optional

import torch

from umt import storage

log = logging.getLogger(__name__)

FORMAT = "umt-train-ckpt-v1"
# Anchored at a path separator so a crashed writer's ".tmp-XXXX-step_...pt" never counts.
_NAME = re.compile(r"(?:^|/)step_(\d{8})\.pt$")


def ckpt_dir(output_dir: str) -> str:
    return storage.join(output_dir, "checkpoints")


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random state: CPU, and its own CUDA device when it has one."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save(output_dir: str, step: int, payload: dict[str, Any], keep_last: int = 2) -> str:
    """Write ``payload`` (plus step/format) as step ``step``; point ``latest`` at it; prune."""
    folder = ckpt_dir(output_dir)
    name = f"step_{step:08d}.pt"
    buf = io.BytesIO()
    torch.save({**payload, "step": step, "format": FORMAT}, buf)
    uri = storage.join(folder, name)
    storage.write_bytes(uri, buf.getvalue())
    storage.write_bytes(storage.join(folder, "latest"), name.encode())
    if keep_last > 0:
        older = [s for s in list_steps(output_dir) if s != step]
        for old in older[:max(len(older) - (keep_last - 1), 0)]:
            storage.delete(storage.join(folder, f"step_{old:08d}.pt"))
    if not storage.is_s3(folder):  # leftovers of writers killed mid-write (S3 has none)
        for path in storage.list_uris(folder):
            if os.path.basename(path).startswith(".tmp-"):
                storage.delete(path)
    return uri


def list_steps(output_dir: str) -> list[int]:
    steps = {int(m.group(1)) for uri in storage.list_uris(ckpt_dir(output_dir))
             if (m := _NAME.search(uri))}
    return sorted(steps)


def load(uri: str) -> dict[str, Any]:
    obj = torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{uri} is not a umt training checkpoint (format {FORMAT})")
    return obj


def load_latest(output_dir: str) -> Optional[dict[str, Any]]:
    """The newest complete checkpoint under ``output_dir`` (with its ``uri``), or None.

    Follows ``latest``; if that names a file that cannot be read (deleted, corrupt), falls back
    to the newest readable ``step_*.pt`` with a warning instead of starting over silently.
    """
    folder = ckpt_dir(output_dir)
    candidates = []
    pointer = storage.join(folder, "latest")
    if storage.exists(pointer):
        candidates.append(storage.join(folder, storage.read_bytes(pointer).decode().strip()))
    candidates += [storage.join(folder, f"step_{s:08d}.pt") for s in reversed(list_steps(output_dir))]
    for uri in dict.fromkeys(candidates):
        try:
            return {**load(uri), "uri": uri}
        except Exception as e:  # keep looking for an older complete checkpoint
            log.warning("skipping unreadable checkpoint %s: %s", uri, e)
    return None
