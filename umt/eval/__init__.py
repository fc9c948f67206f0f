"""Evaluation: metrics of the downstream tasks (``umt.eval.metrics``) and, later, the jobs.

Evaluation job modules added to this package must keep these exports.
"""

from umt.eval.metrics import (
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

__all__ = [
    "confusion_matrix",
    "mean_class_accuracy",
    "merge_views",
    "multiple_choice_accuracy",
    "multiple_choice_scores",
    "qa_accuracy",
    "retrieval_metrics",
    "retrieval_ranks",
    "topk_accuracy",
]
