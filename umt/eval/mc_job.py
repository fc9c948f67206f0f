"""``umt eval mc``: multiple-choice video-to-text (MSRVTT-MC) with a retrieval model.

    umt eval mc --config b16 --model s3://b/runs/ret-msrvtt-b16/checkpoints/step_00007000.pt \\
        --data s3://b/msrvtt-mc/dataset.json --output s3://b/evals/msrvtt-mc
    torchrun --nproc-per-node 8 -m umt.eval.mc_job --config b16 model.pretrained=... \\
        data.source=... train.output_dir=...

As the official ``multi_modality/tasks/retrieval_mc.py``: every video once (frames at the
middle of T segments, square bicubic resize), every token and per-frame features; each of its
candidate captions (the sample's ``candidates``, docs/downstream.md) scored
``0.7 * softmax(ITM logits)[match] + 0.3 * softmax over the candidates of (mean over frames of
the cosine / temp)`` with the model's learned ``temp`` (``umt.eval.multiple_choice_scores``);
the prediction is the best-scored candidate, the metric the accuracy against ``answer``. A
sample without candidates or answer fails the evaluation with its key. Writes ``metrics.json``,
``predictions.jsonl`` (one line per video), ``summary.json`` and ``config.yaml``.
"""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence

import numpy as np
import torch

from umt.configs.finetune_retrieval import EvalMCConfig
from umt.configs.loader import load_config
from umt.eval.job import run_evaluation
from umt.eval.retrieval_job import build_model


@torch.no_grad()
def score_videos(model, batch: dict, tokenizer, cfg, device, precision: str) -> tuple[list[dict], list[str]]:
    """Score the candidates of every video of one retrieval-loader batch; returns
    ``(rows, problems)``: one row per usable video, one message per unusable one."""
    from umt.data.captions import clean_caption
    from umt.data.downstream import AnnotationError, parse_answer_index, parse_candidates
    from umt.eval.metrics import multiple_choice_scores
    from umt.models.text import tokenize
    from umt.runtime.common import autocast

    usable, problems = [], []
    for b, meta in enumerate(batch["meta"]):
        try:
            if meta.get("candidates") is None:
                raise AnnotationError("no 'candidates' (a multiple-choice sample needs them)")
            cands = parse_candidates(meta["candidates"])
            answer = parse_answer_index(meta.get("answer"), len(cands))
            usable.append((b, cands, answer))
        except AnnotationError as e:
            problems.append(f"{batch['key'][b]}: {e}")
    if not usable:
        return [], problems
    video = batch["video"][[b for b, *_ in usable]].to(device)
    texts = [clean_caption(c) for _, cands, _ in usable for c in cands]
    owner = torch.tensor([i for i, (_, cands, _) in enumerate(usable) for _ in cands], device=device)
    ids, att = tokenize(tokenizer, texts, cfg.max_txt_len, device)
    with autocast(device, precision):
        tokens, vfeat = model.encode_video(video, per_frame=True)        # [V, N, D], [V, T, E]
        hidden, tfeat = model.encode_text(ids, att)                      # [X, L, W], [X, E]
        itm = model.itm_logits(tokens[owner], hidden, att).float()       # [X, 2]
    # Mean over frames of the per-frame cosine of each (video, own candidate) pair (the
    # diagonal of umt.losses.similarity; both sides are unit vectors per frame).
    cos = torch.einsum("xtd,xd->xt", vfeat[owner].float(), tfeat.float()).mean(1)  # [X]
    temp = float(model.temp.detach().clamp(0.001, 0.5))
    rows, start = [], 0
    for i, (b, cands, answer) in enumerate(usable):
        k = len(cands)
        s = multiple_choice_scores(itm[start:start + k][None].cpu(), cos[start:start + k][None].cpu(),
                                   temp, itm_weight=cfg.itm_weight)[0]
        start += k
        pred = int(np.argmax(s))
        rows.append({"index": int(batch["index"][b]), "key": batch["key"][b],
                     "id": batch["meta"][b].get("id"), "candidates": cands, "answer": answer,
                     "prediction": pred, "scores": [round(float(x), 6) for x in s],
                     # a tie with the right candidate counts as wrong (pessimistic)
                     "correct": bool(s[answer] > max(np.delete(s, answer)))})
    return rows, problems


