"""Video QA evaluation, as the official ``evaluation`` of ``multi_modality/tasks/vqa.py``.

1. Every video once (the retrieval loader: frames at the middle of T segments, square bicubic
   resize, no crop; split over ranks and workers, each video read exactly once), every token.
2. Each of its questions (``clean_caption``'ed, ``qa.max_question_len`` tokens) through the
   question encoder attending to the video.
3. The answer of each question: the official ``rank_answer`` over the global answer list
   (``umt.models.qa.VideoQAModel.rank_answers``): top ``k`` by first-token probability
   (``k`` clamped to the list's size), re-ranked by the answer's full log-likelihood.
4. Exact-match accuracy (``umt.eval.qa_accuracy``) against each question's ground truth (its
   most frequent answer); questions that were never answered -- their video could not be read
   -- count as wrong (dataset.json's ``num_questions`` says how many there are). Also per
   question ``type`` when the questions have one.

Predictions are gathered in dataset order and returned per question; the jobs write them to
``predictions.jsonl``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Optional

import torch

from umt.data.captions import clean_caption
from umt.data.downstream import AnnotationError, ground_truth, parse_questions
from umt.eval.metrics import qa_accuracy
from umt.runtime import distributed
from umt.runtime.common import autocast

log = logging.getLogger(__name__)
TOP_SAVED = 5  # candidates (with probabilities) kept per prediction


def _gather(obj: Any, dist: distributed.DistInfo) -> list[Any]:
    return distributed.gather_objects(obj, dist) if dist.world_size > 1 else [obj]


@torch.no_grad()
def run_qa(model, source: str, tokenizer, answers: list[str], cfg, qa, *,
           dist: distributed.DistInfo, precision: str = "fp32") -> tuple[dict[str, Any], list[dict]]:
    """QA inference of ``model`` (``VideoQAModel``) on ``source`` (dataset.json) ranking
    ``answers``. ``cfg``: ``QAEvalConfig`` (num_frames / img_size set), ``qa``: ``QASettings``.
    Returns ``(metrics.json content, predictions in dataset order)`` on every rank."""
    from umt.data import dataset_json
    from umt.eval.retrieval import eval_videos
    from umt.models.qa_answers import tokenize_answers
    from umt.models.text import tokenize

    was_training = model.training
    model.eval()
    device = dist.device
    a_ids, a_att = tokenize_answers(tokenizer, answers, qa.max_answer_len, device)
    loader = eval_videos(source, cfg, dist)
    preds, problems = [], []
    for batch in loader:
        owner, questions = [], []
        for b, meta in enumerate(batch["meta"]):
            key = batch["key"][b]
            try:
                qs = parse_questions(meta.get("questions"), str(meta.get("id") or key))
            except AnnotationError as e:
                problems.append(f"{key}: {e}")
                continue
            for q in qs:
                owner.append(b)
                questions.append((int(batch["index"][b]), key, meta.get("id"), q))
        if not questions:
            continue
        video = batch["video"].to(device)
        owner_t = torch.tensor(owner, device=device)
        q_ids, q_att = tokenize(tokenizer, [clean_caption(q["question"]) for *_, q in questions],
                                qa.max_question_len, device)
        with autocast(device, precision):
            tokens = model.vision_encoder(video)                             # [B, N, D]
            states = model.encode_question(q_ids, q_att, tokens[owner_t])    # [Q, Lq, W]
            top_ids, top_probs = model.rank_answers(states, q_att, a_ids, a_att, cfg.k,
                                                    chunk=cfg.candidate_batch)
        for (index, key, vid, q), ids, probs in zip(questions, top_ids.tolist(), top_probs.tolist()):
            gt = ground_truth(q["answers"])
            preds.append({"index": index, "question_id": q["id"], "key": key, "video_id": vid,
                          "type": q["type"], "question": q["question"], "answers": q["answers"],
                          "ground_truth": gt, "prediction": answers[ids[0]],
                          "correct": answers[ids[0]] == gt,
                          "top": [[answers[i], round(p, 6)] for i, p in zip(ids[:TOP_SAVED], probs)]})
    model.train(was_training)
    problems = [p for part in _gather(problems, dist) for p in part]
    if problems:
        raise ValueError(f"{len(problems)} evaluation videos have no usable questions (a "
                         f"'questions' list, docs/downstream.md), e.g. {problems[:3]}")
    preds = [p for part in _gather(preds, dist) for p in part]
    preds.sort(key=lambda p: (p["index"], p["question_id"]))
    if cfg.max_videos:
        keep = set(sorted({p["index"] for p in preds})[:cfg.max_videos])
        preds = [p for p in preds if p["index"] in keep]
    ids = [p["question_id"] for p in preds]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"question id {dup!r} appears more than once in {source}: ids must be "
                         f"unique over the whole set")
    if not preds:
        raise ValueError(f"{source}: no readable video with questions")
    skipped = int(distributed.sum_over_ranks(getattr(loader, "num_skipped", 0), dist))
    expected = dataset_json.load(source).num_questions
    result = {"task": "qa", "source": source, **_accuracies(preds, expected if not cfg.max_videos else None),
              "num_videos": len({p["index"] for p in preds}), "samples_skipped": skipped,
              "answer_list_size": len(answers),
              "num_answers": len(answers),  # the catalogue's chance level: 100 / num_answers
              "protocol": {"frames": cfg.num_frames, "sampling": "middle of T equal segments",
                           "resolution": cfg.img_size, "resize": "square, bicubic, no crop",
                           "max_question_len": qa.max_question_len,
                           "max_answer_len": qa.max_answer_len, "k": min(cfg.k, len(answers)),
                           "ranking": "top k answers by first-token probability, re-ranked by "
                                      "log p(first) + log p(answer) (official rank_answer)",
                           "metric": "exact match with the most frequent ground-truth answer; "
                                     "unanswered questions count as wrong",
                           "max_videos": cfg.max_videos}}
    return result, [{k: v for k, v in p.items() if k != "index"} for p in preds]


def _accuracies(preds: list[dict], expected: Optional[int]) -> dict[str, Any]:
    """Overall and per-type accuracy; ``expected`` questions (dataset.json) beyond the answered
    ones count as missing, i.e. wrong."""
    truth = {p["question_id"]: p["ground_truth"] for p in preds}
    answered = {p["question_id"]: p["prediction"] for p in preds}
    missing = max(0, (expected or 0) - len(truth))
    for i in range(missing):  # placeholders for the unreadable videos' questions
        truth[f"__missing_{i}"] = ""
    overall = qa_accuracy(answered, truth)
    out = {"accuracy": overall["accuracy"], "num_questions": overall["num_questions"],
           "num_correct": overall["num_correct"], "num_missing": overall["num_missing"]}
    types = sorted({p["type"] for p in preds if p["type"] is not None})
    if types:
        out["accuracy_by_type"] = {}
        for t in types:
            sub = [p for p in preds if p["type"] == t]
            acc = qa_accuracy({p["question_id"]: p["prediction"] for p in sub},
                              {p["question_id"]: p["ground_truth"] for p in sub})
            out["accuracy_by_type"][t] = {"accuracy": acc["accuracy"], "num_questions": len(sub)}
    return out


def write_predictions(uri: str, predictions: list[dict]) -> None:
    from umt import storage

    text = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)
    storage.write_bytes(uri, text.encode())
