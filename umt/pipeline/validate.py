"""The pipeline's first task: check every setting in seconds, before anything GPU-bound.

KFP parameters are plain strings and numbers (no enums), so a typo in a Stage-2 override or a
model size would otherwise surface only when Stage 2 starts, days into the run. ``validate``

* checks what the UI cannot constrain: model size, node pool and GPUs per node, step counts,
  which downstream tasks run (``tasks``, from the stage catalogue ``umt.catalogue``) and
  whether the model each enabled stage starts from is trained in this run or given;
* plans every enabled job exactly as its task will (``umt.pipeline.plan``): loads its config
  with all overrides, renders and validates its job (CRD schema, webhook rules);
* checks the data (a dataset.json loads, an input exists) and the output prefix (write, read
  back, delete a marker: that exercises the S3 credentials from the Secret too); on a cluster
  also the PyTorchJob CRD, RBAC and the S3 Secret (``umt doctor``'s checks).

It reports every problem at once, then fails. The plan (output folders, configs, rendered jobs)
is the task's artifact. No kfp here.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from umt import catalogue, storage
from umt.pipeline import plan as planning

# The pipelines' default output_prefix names this bucket: not a valid S3 bucket name (capitals,
# underscores), so nobody owns it and a forgotten setting fails here, not in a stranger's bucket.
PLACEHOLDER_BUCKET = "EDIT_ME_BUCKET"

# What the pipeline's own pods reference for S3 credentials when there is no Secret (IRSA,
# workload identity): a valid name that no Secret has. The reference is optional, so it sets
# nothing and boto3 / KFP's launcher use the pod's identity; an empty name would make pods the
# API server refuses (the KFP driver copies it into secretKeyRef.name).
NO_SECRET = "umt-no-s3-secret"


def secret_reference(s3_secret: str) -> str:
    """The Secret name the pipeline's pods reference for ``s3_secret`` ("" -> ``NO_SECRET``);
    ValueError for a name no Secret can have."""
    from umt.launch.values import Problems

    if not s3_secret:
        return NO_SECRET
    p = Problems()
    p.dns_subdomain("s3", s3_secret)
    p.raise_if_any()
    return s3_secret


@dataclass
class Settings:
    """The pipeline parameters ``validate`` needs (the names are the pipeline's).

    Per-task settings are two parameters whatever the number of tasks: ``tasks`` (which
    downstream tasks of the stage catalogue run) and ``task_data`` (``<task>_train`` /
    ``<task>_eval`` -> a dataset.json; absent = the pipeline's dataset).
    """

    output_prefix: str
    input_videos: str = ""
    existing_dataset: str = ""
    classes: str = ""
    samples_per_shard: int = 1000
    shard_parts: int = 1
    short_side: int = 320
    model_size: str = "base"
    num_frames: int = 0
    batch_size: int = 0
    stage1_steps: int = 0
    stage2_steps: int = 0
    finetune_steps: int = 0
    stage1_overrides: Sequence[str] = ()
    stage2_overrides: Sequence[str] = ()
    finetune_overrides: Sequence[str] = ()
    eval_overrides: Sequence[str] = ()
    existing_stage1_checkpoint: str = ""
    existing_stage2_checkpoint: str = ""
    run_stage2: bool = True
    tasks: Sequence[str] = field(default_factory=catalogue.default_tasks)
    task_data: dict[str, str] = field(default_factory=dict)
    nodes: int = 1
    gpus_per_node: int = 8
    downstream_nodes: int = 1
    node_pool: str = "gke-a100"
    image: str = ""
    s3_secret: str = "umt-s3"
    job_backend: str = "cluster"  # cluster | trainjob | pytorchjob (planning.JOB_KINDS)
    kueue_queue: str = ""
    priority_class: str = ""
    job_namespace: str = ""

    def steps_of(self, stage: catalogue.Stage) -> int:
        """The pipeline's step count for a training stage (``<stage>_steps`` or
        ``finetune_steps``); evaluations take none."""
        if stage.kind == catalogue.PRETRAIN:
            return getattr(self, f"{stage.name}_steps", 0)
        return self.finetune_steps if stage.kind == catalogue.FINETUNE else 0

    def overrides_of(self, stage: catalogue.Stage) -> Sequence[str]:
        name = stage.name if stage.kind == catalogue.PRETRAIN else stage.kind
        return getattr(self, f"{name}_overrides", ())

    def nodes_of(self, stage: catalogue.Stage) -> int:
        return self.nodes if stage.kind == catalogue.PRETRAIN else self.downstream_nodes

    def existing_checkpoint(self, stage: catalogue.Stage) -> str:
        return getattr(self, f"existing_{stage.name}_checkpoint", "")

    def data_of(self, stage: catalogue.Stage, default: str) -> str:
        """The stage's data: ``task_data[<task>_train|<task>_eval]``, else ``default``."""
        if not stage.task:
            return default
        return self.task_data.get(planning.task_data_key(stage)) or default


def fingerprints(s: Settings) -> dict[str, Any]:
    """The content fingerprints of what the run is given (``umt.pipeline.fingerprint``):
    ``data`` (input_videos or existing_dataset), ``checkpoints`` (by stage), ``task_data``
    (by key). An input that cannot be read gets "" (its own check reports it)."""
    from umt.pipeline.fingerprint import fingerprint

    def safe(uri: str) -> str:
        try:
            return fingerprint(uri)
        except Exception:
            return ""

    return {"data": safe(s.existing_dataset or s.input_videos),
            "checkpoints": {st.name: safe(s.existing_checkpoint(st))
                            for st in catalogue.pretraining() if s.existing_checkpoint(st)},
            "task_data": {k: safe(uri) for k, uri in sorted(s.task_data.items()) if uri}}


def data_fingerprint(stage: catalogue.Stage, prints: dict[str, Any], dataset_print: str,
                     task_data: dict[str, str]) -> str:
    """The fingerprint of the data ``stage`` reads: its ``task_data`` entry's, else the
    dataset's (what :meth:`Settings.data_of` picks)."""
    key = planning.task_data_key(stage) if stage.task else ""
    if key and task_data.get(key):
        return (prints.get("task_data") or {}).get(key, "")
    return dataset_print


def not_run(s: Settings) -> dict[str, str]:
    """The stages the settings do not run, by name, with the reason."""
    out = {}
    for stage in catalogue.STAGES.values():
        if stage.task and not planning.task_enabled(stage, s.tasks):
            out[stage.name] = f"task {stage.task} is not in tasks"
        elif s.existing_checkpoint(stage):
            out[stage.name] = f"starts from existing_{stage.name}_checkpoint"
        elif not getattr(s, f"run_{stage.name}", True):  # run_stage2
            out[stage.name] = f"run_{stage.name}=false"
    return out


def enabled_steps(s: Settings) -> dict[str, bool]:
    """Which jobs the settings run, by step name (= stage name)."""
    off = not_run(s)
    return {name: name not in off for name in catalogue.STAGES}


def available(s: Settings, stage: catalogue.Stage) -> bool:
    """Whether the model of a training ``stage`` exists in this run: trained here or given."""
    return enabled_steps(s)[stage.name] or bool(s.existing_checkpoint(stage))


class InvalidPipelineSettings(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("the pipeline's settings have problems (nothing was started):\n  - "
                         + "\n  - ".join(problems))


def _exists_prefix(uri: str) -> bool:
    if not storage.is_s3(uri):
        return os.path.exists(uri[len("file://"):] if uri.startswith("file://") else uri)
    if storage.exists(uri):
        return True
    bucket, key = storage.split_s3(uri)
    resp = storage.s3_client().list_objects_v2(Bucket=bucket, Prefix=key.rstrip("/") + "/",
                                                MaxKeys=1)
    return bool(resp.get("Contents"))


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def check(self, what: str, fn, *args, **kwargs) -> Any:
        """Run ``fn``; a failure becomes one line naming ``what``."""
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # every kind of failure is a finding here, reported together
            self.items.append(f"{what}: {e}" if what else str(e))
            return None

    def exists(self, what: str, fn, *args) -> None:
        """``fn`` answers whether ``what`` exists; "no" and errors are both problems."""
        before = len(self.items)
        if not self.check(what, fn, *args) and len(self.items) == before:
            self.items.append(f"{what} does not exist")

    def add(self, message: str) -> None:
        self.items.append(message)


def _render(step: planning.StepPlan, s: Settings, nodes: int, backend: str) -> str:
    from umt.launch import S3Credentials, TrainingJob, render_job_yaml
    from umt.launch.backend import shares_filesystem

    placeholder = step.parent if step.parent else ""
    req = TrainingJob(stage=step.stage, config=step.config,
                      overrides=step.job_overrides(placeholder), nodes=nodes,
                      gpus_per_node=s.gpus_per_node, node_pool=s.node_pool,
                      image=s.image or None, run_id=os.environ.get("KFP_RUN_ID") or None,
                      output_uri=step.output_dir,
                      s3=S3Credentials(secret=s.s3_secret) if s.s3_secret else None,
                      allow_local_output=shares_filesystem(backend), resolved=step.resolved,
                      kueue_queue=s.kueue_queue or None, priority_class=s.priority_class or None,
                      namespace=s.job_namespace or None)
    return render_job_yaml(req, backend)


def validate(s: Settings, *, cluster_checks: bool | None = None) -> dict[str, Any]:
    """Check ``s``; return the plan, or raise :class:`InvalidPipelineSettings` listing every
    problem. ``cluster_checks`` (default: when running on a cluster) adds ``umt doctor``'s."""
    from umt.data import dataset_json
    from umt.launch.backend import shares_filesystem
    from umt.launch.detect import resolve
    from umt.launch.node_pools import get_node_pool

    p = _Problems()
    if s.job_backend not in planning.JOB_KINDS:
        p.add(f"job_backend={s.job_backend!r} is not one of {', '.join(planning.JOB_KINDS)}")
        s = dataclasses.replace(s, job_backend="cluster")
    on_cluster = not shares_filesystem(planning.job_backend(s.job_backend))
    # "cluster": the kind this cluster serves, asked once here; the plan records it.
    backend = resolve(planning.job_backend(s.job_backend)) if on_cluster else \
        planning.job_backend(s.job_backend)
    if cluster_checks is None:
        cluster_checks = on_cluster

    # Values the UI cannot constrain.
    if s.model_size not in planning.MODEL_SIZES:
        p.add(f"model_size={s.model_size!r} is not one of {', '.join(planning.MODEL_SIZES)}")
    p.check("node_pool", get_node_pool, s.node_pool)
    for name in ("nodes", "downstream_nodes"):
        if getattr(s, name) < 1:
            p.add(f"{name}={getattr(s, name)} must be >= 1")
    for name in ("gpus_per_node", "num_frames", "batch_size", "stage1_steps", "stage2_steps",
                 "finetune_steps", "samples_per_shard", "short_side"):
        if getattr(s, name) < 0:
            p.add(f"{name}={getattr(s, name)} must be >= 0 (0 = the preset's value)")
    if not 1 <= s.shard_parts <= planning.MAX_SHARD_PARTS:
        p.add(f"shard_parts={s.shard_parts} must be 1 to {planning.MAX_SHARD_PARTS}")
    unknown_tasks = [t for t in s.tasks if t not in (*catalogue.tasks(), planning.ALL_TASKS)]
    if unknown_tasks:
        p.add(f"tasks: {', '.join(map(repr, unknown_tasks))} not among the downstream tasks "
              f"({', '.join(catalogue.tasks())})")
    data_keys = {planning.task_data_key(st) for st in catalogue.STAGES.values() if st.task}
    unknown = set(s.task_data) - data_keys
    if unknown:
        p.add(f"task_data: unknown keys {sorted(unknown)} (known: {', '.join(sorted(data_keys))})")
    if PLACEHOLDER_BUCKET in s.output_prefix:
        p.add(f"output_prefix={s.output_prefix!r} is the placeholder default: set it to a "
              "prefix of your own bucket (s3://<bucket>/<prefix>)")
    if on_cluster and not storage.is_s3(s.output_prefix):
        p.add(f"output_prefix={s.output_prefix!r} must be an s3:// prefix on a cluster: each "
              "training pod has its own filesystem")

    # Every enabled stage needs the model it starts from (trained in this run, or given).
    enabled = enabled_steps(s)
    for stage in catalogue.STAGES.values():
        parent = catalogue.STAGES.get(stage.parent)
        if not enabled[stage.name] or parent is None or available(s, parent):
            continue
        if parent.task:
            p.add(f"task {stage.task} evaluates the {parent.name} model: add "
                  f"{parent.task} to tasks (or remove {stage.task})")
        elif stage.task:
            p.add(f"task {stage.task} needs the {parent.title} model: set run_{parent.name}=true "
                  f"or existing_{parent.name}_checkpoint (or remove {stage.task} from tasks)")
        else:
            p.add(f"{stage.name} needs the {parent.title} model: set "
                  f"existing_{parent.name}_checkpoint")

    # Data, and what it contains (so a changed file under the same path is a new run).
    prints = fingerprints(s)
    if s.existing_dataset and s.input_videos:
        p.add("set input_videos or existing_dataset, not both")
    if s.existing_dataset:
        p.check(f"existing_dataset {s.existing_dataset}", dataset_json.load, s.existing_dataset)
        data = s.existing_dataset
    elif s.input_videos:
        p.exists(f"input_videos {s.input_videos}", _exists_prefix, s.input_videos)
        if s.classes:
            p.exists(f"classes {s.classes}", storage.exists, s.classes)
        data = storage.join(planning.dataset_dir(
            s.output_prefix, s.input_videos, samples_per_shard=s.samples_per_shard,
            short_side=s.short_side, classes=s.classes, fingerprint=prints["data"]),
            dataset_json.FILENAME)
    else:
        p.add("no data: set input_videos (a manifest, folder or s3:// prefix of videos) or "
              "existing_dataset (a dataset.json written by `umt shard`)")
        data = storage.join(s.output_prefix, "datasets", "none", dataset_json.FILENAME)
    for key, uri in sorted(s.task_data.items()):
        if uri:
            p.check(f"task_data {key} {uri}", dataset_json.load, uri)
    for stage in catalogue.pretraining():
        uri = s.existing_checkpoint(stage)
        if uri:
            p.exists(f"existing_{stage.name}_checkpoint {uri}", storage.exists, uri)

    # Every enabled job, planned and rendered as its task will, parents before children.
    steps: dict[str, dict[str, Any]] = {}
    provided = {st.name: s.existing_checkpoint(st) for st in catalogue.pretraining()
                if s.existing_checkpoint(st)}
    identity = {name: planning.checkpoint_identity(uri, prints["checkpoints"].get(name, ""))
                for name, uri in provided.items()}
    for stage in catalogue.STAGES.values():
        if not enabled[stage.name] or s.model_size not in planning.MODEL_SIZES:
            continue
        nodes = s.nodes_of(stage)
        step = p.check(stage.name, planning.plan_step, stage.name, s.model_size,
                       s.output_prefix, data=s.data_of(stage, data),
                       parent=identity.get(stage.parent, ""), steps=s.steps_of(stage),
                       batch_size=s.batch_size, num_frames=s.num_frames,
                       extra=s.overrides_of(stage), trains=stage.trains,
                       data_fingerprint=data_fingerprint(stage, prints, prints["data"],
                                                         s.task_data))
        if step is None:
            continue
        identity[stage.name] = step.output_dir
        job = p.check(f"{stage.name} job", _render, step, s, nodes, backend)
        steps[stage.name] = {**step.describe(), "nodes": nodes,
                             "gpus_per_node": s.gpus_per_node, "job": job or ""}

    # Storage and, on a cluster, the cluster itself.
    warnings: list[str] = []
    from umt.launch import doctor

    checks = (doctor.run_checks(output_uri=s.output_prefix, s3_secret=s.s3_secret or None,
                                backend=backend)
              if cluster_checks else [doctor.check_output(s.output_prefix)])
    for c in checks:
        if not c.ok:
            hint = (f" (S3 credentials come from the Secret {s.s3_secret}: keys "
                    "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
                    if c.name == "output" and storage.is_s3(s.output_prefix) else "")
            p.add(f"{c.name}: {c.detail}{hint}")
        elif c.warning:
            warnings.append(f"{c.name}: {c.detail}")

    if p.items:
        raise InvalidPipelineSettings(p.items)
    skipped = {k: why for k, why in not_run(s).items() if k not in provided}
    return {"backend": backend, "dataset": data, "steps": steps, "provided": provided,
            "skipped": skipped, "warnings": warnings, "fingerprints": prints}


def validate_step(params: dict[str, Any], plan: Any) -> tuple[str, dict, dict]:
    """The ``validate`` component's body: its parameters (by name) in, the plan artifact out,
    and the content fingerprints the later tasks take as parameters (so their cache keys and
    folders change with the content): the data's, the given checkpoints' (by stage), the
    task data's (by key)."""
    from umt.pipeline.steps import write_json

    result = validate(Settings(**params))
    for stage, step in result["steps"].items():
        print(f"{stage}: {step['config']} -> {step['output_dir']}")
    for stage, uri in result["provided"].items():
        print(f"{stage}: not run, starts from the existing checkpoint {uri}")
    for stage, why in result["skipped"].items():
        print(f"{stage}: not run ({why})")
    for warning in result["warnings"]:
        print(f"warning: {warning}")
    write_json(plan, result, {"backend": result["backend"], "dataset": result["dataset"],
                              "jobs": sorted(result["steps"]), "skipped": result["skipped"]})
    prints = result["fingerprints"]
    for what, value in prints.items():
        print(f"fingerprint of {what}: {value}")
    return prints["data"], prints["checkpoints"], prints["task_data"]
