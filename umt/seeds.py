"""One way to derive seeds: every per-step, per-rank, per-worker or per-clip random stream of the
project comes from ``derive_seed(purpose, *parts)``.

Why a hash and not arithmetic such as ``seed * 1_000_003 + step``: arithmetic mixes collide
(seed 1 step 0 == seed 0 step 1_000_003) and every caller had to repeat the constants. Python's
``hash()`` is salted per process, so it cannot be used either: two ranks must agree.
"""

from __future__ import annotations

import hashlib
from typing import Any


def derive_seed(*parts: Any) -> int:
    """A stable seed in ``[0, 2**63)`` from any printable parts, the same in every process.

    >>> derive_seed("mask", 0, 12) == derive_seed("mask", 0, 12)
    True
    """
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") % (2**63)
