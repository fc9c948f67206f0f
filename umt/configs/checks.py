"""Range and choice checks that config dataclasses run in ``__post_init__``.

OmegaConf checks types on every merge; these check values, so ``umt job render`` (which loads
a stage config exactly as the training entry point does) rejects ``train.batch_size=0`` or
``mask.type=semantci`` on the laptop, before any pod starts. Every message names the key, the
value and what is allowed.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional


def choice(key: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not allowed; choose one of: "
                         f"{', '.join(repr(a) for a in allowed)}")


def at_least(key: str, value: Optional[float], low: float, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or not math.isfinite(value) or value < low:
        raise ValueError(f"{key}={value!r} is out of range; it must be a number >= {low}")


def in_range(key: str, value: Optional[float], low: float, high: float, *,
             low_open: bool = False, high_open: bool = False, optional: bool = False) -> None:
    if value is None and optional:
        return
    ok = value is not None and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{key}={value!r} is out of range; it must be in {lo}{low}, {high}{hi}")


def length(key: str, value: list, n: int) -> None:
    if len(value) != n:
        raise ValueError(f"{key}={value!r} must have exactly {n} values, got {len(value)}")


def device(key: str, value: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not (value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())):
        raise ValueError(f"{key}={value!r} is not allowed; choose one of: 'auto', 'cpu', 'cuda' "
                         f"(or 'cuda:N')")
