"""``umt eval mc`` config: multiple-choice video-to-text (MSRVTT-MC) with a retrieval model
(``umt.eval.mc_job``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from umt.configs.checks import at_least, choice, in_range
from umt.configs.evaluation import (EvalData, EvalRunConfig, frames_of_model, require_checkpoint,
                                    run_section)
from umt.configs.schema import DECODERS
from umt.configs.stage2 import VLModelConfig


@dataclass
class MCEvalConfig:
    num_frames: Optional[int] = None  # None: the model's (official: 12, 'middle' sampling)
    img_size: Optional[int] = None  # None: the model's
    max_txt_len: int = 32
    itm_weight: float = 0.7  # official 0.7 ITM + 0.3 contrastive
    batch_size: int = 16
    num_workers: int = 2
    decoder: str = "decord"
    max_videos: Optional[int] = None

    def __post_init__(self):
        for key in ("num_frames", "img_size"):
            at_least(f"eval.{key}", getattr(self, key), 1, optional=True)
        for key in ("max_txt_len", "batch_size"):
            at_least(f"eval.{key}", getattr(self, key), 1)
        in_range("eval.itm_weight", self.itm_weight, 0.0, 1.0)
        at_least("eval.num_workers", self.num_workers, 0)
        at_least("eval.max_videos", self.max_videos, 1, optional=True)
        choice("eval.decoder", self.decoder, DECODERS)


@dataclass
class EvalMCConfig:
    # --config tiny|b16|l16 takes the model section of the finetune-retrieval preset.
    PRESETS = ("finetune-retrieval", ("model",))

    model: VLModelConfig = field(default_factory=VLModelConfig)
    data: EvalData = field(default_factory=EvalData)
    eval: MCEvalConfig = field(default_factory=MCEvalConfig)
    train: EvalRunConfig = run_section("eval-mc")

    def __post_init__(self):
        require_checkpoint(self, "mc", "the retrieval fine-tuned (or Stage-2) checkpoint to "
                                       "evaluate")
        frames_of_model(self)
