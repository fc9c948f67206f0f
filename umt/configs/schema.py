"""Config schemas: one dataclass per component, composed per stage (torchtitan style).

Defaults are the paper's ViT-B/16 Stage-1 recipe; the presets in this folder override them.
Later stages (Stage 2, fine-tunes) add their own top-level dataclass and reuse these parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from umt.configs.checks import at_least, choice, crop_range, device, in_range, length, source_list


@dataclass
class VideoModelConfig:
    """What every ``model`` section starts with: the registered model name, the clips it takes
    and the video ViT's size (``umt.models.create_model`` arguments; each stage's section adds
    its own and may change these defaults)."""

    name: str = "umt_pretrain_vit_base_patch16_224"
    num_frames: int = 8
    img_size: int = 224
    tubelet_size: int = 1
    drop_path_rate: float = 0.1
    # Overrides of the named size (tests and the tiny preset shrink the model with these).
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None

    def __post_init__(self):
        for key in ("num_frames", "img_size", "tubelet_size"):
            at_least(f"model.{key}", getattr(self, key), 1)
        for key in ("embed_dim", "depth", "num_heads"):
            at_least(f"model.{key}", getattr(self, key), 1, optional=True)
        in_range("model.drop_path_rate", self.drop_path_rate, 0.0, 1.0, high_open=True)


@dataclass
class ModelConfig(VideoModelConfig):
    """The Stage-1 student video ViT."""

    align_layers: int = 6
    grad_checkpointing: bool = False
    # Local path or s3:// URI of weights to start from (official or ours); None = random init.
    pretrained: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        at_least("model.align_layers", self.align_layers, 1)


@dataclass
class TeacherConfig:
    """The frozen CLIP teacher (``umt.models.CLIPTeacher`` arguments)."""

    model_name: str = "ViT-B-16"
    # 'openai' (open_clip download), a local path / s3:// URI of an OpenAI-format or open_clip
    # state dict, or None for random weights (tests, the CPU demo).
    pretrained: Optional[str] = "openai"
    return_layers: int = 6
    input_resolution: int = 224
    # Overrides of open_clip's vision tower config (width, layers, heads, patch_size, image_size)
    # and of its projection size (embed_dim); used by tests and the tiny preset.
    vision_cfg: dict[str, Any] = field(default_factory=dict)
    embed_dim: Optional[int] = None

    def __post_init__(self):
        at_least("teacher.return_layers", self.return_layers, 1)
        at_least("teacher.input_resolution", self.input_resolution, 1)
        at_least("teacher.embed_dim", self.embed_dim, 1, optional=True)


UTA_LOSSES = ("l2", "mse", "smooth_l1")
MASK_TYPES = ("attention", "tube", "random")


@dataclass
class MaskConfig:
    type: str = "attention"  # attention (= semantic, teacher-guided) | tube | random
    ratio: float = 0.8

    def __post_init__(self):
        if self.type == "semantic":  # the paper's name for it
            self.type = "attention"
        choice("mask.type", self.type, MASK_TYPES + ("semantic",))
        in_range("mask.ratio", self.ratio, 0.0, 1.0, high_open=True)


@dataclass
class DataConfig:
    """Where clips come from. ``source`` is 'synthetic' or a dataset.json path / s3:// URI.

    It has no default: a real run must name its data (the tiny preset picks 'synthetic'), so a
    GPU job can never train on the demo source by accident.
    """

    source: str = MISSING
    num_workers: int = 8
    shuffle_buffer: int = 1000
    # Stage-1 augmentation: multi-scale crop scales (GroupMultiScaleCrop) and horizontal flip.
    crop_scales: list[float] = field(default_factory=lambda: [1.0, 0.875, 0.75, 0.66])
    flip: bool = True
    # Synthetic source only: number of distinct clips it cycles through.
    synthetic_size: int = 512
    synthetic_num_classes: int = 4
    # WebDataset sources: video decoder (decord | pyav) and the multi-view test protocol
    # (temporal clips x spatial crops per video, as the official fine-tuning evaluation).
    decoder: str = "decord"
    test_num_clips: int = 1
    test_num_crops: int = 1
    # Epoch length in steps (batches per rank). None: one pass over the data, i.e.
    # dataset.json's num_samples // global batch (at least 1). Each epoch re-seeds the shard
    # sampling (seed, rank, worker, epoch); batches carry "epoch".
    epoch_steps: Optional[int] = None
    # A sample that would decode more pixels (width x height x frames, read from the header
    # before decoding) is skipped and counted: one hostile or absurd sample cannot take a
    # worker's memory. Default: sharding's per-frame limit (TranscodeSettings.max_pixels).
    max_pixels: int = 8192 * 8192

    def __post_init__(self):
        at_least("data.num_workers", self.num_workers, 0)
        at_least("data.shuffle_buffer", self.shuffle_buffer, 0)
        if not self.crop_scales:
            raise ValueError("data.crop_scales=[] must list at least one scale in (0, 1]")
        for i, s in enumerate(self.crop_scales):
            in_range(f"data.crop_scales[{i}]", s, 0.0, 1.0, low_open=True)
        at_least("data.synthetic_size", self.synthetic_size, 1)
        at_least("data.synthetic_num_classes", self.synthetic_num_classes, 1)
        choice("data.decoder", self.decoder, DECODERS)
        at_least("data.test_num_clips", self.test_num_clips, 1)
        at_least("data.test_num_crops", self.test_num_crops, 1)
        at_least("data.epoch_steps", self.epoch_steps, 1, optional=True)
        at_least("data.max_pixels", self.max_pixels, 1)


DECODERS = ("decord", "pyav")
CAPTION_SAMPLING = ("all", "random", "paragraph")


@dataclass
class ShardSources:
    """The first fields of a ``data`` section that reads ``umt shard`` output from several
    sources: dataset.json paths / s3:// URIs, or ``['synthetic']`` (no default, like
    ``DataConfig.source``), and how they are read."""

    sources: list[str] = MISSING
    num_workers: int = 8
    shuffle_buffer: int = 1000
    decoder: str = "decord"

    def __post_init__(self):
        source_list("data.sources", self.sources)
        at_least("data.num_workers", self.num_workers, 0)
        at_least("data.shuffle_buffer", self.shuffle_buffer, 0)
        choice("data.decoder", self.decoder, DECODERS)


@dataclass
class VLDataConfig(ShardSources):
    """Stage-2 (vision-language) data: captioned videos and images from ``umt shard``.

    ``sources`` lists dataset.json paths / s3:// URIs (video-caption and image-caption corpora,
    e.g. WebVid + CC3M; one media type each), or ``['synthetic']`` for the demo. Sources of one
    media type are pooled (the official ConcatDataset); video and image batches are interleaved
    in an order every rank agrees on (the official MetaLoader): each media type contributes its
    number of batches per epoch. Like ``DataConfig.source`` it has no default. Loader:
    ``umt.data.vl_loader.build_vl_loader`` (docs/data.md).
    """

    # Batch size per media type (per process); None = train.batch_size.
    video_batch_size: Optional[int] = None
    image_batch_size: Optional[int] = None
    # all: every (media, caption) pair is one sample of an epoch (official: each caption row
    # is its own sample and VTC id); random: one random caption per media per visit;
    # paragraph: one row per media, its captions joined with " " (official paragraph
    # retrieval fine-tuning: DiDeMo, ActivityNet).
    caption_sampling: str = "all"
    # Official Stage-2 augmentation: RandomResizedCrop(img_size, scale) bicubic + flip.
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    flip: bool = True
    max_txt_len: int = 32  # captions are tokenised to this many tokens (official max_txt_l)
    # Steps per epoch (all media types together); None: one pass over every source's rows,
    # i.e. each media type's rows // (its batch x world size) batches.
    epoch_steps: Optional[int] = None
    # Synthetic source only: clips (2 captions each) and still images (1 caption each).
    synthetic_size: int = 512
    # Decoded pixels per sample (width x height x frames) above which a sample is skipped,
    # checked on the header before decoding (as DataConfig.max_pixels).
    max_pixels: int = 8192 * 8192

    def __post_init__(self):
        super().__post_init__()
        at_least("data.video_batch_size", self.video_batch_size, 1, optional=True)
        at_least("data.image_batch_size", self.image_batch_size, 1, optional=True)
        choice("data.caption_sampling", self.caption_sampling, CAPTION_SAMPLING)
        crop_range("data.crop_scale", self.crop_scale)
        at_least("data.max_txt_len", self.max_txt_len, 1)
        at_least("data.epoch_steps", self.epoch_steps, 1, optional=True)
        at_least("data.synthetic_size", self.synthetic_size, 1)
        at_least("data.max_pixels", self.max_pixels, 1)


@dataclass
class OptimConfig:
    """AdamW + per-step cosine schedule with linear warmup.

    Learning rates are given per 256 clips and scaled by the global batch, as the official code
    does: ``lr = base_lr * global_batch / 256`` (likewise ``min_lr`` and ``warmup_lr``).
    """

    base_lr: float = 1.5e-4
    min_lr: float = 1e-5
    warmup_lr: float = 0.0
    # Explicit warmup length in optimizer steps; None: train.warmup_epochs (umt.configs.schedule)
    warmup_steps: Optional[int] = None
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    clip_grad: Optional[float] = None
    fused: bool = True  # fused AdamW kernel where the device has one
    # linear: lr x global_batch / 256 (official video-only recipes); none: as given (official
    # multi-modality recipes, Stage 2 and retrieval/QA fine-tuning).
    lr_scaling: str = "linear"
    # Layer-wise LR decay (fine-tuning): None = off; 0.75 (B) / 0.85 (L) officially.
    layer_decay: Optional[float] = None

    def __post_init__(self):
        for key in ("base_lr", "min_lr", "warmup_lr", "weight_decay"):
            at_least(f"optim.{key}", getattr(self, key), 0.0)
        at_least("optim.warmup_steps", self.warmup_steps, 0, optional=True)
        length("optim.betas", self.betas, 2)
        for i, b in enumerate(self.betas):
            in_range(f"optim.betas[{i}]", b, 0.0, 1.0, high_open=True)
        in_range("optim.eps", self.eps, 0.0, 1.0, low_open=True)
        at_least("optim.clip_grad", self.clip_grad, 0.0, optional=True)
        choice("optim.lr_scaling", self.lr_scaling, ("linear", "none"))
        in_range("optim.layer_decay", self.layer_decay, 0.0, 1.0, low_open=True, optional=True)


@dataclass
class TrainConfig:
    output_dir: str = "runs/stage1"
    # How long to train: epochs (the official recipes' unit), converted to optimizer steps at
    # start from the loader's samples per epoch and the actual global batch, or ``steps``
    # (total optimizer steps; when set it wins). One of the two is required
    # (umt.configs.schedule); warmup: ``warmup_epochs`` or ``optim.warmup_steps`` (wins).
    epochs: Optional[float] = None
    warmup_epochs: Optional[float] = None
    steps: Optional[int] = None
    # End this invocation after this step (checkpointing there) without changing the schedule:
    # time-boxed or preemptible jobs; a later run with the same output_dir resumes.
    stop_at: Optional[int] = None
    batch_size: int = 64  # per process
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "bf16"  # bf16 (autocast on GPU; fp32 on CPU) | fp32
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 2
    resume: bool = True  # continue from <output_dir>/checkpoints/latest when it exists
    max_nonfinite: int = 5  # consecutive non-finite steps before the run stops
    compile: bool = False
    # Micro-batches per optimizer step: global batch = batch_size x world size x accum_steps.
    accum_steps: int = 1
    # Evaluation every N steps (stages that have one: Stage-2 zero-shot retrieval, fine-tunes);
    # 0 = only at the end, None = never.
    eval_every: Optional[int] = None
    # One writer per output_dir: a lease object whose heartbeat a live run renews; a lease
    # older than this many seconds belongs to a dead run and is taken over with a warning.
    lease_ttl_s: float = 90.0

    def __post_init__(self):
        if not self.output_dir:
            raise ValueError("train.output_dir must not be empty")
        for key in ("batch_size", "log_every", "ckpt_every", "max_nonfinite", "accum_steps"):
            at_least(f"train.{key}", getattr(self, key), 1)
        at_least("train.steps", self.steps, 1, optional=True)
        in_range("train.epochs", self.epochs, 0.0, 10000.0, low_open=True, optional=True)
        at_least("train.warmup_epochs", self.warmup_epochs, 0.0, optional=True)
        if self.epochs is not None and self.warmup_epochs is not None and \
                self.warmup_epochs >= self.epochs:
            raise ValueError(f"train.warmup_epochs={self.warmup_epochs!r} is out of range; it "
                             f"must be < train.epochs={self.epochs!r}")
        at_least("train.stop_at", self.stop_at, 1, optional=True)
        at_least("train.keep_last", self.keep_last, 0)
        at_least("train.eval_every", self.eval_every, 0, optional=True)
        at_least("train.seed", self.seed, 0)
        in_range("train.lease_ttl_s", self.lease_ttl_s, 1.0, 86400.0)
        choice("train.precision", self.precision, ("bf16", "fp32"))
        device("train.device", self.device)


@dataclass
class BestCheckpointTrain(TrainConfig):
    """The ``train`` section of a stage that evaluates while training and keeps its best
    checkpoint (``checkpoints/best.pt``) by ``best_metric`` of that evaluation."""

    best_metric: Optional[str] = None  # None: the last checkpoint only
    best_mode: str = "max"

    def __post_init__(self):
        super().__post_init__()
        choice("train.best_mode", self.best_mode, ("max", "min"))


def train_section(cls: type, stage: str) -> Any:
    """The ``train`` field of ``stage``'s config: a ``cls`` whose files go to ``runs/<stage>``
    unless ``train.output_dir`` says otherwise."""
    return field(default_factory=lambda: cls(output_dir=f"runs/{stage}"))


def held_out_evaluation(cfg: Any) -> None:
    """``__post_init__`` of a stage with an ``eval.source`` held-out set: it is evaluated at
    least at the end, and ``train.best_metric`` needs it."""
    if cfg.eval.source and cfg.train.eval_every is None:
        cfg.train.eval_every = 0
    if cfg.train.best_metric and cfg.eval.source is None:
        raise ValueError(f"train.best_metric={cfg.train.best_metric!r} needs an evaluation "
                         f"set: set eval.source to a held-out dataset.json")


def evaluation_of_trained_model(cfg: Any) -> None:
    """``__post_init__`` of a fine-tune whose evaluation during training runs the model it
    trains: at the model's frames and resolution (``eval.num_frames`` / ``eval.img_size``
    follow ``model.num_frames`` / ``model.img_size``), on the held-out ``eval.source``."""
    cfg.eval.num_frames, cfg.eval.img_size = cfg.model.num_frames, cfg.model.img_size
    held_out_evaluation(cfg)


@dataclass
class Stage1Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: str = "l2"  # l2 (2 - 2cos) | mse | smooth_l1

    def __post_init__(self):
        choice("loss", self.loss, UTA_LOSSES)
        if self.teacher.return_layers != self.model.align_layers:
            raise ValueError(f"teacher.return_layers={self.teacher.return_layers} must equal "
                             f"model.align_layers={self.model.align_layers}")
        if self.model.depth is not None and self.model.align_layers > self.model.depth:
            raise ValueError(f"model.align_layers={self.model.align_layers} must be <= "
                             f"model.depth={self.model.depth}")
