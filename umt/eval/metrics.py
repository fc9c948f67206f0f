"""Evaluation metrics of the UMT downstream tasks, as pure functions on host arrays.

Everything here takes numpy arrays or torch tensors (moved to the CPU, computed in float64) and
returns plain Python numbers or numpy arrays, so evaluation jobs can call them after gathering
scores from every rank. Accuracies and recalls are **percentages** in [0, 100] and are not
rounded (the official ``itm_eval`` rounds to 2 decimals).

Ties. Every ranking metric here ranks a ground truth *after* every wrong candidate that scores
the same (``ties="pessimistic"``, the default): a collapsed model whose scores are all equal gets
R@1 = 0, not a number that depends on how a sort orders equal keys. The official code ranks with
``np.argsort(score)[::-1]``, whose order among equal scores is an implementation detail of
numpy's quicksort; without ties both give the same ranks. ``ties="optimistic"`` ranks a ground
truth before the candidates it ties with. The official ITM re-ranking sets every entry outside
the top k to -100, so ties at -100 are common, but they only affect ranks >= k (>= 10 for the
usual k = 128), never R@1/5/10.

Functions (shapes in each docstring):
    retrieval_ranks, retrieval_metrics       video-text retrieval (official ``itm_eval``)
    merge_views                              multi-view action testing (official ``merge``)
    topk_accuracy, mean_class_accuracy, confusion_matrix
    qa_accuracy                              video QA (official ``eval_simple_qa_acc``)
    multiple_choice_scores, multiple_choice_accuracy   MSRVTT-MC (official ``retrieval_mc``)
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence, Union

import numpy as np

Positives = Union[Sequence[int], Sequence[Sequence[int]], np.ndarray]
_TIES = ("pessimistic", "optimistic")


# --------------------------------------------------------------------------- input checks
def _array(x: Any, name: str, ndim: int, dtype=np.float64) -> np.ndarray:
    """``x`` (numpy / torch / nested lists) as a numpy array of ``ndim`` dims, or a clear error."""
    if hasattr(x, "detach"):  # torch tensor (possibly on a GPU, possibly fp16/bf16)
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    if dtype is np.int64:
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must hold integers, got dtype {a.dtype}")
        return a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
    a = a.astype(dtype)
    if np.isnan(a).any():
        first = tuple(int(i) for i in np.argwhere(np.isnan(a))[0])
        raise ValueError(f"{name} holds NaN (first at index {first}); scores must be numbers")
    return a


def _check_ties(ties: str) -> None:
    if ties not in _TIES:
        raise ValueError(f"ties={ties!r} is not allowed; choose one of: {', '.join(map(repr, _TIES))}")


def _labels(labels: Any, n: int, num_classes: int, name: str = "labels") -> np.ndarray:
    lab = _array(labels, name, 1, np.int64)
    if len(lab) != n:
        raise ValueError(f"{name} has {len(lab)} entries but there are {n} samples")
    bad = (lab < 0) | (lab >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}[{i}]={int(lab[i])} is outside the {num_classes} classes [0, {num_classes})")
    return lab


def _positive_mask(positives: Positives, num_queries: int, num_candidates: int, name: str) -> np.ndarray:
    """bool ``[num_queries, num_candidates]``: True where a candidate is a ground truth of the query.

    ``positives[q]`` is one candidate index or a non-empty list of them.
    """
    if isinstance(positives, np.ndarray) and positives.ndim == 1:
        positives = positives.tolist()
    if hasattr(positives, "detach"):
        positives = positives.detach().cpu().tolist()
    if len(positives) != num_queries:
        raise ValueError(f"{name} has {len(positives)} entries but the score matrix has {num_queries} rows")
    mask = np.zeros((num_queries, num_candidates), dtype=bool)
    for q, gt in enumerate(positives):
        items = list(gt) if isinstance(gt, (list, tuple, np.ndarray)) else [gt]
        if not items:
            raise ValueError(f"{name}[{q}] is empty: every query needs at least one ground truth")
        for g in items:
            if isinstance(g, bool) or not isinstance(g, (int, np.integer)):
                raise ValueError(f"{name}[{q}] holds {g!r}; ground truths are integer indices")
            if not 0 <= g < num_candidates:
                raise ValueError(f"{name}[{q}] holds {g}, outside the {num_candidates} candidates [0, {num_candidates})")
            mask[q, g] = True
    return mask


# --------------------------------------------------------------------------- retrieval
def retrieval_ranks(scores: Any, positives: Positives, *, ties: str = "pessimistic") -> np.ndarray:
    """0-based rank of each query's best-scored ground truth among the candidates.

    Args:
        scores: ``[num_queries, num_candidates]``, higher = better.
        positives: ``num_queries`` entries, each one candidate index or a list of them.
        ties: ``"pessimistic"`` (equal-scored wrong candidates rank first) or ``"optimistic"``.
    Returns:
        int64 ``[num_queries]``: the number of wrong candidates that score higher than (or, when
        pessimistic, as high as) the best ground truth. 0 = found at rank 1. Without ties this is
        the official ``min_g np.where(np.argsort(score)[::-1] == g)``.
    """
    _check_ties(ties)
    s = _array(scores, "scores", 2)
    gt = _positive_mask(positives, s.shape[0], s.shape[1], "positives")
    best = np.where(gt, s, -np.inf).max(axis=1, keepdims=True)
    ahead = (s >= best) if ties == "pessimistic" else (s > best)
    return (ahead & ~gt).sum(axis=1).astype(np.int64)


def _inverse(text_to_video: Positives, num_texts: int, num_videos: int) -> list[list[int]]:
    mask = _positive_mask(text_to_video, num_texts, num_videos, "text_to_video")
    v2t = [np.flatnonzero(mask[:, v]).tolist() for v in range(num_videos)]
    missing = [v for v, t in enumerate(v2t) if not t]
    if missing:
        raise ValueError(f"video {missing[0]} ({len(missing)} in all) has no text in text_to_video; "
                         "pass video_to_text explicitly or drop videos without captions")
    return v2t


def _recalls(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    out = {f"{prefix}_r{k}": 100.0 * float(np.mean(ranks < k)) for k in (1, 5, 10)}
    out[f"{prefix}_r_mean"] = (out[f"{prefix}_r1"] + out[f"{prefix}_r5"] + out[f"{prefix}_r10"]) / 3
    return out


def retrieval_metrics(sim: Any, text_to_video: Positives, video_to_text: Positives | None = None, *,
                      sim_v2t: Any = None, ties: str = "pessimistic") -> dict[str, float]:
    """Video-text retrieval recalls, as the official ``itm_eval``.

    Args:
        sim: ``[num_texts, num_videos]`` text-to-video scores (similarities, or ITM-re-ranked).
        text_to_video: ``num_texts`` entries: the ground-truth video of each text, or a list of
            videos (several videos per text, e.g. SSv2 labels used as captions).
        video_to_text: ``num_videos`` entries: the texts of each video (one index or a list).
            Default: every text whose ``text_to_video`` names the video (an error if a video has
            none).
        sim_v2t: ``[num_videos, num_texts]`` video-to-text scores. Default ``sim.T``; pass it
            when the two directions were re-ranked separately (the official ITM re-ranking
            re-scores the top k of each row of each direction, so the matrices differ).
        ties: see the module docstring.
    Returns:
        Percentages: ``t2v_r1, t2v_r5, t2v_r10, t2v_r_mean``, ``v2t_r1 ... v2t_r_mean`` and
        ``r_mean`` (mean of the two means); also under the official names, ``img_r*`` =
        text-to-video and ``txt_r*`` = video-to-text. Every text is its own text-to-video query;
        a video counts as found at the best rank of any of its texts.
    """
    s = _array(sim, "sim", 2)
    num_texts, num_videos = s.shape
    if sim_v2t is None:
        s_v2t = s.T
    else:
        s_v2t = _array(sim_v2t, "sim_v2t", 2)
        if s_v2t.shape != (num_videos, num_texts):
            raise ValueError(f"sim_v2t must have shape [num_videos, num_texts] = {[num_videos, num_texts]}, "
                             f"got {list(s_v2t.shape)}")
    if video_to_text is None:
        video_to_text = _inverse(text_to_video, num_texts, num_videos)
    out = _recalls(retrieval_ranks(s, text_to_video, ties=ties), "t2v")
    out.update(_recalls(retrieval_ranks(s_v2t, video_to_text, ties=ties), "v2t"))
    out["r_mean"] = (out["t2v_r_mean"] + out["v2t_r_mean"]) / 2
    for suffix in ("r1", "r5", "r10", "r_mean"):
        out[f"txt_{suffix}"] = out[f"v2t_{suffix}"]
        out[f"img_{suffix}"] = out[f"t2v_{suffix}"]
    return out


# --------------------------------------------------------------------------- classification
def merge_views(logits: Any, video_ids: Sequence[Hashable]) -> tuple[list[Hashable], np.ndarray]:
    """Per-video class probabilities from multi-view (clips x crops) test logits.

    As the official ``merge``: a float64 softmax of each view's logits, then the mean of the
    probabilities of all views of a video. Unlike the official code, which drops a view whose
    ``str(chunk) + str(split)`` key it has seen before (so clip 1 crop 12 and clip 11 crop 2
    collide), every view given here is used: de-duplicating repeated views is the loader's job.

    Args:
        logits: ``[num_views, num_classes]`` (any float dtype; fp16 logits are fine).
        video_ids: ``num_views`` hashable ids, the video of each view (any order).
    Returns:
        ``(ids, probs)``: the distinct ids in order of first appearance and float64
        ``[num_videos, num_classes]`` mean probabilities (rows sum to 1).
    """
    z = _array(logits, "logits", 2)
    if not np.isfinite(z).all():
        row = int(np.argwhere(~np.isfinite(z))[0, 0])
        raise ValueError(f"logits of view {row} are not finite ({z[row][~np.isfinite(z[row])][0]}); "
                         "an overflow in fp16 inference?")
    ids = list(video_ids)
    if len(ids) != z.shape[0]:
        raise ValueError(f"video_ids has {len(ids)} entries but logits has {z.shape[0]} views")
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    order: dict[Hashable, int] = {}
    index = np.fromiter((order.setdefault(v, len(order)) for v in ids), dtype=np.int64, count=len(ids))
    sums = np.zeros((len(order), z.shape[1]))
    np.add.at(sums, index, p)
    return list(order), sums / np.bincount(index)[:, None]


def topk_accuracy(scores: Any, labels: Any, ks: Sequence[int] = (1, 5), *,
                  ties: str = "pessimistic") -> dict[str, float]:
    """Top-k accuracy in percent.

    Args:
        scores: ``[num_samples, num_classes]`` logits or probabilities.
        labels: int ``[num_samples]`` in ``[0, num_classes)``.
        ks: the k values; k >= num_classes counts every sample as correct.
    Returns:
        ``{"top1": ..., "top5": ...}`` (one ``top{k}`` per k): a sample is correct when fewer
        than k wrong classes score higher than (pessimistic: at least as high as) its label.
    """
    _check_ties(ties)
    s = _array(scores, "scores", 2)
    lab = _labels(labels, s.shape[0], s.shape[1])
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"ks holds {k!r}; every k must be an integer >= 1")
    ranks = retrieval_ranks(s, lab, ties=ties)
    return {f"top{k}": 100.0 * float(np.mean(ranks < k)) for k in ks}


def confusion_matrix(predictions: Any, labels: Any, num_classes: int) -> np.ndarray:
    """int64 ``[num_classes, num_classes]``; entry ``[true, predicted]`` counts samples.

    Args:
        predictions, labels: int ``[num_samples]`` in ``[0, num_classes)``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} must be an integer >= 1")
    pred = _array(predictions, "predictions", 1, np.int64)
    pred = _labels(pred, len(pred), num_classes, "predictions")
    lab = _labels(labels, len(pred), num_classes)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (lab, pred), 1)
    return cm


