"""The sections every evaluation config shares (``umt eval <task>``): the run settings, the
evaluation set and the checks of its ``model`` section. The per-task configs sit with
their fine-tune's: ``umt.configs.finetune_action`` / ``finetune_retrieval`` (retrieval and
multiple choice) / ``finetune_qa``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from umt.configs.checks import at_least, choice, device, in_range
from umt.configs.schema import train_section


@dataclass
class EvalRunConfig:
    """The ``train`` section of an evaluation config (named so for the launcher: every job's
    ``train.output_dir`` is where its files go)."""

    output_dir: str = "runs/eval"
    device: str = "auto"
    precision: str = "bf16"  # bf16 autocast on GPUs; fp32 on CPUs
    seed: int = 0
    lease_ttl_s: float = 90.0

    def __post_init__(self):
        if not self.output_dir:
            raise ValueError("train.output_dir must not be empty")
        choice("train.precision", self.precision, ("bf16", "fp32"))
        at_least("train.seed", self.seed, 0)
        in_range("train.lease_ttl_s", self.lease_ttl_s, 1.0, 86400.0)
        device("train.device", self.device)


def run_section(stage: str) -> Any:
    """The ``train`` field of evaluation ``stage``'s config: its files go to ``runs/<stage>``
    unless ``train.output_dir`` (``umt eval --output``) says otherwise."""
    return train_section(EvalRunConfig, stage)


@dataclass
class EvalData:
    source: str = MISSING  # dataset.json of the evaluation set


def require_checkpoint(cfg: Any, task: str, what: str) -> None:
    """An evaluation needs the checkpoint it evaluates (``umt eval <task> --model``)."""
    if not cfg.model.pretrained:
        raise ValueError(f"model.pretrained (umt eval {task} --model) is required: {what}")


def frames_of_model(cfg: Any) -> None:
    """``eval.num_frames`` / ``eval.img_size`` left unset (None) are the model's."""
    cfg.eval.num_frames = cfg.eval.num_frames or cfg.model.num_frames
    cfg.eval.img_size = cfg.eval.img_size or cfg.model.img_size
