"""Action-recognition config schemas: fine-tuning (``umt train finetune-action``) and evaluation
(``umt eval action``).

Defaults are the official UMT-B/16 K710 recipe (``single_modality/exp/finetuning/k710/
b16_ptk710_ftk710_f8_res224.sh`` + ``run_class_finetuning.py`` defaults): 8 frames at 224,
mean pooling + ``fc_norm`` + head (init scale 0.001), drop path 0.1, AdamW (0.9, 0.999) wd 0.05,
layer decay 0.75, lr 2e-4 x global batch / 256 (the global batch counts the ``num_sample``
augmented views, as the official ``lr * batch_size * num_sample * GPUs / 256``), cosine to
1e-6 after a warmup from 1e-6, RandAugment, random erasing, Mixup/CutMix with label smoothing
0.1, ``num_sample=2``. The presets override the sizes and the schedule.

``train.batch_size`` counts **views** (clips the model sees): the official ``--batch_size 16
--num_sample 2`` is ``train.batch_size=32 augment.num_sample=2`` here (16 decoded videos per
process, two augmentations each).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from umt.configs.checks import at_least, choice, in_range, length
from umt.configs.evaluation import EvalRunConfig, require_checkpoint, run_section
from umt.configs.schema import (
    DECODERS,
    BestCheckpointTrain,
    OptimConfig,
    VideoModelConfig,
    held_out_evaluation,
)

# Frame samplers (official): segment = Kinetics / MiT ``kinetics_sparse._get_seq_frames``;
# tsn = Something-Something ``ssv2.py`` (TSN segments).
SAMPLERS = ("segment", "tsn")
ACTION_METRICS = ("top1", "top5", "mean_class_accuracy", "loss")


@dataclass
class ActionModelConfig(VideoModelConfig):
    """``umt.models.create_model("umt_vit_*")`` arguments of the classifier."""

    name: str = "umt_vit_base_patch16_224"
    # Classes of the head; None: the training set's (dataset.json ``classes``).
    num_classes: Optional[int] = None
    init_scale: float = 0.001  # head weights x this at init (official --init_scale)
    # A checkpoint to start from: Stage 1 or Stage 2 (the video encoder; fc_norm and the head
    # start fresh), or a fine-tuned classifier (its head too, when it has this many classes or
    # through head_map); ours or official; local path or s3:// URI. None: from scratch.
    pretrained: Optional[str] = None
    # Start the head from another label set's head (official K400-from-K710): a JSON file
    # holding, per target class, the index of its source class (or null: a fresh row), or a
    # classes.txt of the source label set, matched by name against this head's classes.
    head_map: Optional[str] = None
    grad_checkpointing: bool = False

    def __post_init__(self):
        if not self.name.startswith("umt_vit_"):
            raise ValueError(f"model.name={self.name!r} must be a classifier model "
                             f"umt_vit_{{tiny,small,base,large}}_patch16_224")
        super().__post_init__()
        at_least("model.num_classes", self.num_classes, 1, optional=True)
        in_range("model.init_scale", self.init_scale, 0.0, 1.0)
        if self.head_map is not None and not self.head_map.strip():
            raise ValueError("model.head_map='' must be a file path (or null)")


@dataclass
class ActionAugmentConfig:
    """Augmentation settings of action-recognition fine-tuning (official argument in brackets).

    Defaults are the official recipe (``run_class_finetuning.py``) for Kinetics; set
    ``flip=False`` for temporal datasets (official: off when ``data_set == 'SSV2'``).
    """

    rand_augment: Optional[str] = "rand-m7-n4-mstd0.5-inc1"  # [--aa]; None = off
    rand_augment_interpolation: str = "bicubic"  # [--train_interpolation]
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])
    flip: bool = True
    reprob: float = 0.25  # [--reprob] random erasing probability; 0 = off
    remode: str = "pixel"  # [--remode] pixel | rand | const
    mixup: float = 0.8  # [--mixup] alpha; 0 = off
    cutmix: float = 1.0  # [--cutmix] alpha; 0 = off
    mixup_prob: float = 1.0  # [--mixup_prob]
    mixup_switch_prob: float = 0.5  # [--mixup_switch_prob] P(cutmix) when both are on
    smoothing: float = 0.1  # [--smoothing] label smoothing, folded into the soft targets
    num_sample: int = 2  # [--num_sample] augmented views per decoded clip

    def __post_init__(self):
        length("augment.crop_scale", self.crop_scale, 2)
        length("augment.crop_ratio", self.crop_ratio, 2)
        in_range("augment.crop_scale[0]", self.crop_scale[0], 0.0, 1.0, low_open=True)
        in_range("augment.crop_scale[1]", self.crop_scale[1], self.crop_scale[0], 1.0)
        in_range("augment.crop_ratio[0]", self.crop_ratio[0], 0.0, float("inf"), low_open=True, high_open=True)
        at_least("augment.crop_ratio[1]", self.crop_ratio[1], self.crop_ratio[0])
        choice("augment.rand_augment_interpolation", self.rand_augment_interpolation, ("bicubic", "bilinear"))
        in_range("augment.reprob", self.reprob, 0.0, 1.0)
        choice("augment.remode", self.remode, ("pixel", "rand", "const"))
        at_least("augment.mixup", self.mixup, 0.0)
        at_least("augment.cutmix", self.cutmix, 0.0)
        in_range("augment.mixup_prob", self.mixup_prob, 0.0, 1.0)
        in_range("augment.mixup_switch_prob", self.mixup_switch_prob, 0.0, 1.0)
        in_range("augment.smoothing", self.smoothing, 0.0, 1.0, high_open=True)
        at_least("augment.num_sample", self.num_sample, 1)
        if self.rand_augment is not None:
            _check_rand_augment(self.rand_augment, self.rand_augment_interpolation)


def _check_rand_augment(config: str, interpolation: str) -> None:
    """``augment.rand_augment`` as timm parses it (the ops it names must allow one draw per
    clip). Without timm (the launcher image has no torch) only the form is checked here; the
    job checks the rest when it loads the same config."""
    if not config.startswith("rand"):
        raise ValueError(f"augment.rand_augment={config!r} is not allowed: RandAugment config "
                         f"{config!r} must start with 'rand', e.g. 'rand-m7-n4-mstd0.5-inc1'")
    try:
        from umt.data.clip_augment import rand_augment
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in ("torch", "timm", "numpy", "PIL"):
            return
        raise
    try:
        rand_augment(config, 224, interpolation)
    except ValueError as e:
        raise ValueError(f"augment.rand_augment={config!r} is not allowed: {e}") from None


@dataclass
class ActionDataConfig:
    """Labelled training clips: a dataset.json of ``umt shard`` (path / s3:// URI) whose
    ``classes`` name the labels, or ``synthetic`` (the temporal-order demo classes, no files).
    Loader: ``umt.data.action_loader.build_action_loader``."""

    source: str = MISSING
    # segment: Kinetics / MiT sparse sampling; tsn: SSv2 (TSN segments); evaluations too.
    sampler: str = "segment"
    num_workers: int = 8
    shuffle_buffer: int = 1000
    decoder: str = "decord"
    # Steps per epoch; None: one pass over the videos, num_samples // (videos per step).
    epoch_steps: Optional[int] = None
    max_pixels: int = 8192 * 8192  # decoded pixels per sample above which it is skipped
    # Synthetic source only: distinct clips, frames per clip and resolution of the renders.
    synthetic_size: int = 512
    synthetic_frames: int = 16
    synthetic_resolution: int = 64

    def __post_init__(self):
        choice("data.sampler", self.sampler, SAMPLERS)
        at_least("data.num_workers", self.num_workers, 0)
        at_least("data.shuffle_buffer", self.shuffle_buffer, 0)
        choice("data.decoder", self.decoder, DECODERS)
        at_least("data.epoch_steps", self.epoch_steps, 1, optional=True)
        at_least("data.max_pixels", self.max_pixels, 1)
        for key in ("synthetic_size", "synthetic_frames", "synthetic_resolution"):
            at_least(f"data.{key}", getattr(self, key), 1)


@dataclass
class ActionEvalConfig:
    """Evaluation during fine-tuning (every ``train.eval_every`` steps and at the end): the
    official validation is one view (the centre clip, centre crop); ``umt eval action`` runs the
    multi-view test on the final checkpoint."""

    source: Optional[str] = None  # held-out dataset.json; None: no evaluation while training
    split: str = "val"  # the name the best checkpoint is recorded under
    num_clips: int = 1
    num_crops: int = 1
    batch_size: int = 8  # videos per batch (each with num_clips x num_crops views)
    num_workers: int = 2

    def __post_init__(self):
        if not self.split or not self.split.strip():
            raise ValueError("eval.split must name the evaluation split (e.g. val)")
        for key in ("num_clips", "num_crops", "batch_size"):
            at_least(f"eval.{key}", getattr(self, key), 1)
        at_least("eval.num_workers", self.num_workers, 0)


def _action_optim() -> OptimConfig:
    # Official: lr, min_lr and warmup_lr are all scaled by the (views-counting) global batch.
    return OptimConfig(base_lr=2e-4, min_lr=1e-6, warmup_lr=1e-6, weight_decay=0.05,
                       betas=[0.9, 0.999], lr_scaling="linear", layer_decay=0.75)


@dataclass
class ActionTrain(BestCheckpointTrain):
    output_dir: str = "runs/finetune-action"
    batch_size: int = 32  # views per process (official 16 videos x num_sample 2)
    # The best checkpoint by this metric of the evaluation on eval.source (used only when
    # eval.source is set): top1 | top5 | mean_class_accuracy | loss.
    best_metric: Optional[str] = "top1"

    def __post_init__(self):
        super().__post_init__()
        choice("train.best_metric", self.best_metric, ACTION_METRICS + (None,))


@dataclass
class FinetuneActionConfig:
    model: ActionModelConfig = field(default_factory=ActionModelConfig)
    data: ActionDataConfig = field(default_factory=ActionDataConfig)
    augment: ActionAugmentConfig = field(default_factory=ActionAugmentConfig)
    optim: OptimConfig = field(default_factory=_action_optim)
    train: ActionTrain = field(default_factory=ActionTrain)
    eval: ActionEvalConfig = field(default_factory=ActionEvalConfig)

    def __post_init__(self):
        n = self.augment.num_sample
        if self.train.batch_size % n:
            raise ValueError(f"train.batch_size={self.train.batch_size} counts views and must be a "
                             f"multiple of augment.num_sample={n} (videos per batch x views)")
        if (self.augment.mixup > 0 or self.augment.cutmix > 0) and self.augment.mixup_prob > 0 \
                and self.train.batch_size % 2:
            raise ValueError(f"train.batch_size={self.train.batch_size} must be even with "
                             f"Mixup/CutMix on (each clip is mixed with its mirror in the batch); "
                             f"set augment.mixup=0 augment.cutmix=0 to switch them off")
        if self.train.best_metric == "loss" and self.train.best_mode == "max":
            self.train.best_mode = "min"
        if not self.eval.source:
            self.train.best_metric = None  # nothing to select on
        held_out_evaluation(self)


# -- umt eval action ------------------------------------------------------------------------
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