def run_mc(model, source: str, tokenizer, cfg, *, dist, precision: str = "fp32") -> tuple[dict, list[dict]]:
    """The whole protocol on ``source``; ``(metrics.json content, predictions)`` on every rank."""
    from umt.eval.retrieval import eval_videos
    from umt.runtime import distributed

    model.eval()
    loader = eval_videos(source, cfg, dist)
    rows, problems = [], []
    for batch in loader:
        r, p = score_videos(model, batch, tokenizer, cfg, dist.device, precision)
        rows += r
        problems += p

    def gather(x):
        return [y for part in (distributed.gather_objects(x, dist) if dist.world_size > 1 else [x])
                for y in part]

    problems = gather(problems)
    if problems:
        raise ValueError(f"{len(problems)} multiple-choice samples cannot be scored (each needs "
                         f"'candidates' and 'answer', docs/downstream.md), e.g. {problems[:3]}")
    rows = sorted(gather(rows), key=lambda r: r["index"])
    if len({r["index"] for r in rows}) != len(rows):
        raise RuntimeError("a video was read twice by the evaluation loader")
    if cfg.max_videos:
        rows = rows[:cfg.max_videos]
    if not rows:
        raise ValueError(f"{source}: no readable multiple-choice video")
    sizes = sorted({len(r["candidates"]) for r in rows})
    correct = sum(r["correct"] for r in rows)
    skipped = int(distributed.sum_over_ranks(getattr(loader, "num_skipped", 0), dist))
    result = {"task": "mc", "source": source, "accuracy": 100.0 * correct / len(rows),
              "num_questions": len(rows), "num_correct": correct,
              "num_candidates": sizes[0] if len(sizes) == 1 else sizes,
              "chance": 100.0 * float(np.mean([1 / len(r["candidates"]) for r in rows])),
              "samples_skipped": skipped, "temp": float(model.temp.detach().clamp(0.001, 0.5)),
              "protocol": {"frames": cfg.num_frames, "sampling": "middle of T equal segments",
                           "resolution": cfg.img_size, "resize": "square, bicubic, no crop",
                           "max_txt_len": cfg.max_txt_len, "itm_weight": cfg.itm_weight,
                           "score": f"{cfg.itm_weight} x softmax(ITM)[match] + "
                                    f"{1 - cfg.itm_weight:g} x softmax over candidates of "
                                    f"(mean over frames of cosine / temp)",
                           "ties": "a tie with the right candidate counts as wrong",
                           "max_videos": cfg.max_videos}}
    return result, [{k: v for k, v in r.items() if k != "index"} for r in rows]


def _body(cfg: EvalMCConfig, dist) -> dict:
    from umt import storage

    model, tokenizer = build_model(cfg, dist.device)
    result, predictions = run_mc(model, cfg.data.source, tokenizer, cfg.eval, dist=dist,
                                 precision=cfg.train.precision)
    result["predictions_uri"] = storage.join(cfg.train.output_dir, "predictions.jsonl")
    if dist.is_main:
        storage.write_bytes(result["predictions_uri"], "".join(
            json.dumps(p, ensure_ascii=False) + "\n" for p in predictions).encode())
    return result


def headline(result: dict) -> dict:
    return {"accuracy": result["accuracy"], "num_questions": result["num_questions"]}


def main(config: Optional[str] = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    cfg = load_config(EvalMCConfig, "eval-mc", config, overrides)
    return run_evaluation("mc", cfg, _body, headline)


if __name__ == "__main__":
    from umt.runtime.entry import run_stage_module

    run_stage_module("eval-mc")
