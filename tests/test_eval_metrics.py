"""umt.eval metrics on hand-built inputs whose answers are worked out in the comments."""

import math

import numpy as np
import pytest
import torch

from umt.eval import (
    confusion_matrix,
    mean_class_accuracy,
    merge_views,
    multiple_choice_accuracy,
    multiple_choice_scores,
    qa_accuracy,
    retrieval_metrics,
    retrieval_ranks,
    topk_accuracy,
)

# 3 videos with 2 captions each: texts 0,1 -> video 0; 2,3 -> video 1; 4,5 -> video 2.
TEXT_TO_VIDEO = [0, 0, 1, 1, 2, 2]
SIM = np.array([
    [0.9, 0.1, 0.0],  # t0: gt v0 first                        -> rank 0
    [0.2, 0.5, 0.1],  # t1: v1 (0.5) beats gt v0 (0.2)           -> rank 1
    [0.3, 0.8, 0.1],  # t2: gt v1 first                        -> rank 0
    [0.6, 0.4, 0.7],  # t3: v0 and v2 beat gt v1               -> rank 2
    [0.1, 0.2, 0.3],  # t4: gt v2 first                        -> rank 0
    [0.5, 0.6, 0.4],  # t5: v0 and v1 beat gt v2               -> rank 2
])
# Video-to-text on SIM.T: v0's best own text t0 (0.9) is its top -> 0; v1's best own text t2
# (0.8) is its top -> 0; v2's best own text t5 (0.4) is beaten by t3 (0.7) only -> 1.


def test_several_captions_per_video():
    m = retrieval_metrics(SIM, TEXT_TO_VIDEO)
    assert retrieval_ranks(SIM, TEXT_TO_VIDEO).tolist() == [0, 1, 0, 2, 0, 2]
    assert m["t2v_r1"] == pytest.approx(50.0)
    assert m["t2v_r5"] == m["t2v_r10"] == pytest.approx(100.0)
    assert m["v2t_r1"] == pytest.approx(200 / 3)
    assert m["v2t_r5"] == m["v2t_r10"] == pytest.approx(100.0)
    assert m["t2v_r_mean"] == pytest.approx(250 / 3)
    assert m["v2t_r_mean"] == pytest.approx((200 / 3 + 200) / 3)
    assert m["r_mean"] == pytest.approx((m["t2v_r_mean"] + m["v2t_r_mean"]) / 2)
    # Official names: txt = video-to-text, img = text-to-video.
    for k in ("r1", "r5", "r10", "r_mean"):
        assert m[f"txt_{k}"] == m[f"v2t_{k}"] and m[f"img_{k}"] == m[f"t2v_{k}"]


def test_recall_at_5_and_10_cut_at_the_right_rank():
    # 12 videos, one text each; text t's ground truth is placed at rank r[t] (scores descending).
    r = [0, 4, 5, 9, 10, 11, 0, 3, 6, 2, 1, 7]
    n = len(r)
    sim = np.zeros((n, n))
    for t, rank in enumerate(r):
        others = [v for v in range(n) if v != t]
        order = others[:rank] + [t] + others[rank:]   # candidates from best to worst
        sim[t, order] = np.arange(n, 0, -1)
    assert retrieval_ranks(sim, list(range(n))).tolist() == r
    m = retrieval_metrics(sim, list(range(n)))
    assert m["t2v_r1"] == pytest.approx(100 * 2 / 12)    # ranks 0, 0
    assert m["t2v_r5"] == pytest.approx(100 * 6 / 12)    # + 4, 3, 2, 1
    assert m["t2v_r10"] == pytest.approx(100 * 10 / 12)  # + 5, 9, 6, 7


