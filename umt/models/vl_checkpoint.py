"""Load checkpoints into the Stage-2 model (``VisionLanguageModel``) strictly; export ours in
the official layout.

Accepted (a local path or a checkpoint already read; wrapped as ``umt.models.checkpoint``
accepts):

- **Stage 2**, official or ours (``vision_encoder.*``, ``text_encoder.bert.*`` with
  ``crossattention`` in the fusion layers, ``text_encoder.cls.*``, ``vision_proj.*``,
  ``text_proj.*``, ``itm_head.*``, ``temp``): every weight of the model. Official retrieval /
  QA fine-tuned files (``text_encoder.embeddings.*`` ..., no ``bert.`` and no MLM head) too.
- **Stage 1**, official or ours (``encoder.*``, ``clip_decoder.*``): the video encoder only;
  ``vision_encoder.pool_norm`` and the whole text side keep their initialisation (the text
  side: the text encoder's own BERT weights), as the official Stage 2 starts.

Known layout differences, each handled explicitly (and logged), nothing else tolerated:
``clip_teacher.*`` (dropped: the teacher is not part of the model); ``position_ids`` (saved by
the official code, not a persistent buffer in recent transformers: checked to be 0..n-1,
dropped); the tied MLM decoder saved twice (``cls.predictions.decoder.{weight,bias}``: checked
equal to the word embeddings / ``cls.predictions.bias``); ``pooler``/NSP weights and old
``gamma``/``beta`` names; a file without MLM head (the head keeps its init, decoder tied). Any
other missing, unexpected or mis-shaped key raises ``CheckpointError`` naming the keys.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
import torch.nn as nn

from umt.models.checkpoint import (
    CheckpointError,
    LoadReport,
    Pretrained,
    adapt_state_dict,
    check_strict,
    state_dict_of,
)
from umt.models.text import normalise_bert_keys, resolve_tied_decoder

log = logging.getLogger(__name__)

_STAGE2_KEYS = ("vision_encoder.", "text_encoder.", "vision_proj.", "text_proj.", "itm_head.")
_TIED = ("text_encoder.cls.predictions.decoder.weight", "text_encoder.cls.predictions.decoder.bias")


def detect_vl(sd: dict) -> str:
    """``'stage2'`` (any vision-language key), ``'stage1'`` (``encoder.*``) or ``'backbone'``."""
    if any(k.startswith(_STAGE2_KEYS) for k in sd) or "temp" in sd:
        return "stage2"
    if any(k.startswith("encoder.") for k in sd):
        return "stage1"
    return "backbone"


def read_vl_state_dict(pretrained: Pretrained) -> tuple[dict[str, torch.Tensor], str, str]:
    """``(state dict, kind, source name)`` of a local path or a checkpoint already read."""
    sd, source = state_dict_of(pretrained)
    return sd, detect_vl(sd), source


def adapt_stage2(sd: dict[str, torch.Tensor], model: nn.Module,
                 source: str = "<checkpoint>") -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Bring a Stage-2 state dict to ``model``'s keys (the explicit differences above)."""
    report = LoadReport(source, "stage2")
    out = {}
    for k, v in sd.items():
        if k.startswith("clip_teacher."):
            report.dropped.append(k)
        else:
            out[k] = v
    out, dropped = normalise_bert_keys(out, source, prefix="text_encoder.")
    report.dropped += dropped
    # Text encoder files keys relative to the text encoder: check the tied copies there.
    text = {k[len("text_encoder."):]: v for k, v in out.items() if k.startswith("text_encoder.")}
    if not any(k.startswith("cls.") for k in text):  # e.g. an official retrieval fine-tune
        report.fresh += [k for k in model.state_dict() if k.startswith("text_encoder.cls.")]
    text = resolve_tied_decoder(text, source)
    out = {k: v for k, v in out.items() if not k.startswith("text_encoder.")}
    out |= {f"text_encoder.{k}": v for k, v in text.items()}
    # Fixed position table of the video encoder: loaded when it fits, else the model's own.
    backbone = model.vision_encoder.encoder
    pos = out.pop("vision_encoder.encoder.pos_embed", None)
    if pos is not None:
        if pos.shape == backbone.pos_embed.shape:
            with torch.no_grad():
                backbone.pos_embed.copy_(pos)
        else:
            report.dropped.append("vision_encoder.encoder.pos_embed")
    return out, report


def load_vl_pretrained(model: nn.Module, pretrained: Pretrained) -> LoadReport:
    """Load a Stage-2 (everything) or Stage-1 (video encoder) checkpoint into ``model``."""
    sd, kind, source = read_vl_state_dict(pretrained)
    return load_vl_state_dict(model, sd, kind, source)


def load_vl_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], kind: str, uri: str) -> LoadReport:
    """``load_vl_pretrained`` for a state dict already read (``read_vl_state_dict``)."""
    if kind == "stage2":
        sd, report = adapt_stage2(sd, model, uri)
        own = model.state_dict()
        own.pop("vision_encoder.encoder.pos_embed", None)
        for k in _TIED:  # tied to word embeddings / cls.predictions.bias, loaded through those
            own.pop(k, None)
        check_strict(sd, own, report.fresh, uri, kind, type(model).__name__)
        model.load_state_dict(sd, strict=False)  # strictness enforced above
        model.text_encoder.tie_weights()
    elif kind == "stage1":
        vision = model.vision_encoder
        sd, report = adapt_state_dict(sd, vision, uri)
        own = vision.state_dict()
        own.pop("encoder.pos_embed", None)
        report.fresh += [k for k in own if k.startswith("pool_norm.")]
        check_strict(sd, own, report.fresh, uri, kind, f"{type(model).__name__}.vision_encoder")
        vision.load_state_dict(sd, strict=False)
        report.fresh = [f"vision_encoder.{k}" for k in report.fresh] + ["text_encoder.* (its own weights)",
                                                                       "vision_proj", "text_proj", "itm_head", "temp"]
    else:
        raise CheckpointError(f"checkpoint {uri} has neither Stage-2 keys (vision_encoder.*, text_encoder.* "
                              f"...) nor Stage-1 keys (encoder.*, clip_decoder.*); first keys: {sorted(sd)[:8]}. "
                              f"A fine-tuned classifier cannot initialise the Stage-2 model")
    if report.dropped or report.fresh:
        log.info("loaded %s (%s): ignored %s; left at init %s", uri, kind, report.dropped, report.fresh)
    return report


def export_official(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """Our Stage-2 model's weights in the official ``UMT`` layout (``{'model': ...}`` of it
    loads into the official code): ours plus the ``position_ids`` buffer the official BERT saves.
    The ``clip_teacher.*`` weights are not part of our model and are not written (the official
    loaders of Stage-2 weights load non-strictly and do not need them)."""
    sd = OrderedDict()
    emb = model.text_encoder.bert.embeddings
    for k, v in model.state_dict().items():
        sd[k] = v.detach().clone()
        if k == "text_encoder.bert.embeddings.word_embeddings.weight":
            n = emb.position_embeddings.num_embeddings
            sd["text_encoder.bert.embeddings.position_ids"] = torch.arange(n).expand(1, -1).clone()
    return sd
