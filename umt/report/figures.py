"""The report's pictures, drawn with matplotlib (Agg: no display) and returned as PNG bytes."""

from __future__ import annotations

import io
from typing import Any, Callable, Sequence

LOSS_COLOUR = "#1f77b4"  # matplotlib's C0; tests look for it in a browser screenshot
DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: pods and CI have no display
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _panels(items: list[tuple[str, Any]], draw: Callable[[Any, str, Any], None]) -> bytes | None:
    """One panel per ``(name, data)`` of ``items``, side by side, each drawn by
    ``draw(axes, name, data)``; None when there is nothing to draw."""
    if not items:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(items), figsize=(4.2 * len(items), 3.0), squeeze=False)
    for ax, (name, data) in zip(axes[0], items):
        draw(ax, name, data)
    fig.tight_layout()
    return _png(fig)


def loss_curves(curves: Sequence[tuple[str, list[dict[str, Any]]]]) -> bytes | None:
    """One panel per training job: ``loss`` against ``step`` from its metrics.jsonl."""
    curves = [(name, [r for r in rows if isinstance(r.get("loss"), (int, float))])
              for name, rows in curves]

    def draw(ax, name: str, rows: list[dict[str, Any]]) -> None:
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color=LOSS_COLOUR,
                marker="o" if len(rows) < 20 else None, linewidth=2)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)

    return _panels([(name, rows) for name, rows in curves if rows], draw)


def metric_bars(groups: Sequence[tuple[str, dict[str, float]]]) -> bytes | None:
    """One panel per evaluation: its accuracy / recall numbers (percent) as bars."""
    groups = [(name, {k: v for k, v in values.items() if k not in ("wall_hours", "gpu_hours")})
              for name, values in groups]

    def draw(ax, name: str, values: dict[str, float]) -> None:
        keys = list(values)[:12]
        ax.bar(range(len(keys)), [values[k] for k in keys], color="#2ca02c")
        ax.set_xticks(range(len(keys)), keys, rotation=45, ha="right", fontsize=8)
        ax.set_title(name)
        ax.grid(axis="y", alpha=0.3)

    return _panels([(name, values) for name, values in groups if values], draw)


def confusion(matrix: list[list[float]], names: list[str]) -> bytes | None:
    """The full confusion matrix (rows: true class, columns: predicted)."""
    if not matrix:
        return None
    plt = _pyplot()
    n = len(matrix)
    side = min(12.0, 2.5 + 0.35 * n)
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    if n <= 40:  # beyond that, labels are unreadable anyway
        ax.set_xticks(range(n), names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return _png(fig)


def energy_bars(rows: Sequence[tuple[str, float, float]]) -> bytes | None:
    """GPU-hours and kg CO2 per job."""
    rows = [r for r in rows if r[1] > 0]
    if not rows:
        return None
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.4, 2.8))
    names = [r[0] for r in rows]
    a.barh(names, [r[1] for r in rows], color="#ff7f0e")
    a.set_xlabel("GPU-hours")
    b.barh(names, [r[2] for r in rows], color="#7f7f7f")
    b.set_xlabel("kg CO2 (estimate unless measured)")
    fig.tight_layout()
    return _png(fig)
