"""``umt eval qa``: open-ended video QA accuracy of a QA fine-tuned model.

    umt eval qa --config b16 --model s3://b/runs/qa-msrvtt-b16/checkpoints/best.pt \\
        --data s3://b/msrvtt-qa-test/dataset.json --output s3://b/evals/msrvtt-qa \\
        qa.answer_list=s3://b/msrvtt-qa/answer_list.json
    torchrun --nproc-per-node 8 -m umt.eval.qa_job --config b16 model.pretrained=... \\
        data.source=... train.output_dir=...

The official protocol (``umt.eval.qa``): 12 frames at the middle of equal segments, square
resize, every question of every video once, the answer ranked among the top ``eval.k`` of the
answer list (``qa.answer_list``, default ``answer_list.json`` next to the dataset.json).
Writes ``metrics.json`` (accuracy overall and per question type, counts, protocol),
``predictions.jsonl`` (one line per question), ``summary.json`` and ``config.yaml`` to
``train.output_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from umt.configs.finetune_qa import QAEvalConfig, QAModelConfig, QASettings
from umt.configs.loader import load_config
from umt.eval.job import EvalRunConfig, run_evaluation
from umt.eval.retrieval_job import EvalData


@dataclass
class EvalQAConfig:
    # --config tiny|b16|l16 takes the model and qa sections of the finetune-qa preset.
    PRESETS = ("finetune-qa", ("model", "qa"))

    model: QAModelConfig = field(default_factory=QAModelConfig)
    data: EvalData = field(default_factory=EvalData)
    qa: QASettings = field(default_factory=QASettings)
    eval: QAEvalConfig = field(default_factory=QAEvalConfig)
    train: EvalRunConfig = field(default_factory=lambda: EvalRunConfig(output_dir="runs/eval-qa"))

    def __post_init__(self):
        if not self.model.pretrained:
            raise ValueError("model.pretrained (umt eval qa --model) is required: the QA "
                             "fine-tuned checkpoint to evaluate")
        self.eval.num_frames = self.eval.num_frames or self.model.num_frames
        self.eval.img_size = self.eval.img_size or self.model.img_size


CONFIG_SCHEMA = EvalQAConfig


def build_qa_model(m: QAModelConfig, num_frames: int, img_size: int, device, pretrained=None):
    """The QA model of ``m`` (``pretrained`` overrides ``m.pretrained``) and its tokenizer."""
    from umt.models import create_model
    from umt.models.text import load_tokenizer

    model = create_model(m.name, pretrained=pretrained or m.pretrained, num_frames=num_frames,
                         img_size=img_size, tubelet_size=m.tubelet_size,
                         drop_path_rate=m.drop_path_rate, embed_dim=m.embed_dim, depth=m.depth,
                         num_heads=m.num_heads, text_encoder=m.text_encoder,
                         fusion_layer=m.fusion_layer, text_dropout=m.text_dropout)
    return model.to(device), load_tokenizer(m.text_encoder)


def answer_list_of(qa: QASettings, dataset: Optional[str]) -> list[str]:
    """The configured answer list, or ``answer_list.json`` next to ``dataset``; checked."""
    from umt.data.downstream import default_answer_list, load_answer_list

    uri = qa.answer_list or default_answer_list(dataset)
    if not uri:
        raise ValueError("qa.answer_list is not set and there is no evaluation dataset next to "
                         "which to look for answer_list.json")
    return load_answer_list(uri)


def _body(cfg: EvalQAConfig, dist) -> dict:
    from umt import storage
    from umt.eval.qa import run_qa, write_predictions

    answers = answer_list_of(cfg.qa, cfg.data.source)
    model, tokenizer = build_qa_model(cfg.model, cfg.eval.num_frames, cfg.eval.img_size, dist.device)
    result, predictions = run_qa(model.eval(), cfg.data.source, tokenizer, answers, cfg.eval, cfg.qa,
                                 dist=dist, precision=cfg.train.precision)
    result["predictions_uri"] = storage.join(cfg.train.output_dir, "predictions.jsonl")
    if dist.is_main:
        write_predictions(result["predictions_uri"], predictions)
    return result


def headline(result: dict) -> dict:
    out = {"accuracy": result["accuracy"], "num_questions": result["num_questions"]}
    for t, v in result.get("accuracy_by_type", {}).items():
        out[f"accuracy_{t}"] = v["accuracy"]
    return out


def main(config: Optional[str] = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    cfg = load_config(EvalQAConfig, "eval-qa", config, overrides)
    return run_evaluation("qa", cfg, _body, headline)


if __name__ == "__main__":
    from umt.train.entry import run_stage_module

    run_stage_module("eval-qa")
