"""Downstream annotations in the sample format: multiple-choice candidates, video QA questions
and the QA answer list. Checked the same way when ``umt shard`` reads a manifest and when a
loader reads a sample's ``.json`` (every field of a shard is untrusted).

Manifest columns (CSV: JSON strings; JSON Lines: JSON values), carried into each sample's
``.json`` under the same names:

==============  ===========================================================================
column          meaning
==============  ===========================================================================
candidates      multiple choice (MSRVTT-MC): a JSON list of >= 2 candidate captions
answer          multiple choice: the 0-based index of the right candidate
questions       video QA: a JSON list of ``{"question": str, "answer": str | [str, ...],
                "id": str (optional, unique; default "<video id>#<i>"), "type": str
                (optional, e.g. "what" / "colour": accuracy is also reported per type)}``
==============  ===========================================================================

A QA question's ``answer`` list holds the annotators' answers with repeats; each distinct answer
is trained with its frequency as weight (official ``get_answers_with_weights``), and the most
frequent one (the first listed among ties) is the ground truth of the exact-match accuracy.
One sample per video carries all its questions, so a video is stored once however many
questions it has.

The answer list (``answer_list.json``: a JSON list of distinct answer strings) is the global
candidate set of QA inference (official ``answer_list``). ``umt shard`` copies an
``answer_list.json`` found next to the manifest beside the ``dataset.json`` it writes (after
checking it), where the QA jobs look for it by default; failing that, the official name
``<dataset>_answer_list.json`` beside a ``<dataset>_{train,val,test}*.json`` annotation file
(``msrvtt_qa_answer_list.json`` beside ``msrvtt_qa_train.json``).
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

MAX_CANDIDATES = 1024
MAX_QUESTIONS = 100_000  # per video
MAX_TEXT = 4096  # characters of one question / answer / candidate
MAX_ANSWER_LIST_BYTES = 64 << 20
ANSWER_LIST = "answer_list.json"
# msrvtt_qa_train.json -> msrvtt_qa: the official answer list is msrvtt_qa_answer_list.json
_OFFICIAL_SPLIT = re.compile(r"(.+?)_(?:train|val|test)")


class AnnotationError(ValueError):
    """A malformed candidates / answer / questions field; the message names the problem."""


def _json_value(value: Any, name: str) -> Any:
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise AnnotationError(f"{name!r} looks like JSON but is not: {e}") from None
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise AnnotationError(f"{what} must be a non-empty string, got {value!r:.60}")
    if len(value) > MAX_TEXT:
        raise AnnotationError(f"{what} is {len(value)} characters long (limit {MAX_TEXT})")
    return value


def parse_candidates(value: Any) -> list[str]:
    """A multiple-choice sample's candidate captions: a list of >= 2 non-empty strings."""
    value = _json_value(value, "candidates")
    if not isinstance(value, list) or len(value) < 2:
        raise AnnotationError(f"'candidates' must be a list of at least 2 captions, got {value!r:.80}")
    if len(value) > MAX_CANDIDATES:
        raise AnnotationError(f"'candidates' has {len(value)} entries (limit {MAX_CANDIDATES})")
    return [_text(c, f"candidates[{i}]") for i, c in enumerate(value)]


def parse_answer_index(value: Any, num_candidates: int) -> int:
    """The index of the right candidate, in ``[0, num_candidates)`` (ASCII digits in a CSV)."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_candidates:
        raise AnnotationError(f"'answer' must be the index of the right candidate in "
                              f"[0, {num_candidates}), got {value!r:.40}")
    return value


def parse_questions(value: Any, video_id: str = "") -> list[dict[str, Any]]:
    """A video's questions, normalised to ``{"id", "question", "answers": [str, ...], "type"}``."""
    value = _json_value(value, "questions")
    if not isinstance(value, list) or not value:
        raise AnnotationError(f"'questions' must be a non-empty list of objects, got {value!r:.80}")
    if len(value) > MAX_QUESTIONS:
        raise AnnotationError(f"'questions' has {len(value)} entries (limit {MAX_QUESTIONS})")
    out, seen = [], set()
    for i, q in enumerate(value):
        where = f"questions[{i}]"
        if not isinstance(q, dict):
            raise AnnotationError(f"{where} must be an object with 'question' and 'answer'")
        unknown = set(q) - {"question", "answer", "answers", "id", "question_id", "type"}
        if unknown:
            raise AnnotationError(f"{where} has unknown fields {sorted(unknown)}")
        answers = q.get("answers", q.get("answer"))
        answers = [answers] if isinstance(answers, str) else answers
        if not isinstance(answers, list) or not answers:
            raise AnnotationError(f"{where}: 'answer' must be a string or a non-empty list of strings")
        qid = q.get("id", q.get("question_id"))
        qid = f"{video_id}#{i}" if qid is None else str(qid)
        if qid in seen:
            raise AnnotationError(f"{where}: question id {qid!r} is used twice")
        seen.add(qid)
        kind = q.get("type")
        out.append({"id": qid, "question": _text(q.get("question"), f"{where}.question"),
                    "answers": [_text(a, f"{where}.answer[{j}]") for j, a in enumerate(answers)],
                    "type": None if kind is None else _text(str(kind), f"{where}.type")})
    return out


