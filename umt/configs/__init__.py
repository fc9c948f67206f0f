"""Typed configuration for every stage: dataclass schemas, YAML presets, command-line overrides.

Built on OmegaConf structured configs: a preset YAML (package data in this folder, so it ships
inside the image) is merged onto the dataclass defaults, then ``key=value`` overrides; types are
checked on every merge, so ``train.steps=abc`` fails with a message naming the key.
"""

from umt.configs.loader import list_presets, load_config, preset_path, to_yaml
from umt.configs.schema import (
    DataConfig,
    MaskConfig,
    ModelConfig,
    OptimConfig,
    Stage1Config,
    TeacherConfig,
    TrainConfig,
)

__all__ = [
    "DataConfig",
    "MaskConfig",
    "ModelConfig",
    "OptimConfig",
    "Stage1Config",
    "TeacherConfig",
    "TrainConfig",
    "list_presets",
    "load_config",
    "preset_path",
    "to_yaml",
]