def test_several_videos_per_text_best_rank_counts():
    # Text 0 has ground truths {1, 2}; video 2 is beaten only by video 0 -> rank 1.
    # Text 1 has ground truth {0}; videos 1 and 2 beat it -> rank 2.
    sim = np.array([[0.9, 0.1, 0.5], [0.1, 0.4, 0.3]])
    t2v = [[1, 2], [0]]
    assert retrieval_ranks(sim, t2v).tolist() == [1, 2]
    v2t = [[1], [0], [0]]  # explicit; also what the inverse of t2v gives
    m = retrieval_metrics(sim, t2v, v2t)
    assert m["t2v_r1"] == 0.0 and m["t2v_r5"] == 100.0
    # v2t on sim.T: v0 -> t1 (0.1) beaten by t0 (0.9): rank 1; v1 -> t0 (0.1) beaten by t1: 1;
    # v2 -> t0 (0.5) first: 0.
    assert m["v2t_r1"] == pytest.approx(100 / 3)
    assert retrieval_metrics(sim, t2v) == m


def test_matches_official_argsort_ranking_without_ties():
    # The official itm_eval loop (argsort descending, min position of any ground truth) on
    # random tie-free scores with 1-3 captions per video and list ground truths.
    rng = np.random.default_rng(0)
    num_videos = 20
    t2v = [v for v in range(num_videos) for _ in range(1 + v % 3)]
    sim = rng.standard_normal((len(t2v), num_videos))

    def official_ranks(scores, gts):
        out = []
        for row, gt in zip(scores, gts):
            inds = np.argsort(row)[::-1]
            out.append(min(int(np.where(inds == g)[0][0]) for g in (gt if isinstance(gt, list) else [gt])))
        return np.array(out)

    v2t = [[t for t, v in enumerate(t2v) if v == vid] for vid in range(num_videos)]
    m = retrieval_metrics(sim, t2v)
    for prefix, ranks in (("t2v", official_ranks(sim, t2v)), ("v2t", official_ranks(sim.T, v2t))):
        for k in (1, 5, 10):
            assert m[f"{prefix}_r{k}"] == pytest.approx(100 * np.mean(ranks < k))
    assert retrieval_ranks(sim, t2v).tolist() == official_ranks(sim, t2v).tolist()


def test_ties_are_ranked_deterministically():
    # Constant scores (a collapsed model): pessimistic R@1 = 0, optimistic R@1 = 100.
    sim = np.ones((4, 4))
    assert retrieval_metrics(sim, [0, 1, 2, 3])["t2v_r1"] == 0.0
    assert retrieval_ranks(sim, [0, 1, 2, 3]).tolist() == [3, 3, 3, 3]
    assert retrieval_metrics(sim, [0, 1, 2, 3], ties="optimistic")["t2v_r1"] == 100.0
    # The ground truth tied with one wrong video: rank 1 (pessimistic) or 0 (optimistic).
    row = np.array([[0.5, 0.5, 0.1]])
    assert retrieval_ranks(row, [1]).tolist() == [1]
    assert retrieval_ranks(row, [1], ties="optimistic").tolist() == [0]
    # Two ground truths tied at the top do not push each other down.
    assert retrieval_ranks(row, [[0, 1]]).tolist() == [0]
    # -100 fill outside the re-ranked top k ties many entries, but only at ranks >= k.
    filled = np.array([[3.0, 2.0, -100, -100, -100]])
    assert retrieval_ranks(filled, [4]).tolist() == [4]
    assert retrieval_ranks(filled, [4], ties="optimistic").tolist() == [2]


def test_separate_video_to_text_scores():
    # ITM re-ranking re-scores each direction separately: v2t must use sim_v2t, not sim.T.
    sim = np.eye(3)                       # t2v perfect
    sim_v2t = np.array([[0.0, 1.0, 0.0],  # v0's text t0 beaten by t1
                        [0.0, 1.0, 0.0],
                        [0.0, 0.0, 1.0]])
    m = retrieval_metrics(sim, [0, 1, 2], sim_v2t=sim_v2t)
    assert m["t2v_r1"] == 100.0
    assert m["v2t_r1"] == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match=r"sim_v2t must have shape \[num_videos, num_texts\]"):
        retrieval_metrics(np.eye(3)[:2], [0, 1], [[0], [1], [0]], sim_v2t=np.eye(3)[:2])


def test_torch_inputs_and_fp16():
    sim = torch.tensor(SIM, dtype=torch.float16)
    m = retrieval_metrics(sim, torch.tensor(TEXT_TO_VIDEO))
    assert m["t2v_r1"] == pytest.approx(50.0)


