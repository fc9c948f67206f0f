"""Model weights read from storage (a local path or an ``s3://`` URI) for a job's models.

``umt.models`` never touches storage: a job reads a checkpoint here and hands the object to
``umt.models.create_model(pretrained=...)`` (or ``build_from_config``). Reading goes through
``umt.storage`` either way: it refuses other schemes (``pipe:...``) and local paths that are
not regular files (a FIFO or /dev/zero would block or never end), and a local file is read
through its handle, not copied into memory first. Unpickling is ``umt.models.checkpoint``'s
safe one (``weights_only=True``: nothing in a checkpoint is executed).
"""

from __future__ import annotations

import io
import json
from typing import Optional, Sequence

import torch.nn as nn

from umt import storage
from umt.models import head_map as heads
from umt.models.checkpoint import (
    Checkpoint,
    CheckpointError,
    LoadReport,
    load_checkpoint,
    state_dict_of,
)

MAX_MAP_BYTES = 16 << 20  # a head map of 100k classes is well below this


def read_checkpoint(uri: str) -> Checkpoint:
    """The checkpoint at ``uri`` (what ``torch.load`` returns, a dict, with ``.source = uri``);
    ``CheckpointError`` when it is missing, not a regular file or not a readable checkpoint.
    A run's ``summary.json`` stands for the checkpoint that run ended with (:func:`final_checkpoint`).
    """
    uri = final_checkpoint(uri)
    try:
        f = (io.BytesIO(storage.read_bytes(uri)) if storage.is_s3(uri)
             else storage.open_read(uri))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {uri}") from None
    except (storage.NotRegularFileError, IsADirectoryError) as e:
        raise CheckpointError(f"cannot read checkpoint {uri}: {e}") from None
    with f:
        obj = load_checkpoint(f, uri)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{uri}: expected a dict of tensors, got {type(obj).__name__}")
    return Checkpoint(obj, uri)


def final_checkpoint(uri: str) -> str:
    """``<run>/summary.json`` -> the checkpoint of the finished run it describes; any other URI
    as it is.

    How a stage names its parent's last checkpoint before the parent has run: with a schedule in
    epochs the last step (``step_XXXXXXXX.pt``) is known only when the parent starts. A run
    stopped early (``train.stop_at``) or not finished yet is refused, naming the run.
    """
    if not uri.endswith("/summary.json") and uri != "summary.json":
        return uri
    try:
        summary = json.loads(storage.read_bytes(uri, max_bytes=MAX_MAP_BYTES))
    except FileNotFoundError:
        raise CheckpointError(f"{uri} does not exist: that run has not finished (or is not "
                              f"there), so it names no final checkpoint") from None
    except ValueError as e:
        raise CheckpointError(f"{uri} is not a run summary: {e}") from None
    ckpt = summary.get("checkpoint") if isinstance(summary, dict) else None
    steps, total = (summary.get("steps"), summary.get("total_steps")) if ckpt else (None, None)
    if not ckpt or not isinstance(steps, int) or not isinstance(total, int):
        raise CheckpointError(f"{uri} names no checkpoint (not a training run's summary.json)")
    if steps < total:
        raise CheckpointError(f"{uri}: that run stopped at step {steps} of {total}; finish it "
                              f"(run it again with the same train.output_dir) or name a "
                              f"checkpoint")
    return ckpt


def read_optional(uri: Optional[str]) -> Optional[Checkpoint]:
    """``read_checkpoint(uri)``, or None when no checkpoint is configured."""
    return read_checkpoint(uri) if uri else None


def read_head_map(uri: str, target_classes: Sequence[str], num_source: int) -> list[Optional[int]]:
    """Per target class, the source row it starts from (None: fresh), from the head map file
    at ``uri`` (``umt.models.head_map`` describes the formats)."""
    try:
        raw = storage.read_bytes(uri, max_bytes=MAX_MAP_BYTES)
    except FileNotFoundError:
        raise ValueError(f"model.head_map={uri!r}: file not found") from None
    return heads.parse_head_map(uri, raw.decode("utf-8", "replace"), target_classes, num_source)


def load_classifier_init(model: nn.Module, uri: str, *, head_map: Optional[str] = None,
                         target_classes: Sequence[str] = (),
                         require_head: bool = False) -> LoadReport:
    """Read the checkpoint ``uri`` (and the ``head_map`` file) and load it into the classifier
    ``model`` strictly (``umt.models.head_map.load_classifier_state_dict``)."""
    sd, source = state_dict_of(read_checkpoint(uri))
    rows = None
    if head_map:
        rows = read_head_map(head_map, target_classes, heads.head_size(sd, source))
    return heads.load_classifier_state_dict(model, sd, source, head_rows=rows,
                                            require_head=require_head)
