"""UMT models: the video ViT student, the Stage-1 student, the CLIP teacher, checkpoint loading."""

from umt.models.checkpoint import CheckpointError, load_pretrained
from umt.models.pretrain import PretrainVisionTransformer
from umt.models.registry import create_model, list_models
from umt.models.teacher import CLIPTeacher
from umt.models.vit import VisionTransformer

__all__ = [
    "CLIPTeacher",
    "CheckpointError",
    "PretrainVisionTransformer",
    "VisionTransformer",
    "create_model",
    "list_models",
    "load_pretrained",
]
