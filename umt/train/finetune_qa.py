"""Video question answering fine-tuning: the official answer decoder on a Stage-2 model.

    umt train finetune-qa --config tiny                                           # CPU demo
    umt train finetune-qa --config b16 \\
        model.pretrained=s3://b/runs/stage2-b16/checkpoints/step_00060000.pt \\
        'data.sources=[s3://b/msrvtt-qa-train/dataset.json]' \\
        eval.source=s3://b/msrvtt-qa-val/dataset.json qa.answer_list=s3://b/msrvtt-qa/answer_list.json \\
        train.best_metric=accuracy train.output_dir=s3://b/runs/qa-msrvtt-b16
    torchrun --nproc-per-node 8 -m umt.train.finetune_qa --config b16 ...

As the official ``multi_modality/tasks/vqa.py`` with ``UMT_QA`` (``umt.models.qa``): 12
frames, every video token; the question encoder is the whole BERT attending to the video; the
answer decoder (initialised from the fusion layers, the embeddings and the MLM head of the
Stage-2 checkpoint) is trained with next-token cross-entropy summed over each answer's tokens,
weighted by the answer's frequency among the question's answers, summed and divided by the
number of questions. Optimizer: AdamW, LR as given, no layer decay, weight decay 0.02 on
matrices. Evaluation on ``eval.source`` every ``train.eval_every`` steps (``umt.eval.qa``:
ranking the answer list), predictions under ``<output_dir>/eval/``; with ``train.best_metric``
(``accuracy``) the best checkpoint is kept too and reported as ``best`` (selected on
``eval.source``: optimistic when it is the test split, as the official MSRVTT-QA recipe),
beside the last checkpoint's ``eval``.

The official ``UMT_QA.forward`` at HEAD raises ``TypeError`` (its ``encode_vision`` passes one
argument too many to the vision encoder): this follows its design, not its bug.

Bad input fails before training: an empty or malformed answer list, an answer of the list
longer than ``qa.max_answer_len`` tokens, training or evaluation data without questions.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Optional, Sequence

import torch

from umt.configs.finetune_qa import FinetuneQAConfig
from umt.configs.loader import load_config
from umt.data.downstream import answer_list_of
from umt.models import build_from_config
from umt.models.qa_answers import AnswerFits, answer_texts
from umt.models.text import load_tokenizer, tokenize
from umt.runtime import weights
from umt.runtime.common import autocast
from umt.train.loop import Context, Models, Stage, train

log = logging.getLogger("umt.train")


def build_models(cfg: FinetuneQAConfig, device: torch.device) -> Models:
    m = cfg.model
    if not m.pretrained:
        log.warning("model.pretrained is not set: the QA model starts from a random video "
                    "encoder and %s's BERT weights", m.text_encoder)
    model = build_from_config(m, weights.read_optional(m.pretrained))
    model.set_grad_checkpointing(m.grad_checkpointing)
    extras = {"tokenizer": load_tokenizer(m.text_encoder)}
    if cfg.eval.source:
        extras["answers"] = answer_list_of(cfg.qa.answer_list, cfg.eval.source)
    return Models(model=model, extras=extras)


def build_loader(cfg: FinetuneQAConfig, ctx: Context, start: int) -> Iterator[dict]:
    from umt.data.qa_loader import build_qa_loader

    return build_qa_loader(cfg.data, batch_size=cfg.train.batch_size,
                           num_frames=cfg.model.num_frames, img_size=cfg.model.img_size,
                           seed=cfg.train.seed, rank=ctx.dist.rank,
                           world_size=ctx.dist.world_size, start_step=start,
                           answer_fits=AnswerFits(ctx.state["tokenizer"], cfg.qa.max_answer_len))


def forward_loss(ctx: Context, batch: dict, step: int) -> tuple[torch.Tensor, dict]:
    cfg, tok = ctx.cfg, ctx.state["tokenizer"]
    video = batch["video"].to(ctx.device, non_blocking=True)             # [B, 3, T, H, W]
    q_ids, q_att = tokenize(tok, batch["question"], cfg.qa.max_question_len, ctx.device)
    # Answers fit qa.max_answer_len (the loader skips questions whose answers do not).
    a_ids, a_att = tokenize(tok, answer_texts(tok, batch["answers"]), cfg.qa.max_answer_len, ctx.device)
    owner = batch["answer_question"].to(ctx.device)                      # [A]
    weights = batch["weights"].to(ctx.device)                            # [A]
    with autocast(ctx.device, cfg.train.precision):
        loss = ctx.model(video, q_ids, q_att, a_ids, a_att, owner, weights)
    return loss, {"loss_qa": loss.detach(), "answers_per_question": torch.tensor(
        float(len(batch["answers"])) / video.shape[0])}


def evaluate(ctx: Context, step: int) -> dict[str, float]:
    """QA accuracy on ``eval.source``; its predictions go to ``eval/predictions_step_N.jsonl``."""
    from umt import storage
    from umt.eval.qa import run_qa, write_predictions

    cfg = ctx.cfg
    result, predictions = run_qa(ctx.raw, cfg.eval.source, ctx.state["tokenizer"],
                                 ctx.state["answers"], cfg.eval, cfg.qa, dist=ctx.dist,
                                 precision=cfg.train.precision)
    if ctx.dist.is_main:
        write_predictions(storage.join(cfg.train.output_dir, "eval",
                                       f"predictions_step_{step:08d}.jsonl"), predictions)
    flat = {k: result[k] for k in ("accuracy", "num_questions", "num_correct", "num_missing")}
    for t, v in result.get("accuracy_by_type", {}).items():
        flat[f"accuracy/{t}"] = v["accuracy"]
    return flat


def check_inputs(cfg: FinetuneQAConfig) -> None:
    """Fail before training: the answer list (empty, malformed, answers too long for the
    decoder) and data without questions."""
    from umt.data import dataset_json
    from umt.data.qa_loader import describe_qa_sources
    from umt.models.qa_answers import tokenize_answers

    if list(cfg.data.sources) != ["synthetic"]:
        describe_qa_sources(list(cfg.data.sources))
    if cfg.eval.source or cfg.qa.answer_list:
        answers = answer_list_of(cfg.qa.answer_list, cfg.eval.source)
        tokenize_answers(load_tokenizer(cfg.model.text_encoder), answers, cfg.qa.max_answer_len)
    if cfg.eval.source and dataset_json.load(cfg.eval.source).num_questions == 0:
        raise ValueError(f"eval.source={cfg.eval.source} holds no QA questions")


def _stage(cfg: FinetuneQAConfig) -> Stage:
    return Stage(name="finetune-qa", build_models=build_models, build_loader=build_loader,
                 forward_loss=forward_loss, evaluate=evaluate if cfg.eval.source else None)


def main(config: Optional[str] = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    cfg = load_config(FinetuneQAConfig, "finetune-qa", config, overrides)
    check_inputs(cfg)
    return train(_stage(cfg), cfg)


if __name__ == "__main__":
    from umt.runtime.entry import run_stage_module

    run_stage_module("finetune-qa")
