"""``umt eval qa`` config: open-ended video QA accuracy of a QA fine-tuned model
(``umt.eval.qa_job``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from umt.configs.evaluation import (EvalData, EvalRunConfig, frames_of_model, require_checkpoint,
                                    run_section)
from umt.configs.finetune_qa import QAEvalConfig, QAModelConfig, QASettings


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
