"""Load official UMT checkpoints and ours into our models, strictly.

A checkpoint reaches a model as an object already read (what ``torch.load`` returns; jobs read
local files and ``s3://`` objects through ``umt.runtime.weights.read_checkpoint``) or as a
local path, read here with the same safe unpickler. Nothing here knows about object storage.

Accepted contents, wrapped in ``{'model': ...}``, ``{'module': ...}``, ``{'state_dict': ...}``
or bare, in fp16/bf16/fp32 (cast to fp32):

- official Stage-1 (``encoder.*``, ``clip_decoder.*``): into the Stage-1 student as is, or into
  a backbone (``encoder.`` stripped);
- official fine-tuned (``patch_embed.*``, ``blocks.*``, ``fc_norm.*``, ``head.*``, optional
  ``pos_embed``): into a backbone;
- official Stage-2 (``vision_encoder.encoder.*`` ...): the video encoder part, into either;
- ours (the same key layouts, under ``'model'``); ``module.`` (DDP) and ``_orig_mod.``
  (torch.compile) prefixes are stripped.

Loading is strict: a missing or unexpected key raises ``CheckpointError`` naming the keys,
except this allow-list, each logged:

1. a classifier ``head.*`` whose shape differs from the model's (or a model without a head):
   dropped, the model keeps its freshly initialised head;
2. the Stage-1 alignment heads ``clip_decoder.*`` when loading into a backbone;
3. the official Stage-1 ``encoder.norm.*`` when the backbone uses mean pooling (it has
   ``fc_norm`` instead); ``fc_norm.*``/``head.*`` are then missing and stay freshly initialised,
   as in official fine-tuning from a Stage-1 checkpoint;
4. the non-video parts of a Stage-2 checkpoint (``clip_teacher.*``, ``text_encoder.*``,
   ``vision_proj.*``, ``text_proj.*``, ``itm_head.*``, ``temp``, ``vision_encoder.pool_norm.*``).

``pos_embed`` is a fixed (never trained) table: a checkpoint's table is loaded when its shape
matches the model's grid, otherwise ignored because the model computes the official table for
its own grid.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import stat
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Union

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

_WRAPPERS = ("model", "module", "state_dict")
_STAGE2_NON_VIDEO = ("clip_teacher.", "text_encoder.", "vision_proj.", "text_proj.", "itm_head.",
                     "temp", "vision_encoder.pool_norm.")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message names the offending keys."""


@dataclass
class LoadReport:
    source: str
    kind: str
    dropped: list[str] = field(default_factory=list)  # allow-listed keys of the file not loaded
    fresh: list[str] = field(default_factory=list)    # allow-listed model keys left at init


# Classes a checkpoint may name besides tensors and containers: plain attribute bags only.
# Official multi-modality training checkpoints pickle their ``config`` as
# ``utils.easydict.EasyDict`` (a dict subclass whose items are also attributes): it is read as
# an ``OrderedDict``, the one dict type torch's safe unpickler fills and gives attributes to.
_SAFE_GLOBALS = [argparse.Namespace, (OrderedDict, "utils.easydict.EasyDict"),
                 (OrderedDict, "easydict.EasyDict")]


class Checkpoint(dict):
    """A checkpoint already read, with ``source``: the file or URI it came from, which load
    errors name (``umt.runtime.weights.read_checkpoint`` returns these)."""

    def __init__(self, obj: dict, source: str):
        super().__init__(obj)
        self.source = source


# What ``create_model(pretrained=...)`` and the loaders take: a local path, or a checkpoint /
# state dict already read.
Pretrained = Union[str, os.PathLike, dict]
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


def load_checkpoint(f: BinaryIO, source: str) -> Any:
    """Unpickle a checkpoint from the open binary file ``f`` without executing anything from
    it (``weights_only=True``).

    Besides tensors and containers, the official checkpoints' plain attribute bags are
    allowed: ``argparse.Namespace`` (the video-only code's ``args``) and the multi-modality
    code's ``EasyDict`` ``config`` (read as an ``OrderedDict``).
    """
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused or a corrupt file
        raise CheckpointError(f"cannot read checkpoint {source}: {e}") from e


def read_checkpoint(path: str) -> Any:
    """Load a local checkpoint file (see ``load_checkpoint``); only a regular file is opened (a
    FIFO or /dev/zero would block or never end). Other locations (``s3://``) are refused: read
    them with ``umt.runtime.weights.read_checkpoint`` and pass what it returns."""
    path = os.fspath(path)
    m = _SCHEME.match(path)
    if m and m.group(1) != "file":
        raise CheckpointError(f"cannot read checkpoint {path}: scheme {m.group(1)!r} rejected "
                              f"(umt.models reads local files; read other locations with "
                              f"umt.runtime.weights.read_checkpoint and pass the result)")
    path = path.removeprefix("file://")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"cannot read checkpoint {path}: not a regular file (a directory, "
                              f"FIFO, device or socket)")
    with open(path, "rb") as f:
        return load_checkpoint(f, path)


def state_dict_of(pretrained: Pretrained) -> tuple[dict[str, torch.Tensor], str]:
    """``(state dict, source name)`` of a local path or a checkpoint already read."""
    if isinstance(pretrained, (str, os.PathLike)):
        source = os.fspath(pretrained)
        return extract_state_dict(read_checkpoint(source), source), source
    source = getattr(pretrained, "source", "<checkpoint>")
    return extract_state_dict(pretrained, source), source


