"""``umt eval retrieval`` config: zero-shot (or fine-tuned) text-video retrieval of a Stage-2
model (``umt.eval.retrieval_job``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from umt.configs.evaluation import EvalData, EvalRunConfig, require_checkpoint, run_section
from umt.configs.stage2 import RetrievalEvalConfig, VLModelConfig


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
