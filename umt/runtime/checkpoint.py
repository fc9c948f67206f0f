"""Training checkpoints in a local folder or under an ``s3://`` prefix.

Layout: ``<output_dir>/checkpoints/step_00001000.pt`` plus ``latest`` (a small text file naming
the newest complete one), and for stages that evaluate, ``best.pt`` + ``best.json``. A
checkpoint is written in full first (local: temp file + fsync + rename; S3: one PUT or a
completed multipart upload, both atomic), and only then is ``latest`` replaced, so a crash while
saving never leaves a broken "latest".

What is never lost:

* Resuming reads the newest checkpoint that loads; a corrupt newest one falls back to an older
  readable one with a warning naming it. A folder that holds checkpoints none of which can be
  read, or a storage error that is not "not found" (access denied, network down), stops the
  run (``CheckpointsUnreadableError`` naming every file and error) instead of starting over at
  step 0 and overwriting them. Only a folder with no checkpoints starts fresh.
* A :class:`CheckpointWriter` prunes only checkpoints of its own lineage: the ones it wrote
  and the one it resumed from, and the older ones that checkpoint names as written by earlier
  attempts of the same run (``lineage``; so a restart, e.g. after each preemption, does not
  leave one checkpoint behind for good). A file it did not write is never deleted, and one it
  would overwrite (an unreadable newer checkpoint, after falling back) is first kept aside as
  ``step_XXXXXXXX.pt.unreadable-<time>``.

Contents: ``model`` (the trained module's state dict), ``optimizer``, ``scheduler``, ``step``,
``rng`` (one entry per rank: torch CPU and current-CUDA-device states), ``data`` (the stream
position), ``config`` (resolved YAML), ``lineage`` (the steps of the writer's checkpoints,
this one included) and ``format``. Frozen modules (the CLIP teacher) are
never saved. Reading uses ``weights_only=True``: nothing in a checkpoint is executed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from typing import Any, Optional

import torch

from umt import storage
from umt.errors import UserError

log = logging.getLogger(__name__)

FORMAT = "umt-train-ckpt-v1"
# Anchored at a path separator so a crashed writer's ".tmp-XXXX-step_...pt" never counts.
_NAME = re.compile(r"(?:^|/)step_(\d{8})\.pt$")
_BARE_NAME = re.compile(r"step_\d{8}\.pt")


class CheckpointsUnreadableError(UserError):
    """Checkpoints exist but none can be read: resuming would silently start over."""


def ckpt_dir(output_dir: str) -> str:
    return storage.join(output_dir, "checkpoints")


def step_uri(output_dir: str, step: int) -> str:
    return storage.join(ckpt_dir(output_dir), f"step_{step:08d}.pt")


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


def _serialise(payload: dict[str, Any], step: int, lineage: Optional[list[int]] = None) -> bytes:
    buf = io.BytesIO()
    torch.save({**payload, "step": step, "format": FORMAT, "lineage": lineage or [step]}, buf)
    return buf.getvalue()


def list_steps(output_dir: str) -> list[int]:
    steps = {int(m.group(1)) for uri in storage.list_uris(ckpt_dir(output_dir))
             if (m := _NAME.search(uri))}
    return sorted(steps)


def _parse(data: bytes, uri: str) -> dict[str, Any]:
    obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{uri} is not a umt training checkpoint (format {FORMAT})")
    return obj


def load(uri: str) -> dict[str, Any]:
    return _parse(storage.read_bytes(uri), uri)


def load_latest(output_dir: str) -> Optional[dict[str, Any]]:
    """The newest readable checkpoint under ``output_dir`` (with its ``uri`` and the list of
    newer ``unreadable`` ones), or None when the folder holds no checkpoint at all.

    Raises :class:`CheckpointsUnreadableError` when checkpoints exist and none loads; storage
    errors other than "not found" propagate (they say nothing about the files' content).
    """
    folder = ckpt_dir(output_dir)
    candidates = []
    pointer = storage.join(folder, "latest")
    try:
        name = storage.read_bytes(pointer, max_bytes=4096).decode("utf-8", "replace").strip()
        # A bare checkpoint name only: "../../elsewhere/step_00000009.pt" or an absolute path
        # would read a file outside the run's folder.
        if _BARE_NAME.fullmatch(name):
            candidates.append(storage.join(folder, name))
        else:
            log.warning("ignoring %s: %r is not a checkpoint name", pointer, name[:80])
    except FileNotFoundError:
        pass
    except storage.TooLargeError:
        log.warning("ignoring %s: too large to name a checkpoint", pointer)
    candidates += [step_uri(output_dir, s) for s in reversed(list_steps(output_dir))]
    problems: list[str] = []
    for uri in dict.fromkeys(candidates):
        try:
            data = storage.read_bytes(uri)
        except FileNotFoundError:  # ``latest`` naming a pruned or deleted file
            continue
        try:
            obj = _parse(data, uri)
        except Exception as e:  # truncated, garbage, foreign: try an older one
            reason = f"{type(e).__name__}: {str(e)[:200]}"
            log.warning("skipping unreadable checkpoint %s (%s)", uri, reason)
            problems.append(f"{uri}: {reason}")
            continue
        if problems:
            log.warning("resuming from %s, the newest readable checkpoint; %d newer one(s) could "
                        "not be read and are kept untouched", uri, len(problems))
        return {**obj, "uri": uri, "unreadable": [p.split(": ", 1)[0] for p in problems]}
    if problems:
        raise CheckpointsUnreadableError(
            f"{folder} holds {len(problems)} checkpoint(s) and none can be read, so the run stops "
            f"instead of starting over and overwriting them:\n  " + "\n  ".join(problems) +
            "\nMove or delete them to start from step 0, or use another train.output_dir.")
    return None


class CheckpointWriter:
    """Saves ``step_*.pt`` + ``latest`` and prunes, touching only this run's own lineage."""

    def __init__(self, output_dir: str, keep_last: int = 2):
        self.output_dir, self.keep_last = output_dir, keep_last
        self.folder = ckpt_dir(output_dir)
        self.owned: list[int] = []  # steps of this lineage, oldest first

    def adopt(self, step: int, lineage: Optional[list[int]] = None) -> None:
        """The checkpoint this run resumed from joins its lineage (pruned like its own), and so
        do the older checkpoints its ``lineage`` names that still exist: earlier attempts of
        this run wrote them."""
        existing = set(list_steps(self.output_dir)) if lineage else set()
        for s in sorted({s for s in lineage or [] if isinstance(s, int)}):
            if s < step and s in existing and s not in self.owned:  # never a newer one
                self.owned.append(s)
        if step not in self.owned:
            self.owned.append(step)

    def save(self, step: int, payload: dict[str, Any]) -> str:
        uri = step_uri(self.output_dir, step)
        if step not in self.owned and storage.exists(uri):
            aside = f"{uri}.unreadable-{int(time.time())}"
            storage.write_bytes(aside, storage.read_bytes(uri))
            log.warning("%s exists but is not this run's (it could not be read): kept as %s",
                        uri, aside)
        storage.write_bytes(uri, _serialise(payload, step, sorted({*self.owned, step})))
        storage.write_bytes(storage.join(self.folder, "latest"), os.path.basename(uri).encode())
        self.adopt(step)
        self._prune(step)
        return uri

    def _prune(self, newest: int) -> None:
        if self.keep_last <= 0:
            return
        older = [s for s in self.owned if s != newest]
        drop = older[:max(len(older) - (self.keep_last - 1), 0)]
        for old in drop:
            storage.delete(step_uri(self.output_dir, old))
            self.owned.remove(old)
        if not storage.is_s3(self.folder):
            # Leftovers of writers killed mid-write (S3 has none). Safe: the run lease
            # (umt.runtime.lease) guarantees no other live writer uses this folder.
            for path in storage.list_uris(self.folder):
                if os.path.basename(path).startswith(".tmp-"):
                    storage.delete(path)

    def best_info(self) -> Optional[dict[str, Any]]:
        """``best.json`` of an earlier attempt of this run (so a resumed run keeps its best)."""
        try:
            info = json.loads(storage.read_bytes(storage.join(self.folder, "best.json")))
        except (FileNotFoundError, ValueError):
            return None
        return info if isinstance(info, dict) and "value" in info else None

    def save_best(self, step: int, payload: dict[str, Any], info: dict[str, Any]) -> str:
        """``best.pt`` (same format) and ``best.json`` (``info``: metric, value, step)."""
        uri = storage.join(self.folder, "best.pt")
        storage.write_bytes(uri, _serialise(payload, step))
        storage.write_bytes(storage.join(self.folder, "best.json"),
                            json.dumps({**info, "step": step, "checkpoint": uri}, indent=2).encode())
        return uri


def save(output_dir: str, step: int, payload: dict[str, Any], keep_last: int = 2) -> str:
    """Write one checkpoint outside a training run (tools, tests): prunes nothing it did not write."""
    return CheckpointWriter(output_dir, keep_last).save(step, payload)
