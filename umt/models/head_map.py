"""Initialise an action classifier from a checkpoint's state dict, optionally mapping its
head onto another label set (the official K400/600/700-from-K710 starts: ``head[:400]`` or the
rows ``label_mixto600.json`` lists).

    sd, source = state_dict_of(checkpoint)        # umt.models.checkpoint
    rows = parse_head_map("k710_to_k400.json", text, target_classes, head_size(sd, source))
    load_classifier_state_dict(model, sd, source, head_rows=rows)

(A job reads the checkpoint and the head map file through ``umt.runtime.weights``, whose
``load_classifier_init(model, uri, head_map=...)`` does all three.) A head map is a file, never
code:

- ``*.json``: a list with one entry per target class, the index of its source class (the
  checkpoint's head row) or ``null`` for a class that has none (its row keeps the fresh init);
  e.g. ``[0, 1, ..., 399]`` for K400 from K710. (A JSON object ``{"map": [...]}`` also works.)
- anything else: a classes.txt of the **source** label set (one name per line, in the order of
  the checkpoint's head); each target class (``target_classes``, the training set's
  dataset.json ``classes``) takes the row of the source class with the same name, or a fresh
  row if there is none.

Everything else goes through the strict loader of ``umt.models.checkpoint`` (its allow-list).
"""

from __future__ import annotations

import json
import logging
from typing import Optional, Sequence

import torch
import torch.nn as nn

from umt.models.checkpoint import CheckpointError, LoadReport, adapt_state_dict, check_strict

log = logging.getLogger(__name__)


def head_size(sd: dict[str, torch.Tensor], source: str) -> int:
    """Rows of the checkpoint's classifier head (what a head map maps from)."""
    if "head.weight" not in sd or "head.bias" not in sd:
        raise ValueError(f"model.head_map is set but {source} has no classifier head "
                         f"(head.weight): it is a pretraining checkpoint; unset model.head_map")
    return sd["head.weight"].shape[0]


def parse_head_map(uri: str, text: str, target_classes: Sequence[str],
                   num_source: int) -> list[Optional[int]]:
    """Per target class, the source row it starts from (None: fresh), from the text of the head
    map file ``uri``. ``num_source`` is the checkpoint head's size; the map must have one entry
    per target class."""
    n_target = len(target_classes)
    if uri.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ValueError(f"model.head_map={uri!r} is not valid JSON: {e}") from None
        if isinstance(data, dict):
            data = data.get("map")
        if not isinstance(data, list):
            raise ValueError(f"model.head_map={uri!r} must hold a JSON list (one source index "
                             f"or null per target class)")
        if n_target and len(data) != n_target:
            raise ValueError(f"model.head_map={uri!r} has {len(data)} entries but the head has "
                             f"{n_target} classes")
        out: list[Optional[int]] = []
        for i, v in enumerate(data):
            if v is None:
                out.append(None)
            elif isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < num_source:
                raise ValueError(f"model.head_map={uri!r}: entry {i} is {v!r:.40}, not a source "
                                 f"class index in [0, {num_source}) or null")
            else:
                out.append(v)
        return out
    source = [line.strip() for line in text.splitlines() if line.strip()]
    if len(source) != num_source:
        raise ValueError(f"model.head_map={uri!r} lists {len(source)} source classes but the "
                         f"checkpoint's head has {num_source} rows")
    index = {name: i for i, name in enumerate(source)}
    if len(index) != len(source):
        raise ValueError(f"model.head_map={uri!r} names a class twice")
    if not target_classes:
        raise ValueError("model.head_map is a classes.txt, so the training set's dataset.json "
                         "must list its classes (to match them by name)")
    out = [index.get(name) for name in target_classes]
    missing = [name for name, j in zip(target_classes, out) if j is None]
    if len(missing) == len(out):
        raise ValueError(f"model.head_map={uri!r}: none of the {len(out)} classes is among the "
                         f"source classes (first: {list(target_classes)[:3]})")
    if missing:
        log.warning("head_map: %d classes have no source class and start fresh: %s",
                    len(missing), missing[:10])
    return out


def _map_head(sd: dict[str, torch.Tensor], model: nn.Module, rows: list[Optional[int]],
              uri: str) -> None:
    """Replace the checkpoint's ``head.*`` with the mapped rows (fresh rows from the model)."""
    own_w, own_b = model.head.weight.detach(), model.head.bias.detach()
    if len(rows) != own_w.shape[0]:
        raise ValueError(f"model.head_map has {len(rows)} entries but the head has "
                         f"{own_w.shape[0]} classes")
    src_w, src_b = sd["head.weight"], sd["head.bias"]
    if src_w.shape[1] != own_w.shape[1]:
        raise CheckpointError(f"{uri}: head.weight is {tuple(src_w.shape)}, the model's head "
                              f"input is {own_w.shape[1]} wide")
    w, b = own_w.clone(), own_b.clone()
    for i, j in enumerate(rows):
        if j is not None:
            w[i], b[i] = src_w[j], src_b[j]
    sd["head.weight"], sd["head.bias"] = w, b


def load_classifier_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], source: str, *,
                               head_rows: Optional[list[Optional[int]]] = None,
                               require_head: bool = False) -> LoadReport:
    """Load ``sd`` (Stage 1, Stage 2 or fine-tuned, ours or official; from ``source``) into the
    classifier ``model`` strictly, its head mapped through ``head_rows`` when given
    (``parse_head_map``).

    ``require_head``: the head must come from the file (evaluation of a fine-tuned model: a
    head left at its init would score chance without saying so).
    """
    sd = dict(sd)
    if head_rows is not None:
        head_size(sd, source)
        _map_head(sd, model, head_rows, source)
    sd, report = adapt_state_dict(sd, model, source)
    own = model.state_dict()
    own.pop("pos_embed", None)
    check_strict(sd, own, report.fresh, source, report.kind, type(model).__name__)
    model.load_state_dict(sd, strict=False)  # strictness enforced above, with the allow-list
    if require_head and any(k.startswith("head.") for k in report.fresh):
        raise ValueError(f"{source} has no classifier head for {model.head.weight.shape[0]} "
                         f"classes (a pretraining checkpoint, or a head of another size): set "
                         f"model.num_classes to the checkpoint's, or model.head_map")
    if report.dropped or report.fresh:
        log.info("loaded %s (%s): ignored %s; left at init %s", source, report.kind,
                 report.dropped, report.fresh)
    return report
