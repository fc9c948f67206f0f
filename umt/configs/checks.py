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


def source_list(key: str, value: list) -> None:
    """A list of dataset.json URIs, or ``['synthetic']`` alone (a required list may still be
    ``???``: the loader names it then)."""
    from omegaconf import MISSING

    if value == MISSING:
        return
    if not value:
        raise ValueError(f"{key}=[] must list at least one dataset.json URI (or be [synthetic])")
    for i, src in enumerate(value):
        if not isinstance(src, str) or not src.strip():
            raise ValueError(f"{key}[{i}]={src!r} must be a dataset.json path or s3:// URI")
    if "synthetic" in value and len(value) > 1:
        raise ValueError(f"{key}={list(value)}: 'synthetic' cannot be mixed with dataset.json "
                         f"sources")


def crop_range(key: str, value: list) -> None:
    """``[low, high]`` with ``0 < low <= high <= 1`` (RandomResizedCrop's area range)."""
    length(key, value, 2)
    in_range(f"{key}[0]", value[0], 0.0, 1.0, low_open=True)
    in_range(f"{key}[1]", value[1], value[0], 1.0)


def device(key: str, value: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not (value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())):
        raise ValueError(f"{key}={value!r} is not allowed; choose one of: 'auto', 'cpu', 'cuda' "
                         f"(or 'cuda:N')")
