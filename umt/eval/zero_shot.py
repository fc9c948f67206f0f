"""Zero-shot action classification with a Stage-2 (vision-language) model.

The official UMT code has no zero-shot action classification; this follows the usual CLIP-style
recipe on the Stage-2 model's own embeddings:

- every class name goes through each prompt template (``"a video of {}."`` ...), is cleaned as
  the Stage-2 captions are (``umt.data.clean_caption``) and encoded by ``encode_text``; a
  class's text feature is the mean of its templates' L2-normalised ``[CLS]`` features,
  normalised again;
- a view's video feature is ``encode_video(per_frame=True)`` (every token, no mask, one
  normalised feature per frame, as the retrieval evaluation);
- its logits are the cosine similarity averaged over frames (``umt.losses.similarity``, the
  retrieval score) divided by the model's learned temperature ``temp``, so that the softmax of
  the multi-view merge sees the scale the model was trained with.

The model's architecture comes from the checkpoint: ours store their Stage-2 config (text
encoder, fusion layers, projection and teacher widths); for an official checkpoint the named
size's defaults apply (``umt.models.registry``), and ``eval.text_encoder`` names the BERT.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from umt.runtime.common import autocast

log = logging.getLogger("umt.eval")

MAX_CLASSES_BYTES = 16 << 20


def read_class_names(uri: str) -> list[str]:
    """Class names, one per non-blank line (a classes.txt; local path or s3:// URI)."""
    from umt import storage

    try:
        text = storage.read_bytes(uri, max_bytes=MAX_CLASSES_BYTES).decode("utf-8", "replace")
    except FileNotFoundError:
        raise ValueError(f"eval.classes={uri!r}: file not found") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ValueError(f"eval.classes={uri!r} lists no class names")
    return names


def prompts(names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """``len(names) * len(templates)`` cleaned prompts, class-major."""
    from umt.data.captions import clean_caption

    for t in templates:
        if t.count("{}") != 1:
            raise ValueError(f"eval.templates: {t!r} must contain exactly one '{{}}' for the class name")
    return [clean_caption(t.replace("{}", name)) for name in names for t in templates]


@torch.no_grad()
def class_text_features(model, tokenizer, names: Sequence[str], templates: Sequence[str], *,
                        max_txt_len: int, device: torch.device, precision: str = "fp32",
                        batch_size: int = 64) -> torch.Tensor:
    """``[C, E]`` L2-normalised class embeddings (template-averaged)."""
    from umt.models.text import tokenize

    texts = prompts(names, templates)
    feats = []
    for s in range(0, len(texts), batch_size):
        ids, att = tokenize(tokenizer, texts[s:s + batch_size], max_txt_len, device)
        with autocast(device, precision):
            _, feat = model.encode_text(ids, att)                  # [b, E], normalised
        feats.append(feat.float())
    feat = torch.cat(feats).view(len(names), len(templates), -1).mean(1)
    return nn.functional.normalize(feat, dim=-1)


class ZeroShotClassifier(nn.Module):
    """``video [N, 3, T, S, S]`` -> logits ``[N, C]``: mean over frames of the cosine with each
    class embedding, divided by the model's temperature."""

    def __init__(self, model: nn.Module, text_feat: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("text_feat", text_feat, persistent=False)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        from umt.losses import similarity

        _, feat = self.model.encode_video(video, per_frame=True)        # [N, T', E]
        return similarity(feat, self.text_feat, self.model.temp.detach().clamp(0.001, 0.5))


def _stored_model_config(obj: Any) -> dict:
    """The ``model`` section of the Stage-2 config our checkpoints carry (``{}`` otherwise)."""
    import yaml

    text = obj.get("config") if isinstance(obj, dict) else None
    if not isinstance(text, str):
        return {}
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    model = cfg.get("model") if isinstance(cfg, dict) else None
    return model if isinstance(model, dict) else {}


def load_vl_model(uri: str, *, size_name: str, num_frames: int, img_size: int,
                  text_encoder: Optional[str] = None, text_pool: Optional[str] = None,
                  overrides: Optional[dict] = None):
    """The Stage-2 model of checkpoint ``uri`` for ``num_frames x img_size`` clips, read once.

    ``size_name`` is a model name of the size (``umt_vit_base_patch16_224`` or
    ``umt_vl_base_patch16_224``); ``overrides`` (embed_dim, depth, num_heads) of the preset
    apply when the checkpoint carries no config. ``text_encoder`` / ``text_pool`` (the text
    feature: ``cls`` officially, ``mean`` for mean-pooling sentence encoders) replace the
    checkpoint's. Returns ``(model, tokenizer, architecture)``.
    """
    from umt.models.checkpoint import CheckpointError, extract_state_dict
    from umt.models.registry import SIZES, TEACHER_DIM, VL_PROJ_DIM, VL_TEXT
    from umt.models.text import load_tokenizer
    from umt.models.vl import VisionLanguageModel
    from umt.models.vl_checkpoint import detect_vl, load_vl_state_dict
    from umt.runtime.weights import read_checkpoint

    size = next((s for s in SIZES if f"_{s}_" in size_name), None)
    if size is None:
        raise ValueError(f"model.name={size_name!r} names no known size ({', '.join(SIZES)})")
    obj = read_checkpoint(uri)
    stored = _stored_model_config(obj)
    sd = extract_state_dict(obj, uri)
    del obj
    kind = detect_vl(sd)
    if kind != "stage2":
        raise CheckpointError(f"zero-shot classification needs a Stage-2 (vision-language) "
                              f"checkpoint; {uri} is a {kind} checkpoint (no text encoder)")
    text, fusion = VL_TEXT[size]
    arch: dict[str, Any] = dict(SIZES[size], text_encoder=text, fusion_layer=fusion,
                                proj_dim=VL_PROJ_DIM[size], teacher_dim=TEACHER_DIM[size],
                                align_layers=6, tubelet_size=1, text_pool="cls")
    arch.update({k: v for k, v in (overrides or {}).items() if v is not None})
    arch.update({k: stored[k] for k in ("embed_dim", "depth", "num_heads", "text_encoder",
                                         "fusion_layer", "proj_dim", "teacher_dim", "align_layers",
                                         "tubelet_size", "text_pool") if stored.get(k) is not None})
    if text_encoder:
        arch["text_encoder"] = text_encoder
    if text_pool:
        arch["text_pool"] = text_pool
    model = VisionLanguageModel(num_frames=num_frames, img_size=img_size, load_text_weights=False,
                                **arch)
    load_vl_state_dict(model, sd, kind, uri)
    return model, load_tokenizer(arch["text_encoder"]), arch
