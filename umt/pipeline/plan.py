"""What each pipeline step runs: presets, overrides, output folders, and where jobs run.

Pure functions of a step's inputs, so ``validate`` (the pipeline's first task) computes the very
folders and PyTorchJobs the later tasks will use, and a rerun or a KFP retry of a task lands in
the same folder and resumes there (KFP gives every attempt a fresh artifact URI; checkpoints
therefore never live under it)::

    <output_prefix>/datasets/<input name>-<hash>/     shards + dataset.json
    <output_prefix>/<stage>-<config hash>/            one training or evaluation job

The hash is of the stage's fully resolved config (preset <- overrides, data, and what it starts
from), without ``train.output_dir``, and of the content fingerprint of its data
(``umt.pipeline.fingerprint``; a parent checkpoint given by URI carries its own in its
identity): the same training always gets the same folder, a changed one -- new data under the
same path included -- a new folder. Hardware (nodes, GPUs) is not part of it: rerunning on
more nodes resumes. The dataset folder likewise hashes its input's fingerprint.

No kfp here (nor anywhere a training process imports).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from umt import catalogue, storage

# The pipeline's `model_size` -> the preset name every stage ships (umt/configs/<stage>_<x>.yaml).
# (No `small`: the paper has no ViT-S recipe, so no stage ships an s16 preset.)
MODEL_SIZES = {"tiny": "tiny", "base": "b16", "large": "l16"}

# Keys the pipeline sets itself; a user override of them would silently lose.
MANAGED_KEYS = ("train.output_dir", "model.pretrained", "data.source", "data.sources")

BACKEND_ENV = "UMT_JOB_BACKEND"  # set by `umt run --local`; tests
LOCAL_JOBS_ENV = "UMT_LOCAL_JOBS_DIR"  # where the local executor keeps job YAMLs and logs


ALL_TASKS = "*"  # in a step's ``tasks``: every task runs (a component reused on its own)


def task_enabled(stage: catalogue.Stage, tasks: Sequence[str]) -> bool:
    """Whether a downstream ``stage`` runs for the run's ``tasks`` list."""
    return ALL_TASKS in tasks or stage.task in tasks


def task_data_key(stage: catalogue.Stage) -> str:
    """``action_train``, ``mc_eval``: the ``task_data`` key of a downstream stage's data."""
    return f"{stage.task}_{'eval' if stage.kind == catalogue.EVAL else 'train'}"


# The pipeline's ``job_backend`` parameter: which kind of job the launcher steps run. "cluster":
# the kind the cluster serves, TrainJob first (umt.launch.detect).
JOB_KINDS = ("cluster", "trainjob", "pytorchjob")
# The same kinds run by the local executor (umt run --local).
LOCAL_BACKENDS = {"cluster": "local", "pytorchjob": "local", "trainjob": "local-trainjob"}


# The most parts the shard step fans out to (``shard_parts``).
MAX_SHARD_PARTS = 10_000


def job_backend(kind: str = "cluster") -> str:
    """The launch backend of the pipeline's ``job_backend`` parameter (``kind``, the kind of
    job) here: on the cluster inside a Kubernetes pod (a KFP launcher pod), else the local
    executor of that kind (``local``, ``local-trainjob``).

    *Where* jobs run is not a parameter on purpose: a UI user on a cluster must not be able to
    make a launcher pod train in itself. Kubernetes sets ``KUBERNETES_SERVICE_HOST`` in every
    pod; ``umt run --local`` sets ``UMT_JOB_BACKEND=local`` explicitly. The parameter only
    chooses between kinds of cluster job (or their local executors).
    """
    if kind not in JOB_KINDS:
        raise ValueError(f"job_backend={kind!r}: must be one of {', '.join(JOB_KINDS)}")
    forced = os.environ.get(BACKEND_ENV, "").strip()
    if forced:
        if forced not in ("cluster", "local"):
            raise ValueError(f"{BACKEND_ENV}={forced!r}: must be 'cluster' or 'local'")
        where = forced
    else:
        where = "cluster" if os.environ.get("KUBERNETES_SERVICE_HOST") else "local"
    return LOCAL_BACKENDS[kind] if where == "local" else kind


def local_jobs_dir() -> str:
    return os.environ.get(LOCAL_JOBS_ENV) or "runs/local-jobs"


def short_hash(payload: Any, n: int = 10) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def stage_schema(stage: str) -> type:
    return catalogue.get(stage).config_schema()  # ValueError naming the known stages


def preset(stage: str, model_size: str) -> str:
    """The preset of ``stage`` for ``model_size``; ValueError naming what exists. (An
    evaluation may read another stage's presets: ``PRESETS`` on its schema.)"""
    from umt.configs import list_presets
    from umt.configs.loader import preset_source

    if model_size not in MODEL_SIZES:
        raise ValueError(f"model_size={model_size!r} is not one of {', '.join(MODEL_SIZES)}")
    name = MODEL_SIZES[model_size]
    source, _ = preset_source(stage_schema(stage), stage)
    available = list_presets(source)
    if name not in available:
        raise ValueError(f"model_size={model_size} needs the preset {source}_{name}.yaml, which "
                         f"does not exist (presets of {source}: {', '.join(available) or 'none'})")
    return name


def _section_fields(schema: type, section: str) -> set[str]:
    """Field names of a section of a schema (from its default, not its annotation: schemas
    use postponed annotations)."""
    field_ = next((f for f in dataclasses.fields(schema) if f.name == section), None)
    if field_ is None or field_.default_factory is dataclasses.MISSING:
        return set()
    value = field_.default_factory()
    return {f.name for f in dataclasses.fields(value)} if dataclasses.is_dataclass(value) else set()


