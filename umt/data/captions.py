"""Caption cleaning as the official multi-modality code does it (``dataset/utils.py pre_text``).

Used on every caption the Stage-2 loader and the retrieval loader hand out, so training and
evaluation see the same text normalisation as the official recipe (and its checkpoints)::

    >>> clean_caption("A man -- riding/jumping a Horse!  <person> smiles.")
    'a man riding jumping a horse person smiles'

The function is idempotent (cleaning twice changes nothing), so callers that clean again are
harmless.
"""

from __future__ import annotations

import re
from typing import Optional

# Punctuation the official code deletes (not replaced by a space: "don't" -> "dont").
_DELETE = re.compile(r"[,.'!?\"()*#:;~]")
_SPACES = re.compile(r"\s{2,}")


def clean_caption(text: str, max_words: Optional[int] = None) -> str:
    """Lower-case, drop punctuation, ``-`` and ``/`` to spaces, ``<person>`` to ``person``,
    collapse runs of whitespace, strip; keep at most ``max_words`` space-separated words."""
    text = _DELETE.sub("", text.lower())
    text = text.replace("-", " ").replace("/", " ").replace("<person>", "person")
    text = _SPACES.sub(" ", text).rstrip("\n").strip(" ")
    if max_words:
        words = text.split(" ")
        if len(words) > max_words:
            text = " ".join(words[:max_words])
    return text