def manifest_fields(row: dict) -> dict[str, Any]:
    """The downstream columns of one manifest row, checked and normalised (``{}`` if none)."""
    out: dict[str, Any] = {}
    cands, answer = row.get("candidates"), row.get("answer")
    blank = (None, "")
    if cands not in blank or answer not in blank:
        if cands in blank or answer in blank:
            raise AnnotationError("multiple choice needs both 'candidates' and 'answer'")
        out["candidates"] = parse_candidates(cands)
        out["answer"] = parse_answer_index(answer, len(out["candidates"]))
    if row.get("questions") not in blank:
        out["questions"] = parse_questions(row["questions"], str(row.get("id") or ""))
    return out


def answers_with_weights(answers: list[str]) -> tuple[list[str], list[float]]:
    """Distinct answers (first-seen order) and their frequencies (official
    ``get_answers_with_weights``: each occurrence adds ``1 / len(answers)``)."""
    weights: dict[str, float] = {}
    for a in answers:
        weights[a] = weights.get(a, 0.0) + 1.0 / len(answers)
    return list(weights), list(weights.values())


def ground_truth(answers: list[str]) -> str:
    """The most frequent answer; the first listed among ties."""
    distinct, weights = answers_with_weights(answers)
    return distinct[max(range(len(distinct)), key=lambda i: (weights[i], -i))]


def check_answer_list(answers: Any, source: str = "answer_list") -> list[str]:
    """A parsed answer list: a non-empty JSON list of distinct non-empty strings."""
    if not isinstance(answers, list) or not answers:
        raise AnnotationError(f"{source}: the answer list is empty (or not a JSON list): QA "
                              f"inference ranks the answers of this list, so it needs at least one")
    for i, a in enumerate(answers):
        _text(a, f"{source}: entry {i}")
    seen: dict[str, int] = {}
    for i, a in enumerate(answers):
        if a in seen:
            raise AnnotationError(f"{source}: entries {seen[a]} and {i} are both {a!r}; answers "
                                  f"must be distinct")
        seen[a] = i
    return list(answers)


def load_answer_list(uri: str) -> list[str]:
    """Read and check ``answer_list.json`` (local path or s3:// URI)."""
    from umt import storage

    try:
        raw = storage.read_bytes(uri, max_bytes=MAX_ANSWER_LIST_BYTES)
    except FileNotFoundError:
        raise AnnotationError(f"answer list {uri} not found (qa.answer_list; default: "
                              f"answer_list.json next to the dataset.json)") from None
    try:
        answers = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AnnotationError(f"answer list {uri} is not valid JSON: {e}") from None
    return check_answer_list(answers, uri)


def default_answer_list(dataset: Optional[str]) -> Optional[str]:
    """``answer_list.json`` next to a dataset.json (``None`` without a dataset)."""
    if not dataset:
        return None
    from umt import storage

    folder = dataset.rsplit("/", 1)[0] if dataset.endswith(".json") and "/" in dataset else (
        "." if dataset.endswith(".json") else dataset)
    return storage.join(folder, ANSWER_LIST)


def answer_list_of(answer_list: Optional[str], dataset: Optional[str]) -> list[str]:
    """The configured answer list (``qa.answer_list``), or ``answer_list.json`` next to the
    evaluation ``dataset``; checked."""
    uri = answer_list or default_answer_list(dataset)
    if not uri:
        raise ValueError("qa.answer_list is not set and there is no evaluation dataset next to "
                         "which to look for answer_list.json")
    return load_answer_list(uri)


def sidecar_answer_list(manifest: str) -> Optional[list[str]]:
    """The checked ``answer_list.json`` next to a manifest file (or the official
    ``<dataset>_answer_list.json``), or None (none there, or the input is a folder listing)."""
    from umt import storage

    if not manifest.lower().endswith((".csv", ".jsonl", ".json", ".ndjson")):
        return None
    folder, _, name = manifest.rpartition("/")
    names = [ANSWER_LIST]
    official = _OFFICIAL_SPLIT.match(name)
    if official:
        names.append(f"{official.group(1)}_answer_list.json")
    for candidate in names:
        uri = storage.join(folder or ".", candidate)
        if storage.exists(uri):
            return load_answer_list(uri)
    return None
