"""``umt eval action`` config: multi-view action-recognition testing of a fine-tuned
classifier, or zero-shot classification with a Stage-2 model (``umt.eval.action_job``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from umt.configs.checks import at_least, choice
from umt.configs.evaluation import EvalRunConfig, require_checkpoint, run_section
from umt.configs.finetune_action import SAMPLERS, ActionModelConfig
from umt.configs.schema import DECODERS

# Zero-shot prompts (umt.eval.zero_shot): each class name fills the "{}".
DEFAULT_TEMPLATES = ("a video of {}.", "a video of a person {}.", "a photo of {}.", "{}")


@dataclass
class EvalActionData:
    source: str = MISSING  # dataset.json of the labelled evaluation videos
    sampler: str = "segment"  # segment (Kinetics / MiT) | tsn (SSv2)
    decoder: str = "decord"
    num_workers: int = 2
    max_pixels: int = 8192 * 8192

    def __post_init__(self):
        choice("data.sampler", self.sampler, SAMPLERS)
        choice("data.decoder", self.decoder, DECODERS)
        at_least("data.num_workers", self.num_workers, 0)
        at_least("data.max_pixels", self.max_pixels, 1)


@dataclass
class ActionTestConfig:
    """The test protocol (official Kinetics: 4 clips x 3 crops; SSv2: 2 x 3 with sampler tsn)."""

    num_clips: int = 4
    num_crops: int = 3
    batch_size: int = 4  # videos per batch (x num_clips x num_crops views)
    split: str = "test"  # the name the numbers are reported under
    top_k: int = 5  # classes per video in predictions.jsonl
    confusion_max_classes: int = 30  # classes drawn in confusion_matrix.png (most frequent)
    # Zero-shot classification with a Stage-2 checkpoint (no classifier head).
    zero_shot: bool = False
    classes: Optional[str] = None  # classes.txt of prompt names; None: dataset.json's classes
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    text_encoder: Optional[str] = None  # BERT of an official checkpoint (ours record theirs)
    text_pool: Optional[str] = None  # cls | mean text feature; None: the checkpoint's (else cls)
    max_txt_len: int = 32

    def __post_init__(self):
        for key in ("num_clips", "num_crops", "batch_size", "top_k", "confusion_max_classes",
                    "max_txt_len"):
            at_least(f"eval.{key}", getattr(self, key), 1)
        if not self.split or not self.split.strip():
            raise ValueError("eval.split must name the evaluated split (e.g. test)")
        choice("eval.text_pool", self.text_pool, ("cls", "mean", None))
        if not self.templates:
            raise ValueError("eval.templates=[] must list at least one prompt template")
        for t in self.templates:
            if not isinstance(t, str) or t.count("{}") != 1:
                raise ValueError(f"eval.templates: {t!r} must contain exactly one '{{}}'")


@dataclass
class EvalActionConfig:
    # --config tiny|b16|l16 takes the model section of the finetune-action preset.
    PRESETS = ("finetune-action", ("model",))

    model: ActionModelConfig = field(default_factory=ActionModelConfig)
    data: EvalActionData = field(default_factory=EvalActionData)
    eval: ActionTestConfig = field(default_factory=ActionTestConfig)
    train: EvalRunConfig = run_section("eval-action")

    def __post_init__(self):
        require_checkpoint(self, "action", "the fine-tuned (or, with --zero-shot, Stage-2) "
                                           "checkpoint to evaluate")
        if self.eval.zero_shot and self.model.head_map:
            raise ValueError("model.head_map does not apply to zero-shot classification (no head)")