def mean_class_accuracy(predictions: Any, labels: Any, num_classes: int) -> float:
    """Mean over classes of the per-class accuracy (recall), in percent.

    Classes without any sample in ``labels`` are left out of the mean (their recall is
    undefined), so the number is comparable between splits that miss a few classes.

    Args:
        predictions, labels: int ``[num_samples]`` in ``[0, num_classes)``.
    """
    cm = confusion_matrix(predictions, labels, num_classes)
    support = cm.sum(axis=1)
    present = support > 0
    return 100.0 * float(np.mean(np.diag(cm)[present] / support[present]))


# --------------------------------------------------------------------------- video QA
def qa_accuracy(predictions: Mapping[Hashable, str], answers: Mapping[Hashable, str]) -> dict[str, Any]:
    """Open-ended QA accuracy by exact string match, as the official ``eval_simple_qa_acc``.

    Args:
        predictions: question id -> predicted answer string.
        answers: question id -> ground-truth answer string (every question of the split).
    Returns:
        ``{"accuracy": percent, "num_questions", "num_correct", "num_missing"}``. A question
        without a prediction counts as wrong (officially too); predictions for ids that are not
        in ``answers`` are ignored. Strings are compared as they are (no case folding or
        stripping: the answer list and the ground truth use the same spelling).
    """
    if not answers:
        raise ValueError("answers is empty: there is no question to score")
    correct = missing = 0
    for qid, answer in answers.items():
        if not isinstance(answer, str):
            raise ValueError(f"the ground-truth answer of question {qid!r} is {answer!r}, not a string")
        if qid not in predictions:
            missing += 1
            continue
        pred = predictions[qid]
        if not isinstance(pred, str):
            raise ValueError(f"the prediction for question {qid!r} is {pred!r}, not a string")
        correct += int(pred == answer)
    return {"accuracy": 100.0 * correct / len(answers), "num_questions": len(answers),
            "num_correct": correct, "num_missing": missing}


