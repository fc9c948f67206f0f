"""Training length in epochs, as the official recipes state it, turned into optimizer steps.

The official scripts give every schedule in epochs (``--epochs 35 --warmup_epochs 2``;
``epochs = 10, warmup_epochs = 1``) and derive the steps at start from the data set and the
batch of the run: ``steps = steps_per_epoch x epochs`` with ``steps_per_epoch = videos //
global batch`` (``run_class_finetuning.py``, ``tasks/pretrain.py``). A preset in steps is right
for one GPU count only: on half the GPUs it trains half the epochs with half the warmup. So a
preset states ``train.epochs`` and ``train.warmup_epochs``, and the training loop converts
them here once its loader knows the epoch (``umt.train.loop``): from the loader's samples per
epoch and the actual global batch (batch per GPU x world size x ``train.accum_steps``).

``train.steps`` (and ``optim.warmup_steps``) stay as explicit overrides: when set they win
(the tiny presets, the pipeline's ``steps`` parameter, time-boxed runs). A config with neither
``train.steps`` nor ``train.epochs`` is refused when it is loaded (:func:`check_length`).

    umt config show finetune-action --config b16 --num-samples 650000 --gpus 16

prints what a run of that size gets. No torch here: the launcher and ``umt config`` use it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional


def check_length(train: Any) -> None:
    """A ``train`` section must say how long to train: ``train.steps`` or ``train.epochs``."""
    if getattr(train, "steps", None) is None and getattr(train, "epochs", None) is None:
        raise ValueError("train.epochs and train.steps are both unset: set train.epochs (the "
                         "official recipes' unit: converted to steps at start from the data set "
                         "size and the global batch) or train.steps (an explicit step count)")


def steps_per_epoch(samples_per_epoch: int, global_batch: int) -> int:
    """Optimizer steps in one pass over ``samples_per_epoch`` at ``global_batch`` samples per
    step: the official ``len(dataset) // (batch x GPUs)`` (drop_last), at least 1."""
    if global_batch < 1:
        raise ValueError(f"global batch must be >= 1, got {global_batch}")
    return max(1, int(samples_per_epoch) // int(global_batch))


def _epochs_to_steps(epochs: float, per_epoch: int) -> int:
    return int(math.floor(epochs * per_epoch + 0.5))


@dataclass(frozen=True)
class Schedule:
    """The resolved training length: what the LR schedule spans and what the run logs."""

    steps: int
    warmup_steps: int
    global_batch: int
    steps_per_epoch: Optional[int] = None  # None: the loader did not say (steps given)
    epochs: Optional[float] = None  # train.epochs as configured
    warmup_epochs: Optional[float] = None
    steps_from: str = "epochs"  # "epochs" or "train.steps"
    warmup_from: str = "epochs"  # "epochs", "optim.warmup_steps" or "none"

    @property
    def trained_epochs(self) -> Optional[float]:
        """Passes over the data this many steps make (None without an epoch length)."""
        return self.steps / self.steps_per_epoch if self.steps_per_epoch else None

    def describe(self) -> str:
        """One line for the log: ``10 epochs x 1234 steps/epoch = 12340 steps, warmup 1 epoch
        = 1234 steps, global batch 512``."""
        if self.steps_from == "epochs":
            length = (f"{_num(self.epochs)} epoch{_s(self.epochs)} x {self.steps_per_epoch} "
                      f"steps/epoch = {self.steps} steps")
        else:
            length = f"{self.steps} steps (train.steps)"
            if self.steps_per_epoch:
                length += (f", {_num(round(self.trained_epochs, 2))} epochs of "
                           f"{self.steps_per_epoch} steps")
        if self.warmup_from == "epochs":
            warmup = (f"warmup {_num(self.warmup_epochs)} epoch{_s(self.warmup_epochs)} = "
                      f"{self.warmup_steps} steps")
        elif self.warmup_from == "optim.warmup_steps":
            warmup = f"warmup {self.warmup_steps} steps (optim.warmup_steps)"
        else:
            warmup = "no warmup"
        return f"{length}, {warmup}, global batch {self.global_batch}"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["trained_epochs"] = self.trained_epochs
        out["text"] = self.describe()
        return out


def _num(x: Optional[float]) -> str:
    return "?" if x is None else f"{x:g}"


def _s(x: Optional[float]) -> str:
    return "" if x == 1 else "s"


def resolve(train: Any, optim: Any, *, global_batch: int,
            samples_per_epoch: Optional[int] = None) -> Schedule:
    """The schedule of a run: ``train.steps`` if set, else ``train.epochs`` x steps per epoch;
    warmup ``optim.warmup_steps`` if set, else ``train.warmup_epochs`` x steps per epoch, else 0.

    ``samples_per_epoch``: one epoch of the run's loader in samples (``None`` when it cannot say;
    then only explicit steps work). ``global_batch``: samples per optimizer step over all ranks
    and micro-batches.
    """
    check_length(train)
    epochs = getattr(train, "epochs", None)
    warmup_epochs = getattr(train, "warmup_epochs", None)
    explicit_warmup = getattr(optim, "warmup_steps", None)
    per_epoch = (steps_per_epoch(samples_per_epoch, global_batch)
                 if samples_per_epoch is not None else None)
    needs_epoch = (train.steps is None) or (explicit_warmup is None and warmup_epochs)
    if needs_epoch and per_epoch is None:
        raise ValueError("train.epochs / train.warmup_epochs need the data set size, and this "
                         "run's loader does not report its epoch length: set train.steps (and "
                         "optim.warmup_steps) instead")
    if train.steps is not None:
        steps, steps_from = int(train.steps), "train.steps"
    else:
        steps, steps_from = max(1, _epochs_to_steps(epochs, per_epoch)), "epochs"
    if explicit_warmup is not None:
        warmup, warmup_from = int(explicit_warmup), "optim.warmup_steps"
    elif warmup_epochs:
        warmup, warmup_from = _epochs_to_steps(warmup_epochs, per_epoch), "epochs"
    else:
        warmup, warmup_from = 0, "none"
    return Schedule(steps=steps, warmup_steps=warmup, global_batch=int(global_batch),
                    steps_per_epoch=per_epoch, epochs=epochs, warmup_epochs=warmup_epochs,
                    steps_from=steps_from, warmup_from=warmup_from)


def global_batch_of(train: Any, gpus: int) -> int:
    """Samples per optimizer step of ``train`` on ``gpus`` processes."""
    return int(train.batch_size) * int(gpus) * int(getattr(train, "accum_steps", 1) or 1)


def rows_per_process(cfg: Any) -> int:
    """Rows of the data set (videos, pairs, questions) one process takes per micro-batch:
    ``train.batch_size``, over ``augment.num_sample`` views of each video for an action
    fine-tune (its batch counts views), or ``data.video_batch_size`` when Stage 2 sets one."""
    rows = getattr(getattr(cfg, "data", None), "video_batch_size", None) or cfg.train.batch_size
    views = getattr(getattr(cfg, "augment", None), "num_sample", 1) or 1
    return max(1, int(rows) // int(views))


def preview(cfg: Any, num_samples: int, gpus: int) -> Schedule:
    """The schedule ``cfg`` gets on ``gpus`` processes over a data set of ``num_samples`` rows
    (``umt config show --num-samples N --gpus G``): as the loop resolves it at start, one epoch
    being one pass at :func:`rows_per_process` x ``gpus`` x ``train.accum_steps`` rows a step
    (the global batch it reports is the loop's: ``train.batch_size`` x ``gpus`` x accum)."""
    if num_samples < 1 or gpus < 1:
        raise ValueError(f"--num-samples={num_samples} and --gpus={gpus} must be >= 1")
    accum = int(getattr(cfg.train, "accum_steps", 1) or 1)
    per_epoch = steps_per_epoch(num_samples, rows_per_process(cfg) * int(gpus) * accum)
    # The global batch as the loop counts it (train.batch_size: views for an action fine-tune).
    batch = global_batch_of(cfg.train, gpus)
    return resolve(cfg.train, cfg.optim, global_batch=batch, samples_per_epoch=per_epoch * batch)
