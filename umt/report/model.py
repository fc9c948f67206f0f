"""What a report shows: the run's steps and the energy arithmetic (no kfp, no matplotlib)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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


@dataclass
class Report:
    title: str
    steps: list[Step]
    dataset: dict[str, Any] = field(default_factory=dict)
    confusion: dict[str, Any] = field(default_factory=dict)  # {"class_names", "matrix"}
    gpu_power_watts: float = 400.0  # A100 SXM board power
    grid_g_per_kwh: float = 400.0  # grams CO2 per kWh of the grid the cluster runs on
    notes: list[str] = field(default_factory=list)


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
