"""UMT models: the video ViT student, the Stage-1 student, the CLIP teacher, the Stage-2
vision-language model (+ BERT text side), checkpoint loading. Built from a config section and
a checkpoint already read (``build_from_config``); nothing here reads storage."""

from umt.models.checkpoint import Checkpoint, CheckpointError, load_pretrained
from umt.models.pretrain import PretrainVisionTransformer
from umt.models.registry import build_from_config, create_model, list_models, model_kwargs
from umt.models.teacher import CLIPTeacher
from umt.models.vit import VisionTransformer

# The Stage-2 names import transformers (seconds): only when first used, so Stage 1, the CLI
# and the launcher do not pay for it.
_LAZY = {"BertTextEncoder": "text", "load_tokenizer": "text", "tokenize": "text",
         "VisionLanguageModel": "vl", "VLOutput": "vl", "export_official": "vl_checkpoint",
         "load_vl_pretrained": "vl_checkpoint"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"umt.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'umt.models' has no attribute {name!r}")


__all__ = [
    "BertTextEncoder",
    "CLIPTeacher",
    "Checkpoint",
    "CheckpointError",
    "PretrainVisionTransformer",
    "VLOutput",
    "VisionLanguageModel",
    "VisionTransformer",
    "build_from_config",
    "create_model",
    "export_official",
    "list_models",
    "load_pretrained",
    "load_tokenizer",
    "load_vl_pretrained",
    "model_kwargs",
    "tokenize",
]