@pytest.mark.parametrize("sim, t2v, kwargs, message", [
    (np.zeros((0, 3)), [], {}, "sim is empty"),
    (np.zeros(3), [0], {}, "sim must have 2 dimensions"),
    (np.array([[0.1, np.nan]]), [0], {}, r"NaN \(first at index \(0, 1\)\)"),
    (np.eye(2), [0, 2], {}, r"text_to_video\[1\] holds 2, outside the 2 candidates"),
    (np.eye(2), [0, []], {}, r"text_to_video\[1\] is empty"),
    (np.eye(2), [0, 1.0], {}, r"text_to_video\[1\] holds 1.0; ground truths are integer indices"),
    (np.eye(2), [0], {}, "text_to_video has 1 entries but the score matrix has 2 rows"),
    (np.eye(3)[:2], [0, 1], {}, "video 2 .* has no text in text_to_video"),
    (np.eye(2), [0, 1], {"ties": "random"}, "ties='random' is not allowed"),
])
def test_retrieval_bad_input(sim, t2v, kwargs, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(sim, t2v, **kwargs)


# --------------------------------------------------------------------------- merge_views
def test_merge_views_softmax_then_mean():
    ln = math.log
    logits = np.array([
        [0.0, ln(3)],        # video "a", clip 0: softmax (1/4, 3/4)
        [ln(4), ln(4)],      # video "b": (1/2, 1/2)
        [ln(3), 0.0],        # video "a", clip 1: (3/4, 1/4)
        [ln(9), 0.0],        # video "a", clip 2: (9/10, 1/10)
    ])
    ids, probs = merge_views(logits, ["a", "b", "a", "a"])
    assert ids == ["a", "b"]
    assert probs.dtype == np.float64
    np.testing.assert_allclose(probs[0], [(0.25 + 0.75 + 0.9) / 3, (0.75 + 0.25 + 0.1) / 3], rtol=1e-12)
    np.testing.assert_allclose(probs[1], [0.5, 0.5], rtol=1e-12)
    # Averaging probabilities is not averaging logits: mean logits of "a" favour class 0 more.
    assert probs[0, 0] < 1 / (1 + math.exp(np.mean([ln(3), -ln(3), -ln(9)])))


def test_merge_views_keeps_every_view_and_any_id():
    # Official merge dedups by str(chunk)+str(split): clip 1 crop 12 == clip 11 crop 2. Here the
    # caller decides what a view is; two different views that the official key would merge count.
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=torch.float16)
    ids, probs = merge_views(logits, [("vid", 7), ("vid", 7)])
    assert ids == [("vid", 7)]
    np.testing.assert_allclose(probs, [[0.5, 0.5]], atol=1e-12)
    assert topk_accuracy(*merge_views(np.array([[0.0, 1.0], [5.0, 0.0]]), [1, 2])[1:], [1, 0], ks=(1,)) \
        == {"top1": 100.0}


@pytest.mark.parametrize("logits, ids, message", [
    (np.zeros((2, 3)), ["a"], "video_ids has 1 entries but logits has 2 views"),
    (np.array([[0.0, np.inf]]), ["a"], "logits of view 0 are not finite"),
    (np.zeros((0, 3)), [], "logits is empty"),
])
def test_merge_views_bad_input(logits, ids, message):
    with pytest.raises(ValueError, match=message):
        merge_views(logits, ids)


# --------------------------------------------------------------------------- classification
def test_topk_accuracy():
    scores = np.array([
        [0.1, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0],   # label 1: top 1
        [0.6, 0.1, 0.5, 0.4, 0.3, 0.2, 0.05],  # label 2: second -> top 5
        [0.6, 0.1, 0.5, 0.4, 0.3, 0.2, 0.05],  # label 6: last (rank 6) -> missed by top 5
        [0.3, 0.3, 0.2, 0.0, 0.0, 0.0, 0.0],   # label 1 tied with class 0 for the top
    ])
    labels = [1, 2, 6, 1]
    assert topk_accuracy(scores, labels) == {"top1": 25.0, "top5": 75.0}
    assert topk_accuracy(scores, labels, ties="optimistic") == {"top1": 50.0, "top5": 75.0}
    assert topk_accuracy(scores, labels, ks=(7, 10))["top10"] == 100.0  # k >= classes: all correct