def extract_state_dict(obj: dict, source: str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """Unwrap ``{'model'|'module'|'state_dict': sd}``, strip DDP/compile prefixes, cast to fp32."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    for key in _WRAPPERS:
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    sd = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{source}: entry {k!r} is {type(v).__name__}, not a tensor; "
                                  f"top-level keys are {sorted(obj)[:10]}")
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        sd[k] = v.float() if v.is_floating_point() else v
    if not sd:
        raise CheckpointError(f"{source}: no tensors found")
    return sd


def _detect(sd: dict[str, torch.Tensor]) -> str:
    if any(k.startswith("vision_encoder.") for k in sd):
        return "stage2"
    if any(k.startswith("encoder.") for k in sd):
        return "stage1"
    return "backbone"


def adapt_state_dict(sd: dict[str, torch.Tensor], model: nn.Module,
                     source: str = "<checkpoint>") -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Rename/drop keys of any accepted layout so they fit ``model`` (applying the allow-list)."""
    from umt.models.pretrain import PretrainVisionTransformer

    kind = _detect(sd)
    report = LoadReport(source, kind)
    sd = dict(sd)
    if kind == "stage2":
        for k in [k for k in sd if k.startswith(_STAGE2_NON_VIDEO)]:
            report.dropped.append(k)
            del sd[k]
        sd = {k.removeprefix("vision_encoder."): v for k, v in sd.items()}

    if isinstance(model, PretrainVisionTransformer):
        if kind == "backbone":  # a fine-tuned file: only its encoder part can apply
            sd = {f"encoder.{k}": v for k, v in sd.items()}
        backbone = model.encoder
        prefix = "encoder."
    else:
        backbone, prefix = model, ""
        if kind in ("stage1", "stage2"):
            for k in [k for k in sd if k.startswith("clip_decoder.")]:
                report.dropped.append(k)
                del sd[k]
            sd = {k.removeprefix("encoder."): v for k, v in sd.items()}
            if model.fc_norm is not None:  # mean pooling: official encoder.norm is unused
                for k in [k for k in sd if k.startswith("norm.")]:
                    report.dropped.append(k)
                    del sd[k]
                report.fresh += [k for k in model.state_dict() if k.startswith(("fc_norm.", "head."))]

    # Classifier head of another size (or a model without one): keep the model's head.
    own = model.state_dict()
    for k in [f"{prefix}head.weight", f"{prefix}head.bias"]:
        if k in sd and (k not in own or own[k].shape != sd[k].shape):
            report.dropped.append(k)
            del sd[k]
            if k in own:
                report.fresh.append(k)

    # Fixed position table: loaded when it fits this grid, else the model's own table stands.
    pos = sd.pop(f"{prefix}pos_embed", None)
    if pos is not None:
        if pos.shape == backbone.pos_embed.shape:
            with torch.no_grad():
                backbone.pos_embed.copy_(pos)
        else:
            report.dropped.append(f"{prefix}pos_embed")
    return sd, report


def check_strict(sd: dict, own: dict, fresh, source: str, kind: str, model_name: str) -> None:
    """Raise ``CheckpointError`` naming every missing, unexpected or mis-shaped key.

    ``sd``: the (adapted) file; ``own``: the model's state dict; ``fresh``: model keys allowed to
    be missing (left at init by the allow-list).
    """
    shape_bad, missing, unexpected = state_dict_misfit(sd, own, fresh)
    message = misfit_message(
        f"checkpoint {source} ({kind} layout) does not fit {model_name}:",
        [(f"missing keys ({len(missing)})", missing),
         (f"unexpected keys ({len(unexpected)})", unexpected),
         ("shape mismatches", shape_bad)], limit=20)
    if message:
        raise CheckpointError(message)


def state_dict_misfit(sd: dict, own: dict, fresh=(), *, theirs: str = "file",
                      ours: str = "model") -> tuple[list[str], list[str], list[str]]:
    """What keeps state dict ``sd`` from loading strictly into a model whose state dict is
    ``own``: ``(shape mismatches "key: <theirs> (shape) vs <ours> (shape)", missing keys,
    unexpected keys)``, all empty when it fits. ``fresh``: model keys allowed to be missing."""
    shapes = [f"{k}: {theirs} {tuple(v.shape)} vs {ours} {tuple(own[k].shape)}"
              for k, v in sd.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    missing = sorted(set(own) - set(sd) - set(fresh))
    unexpected = sorted(set(sd) - set(own))
    return shapes, missing, unexpected


def misfit_message(header: str, parts: list[tuple[str, list[str]]], limit: int) -> str | None:
    """``header``, then ``  <label>: <its first limit keys>`` for each part that names keys;
    None when none does (the state dict fits)."""
    lines = [f"  {label}: {keys[:limit]}" for label, keys in parts if keys]
    return "\n".join([header, *lines]) if lines else None


def load_pretrained(model: nn.Module, pretrained: Pretrained) -> LoadReport:
    """Load ``pretrained`` (a local path or a checkpoint already read) into ``model`` strictly
    (see the module docstring for the allow-list)."""
    sd, source = state_dict_of(pretrained)
    sd, report = adapt_state_dict(sd, model, source)
    own = model.state_dict()
    own.pop("pos_embed", None)
    own.pop("encoder.pos_embed", None)
    check_strict(sd, own, report.fresh, source, report.kind, type(model).__name__)
    model.load_state_dict(sd, strict=False)  # strictness enforced above, with the allow-list
    if report.dropped or report.fresh:
        log.info("loaded %s (%s): ignored %s; left at init %s", source, report.kind,
                 report.dropped, report.fresh)
    return report