# --------------------------------------------------------------------------- multiple choice
def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def multiple_choice_scores(itm_logits: Any, mean_cosine: Any, temp: float, *,
                           itm_weight: float = 0.7) -> np.ndarray:
    """Scores of the candidate captions of each multiple-choice question (MSRVTT-MC).

    As the official ``retrieval_mc.main_with_ensemble``:
    ``0.7 * softmax(itm_logits)[..., 1] + 0.3 * softmax_over_candidates(mean_cosine / temp)``.

    Args:
        itm_logits: ``[num_questions, num_candidates, 2]`` ITM head logits of (video, candidate)
            pairs; index 1 = match.
        mean_cosine: ``[num_questions, num_candidates]`` cosine similarity of the video and the
            candidate caption, averaged over the video's frames (per-frame features).
        temp: the model's learned contrastive temperature (> 0).
        itm_weight: weight of the ITM term (official 0.7; the contrastive term gets 1 - it).
    Returns:
        float64 ``[num_questions, num_candidates]``; the prediction is the argmax of each row.
    """
    itm = _array(itm_logits, "itm_logits", 3)
    cos = _array(mean_cosine, "mean_cosine", 2)
    if itm.shape[-1] != 2 or itm.shape[:2] != cos.shape:
        raise ValueError(f"itm_logits must have shape [num_questions, num_candidates, 2] = {[*cos.shape, 2]} "
                         f"to match mean_cosine {list(cos.shape)}, got {list(itm.shape)}")
    temp = float(temp)
    if not np.isfinite(temp) or temp <= 0:
        raise ValueError(f"temp={temp!r} must be a positive number")
    if not 0.0 <= itm_weight <= 1.0:
        raise ValueError(f"itm_weight={itm_weight!r} must be in [0, 1]")
    return itm_weight * _softmax(itm, -1)[..., 1] + (1.0 - itm_weight) * _softmax(cos / temp, -1)


def multiple_choice_accuracy(scores: Any, answers: Any, *, ties: str = "pessimistic") -> float:
    """Percent of questions whose correct candidate scores highest.

    Args:
        scores: ``[num_questions, num_candidates]`` (e.g. ``multiple_choice_scores``).
        answers: int ``[num_questions]``, the index of the correct candidate.
        ties: a correct candidate tied with a wrong one for the top counts as wrong when
            pessimistic (the official ``max(1)[1]`` picks one of the tied indices).
    """
    return topk_accuracy(scores, answers, ks=(1,), ties=ties)["top1"]