def _data_fields(schema: type) -> set[str]:
    return _section_fields(schema, "data")


def frames_key(stage: str, trains: bool = True) -> str:
    """Where a stage sets its frames per clip: a training stage's ``model.num_frames``; an
    evaluation's ``eval.num_frames`` when it samples its own clips (else its model's)."""
    schema = stage_schema(stage)
    for section in (("model", "eval") if trains else ("eval", "model")):
        if "num_frames" in _section_fields(schema, section):
            return f"{section}.num_frames"
    raise ValueError(f"stage {stage} has no num_frames setting (model.num_frames or "
                     "eval.num_frames); leave num_frames=0")


def data_overrides(stage: str, data: str | list[str]) -> list[str]:
    """``data.source=<uri>``, or ``data.sources=["<uri>", ...]`` for stages reading several
    corpora."""
    from umt.launch.stages import flatten_config

    uris = [data] if isinstance(data, str) else list(data)
    names = _data_fields(stage_schema(stage))
    if "sources" in names and "source" not in names:
        return flatten_config({"data": {"sources": uris}})
    if len(uris) != 1:
        raise ValueError(f"stage {stage} reads one data set (data.source), not {len(uris)}")
    return flatten_config({"data": {"source": uris[0]}})


def check_user_overrides(name: str, overrides: Sequence[str]) -> None:
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"{name}: {item!r} must look like key=value")
        key = item.split("=", 1)[0].strip()
        if key in MANAGED_KEYS:
            raise ValueError(f"{name}: {key} is set by the pipeline (output_prefix, the data and "
                             f"the parent model); remove {item!r}")


@dataclass
class StepPlan:
    """One job as the pipeline will run it."""

    stage: str
    config: str  # preset name
    overrides: list[str]  # all but train.output_dir and model.pretrained
    parent: str  # identity of what it starts from ("" = from scratch), part of the hash
    output_dir: str
    config_hash: str
    resolved: Any = field(default=None, repr=False)  # the loaded config dataclass

    def job_overrides(self, checkpoint: str = "") -> list[str]:
        """The overrides the job gets: ours plus the parent's actual checkpoint."""
        return self.overrides + ([f"model.pretrained={checkpoint}"] if checkpoint else [])

    def describe(self) -> dict[str, Any]:
        return {"stage": self.stage, "config": self.config, "overrides": self.overrides,
                "parent": self.parent, "output_dir": self.output_dir,
                "config_hash": self.config_hash}


def plan_step(stage: str, model_size: str, output_prefix: str, *, data: str, parent: str = "",
              steps: int = 0, batch_size: int = 0, num_frames: int = 0,
              extra: Sequence[str] = (), trains: bool = True,
              data_fingerprint: str = "") -> StepPlan:
    """Plan one stage. ``parent`` is the identity of the model it starts from: the parent's
    output folder when the pipeline trained it, or the checkpoint it was given
    (:func:`checkpoint_identity`). ``data_fingerprint``: the content fingerprint of ``data``.

    ``steps``/``batch_size``/``num_frames`` of 0 keep the preset's values; evaluations
    (``trains=False``) take neither steps nor a batch size from the pipeline.
    """
    from umt.launch.stages import validate_stage_config

    config = preset(stage, model_size)
    check_user_overrides(f"{stage} overrides", extra)
    overrides = []
    if trains and steps:
        overrides.append(f"train.steps={int(steps)}")
    if trains and batch_size:
        overrides.append(f"train.batch_size={int(batch_size)}")
    if num_frames:
        overrides.append(f"{frames_key(stage, trains)}={int(num_frames)}")
    overrides += list(extra) + data_overrides(stage, data)
    # Hash what the job would run with, with the parent's identity standing in for its
    # checkpoint (not known before it has trained) and a fixed output folder.
    hashed = overrides + ([f"model.pretrained={parent}"] if parent else []) + [
        "train.output_dir=."]
    resolved = validate_stage_config(stage, config, hashed)
    from umt.configs import to_yaml

    key = {"stage": stage, "config": to_yaml(resolved)}
    if data_fingerprint:
        key["data_fingerprint"] = data_fingerprint
    digest = short_hash(key)
    output_dir = storage.join(output_prefix, f"{stage}-{digest}")
    return StepPlan(stage, config, overrides, parent, output_dir, digest, resolved)


def checkpoint_identity(checkpoint: str, fingerprint: str = "") -> str:
    """What a child's plan hashes for a parent checkpoint given by URI: the URI and, when
    known, its content fingerprint (a checkpoint replaced in place is another parent)."""
    return f"{checkpoint}#{fingerprint}" if fingerprint else checkpoint


def dataset_dir(output_prefix: str, input_videos: str, *, samples_per_shard: int,
                short_side: int, classes: str = "", fingerprint: str = "") -> str:
    """Where ``shard_videos`` writes: named after the input, keyed by the settings and the
    input's content fingerprint."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-",
                  input_videos.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]).strip("-.")
    key = {"input": input_videos, "samples_per_shard": samples_per_shard,
           "short_side": short_side, "classes": classes}
    if fingerprint:
        key["fingerprint"] = fingerprint
    digest = short_hash(key)
    return storage.join(output_prefix, "datasets", f"{name or 'videos'}-{digest}")


def config_value(cfg: Any, dotted: str, default: Any = None) -> Any:
    """``config_value(cfg, "model.num_frames")`` on a config dataclass; ``default`` if absent."""
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part, None)
        if node is None:
            return default
    return node
