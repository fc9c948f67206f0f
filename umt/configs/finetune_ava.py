"""AVA v2.2 spatio-temporal action detection config schemas: fine-tuning (``umt train
finetune-ava``) and evaluation (``umt eval ava``).

Defaults are the official UMT-B/16 AVA recipe, ``single_modality/action_detection/exp/
b16_ptk710_ftk710_ftava_f8_res224.sh`` (+ ``run_class_finetuning.py`` defaults, ``datasets.py``
``build_ava_dataset``, ``data/transforms.py`` ``TransformsCfg``, ``modeling_finetune.py``):
8 frames at stride 8 (``--num_frames 8 --sampling_rate 8 --sparse``: 64 frames centred on the
keyframe), 224 px (``--input_size 224``), drop path 0.2, AdamW (0.9, 0.999) wd 0.05, layer
decay 0.75, lr 2.5e-4 x global batch / 256, 5 warmup epochs, cosine to 1e-6, 30 epochs, head
init x 0.001, 80 action logits with sigmoid BCE, training on the ground-truth boxes with the
official box jitter, evaluation on the person detector's boxes with score >= 0.8, every
action score written (action threshold 0).

Differences, said once: the official model keeps the frame's aspect (short side 256, the
position table interpolated per input); here clips are resized to ``img_size`` square (boxes
are normalised, so they follow); the official colour jitter (hue 20, saturation / value 0.1)
is not applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from umt.configs.checks import at_least, choice, in_range
from umt.configs.evaluation import EvalRunConfig, require_checkpoint, run_section
from umt.configs.schema import (
    BestCheckpointTrain,
    OptimConfig,
    VideoModelConfig,
    held_out_evaluation,
)

MAP_METRIC = "PascalBoxes_Precision/mAP@0.5IOU"


@dataclass
class AvaModelConfig(VideoModelConfig):
    """``umt.models.box_head.build_box_model`` arguments (``use_mean_pooling`` is off)."""

    name: str = "umt_vit_base_patch16_224"
    num_classes: int = 80  # AVA action ids 1..80 (logit i = id i + 1); 60 are evaluated
    init_scale: float = 0.001  # official --init_scale
    drop_path_rate: float = 0.2  # official --drop_path 0.2 (b16)
    # Stage 1 / Stage 2 / a fine-tuned classifier (official: the K710 one) to start from, or an
    # AVA checkpoint (ours or official; strict keys); local path or s3://. None: from scratch.
    pretrained: Optional[str] = None
    grad_checkpointing: bool = False

    def __post_init__(self):
        if not self.name.startswith("umt_vit_"):
            raise ValueError(f"model.name={self.name!r} must be umt_vit_{{tiny,small,base,large}}"
                             f"_patch16_224")
        super().__post_init__()
        at_least("model.num_classes", self.num_classes, 1)
        in_range("model.init_scale", self.init_scale, 0.0, 1.0)


@dataclass
class AvaDataConfig:
    """Keyframe clips with person boxes and their actions: ``synthetic`` (moving squares with
    per-box actions, ``umt.data.ava``; no files) for now."""

    source: str = MISSING
    sampling_rate: int = 8  # official --sampling_rate: frames between sampled frames
    flip: bool = True  # official RandomHorizontalFlip(0.5) when training
    max_boxes: int = 100  # official proposal_per_clip: boxes kept per clip when training
    box_jitter: list[float] = field(default_factory=lambda: [0.2, 0.1, 0.1, 0.05])  # sample_box
    num_workers: int = 8
    # Synthetic source only: clips, rendered frames and resolution, squares per clip.
    synthetic_size: int = 256
    synthetic_frames: int = 16
    synthetic_resolution: int = 64
    synthetic_people: int = 2

    def __post_init__(self):
        if self.source not in ("synthetic", MISSING) and not self.source.endswith(".json"):
            raise ValueError(f"data.source={self.source!r}: only 'synthetic' is supported yet "
                             f"(sharded AVA keyframe clips are not written by umt shard yet)")
        at_least("data.sampling_rate", self.sampling_rate, 1)
        at_least("data.max_boxes", self.max_boxes, 1)
        if len(self.box_jitter) != 4:
            raise ValueError("data.box_jitter must be [x_out, x_in, y_out, y_in]")
        for v in self.box_jitter:
            in_range("data.box_jitter", v, 0.0, 1.0)
        at_least("data.num_workers", self.num_workers, 0)
        for key in ("synthetic_size", "synthetic_frames", "synthetic_resolution",
                    "synthetic_people"):
            at_least(f"data.{key}", getattr(self, key), 1)


@dataclass
class AvaTestConfig:
    """How ``umt eval ava`` scores (and the in-training evaluation, :class:`AvaEvalConfig`)."""

    split: str = "val"
    box_threshold: float = 0.8  # official box_thresh: person boxes kept for evaluation
    action_threshold: float = 0.0  # official action_thresh: scores written to the detections
    batch_size: int = 8
    synthetic_seed: int = 1  # synthetic held-out clips: another seed than the training ones
    synthetic_size: int = 64

    def __post_init__(self):
        in_range("eval.box_threshold", self.box_threshold, 0.0, 1.0)
        in_range("eval.action_threshold", self.action_threshold, 0.0, 1.0)
        at_least("eval.batch_size", self.batch_size, 1)
        at_least("eval.synthetic_size", self.synthetic_size, 1)
        if not self.split or not self.split.strip():
            raise ValueError("eval.split must name the evaluation split (e.g. val)")


@dataclass
class AvaEvalConfig(AvaTestConfig):
    """Evaluation during fine-tuning (every ``train.eval_every`` steps and at the end)."""

    source: Optional[str] = None  # held-out clips (``synthetic``); None: no evaluation


def _ava_optim() -> OptimConfig:
    # Official: lr, min_lr and warmup_lr scaled by the global batch / 256.
    return OptimConfig(base_lr=2.5e-4, min_lr=1e-6, warmup_lr=1e-6, weight_decay=0.05,
                       betas=[0.9, 0.999], lr_scaling="linear", layer_decay=0.75)


@dataclass
class AvaTrain(BestCheckpointTrain):
    output_dir: str = "runs/finetune-ava"
    batch_size: int = 8  # clips per process (official --batch_size 8)
    best_metric: Optional[str] = "mAP"  # the frame mAP of eval.source


@dataclass
class FinetuneAvaConfig:
    model: AvaModelConfig = field(default_factory=AvaModelConfig)
    data: AvaDataConfig = field(default_factory=AvaDataConfig)
    optim: OptimConfig = field(default_factory=_ava_optim)
    train: AvaTrain = field(default_factory=AvaTrain)
    eval: AvaEvalConfig = field(default_factory=AvaEvalConfig)

    def __post_init__(self):
        choice("train.best_metric", self.train.best_metric, ("mAP", None))
        if not self.eval.source:
            self.train.best_metric = None
        held_out_evaluation(self)


# -- umt eval ava ---------------------------------------------------------------------------
@dataclass
class EvalAvaConfig:
    # --config tiny|b16|l16 takes the model and data sections of the finetune-ava preset (the
    # frames' sampling rate and the clips' rendering are the training's).
    PRESETS = ("finetune-ava", ("model", "data"))

    model: AvaModelConfig = field(default_factory=AvaModelConfig)
    data: AvaDataConfig = field(default_factory=AvaDataConfig)
    eval: AvaTestConfig = field(default_factory=AvaTestConfig)
    train: EvalRunConfig = run_section("eval-ava")

    def __post_init__(self):
        require_checkpoint(self, "ava", "the fine-tuned AVA checkpoint to evaluate")
