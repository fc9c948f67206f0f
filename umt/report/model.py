"""What a report shows: the run's steps, each evaluation's result against its chance level and
the paper's number, the verdict, and the energy arithmetic (no kfp, no matplotlib)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from umt import catalogue

# The verdict rule (docs/pipelines.md "The report", and the report's own legend): an evaluation
# "learned" when its headline metric is at least MARGIN_POINTS percentage points and at least
# MARGIN_RELATIVE x chance above its chance level; otherwise "at chance" (below chance too).
# 10 points is about 1.3 standard deviations of a chance-level accuracy on the demo's 32 clips
# with 4 classes (sqrt(0.25 x 0.75 / 32) = 7.7 points); the relative part keeps a high chance
# level (2-way choices) from "learning" by a lucky few clips.
MARGIN_POINTS = 10.0
MARGIN_RELATIVE = 0.5
LEARNED, AT_CHANCE, NO_CHANCE = "learned", "at chance", "no chance level"
# Step metrics that are neither a result nor a count of the data (the compute table has them).
COMPUTE_KEYS = ("wall_hours", "gpu_hours")


@dataclass
class Step:
    """One task of the run as the report shows it."""

    name: str  # what a person calls it: the stage catalogue's title ("Stage 1: video pretraining")
    stage: str  # the catalogue's stage name ("" for data)
    kind: str  # data | train | eval
    status: str = "done"  # done | skipped | provided (an existing checkpoint / dataset)
    metadata: dict[str, Any] = field(default_factory=dict)  # the artifact's metadata
    metrics: dict[str, float] = field(default_factory=dict)  # the step's Metrics
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl records
    reason: str = ""  # why skipped
    # An evaluation's own metrics.json (its counts: num_classes, num_videos, num_answers,
    # num_candidates, ...; the chance level is computed from them).
    details: dict[str, Any] = field(default_factory=dict)
    # A training stage's recipe as planned: {"config": preset, "overrides": [...]}.
    plan: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    title: str
    steps: list[Step]
    dataset: dict[str, Any] = field(default_factory=dict)
    confusion: dict[str, Any] = field(default_factory=dict)  # {"class_names", "matrix"}
    gpu_power_watts: float = 400.0  # A100 SXM board power
    grid_g_per_kwh: float = 400.0  # grams CO2 per kWh of the grid the cluster runs on
    notes: list[str] = field(default_factory=list)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Assessment:
    """An evaluation's headline metric beside its chance level and the paper's number."""

    metric: str  # the headline metric's key (top1, t2v_r1, accuracy, mAP)
    value: float | None  # ours, percent
    chance: float | None  # percent; None = no chance level known
    chance_basis: str  # how it was computed: "100 / 4 (num_classes)"
    paper: float | None = None  # the paper's full-size model on the real benchmark
    paper_what: str = ""  # "K400 top-1, ViT-L/16"

    @property
    def threshold(self) -> float | None:
        """The value above which the task counts as learned (see MARGIN_*)."""
        if self.chance is None:
            return None
        return self.chance + max(MARGIN_POINTS, MARGIN_RELATIVE * self.chance)

    @property
    def verdict(self) -> str:
        if self.value is None or self.threshold is None:
            return NO_CHANCE
        return LEARNED if self.value >= self.threshold else AT_CHANCE


def verdict_rule() -> str:
    """The verdict rule in words (the report's legend and docs/pipelines.md say the same)."""
    return (f'"{LEARNED}": the headline metric is at least chance + max({MARGIN_POINTS:g} '
            f"points, {MARGIN_RELATIVE:g} x chance); otherwise \"{AT_CHANCE}\" (below chance "
            "too). Chance is 100 / the count the evaluation itself reports (classes, videos, "
            "answers, candidates).")


def _stage(step: Step) -> catalogue.Stage | None:
    return catalogue.STAGES.get(step.stage)


def percent_metrics(step: Step) -> dict[str, float]:
    """The step's metrics that are percentages: the catalogue's headline metrics of its
    evaluation, in the catalogue's order, each followed by its breakdowns ``<metric>_<part>``
    (QA's accuracy_colour, ...); counts such as num_views are never among them."""
    stage = _stage(step)
    out: dict[str, float] = {}
    for key in stage.metrics if stage is not None else ():
        if _number(step.metrics.get(key)):
            out[key] = float(step.metrics[key])
        for k, v in step.metrics.items():
            if k.startswith(f"{key}_") and _number(v) and k not in out:
                out[k] = float(v)
    return out


def count_metrics(step: Step) -> dict[str, Any]:
    """The counts of an evaluation (num_videos, num_views, num_questions, num_classes, ...):
    the step's metrics and its metrics.json's numbers that are neither percentages nor compute;
    shown as text, never on a percentage axis."""
    percent = set(percent_metrics(step))
    out: dict[str, Any] = {}
    for source in (step.metrics, step.details):
        for k, v in source.items():
            if (k.startswith("num_") or k in ("answer_list_size", "samples_skipped")) and (
                    _number(v) or isinstance(v, list)) and k not in percent:
                out.setdefault(k, v)
    return out


def other_metrics(step: Step) -> dict[str, Any]:
    """The step's remaining metrics: neither its percentages, nor counts, nor compute
    (AVA's random_mAP, queue times, an unknown evaluation's numbers)."""
    skip = set(percent_metrics(step)) | set(count_metrics(step)) | set(COMPUTE_KEYS)
    return {k: v for k, v in step.metrics.items() if k not in skip}


def assess(step: Step) -> Assessment | None:
    """The evaluation's headline metric, its chance level (the catalogue's, from the
    evaluation's own counts; else the chance the evaluation itself reports: multiple choice's
    ``chance`` with mixed candidate counts, AVA's ``random_mAP``) and the paper's number."""
    stage = _stage(step)
    if stage is None or stage.kind != catalogue.EVAL or not stage.metrics:
        return None
    metric = stage.metrics[0]
    value = step.metrics.get(metric, step.details.get(metric))
    counts = {**step.metrics, **step.details}
    chance, basis = catalogue.chance_level(stage, counts), ""
    if chance is not None:
        basis = f"100 / {counts[stage.chance_per]:g} {stage.chance_per.removeprefix('num_')}"
    else:
        for key, what in (("chance", "reported by the evaluation"),
                          ("random_mAP", "random scores on the same boxes")):
            if _number(counts.get(key)):
                chance, basis = float(counts[key]), f"{key}: {what}"
                break
    paper = stage.paper if stage.paper is not None and stage.paper.metric == metric else None
    return Assessment(metric, float(value) if _number(value) else None, chance, basis,
                      paper.value if paper else None, paper.what if paper else "")


@dataclass
class Energy:
    gpu_hours: float
    energy_kwh: float
    co2_kg: float
    measured: bool  # NVML counters (True) or GPUs x time x power (False)


def energy(step: Step, power_watts: float, grid_g_per_kwh: float) -> Energy:
    """GPU-hours, energy and CO2 of one job (0 for CPU jobs: no GPU power is counted)."""
    meta = step.metadata
    gpu_hours = float(step.metrics.get("gpu_hours") or 0.0)
    measured = meta.get("energy_kwh_measured")
    if isinstance(measured, (int, float)) and not isinstance(measured, bool):
        kwh, is_measured = float(measured), True
    else:
        kwh, is_measured = gpu_hours * power_watts / 1000.0, False
    return Energy(gpu_hours, kwh, kwh * grid_g_per_kwh / 1000.0, is_measured)


def chance_of(metric: str, base: float | None) -> float | None:
    """The chance level of one percentage metric, given the headline's (top-1 / R@1 /
    accuracy): top-k and R@k: k x base; r_mean (the mean of R@1, R@5, R@10): 16/3 x base;
    capped at 100."""
    if base is None:
        return None
    m = re.search(r"(?:top|_r)(\d+)$", metric)
    k = int(m.group(1)) if m else (16 / 3 if metric == "r_mean" else 1)
    return min(100.0, k * base)


@dataclass
class BarGroup:
    """One evaluation's panel of the bar chart: percentages only, with the chance level (and
    the paper's number, where there is one) per bar."""

    name: str
    values: dict[str, float]  # metric -> percent
    chance: dict[str, float]  # metric -> chance level, percent (where known)
    paper: dict[str, float]  # metric -> the paper's full-size result, percent


def bar_groups(steps: list[Step]) -> list[BarGroup]:
    """The evaluation bar chart's data: per done evaluation, its percentage metrics only."""
    groups = []
    for s in steps:
        if s.kind != "eval" or s.status != "done":
            continue
        values = percent_metrics(s)
        if not values:
            continue
        a = assess(s)
        base = a.chance if a is not None else None
        chance = {k: c for k in values if (c := chance_of(k, base)) is not None}
        if a is not None and a.chance is not None and a.metric in values:
            chance[a.metric] = a.chance
        paper = {a.metric: a.paper} if a is not None and a.paper is not None else {}
        groups.append(BarGroup(s.name, values, chance, paper))
    return groups


def curve_points(step: Step) -> list[tuple[int, float]]:
    """Every logged (step, loss) of a training stage's metrics.jsonl, in step order."""
    return sorted((int(r["step"]), float(r["loss"])) for r in step.history
                  if _number(r.get("loss")) and _number(r.get("step")))
