"""The report's pictures, drawn with matplotlib (Agg: no display) and returned as PNG bytes."""

from __future__ import annotations

import io
from typing import Any, Callable, Sequence

LOSS_COLOUR = "#1f77b4"  # matplotlib's C0; tests look for it in a browser screenshot
DPI = 110


def pyplot():
    """matplotlib.pyplot on the Agg backend (pods and CI have no display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: pods and CI have no display
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """``fig`` as PNG bytes (closed afterwards): the report's and the evaluations' pictures."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def _panels(items: list[tuple[str, Any]], draw: Callable[[Any, str, Any], None]) -> bytes | None:
    """One panel per ``(name, data)`` of ``items``, side by side, each drawn by
    ``draw(axes, name, data)``; None when there is nothing to draw."""
    if not items:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(items), figsize=(4.2 * len(items), 3.0), squeeze=False)
    for ax, (name, data) in zip(axes[0], items):
        draw(ax, name, data)
    fig.tight_layout()
    return png_bytes(fig)


# Fewer logged losses than this are drawn as points, not a line, and said to show no trend.
MIN_TREND_POINTS = 5
CHANCE_COLOUR = "#d62728"
PAPER_COLOUR = "#9467bd"


def curve_title(name: str, points: int) -> str:
    if points < MIN_TREND_POINTS:
        return f"{name}\n{points} logged point{'s' * (points != 1)}: too few for a trend"
    return f"{name}\n{points} logged points"


def loss_curves(curves: Sequence[tuple[str, list[tuple[int, float]]]]) -> bytes | None:
    """One panel per training job: every logged ``(step, loss)`` of its metrics.jsonl; with
    fewer than MIN_TREND_POINTS, markers only (a line through 2 points is no trend)."""

    def draw(ax, name: str, points: list[tuple[int, float]]) -> None:
        trend = len(points) >= MIN_TREND_POINTS
        ax.plot([p[0] for p in points], [p[1] for p in points], color=LOSS_COLOUR,
                marker="o" if len(points) < 40 else None, linewidth=2 if trend else 0,
                markersize=5 if trend else 8)
        ax.set_title(curve_title(name, len(points)), fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)

    return _panels([(name, points) for name, points in curves if points], draw)


def metric_bars(groups: Sequence[Any]) -> bytes | None:
    """One panel per evaluation (a :class:`umt.report.model.BarGroup`): its percentage metrics
    as bars on a 0-100 axis, each bar's chance level as a red line across it and the paper's
    full-size result as a purple diamond."""

    def draw(ax, name: str, group: Any) -> None:
        keys = list(group.values)[:12]
        xs = range(len(keys))
        ax.bar(xs, [group.values[k] for k in keys], color="#2ca02c", label="ours")
        chance = [(i, group.chance[k]) for i, k in enumerate(keys) if k in group.chance]
        if chance:
            ax.hlines([c for _, c in chance], [i - 0.45 for i, _ in chance],
                      [i + 0.45 for i, _ in chance], colors=CHANCE_COLOUR, linewidth=2.5,
                      label="chance", clip_on=False)  # a chance of 100 % stays visible
        paper = [(i, group.paper[k]) for i, k in enumerate(keys) if k in group.paper]
        if paper:
            ax.plot([i for i, _ in paper], [v for _, v in paper], "D", color=PAPER_COLOUR,
                    label="paper (full-size model)")
        ax.set_xticks(list(xs), keys, rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("percent")
        ax.set_title(name, fontsize=10, pad=20)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3,
                  frameon=False)

    return _panels([(g.name, g) for g in groups if g.values], draw)


def confusion(matrix: list[list[float]], names: list[str]) -> bytes | None:
    """The full confusion matrix (rows: true class, columns: predicted)."""
    if not matrix:
        return None
    plt = pyplot()
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
    return png_bytes(fig)


def energy_bars(rows: Sequence[tuple[str, float, float]]) -> bytes | None:
    """GPU-hours and kg CO2 per job."""
    rows = [r for r in rows if r[1] > 0]
    if not rows:
        return None
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.4, 2.8))
    names = [r[0] for r in rows]
    a.barh(names, [r[1] for r in rows], color="#ff7f0e")
    a.set_xlabel("GPU-hours")
    b.barh(names, [r[2] for r in rows], color="#7f7f7f")
    b.set_xlabel("kg CO2 (estimate unless measured)")
    fig.tight_layout()
    return png_bytes(fig)
