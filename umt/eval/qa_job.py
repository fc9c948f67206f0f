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

from typing import Any, Optional, Sequence

from umt.configs.finetune_qa import EvalQAConfig
from umt.configs.loader import load_config
from umt.eval.job import run_evaluation


def _body(cfg: EvalQAConfig, dist) -> dict:
    from umt import storage
    from umt.data.downstream import answer_list_of
    from umt.eval.qa import run_qa, write_predictions
    from umt.models import build_from_config
    from umt.models.text import load_tokenizer
    from umt.runtime.weights import read_checkpoint

    m = cfg.model
    answers = answer_list_of(cfg.qa.answer_list, cfg.data.source)
    model = build_from_config(m, read_checkpoint(m.pretrained), num_frames=cfg.eval.num_frames,
                              img_size=cfg.eval.img_size).to(dist.device)
    tokenizer = load_tokenizer(m.text_encoder)
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
    from umt.runtime.entry import run_stage_module

    run_stage_module("eval-qa")
