"""The answer format of video QA (official ``tasks/vqa.py``), shared by training and
evaluation: ``answer + " [SEP]"`` tokenised to ``[CLS] answer [SEP] [SEP]``, never truncated."""

from __future__ import annotations

from umt.models.text import tokenize


def answer_texts(tokenizer, answers: list[str]) -> list[str]:
    """Official answer formatting: ``answer + " [SEP]"`` (the tokenizer adds [CLS] and [SEP])."""
    return [f"{a} {tokenizer.sep_token}" for a in answers]


def answer_lengths(tokenizer, answers: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(answer_texts(tokenizer, answers))["input_ids"]]


class AnswerFits:
    """``fits(answer) -> bool``: whether ``[CLS] answer [SEP] [SEP]`` has at most ``max_len``
    tokens (picklable: the QA training loader runs it in DataLoader workers)."""

    def __init__(self, tokenizer, max_len: int):
        self.tokenizer, self.max_len = tokenizer, max_len

    def __call__(self, answer: str) -> bool:
        return answer_lengths(self.tokenizer, [answer])[0] <= self.max_len


def tokenize_answers(tokenizer, answers: list[str], max_len: int, device=None):
    """The answer list -> ``(ids, att) [N, max_len]``. An answer longer than ``max_len`` tokens
    is an error (the official code truncates, so two long answers can become one candidate)."""
    lengths = answer_lengths(tokenizer, answers)
    long = [(a, n) for a, n in zip(answers, lengths) if n > max_len]
    if long:
        need = max(n for _, n in long)
        shown = ", ".join(f"{a!r} ({n})" for a, n in long[:5])
        raise ValueError(f"{len(long)} answers need more than qa.max_answer_len={max_len} tokens "
                         f"([CLS] answer [SEP] [SEP]): {shown}; set qa.max_answer_len={need} (the "
                         f"official code truncates them, so distinct answers could become the "
                         f"same candidate)")
    return tokenize(tokenizer, answer_texts(tokenizer, answers), max_len, device)
