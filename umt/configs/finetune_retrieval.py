"""Retrieval config schemas: fine-tuning (``umt train finetune-retrieval``) and the evaluations
of a retrieval model (``umt eval retrieval``, ``umt eval mc``).

Defaults are the official UMT-B/16 MSRVTT recipe (``multi_modality/exp/finetuning/ret_msrvtt/
b16_25m.py``): from a Stage-2 checkpoint, 12 frames ('rand' in training, 'middle' at test),
VTC + VTM (no MLM, no UTA, no teacher, no masking: per-frame features), drop path 0.2, AdamW
lr 1e-5 as given (no batch scaling, no layer decay) betas (0.9, 0.999) wd 0.02, cosine to
0.01 x lr after a warmup from 0.01 x lr; evaluation with ITM re-ranking of the top 128.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from umt.configs.checks import at_least, choice, in_range
from umt.configs.evaluation import (
    EvalData,
    EvalRunConfig,
    frames_of_model,
    require_checkpoint,
    run_section,
)
from umt.configs.schema import (
    DECODERS,
    BestCheckpointTrain,
    OptimConfig,
    VLDataConfig,
    evaluation_of_trained_model,
    train_section,
)
from umt.configs.stage2 import MATCH_BY, RetrievalEvalConfig, VLModelConfig


@dataclass
class RetrievalDataConfig(VLDataConfig):
    """Training pairs (``umt.data.vl_loader``) and what makes two rows positives of VTC/VTM."""

    # video: the captions of one video are positives of each other (official retrieval
    # fine-tuning: idx = the video); caption: every row with the same cleaned caption, whatever
    # its video (official has_multi_vision_gt: SSv2-label / template, class-level captions).
    match_by: str = "video"

    def __post_init__(self):
        super().__post_init__()
        choice("data.match_by", self.match_by, MATCH_BY)


@dataclass
class RetrievalLossConfig:
    vtc: float = 1.0
    vtm: float = 1.0
    # As loss.vtc_gather_grad of Stage 2: official (each rank's own rows) or full (exact).
    vtc_gather_grad: str = "official"

    def __post_init__(self):
        at_least("loss.vtc", self.vtc, 0.0)
        at_least("loss.vtm", self.vtm, 0.0)
        if not (self.vtc > 0 or self.vtm > 0):
            raise ValueError("loss.vtc and loss.vtm are both 0: set at least one > 0")
        choice("loss.vtc_gather_grad", self.vtc_gather_grad, ("official", "full"))


def _model() -> VLModelConfig:
    return VLModelConfig(num_frames=12, drop_path_rate=0.2, grad_checkpointing=True)


def _optim() -> OptimConfig:
    # Official: lr * max(0.01, warmup | cosine): warmup from and cosine down to 0.01 x lr.
    return OptimConfig(base_lr=1e-5, min_lr=1e-7, warmup_lr=1e-7, weight_decay=0.02,
                       betas=[0.9, 0.999], lr_scaling="none")


def _eval() -> RetrievalEvalConfig:
    return RetrievalEvalConfig(num_frames=12)


@dataclass
class FinetuneRetrievalConfig:
    model: VLModelConfig = field(default_factory=_model)
    data: RetrievalDataConfig = field(default_factory=RetrievalDataConfig)
    optim: OptimConfig = field(default_factory=_optim)
    train: BestCheckpointTrain = train_section(BestCheckpointTrain, "finetune-retrieval")
    loss: RetrievalLossConfig = field(default_factory=RetrievalLossConfig)
    # The evaluation during training (eval.source; also the best checkpoint by
    # train.best_metric). It runs the trained model, so its frames and resolution are the
    # model's: eval.num_frames / eval.img_size follow model.num_frames / model.img_size.
    eval: RetrievalEvalConfig = field(default_factory=_eval)

    def __post_init__(self):
        evaluation_of_trained_model(self)


# -- umt eval retrieval ------------------------------------------------------------------------
@dataclass
class EvalRetrievalConfig:
    # --config tiny|b16|l16 takes the model and eval sections of the Stage-2 preset.
    PRESETS = ("stage2", ("model", "eval"))

    model: VLModelConfig = field(default_factory=VLModelConfig)
    data: EvalData = field(default_factory=EvalData)  # videos with captions
    eval: RetrievalEvalConfig = field(default_factory=RetrievalEvalConfig)
    train: EvalRunConfig = run_section("eval-retrieval")

    def __post_init__(self):
        require_checkpoint(self, "retrieval", "the Stage-2 or retrieval fine-tuned checkpoint to "
                                              "evaluate")


# -- umt eval mc ------------------------------------------------------------------------
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
