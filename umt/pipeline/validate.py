"""The pipeline's first task: check every setting in seconds, before anything GPU-bound.

KFP parameters are plain strings and numbers (no enums), so a typo in a Stage-2 override or a
model size would otherwise surface only when Stage 2 starts, days into the run. ``validate``

* checks what the UI cannot constrain: model size, node pool and GPUs per node, step counts,
  which downstream tasks run and whether what they start from exists;
* plans every enabled job exactly as its task will (``umt.pipeline.plan``): loads its config
  with all overrides, renders and validates its PyTorchJob (CRD schema, webhook rules) --
  an enabled stage that is not registered in ``umt.train.STAGES`` fails here, by name;
* checks the data (a dataset.json loads, an input exists) and the output prefix (write, read
  back, delete a marker: that exercises the S3 credentials from the Secret too); on a cluster
  also the PyTorchJob CRD, RBAC and the S3 Secret (``umt doctor``'s checks).

It reports every problem at once, then fails. The plan (output folders, configs, rendered jobs)
is the task's artifact. No kfp here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from umt import storage
from umt.pipeline import plan as planning


@dataclass
class Settings:
    """The pipeline parameters ``validate`` needs (the names are the pipeline's)."""

    output_prefix: str
    input_videos: str = ""
    existing_dataset: str = ""
    classes: str = ""
    samples_per_shard: int = 1000
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
    run_action: bool = True
    run_retrieval: bool = True
    run_qa: bool = True
    run_mc: bool = True
    # Downstream data ("" = the pipeline's dataset): <task>_train_data, <task>_eval_data.
    downstream_data: dict[str, str] = field(default_factory=dict)
    nodes: int = 1
    gpus_per_node: int = 8
    downstream_nodes: int = 1
    node_pool: str = "gke-a100"
    image: str = ""
    s3_secret: str = "umt-s3"


class InvalidPipelineSettings(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("the pipeline's settings have problems (nothing was started):\n  - "
                         + "\n  - ".join(problems))


def enabled_steps(s: Settings) -> dict[str, bool]:
    """Which jobs the settings run, by step name (= stage name)."""
    tasks = {"action": s.run_action, "retrieval": s.run_retrieval, "qa": s.run_qa,
             "mc": s.run_mc}
    steps = {"stage1": not s.existing_stage1_checkpoint,
             "stage2": s.run_stage2 and not s.existing_stage2_checkpoint}
    for task, stage in planning.FINETUNE_STAGES.items():
        steps[stage] = tasks[task]
    for task, stage in planning.EVAL_STAGES.items():
        steps[stage] = tasks[task]
    return steps


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

    placeholder = step.parent if step.parent else ""
    req = TrainingJob(stage=step.stage, config=step.config,
                      overrides=step.job_overrides(placeholder), nodes=nodes,
                      gpus_per_node=s.gpus_per_node, node_pool=s.node_pool,
                      image=s.image or None, run_id=os.environ.get("KFP_RUN_ID") or None,
                      output_uri=step.output_dir,
                      s3=S3Credentials(secret=s.s3_secret) if s.s3_secret else None,
                      allow_local_output=backend == "local", resolved=step.resolved)
    return render_job_yaml(req, backend)


def validate(s: Settings, *, cluster_checks: bool | None = None) -> dict[str, Any]:
    """Check ``s``; return the plan, or raise :class:`InvalidPipelineSettings` listing every
    problem. ``cluster_checks`` (default: when running on a cluster) adds ``umt doctor``'s."""
    from umt.data import dataset_json
    from umt.launch.node_pools import get_node_pool

    p = _Problems()
    backend = planning.job_backend()
    if cluster_checks is None:
        cluster_checks = backend == "cluster"

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
    unknown = set(s.downstream_data) - {f"{t}_{k}_data" for t in planning.EVAL_STAGES
                                        for k in ("train", "eval")}
    if unknown:
        p.add(f"unknown downstream data settings: {sorted(unknown)}")
    if backend == "cluster" and not storage.is_s3(s.output_prefix):
        p.add(f"output_prefix={s.output_prefix!r} must be an s3:// prefix on a cluster: each "
              "training pod has its own filesystem")

    # Downstream tasks need their parents.
    has_stage2 = s.run_stage2 or bool(s.existing_stage2_checkpoint)
    for flag, task in (("run_retrieval", "retrieval"), ("run_qa", "qa"), ("run_mc", "mc")):
        if getattr(s, flag) and not has_stage2:
            p.add(f"{flag}=true needs the Stage-2 model: set run_stage2=true or "
                  f"existing_stage2_checkpoint (or {flag}=false)")
    if s.run_mc and not s.run_retrieval:
        p.add("run_mc=true evaluates the retrieval model: set run_retrieval=true too")

    # Data.
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
            short_side=s.short_side, classes=s.classes), dataset_json.FILENAME)
    else:
        p.add("no data: set input_videos (a manifest, folder or s3:// prefix of videos) or "
              "existing_dataset (a dataset.json written by `umt shard`)")
        data = storage.join(s.output_prefix, "datasets", "none", dataset_json.FILENAME)
    for key, uri in sorted(s.downstream_data.items()):
        if uri:
            p.check(f"{key} {uri}", dataset_json.load, uri)
    for key in ("existing_stage1_checkpoint", "existing_stage2_checkpoint"):
        uri = getattr(s, key)
        if uri:
            p.exists(f"{key} {uri}", storage.exists, uri)

    # Every enabled job, planned and rendered as its task will.
    enabled = enabled_steps(s)
    known = planning.known_stages()
    steps: dict[str, dict[str, Any]] = {}
    identity: dict[str, str] = {"stage1": s.existing_stage1_checkpoint,
                                "stage2": s.existing_stage2_checkpoint}

    def plan_one(stage: str, parent: str, *, steps_: int, extra: Sequence[str],
                 trains: bool, nodes: int, data_uri: str) -> None:
        if not enabled.get(stage) or s.model_size not in planning.MODEL_SIZES:
            return
        if stage not in known:
            flag = _flag_of(stage)
            p.add(f"{stage} is enabled ({flag}) but stage {stage!r} is not in the stage "
                  f"catalogue (umt.catalogue; known: {', '.join(sorted(known))}); "
                  f"set {flag}=false")
            return
        step = p.check(stage, planning.plan_step, stage, s.model_size, s.output_prefix,
                       data=data_uri, parent=parent, steps=steps_, batch_size=s.batch_size,
                       num_frames=s.num_frames, extra=extra, trains=trains)
        if step is None:
            return
        identity[stage] = step.output_dir
        job = p.check(f"{stage} job", _render, step, s, nodes, backend)
        steps[stage] = {**step.describe(), "nodes": nodes, "gpus_per_node": s.gpus_per_node,
                        "job": job or ""}

    plan_one("stage1", "", steps_=s.stage1_steps, extra=s.stage1_overrides, trains=True,
             nodes=s.nodes, data_uri=data)
    plan_one("stage2", identity["stage1"], steps_=s.stage2_steps, extra=s.stage2_overrides,
             trains=True, nodes=s.nodes, data_uri=data)
    for task, stage in planning.FINETUNE_STAGES.items():
        plan_one(stage, identity.get(planning.FINETUNE_PARENT[task], ""),
                 steps_=s.finetune_steps, extra=s.finetune_overrides, trains=True,
                 nodes=s.downstream_nodes,
                 data_uri=s.downstream_data.get(f"{task}_train_data") or data)
        identity[task] = identity.get(stage, "")
    for task, stage in planning.EVAL_STAGES.items():
        plan_one(stage, identity.get(planning.EVAL_MODEL[task], ""), steps_=0,
                 extra=s.eval_overrides, trains=False, nodes=s.downstream_nodes,
                 data_uri=s.downstream_data.get(f"{task}_eval_data") or data)

    # Storage and, on a cluster, the cluster itself.
    warnings: list[str] = []
    from umt.launch import doctor

    checks = (doctor.run_checks(output_uri=s.output_prefix, s3_secret=s.s3_secret or None)
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
    return {"backend": backend, "dataset": data, "steps": steps,
            "skipped": sorted(k for k, v in enabled.items() if not v), "warnings": warnings}


def _flag_of(stage: str) -> str:
    if stage == "stage2":
        return "run_stage2"
    for stages in (planning.FINETUNE_STAGES, planning.EVAL_STAGES):
        for task, name in stages.items():
            if name == stage:
                return f"run_{task}"
    return stage


def validate_step(params: dict[str, Any], plan: Any) -> dict[str, Any]:
    """The ``validate`` component's body: its parameters (by name) in, the plan artifact out."""
    from umt.pipeline.steps import write_json

    params = dict(params)
    downstream = {k: params.pop(k) for k in list(params) if k.endswith(("_train_data", "_eval_data"))}
    settings = Settings(**params, downstream_data=downstream)
    result = validate(settings)
    for stage, step in result["steps"].items():
        print(f"{stage}: {step['config']} -> {step['output_dir']}")
    for stage in result["skipped"]:
        print(f"{stage}: not run (disabled, or starts from an existing checkpoint)")
    for warning in result["warnings"]:
        print(f"warning: {warning}")
    write_json(plan, result, {"backend": result["backend"], "dataset": result["dataset"],
                              "jobs": sorted(result["steps"]), "skipped": result["skipped"]})
    return result