@pytest.mark.parametrize("labels, ks, message", [
    ([0, 3], (1,), r"labels\[1\]=3 is outside the 3 classes"),
    ([0, -1], (1,), r"labels\[1\]=-1 is outside"),
    ([0], (1,), "labels has 1 entries but there are 2 samples"),
    ([0.0, 1.0], (1,), "labels must hold integers"),
    ([0, 1], (0,), "every k must be an integer >= 1"),
])
def test_topk_bad_input(labels, ks, message):
    with pytest.raises(ValueError, match=message):
        topk_accuracy(np.zeros((2, 3)), labels, ks=ks)


def test_confusion_matrix_and_mean_class_accuracy():
    labels = [0, 0, 1, 1, 1, 2]
    preds = [0, 1, 1, 1, 0, 2]
    cm = confusion_matrix(preds, labels, 4)
    assert cm.dtype == np.int64
    assert cm.tolist() == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    # Per-class recall 1/2, 2/3, 1; class 3 has no sample and is left out.
    assert mean_class_accuracy(preds, labels, 4) == pytest.approx(100 * (1 / 2 + 2 / 3 + 1) / 3)
    assert mean_class_accuracy(torch.tensor(preds), np.array(labels), 3) == \
        pytest.approx(100 * (1 / 2 + 2 / 3 + 1) / 3)
    with pytest.raises(ValueError, match=r"predictions\[0\]=5 is outside the 4 classes"):
        confusion_matrix([5, 0], [0, 0], 4)
    with pytest.raises(ValueError, match="num_classes=0 must be an integer >= 1"):
        confusion_matrix([0], [0], 0)
    with pytest.raises(ValueError, match="labels has 1 entries but there are 2 samples"):
        mean_class_accuracy([0, 1], [0], 2)


# --------------------------------------------------------------------------- QA and MC
def test_qa_accuracy_exact_match_missing_is_wrong():
    answers = {1: "dog", 2: "cat", 3: "red"}
    preds = {1: "dog", 2: "Cat", 4: "extra"}  # "Cat" != "cat"; 3 missing; 4 not a question
    assert qa_accuracy(preds, answers) == {"accuracy": pytest.approx(100 / 3), "num_questions": 3,
                                           "num_correct": 1, "num_missing": 1}
    with pytest.raises(ValueError, match="answers is empty"):
        qa_accuracy(preds, {})
    with pytest.raises(ValueError, match="ground-truth answer of question 1 is"):
        qa_accuracy(preds, {1: ["dog"]})
    with pytest.raises(ValueError, match="the prediction for question 1 is 3"):
        qa_accuracy({1: 3}, {1: "dog"})


def test_multiple_choice_official_formula():
    ln = math.log
    # ITM: candidate 0 softmax match prob 3/4 (logits 0, ln 3), the others 1/2.
    itm = np.array([[[0.0, ln(3)], [0.0, 0.0], [0.0, 0.0]]])
    # temp 0.5: mean_cosine / temp = (0, ln 2, ln 5) -> softmax (1/8, 2/8, 5/8).
    cos = np.array([[0.0, 0.5 * ln(2), 0.5 * ln(5)]])
    s = multiple_choice_scores(itm, cos, 0.5)
    expected = [0.7 * 0.75 + 0.3 / 8, 0.7 * 0.5 + 0.3 * 2 / 8, 0.7 * 0.5 + 0.3 * 5 / 8]
    np.testing.assert_allclose(s, [expected], rtol=1e-12)
    # 0.5625, 0.4250, 0.5375: the ITM term makes candidate 0 win over the best-cosine candidate 2.
    assert int(np.argmax(s[0])) == 0
    assert multiple_choice_accuracy(s, [0]) == 100.0
    assert multiple_choice_accuracy(s, [2]) == 0.0
    with pytest.raises(ValueError, match="itm_logits must have shape"):
        multiple_choice_scores(itm[:, :2], cos, 0.5)
    with pytest.raises(ValueError, match="temp=0.0 must be a positive number"):
        multiple_choice_scores(itm, cos, 0.0)
