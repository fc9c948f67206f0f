"""Video QA config schemas (``umt train finetune-qa``, ``umt eval qa``).

Defaults are the official UMT-B/16 MSRVTT-QA recipe (``multi_modality/exp/finetuning/qa_msrvtt/
b16_5m.py`` and ``configs/qa.py``): from a Stage-2 checkpoint, 12 frames, questions of at most
25 tokens, answers ``answer + " [SEP]"`` of at most 5 tokens, drop path 0.2, AdamW lr 2e-5 as
given (no batch scaling, no layer decay) betas (0.9, 0.999) wd 0.02, cosine to 0.01 x lr after
one warmup epoch, inference ranking the top 128 answers of the answer list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from umt.configs.checks import at_least, choice, crop_range, in_range
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
    ShardSources,
    VideoModelConfig,
    evaluation_of_trained_model,
    train_section,
)


@dataclass
class QAModelConfig(VideoModelConfig):
    """``umt.models.create_model("umt_qa_*")`` arguments (``umt.models.qa``)."""

    name: str = "umt_qa_base_patch16_224"
    num_frames: int = 12
    drop_path_rate: float = 0.2
    text_encoder: str = "bert-base-uncased"
    fusion_layer: int = 9
    text_dropout: Optional[float] = None
    grad_checkpointing: bool = True
    # A Stage-2 checkpoint (ours or official: the official decoder initialisation) or a QA one
    # (ours or official). None: the text side from text_encoder's BERT weights, a random video
    # encoder.
    pretrained: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        at_least("model.fusion_layer", self.fusion_layer, 1)
        in_range("model.text_dropout", self.text_dropout, 0.0, 1.0, high_open=True, optional=True)
        if not self.name.startswith("umt_qa_"):
            raise ValueError(f"model.name={self.name!r} must be a video QA model "
                             f"(umt_qa_{{tiny,small,base,large}}_patch16_224)")


@dataclass
class QASettings:
    """Question / answer text, shared by training and evaluation (the ``qa`` section)."""

    max_question_len: int = 25  # official max_q_len
    # Tokens of "[CLS] answer [SEP] [SEP]" (official max_a_len 5). An answer that does not fit
    # is an error (answer list) or a skipped question (training), never truncated: two long
    # answers truncated to the same tokens would become one candidate.
    max_answer_len: int = 5
    # answer_list.json: the global candidate answers (a JSON list of distinct strings). None:
    # answer_list.json next to the evaluation dataset.json.
    answer_list: Optional[str] = None

    def __post_init__(self):
        at_least("qa.max_question_len", self.max_question_len, 2)
        at_least("qa.max_answer_len", self.max_answer_len, 3)


@dataclass
class QAEvalConfig:
    """QA inference (official ``evaluation`` of ``tasks/vqa.py``): every video once, all its
    questions, the answer ranked among the top ``k`` of the answer list."""

    # Frames / resolution of the test clips ('middle' of T segments, square bicubic resize, no
    # crop); None: the model's.
    num_frames: Optional[int] = None
    img_size: Optional[int] = None
    k: int = 128  # official k_test; clamped to the answer list's size
    batch_size: int = 16
    candidate_batch: int = 128  # (question, answer) pairs per decoder pass
    num_workers: int = 2
    decoder: str = "decord"
    max_videos: Optional[int] = None  # the first N videos only (quick checks)

    def __post_init__(self):
        at_least("eval.num_frames", self.num_frames, 1, optional=True)
        at_least("eval.img_size", self.img_size, 1, optional=True)
        for key in ("k", "batch_size", "candidate_batch"):
            at_least(f"eval.{key}", getattr(self, key), 1)
        at_least("eval.num_workers", self.num_workers, 0)
        at_least("eval.max_videos", self.max_videos, 1, optional=True)
        choice("eval.decoder", self.decoder, DECODERS)


@dataclass
class FinetuneQAEval(QAEvalConfig):
    source: Optional[str] = None  # held-out dataset.json; None: no evaluation during training


@dataclass
class QADataConfig(ShardSources):
    """Training questions (``umt.data.qa_loader``): dataset.json URIs whose samples carry
    ``questions`` (docs/downstream.md), or ``[synthetic]``."""

    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])  # official (0.5, 1)
    flip: bool = True
    epoch_steps: Optional[int] = None  # None: num_questions // global batch
    synthetic_size: int = 256  # synthetic source: clips (2 questions each)
    max_pixels: int = 8192 * 8192

    def __post_init__(self):
        super().__post_init__()
        crop_range("data.crop_scale", self.crop_scale)
        at_least("data.epoch_steps", self.epoch_steps, 1, optional=True)
        at_least("data.synthetic_size", self.synthetic_size, 1)
        at_least("data.max_pixels", self.max_pixels, 1)


def _optim() -> OptimConfig:
    return OptimConfig(base_lr=2e-5, min_lr=2e-7, warmup_lr=2e-7, weight_decay=0.02,
                       betas=[0.9, 0.999], lr_scaling="none")


@dataclass
class FinetuneQAConfig:
    model: QAModelConfig = field(default_factory=QAModelConfig)
    data: QADataConfig = field(default_factory=QADataConfig)
    qa: QASettings = field(default_factory=QASettings)
    optim: OptimConfig = field(default_factory=_optim)
    train: BestCheckpointTrain = train_section(BestCheckpointTrain, "finetune-qa")
    # Evaluation during training on eval.source (best checkpoint by train.best_metric, e.g.
    # accuracy): at the model's frames and resolution.
    eval: FinetuneQAEval = field(default_factory=FinetuneQAEval)

    def __post_init__(self):
        evaluation_of_trained_model(self)


# -- umt eval qa ------------------------------------------------------------------------
@dataclass
class EvalQAConfig:
    # --config tiny|b16|l16 takes the model and qa sections of the finetune-qa preset.
    PRESETS = ("finetune-qa", ("model", "qa"))

    model: QAModelConfig = field(default_factory=QAModelConfig)
    data: EvalData = field(default_factory=EvalData)
    qa: QASettings = field(default_factory=QASettings)
    eval: QAEvalConfig = field(default_factory=QAEvalConfig)
    train: EvalRunConfig = run_section("eval-qa")

    def __post_init__(self):
        require_checkpoint(self, "qa", "the QA fine-tuned checkpoint to evaluate")
        frames_of_model(self)
