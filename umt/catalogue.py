"""The stage catalogue: one entry per training stage and evaluation, the single source of what a
stage is.

Everything that used to keep its own list of stages reads this table instead: ``umt train`` /
``umt eval`` (their commands), the launcher (the module a job runs, its config schema), the
pipeline planner and its ``validate`` step (which steps a setting enables, what each starts
from, which data it reads), the kfp.local runner, the shipped kubectl manifests
(``manifests/jobs/<stage>/``), the report (section titles, headline metrics, chance levels)
and the pipeline itself (``pipelines/full.py`` adds one fine-tune and one evaluation task per
entry). A new downstream task is its config schema + presets, its stage or evaluation module,
its model and loader code -- and one entry here.

No torch, no kfp: the launcher image and ``umt job render`` import this.

Names: a stage's ``name`` is the job's, the step's and the command's (``umt train
finetune-action``, ``umt eval action`` for ``eval-action``). ``task`` groups the stages a
pipeline switch ``run_<task>`` turns on, and names the per-task pipeline parameters
(``<task>_train_data``, ``<task>_eval_data``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

PRETRAIN, FINETUNE, EVAL = "pretrain", "finetune", "eval"
KINDS = (PRETRAIN, FINETUNE, EVAL)


@dataclass(frozen=True)
class PaperResult:
    """A number the paper reports for the full-size model (shown beside ours, labelled so)."""

    metric: str  # the key in our metrics (top1, t2v_r1, accuracy, ...)
    value: float
    what: str  # "K400 top-1, ViT-L/16"


@dataclass(frozen=True)
class Option:
    """A command-line option of ``umt eval <task>`` beyond --config/--model/--data/--output.
    It only sets a config key, so torchrun and a job pass the same thing as key=value."""

    param: str  # the Python parameter name
    flag: str  # --zero-shot
    key: str  # the config key it sets
    default: Any  # False: a boolean flag; None: a value
    help: str


@dataclass(frozen=True)
class Stage:
    """One stage: a training stage or an evaluation, each one job (``torchrun -m module``)."""

    name: str  # stage1, finetune-action, eval-mc
    kind: str  # pretrain | finetune | eval
    module: str  # the job's process: ``torchrun -m <module> --config ... key=value``
    schema: str  # "<module>:<dataclass>" of its config; importable without torch
    title: str  # step names and report sections
    parent: str = ""  # the stage whose model it starts from ("" = from scratch)
    task: str = ""  # the downstream task it serves ("" for pretraining)
    # The data set the shipped kubectl manifest reads (the paper's); a list for stages that
    # read several corpora (``data.sources``).
    data: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()  # headline metrics of an evaluation, in report order
    # Chance level of the headline metric: 100 / <this count of the evaluation's metrics.json>
    # (num_classes, num_videos, num_answers, num_candidates); "" = none.
    chance_per: str = ""
    paper: PaperResult | None = None
    options: tuple[Option, ...] = ()  # extra options of its ``umt eval`` command
    # In the pipeline's default ``tasks`` (False: in the DAG, switched on by naming the task,
    # e.g. while the pipeline's own sharded dataset cannot feed it).
    default_on: bool = True

    @property
    def trains(self) -> bool:
        return self.kind != EVAL

    @property
    def command(self) -> str:
        """The ``umt`` sub-command: ``umt train <name>`` or ``umt eval <task>``."""
        return self.name[len("eval-"):] if self.kind == EVAL else self.name

    def config_schema(self) -> type:
        """The config dataclass (imports its module: umt.configs..., no torch)."""
        module, _, cls = self.schema.partition(":")
        return getattr(importlib.import_module(module), cls)


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("stage1", PRETRAIN, "umt.train.stage1", "umt.configs.schema:Stage1Config",
          "Stage 1: video pretraining",
          data=("s3://EDIT_ME_BUCKET/umt/datasets/k710/dataset.json",)),
    Stage("stage2", PRETRAIN, "umt.train.stage2", "umt.configs.stage2:Stage2Config",
          "Stage 2: vision-language pretraining", parent="stage1",
          data=("s3://EDIT_ME_BUCKET/umt/datasets/webvid-2m/dataset.json",
                "s3://EDIT_ME_BUCKET/umt/datasets/cc3m/dataset.json")),
    Stage("finetune-action", FINETUNE, "umt.train.finetune_action",
          "umt.configs.finetune_action:FinetuneActionConfig", "Fine-tune: action recognition",
          parent="stage1", task="action",
          data=("s3://EDIT_ME_BUCKET/umt/datasets/k400/train/dataset.json",)),
    Stage("finetune-retrieval", FINETUNE, "umt.train.finetune_retrieval",
          "umt.configs.finetune_retrieval:FinetuneRetrievalConfig",
          "Fine-tune: video-text retrieval", parent="stage2", task="retrieval",
          data=("s3://EDIT_ME_BUCKET/umt/datasets/msrvtt-9k/dataset.json",)),
    Stage("finetune-qa", FINETUNE, "umt.train.finetune_qa",
          "umt.configs.finetune_qa:FinetuneQAConfig", "Fine-tune: video QA", parent="stage2",
          task="qa",
          data=("s3://EDIT_ME_BUCKET/umt/datasets/msrvtt-qa/train/dataset.json",)),
    Stage("finetune-ava", FINETUNE, "umt.train.finetune_ava",
          "umt.configs.finetune_ava:FinetuneAvaConfig", "Fine-tune: action detection (AVA)",
          parent="stage1", task="ava", default_on=False,
          data=("s3://EDIT_ME_BUCKET/umt/datasets/ava-v2.2/train/dataset.json",)),
    Stage("eval-action", EVAL, "umt.eval.action_job", "umt.configs.finetune_action:EvalActionConfig",
          "Evaluate: action recognition", parent="finetune-action", task="action",
          data=("s3://EDIT_ME_BUCKET/umt/datasets/k400/val/dataset.json",),
          metrics=("top1", "top5", "mean_class_accuracy"), chance_per="num_classes",
          paper=PaperResult("top1", 90.6, "K400 top-1, ViT-L/16"),
          options=(
              Option("zero_shot", "--zero-shot", "eval.zero_shot", False,
                     "Zero-shot classification with a Stage-2 checkpoint (class names through "
                     "prompt templates; no classifier head)."),
              Option("classes", "--classes", "eval.classes", None,
                     "With --zero-shot: classes.txt of the names to prompt with, one per line "
                     "in label order (default: dataset.json's classes)."))),
    Stage("eval-retrieval", EVAL, "umt.eval.retrieval_job",
          "umt.configs.finetune_retrieval:EvalRetrievalConfig", "Evaluate: video-text retrieval",
          parent="finetune-retrieval", task="retrieval",
          data=("s3://EDIT_ME_BUCKET/umt/datasets/msrvtt-1k/dataset.json",),
          metrics=("t2v_r1", "t2v_r5", "t2v_r10", "v2t_r1", "v2t_r5", "v2t_r10", "r_mean"),
          chance_per="num_videos", paper=PaperResult("t2v_r1", 58.8, "MSRVTT R@1, ViT-L/16")),
    Stage("eval-qa", EVAL, "umt.eval.qa_job", "umt.configs.finetune_qa:EvalQAConfig",
          "Evaluate: video QA", parent="finetune-qa", task="qa",
          data=("s3://EDIT_ME_BUCKET/umt/datasets/msrvtt-qa/test/dataset.json",),
          metrics=("accuracy",),
          chance_per="num_answers", paper=PaperResult("accuracy", 47.1, "MSRVTT-QA, ViT-L/16")),
    # Multiple choice (MSRVTT-MC) ranks candidate captions with the retrieval model.
    Stage("eval-mc", EVAL, "umt.eval.mc_job", "umt.configs.finetune_retrieval:EvalMCConfig",
          "Evaluate: multiple choice", parent="finetune-retrieval", task="mc",
          data=("s3://EDIT_ME_BUCKET/umt/datasets/msrvtt-mc/dataset.json",), metrics=("accuracy",),
          chance_per="num_candidates"),
    # Frame mAP@0.5 IoU of the official evaluator, in percent (metrics.json also holds the
    # official fractions and ``random_mAP``, the same boxes with random scores).
    Stage("eval-ava", EVAL, "umt.eval.ava", "umt.configs.finetune_ava:EvalAvaConfig",
          "Evaluate: action detection (AVA)", parent="finetune-ava", task="ava",
          data=("s3://EDIT_ME_BUCKET/umt/datasets/ava-v2.2/val/dataset.json",),
          metrics=("mAP",), default_on=False,
          paper=PaperResult("mAP", 39.8, "AVA v2.2 frame mAP@0.5, ViT-L/16")),
)}


def get(name: str) -> Stage:
    """The entry of ``name``; ValueError naming the known stages."""
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; known stages: "
                         f"{', '.join(sorted(STAGES))}") from None


def of_kind(kind: str) -> list[Stage]:
    return [s for s in STAGES.values() if s.kind == kind]


def pretraining() -> list[Stage]:
    return of_kind(PRETRAIN)


def finetunes() -> list[Stage]:
    return of_kind(FINETUNE)


def evaluations() -> list[Stage]:
    return of_kind(EVAL)


def tasks() -> list[str]:
    """The downstream tasks, in catalogue order (each has a ``run_<task>`` switch)."""
    return list(dict.fromkeys(s.task for s in STAGES.values() if s.task))


def default_tasks() -> list[str]:
    """The tasks the pipeline runs unless ``tasks`` says otherwise: those whose stages are all
    ``default_on``."""
    return [t for t in tasks() if all(s.default_on for s in STAGES.values() if s.task == t)]


def finetune_of(task: str) -> Stage | None:
    return next((s for s in finetunes() if s.task == task), None)


def evaluation_of(task: str) -> Stage | None:
    return next((s for s in evaluations() if s.task == task), None)


def chance_level(stage: Stage, metrics: dict[str, Any]) -> float | None:
    """The headline metric's chance level in percent, from the evaluation's own counts."""
    count = metrics.get(stage.chance_per) if stage.chance_per else None
    if not isinstance(count, (int, float)) or count <= 0:
        return None
    return 100.0 / count


def check() -> None:
    """The table's own consistency (a test runs it): kinds, parents, one stage per task."""
    for s in STAGES.values():
        if s.kind not in KINDS:
            raise ValueError(f"{s.name}: kind {s.kind!r} is not one of {KINDS}")
        if s.parent and s.parent not in STAGES:
            raise ValueError(f"{s.name}: parent {s.parent!r} is not a stage")
        if s.kind == EVAL and not (s.parent and STAGES[s.parent].trains):
            raise ValueError(f"{s.name}: an evaluation needs a training stage as its parent")
        if s.kind != PRETRAIN and not s.task:
            raise ValueError(f"{s.name}: fine-tunes and evaluations name their task")
        if s.kind == EVAL and not s.name.startswith("eval-"):
            raise ValueError(f"{s.name}: evaluations are named eval-<task>")
    for task in tasks():
        for kind in (FINETUNE, EVAL):
            if sum(1 for s in of_kind(kind) if s.task == task) > 1:
                raise ValueError(f"task {task!r} has more than one {kind} stage")
