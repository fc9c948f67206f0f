"""The pipeline's steps as plain functions: what each KFP component's body calls.

A component passes its artifacts in as they are (anything with ``.path`` and ``.metadata``;
kfp is never imported here, so these run and are tested without it) and gets them filled:

* ``plan_shards`` -> the shard fan-out's parts, with the inputs' content fingerprint (the
  dataset folder and the shard tasks' cache keys see it); ``shard``: sharded videos (one part,
  or all) -> ``Dataset`` = a small ``dataset.json`` (shard URIs absolute) with counts in its
  metadata; ``merge_shards``: the parts -> the one ``Dataset``; the shards stay where
  ``umt shard`` wrote them;
* ``train``: one stage as a PyTorchJob (``umt.launch.run_training_job``) -> ``Model`` = a small
  ``model.json`` (checkpoint URI, architecture, frames, resolution, step, config hash, parent,
  stage; the same fields as metadata), ``Metrics``, the rendered job YAML;
* ``evaluate``: an evaluation job -> ``Metrics`` (+ ``ClassificationMetrics`` for action);
* ``report`` (see ``umt.report``), ``validate`` (``umt.pipeline.validate``), ``cleanup``.

Checkpoints never pass through KFP: a ``Model`` artifact's file is ``model.json`` and its URI is
the one KFP gave it (under the pipeline root). Every output gets a file, even a skipped step's:
a missing file makes the local cache miss and the backend log warnings.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from umt import catalogue, storage
from umt.pipeline import plan as planning

log = logging.getLogger(__name__)

FAILURE_MARKER = "pipeline-failure.json"
MAX_CONFUSION_CLASSES = 20  # the KFP UI's matrix stays readable; the report has the full one
# A trainer's Metrics, the same names in every run (the KFP run comparison lines them up).
TRAIN_METRICS = ("final_loss", "steps", "clips_per_s", "wall_hours", "gpu_hours")


# -- artifacts -------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """Metadata travels as a protobuf Struct: no None, numbers as floats, JSON types only."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


def write_json(artifact: Any, data: Any, metadata: dict[str, Any] | None = None) -> None:
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    if metadata:
        artifact.metadata.update(_plain(metadata))


def write_text(artifact: Any, text: str) -> None:
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(text)


def read_metadata(artifact: Any) -> dict[str, Any]:
    """An input artifact's metadata (kfp.local and the backend turn ints into floats)."""
    meta = dict(getattr(artifact, "metadata", None) or {})
    return {k: (int(v) if isinstance(v, float) and v.is_integer() and k in _INT_KEYS else v)
            for k, v in meta.items()}


_INT_KEYS = {"step", "num_frames", "resolution", "num_shards", "num_samples", "num_failed",
             "num_classes", "nodes", "gpus_per_node", "num_bytes"}


def read_json_file(artifact: Any) -> dict[str, Any]:
    if artifact is None or not getattr(artifact, "path", None) or not Path(artifact.path).exists():
        return {}
    text = Path(artifact.path).read_text().strip()
    return json.loads(text) if text else {}


def log_metrics(metrics: Any, values: dict[str, Any], **extra: Any) -> dict[str, float]:
    """Numbers go to the Metrics artifact (the KFP run-comparison view) *and* to its file,
    ``{"metrics": {...}, **extra}`` (kfp.local caches only outputs that have a file)."""
    numbers = {k: float(v) for k, v in values.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)
               and v == v and abs(v) != float("inf")}
    for name, value in sorted(numbers.items()):
        metrics.log_metric(name, value)
    write_json(metrics, {"metrics": numbers, **extra})
    return numbers


def skip(reason: str, *outputs: Any) -> None:
    """Fill every output of a disabled step: metadata says so, files exist."""
    print(f"skipped: {reason}")
    for artifact in outputs:
        if artifact is not None:
            write_json(artifact, {"skipped": True, "reason": reason},
                       {"skipped": True, "reason": reason})


# -- sharding ----------------------------------------------------------------------------------
def dataset_metadata(info: Any, uri: str) -> dict[str, Any]:
    return {"dataset_json": uri, "num_shards": len(info.shards), "num_samples": info.num_samples,
            "num_bytes": info.num_bytes, "num_failed": info.num_failed,
            "num_classes": len(info.classes), "classes": list(info.classes[:50]),
            "source": str(info.source.get("input", "")), "shards_uri": uri.rsplit("/", 1)[0]}


def plan_shards(input_videos: str, existing_dataset: str = "", *, shard_parts: int = 1,
                fingerprint: str = "") -> list[dict[str, Any]]:
    """The items of the shard fan-out: ``[{"part", "num_parts", "fingerprint"}]``, each
    carrying ``fingerprint`` (``validate``'s content fingerprint of the input) on to its shard
    task, whose cache key and folder then change with the content. One part when there is
    nothing to shard (``existing_dataset``, or no input: ``validate`` says what is missing).
    """
    if not 1 <= shard_parts <= planning.MAX_SHARD_PARTS:
        raise ValueError(f"shard_parts={shard_parts}: must be 1 to {planning.MAX_SHARD_PARTS}")
    if not input_videos or existing_dataset:
        shard_parts = 1
    print(f"{input_videos or existing_dataset}: content fingerprint {fingerprint or '-'}; "
          f"{shard_parts} shard part(s)")
    return [{"part": i, "num_parts": shard_parts, "fingerprint": fingerprint}
            for i in range(shard_parts)]


def _publish(info: Any, uri: str, dataset: Any, extra: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """Write a Dataset artifact: the dataset.json body with absolute shard URIs (it must work
    away from its folder) and the counts as metadata."""
    body = info.to_dict()
    for entry, absolute in zip(body["shards"], info.shard_uris()):
        entry["uri"] = absolute
    meta = {**dataset_metadata(info, uri), **(extra or {})}
    write_json(dataset, body, meta)
    return meta


def _describe_existing(existing_dataset: str, dataset: Any, fingerprint: str) -> dict[str, Any]:
    from umt.data import dataset_json
    from umt.pipeline.fingerprint import fingerprint as content_fingerprint

    info = dataset_json.load(existing_dataset)
    print(f"using the existing dataset {existing_dataset}: {info.num_samples} samples in "
          f"{len(info.shards)} shards")
    return _publish(info, existing_dataset, dataset,
                    {"fingerprint": fingerprint or content_fingerprint(existing_dataset)})


def _dataset_dir(output_prefix: str, input_videos: str, samples_per_shard: int, short_side: int,
                 classes: str, fingerprint: str) -> str:
    if not input_videos:
        raise ValueError("set input_videos (a manifest, folder or s3:// prefix of videos) "
                         "or existing_dataset (a dataset.json)")
    return planning.dataset_dir(output_prefix, input_videos, samples_per_shard=samples_per_shard,
                                short_side=short_side, classes=classes, fingerprint=fingerprint)


def _current_fingerprint(input_videos: str, planned: str) -> str:
    """The input's content fingerprint now; refused when it is not the ``planned`` one (the
    input was edited after ``validate`` planned the run's folders from it)."""
    from umt.pipeline.fingerprint import fingerprint as content_fingerprint

    now = content_fingerprint(input_videos)
    if planned and now != planned:
        raise ValueError(f"{input_videos} changed since it was fingerprinted ({planned}, now "
                         f"{now}): rerun the pipeline, so every step plans from the new content")
    return now


def shard(input_videos: str, existing_dataset: str, output_prefix: str, *, classes: str = "",
          samples_per_shard: int = 1000, short_side: int = 320, part: int = 0,
          num_parts: int = 1, fingerprint: str = "", dataset: Any) -> dict[str, Any]:
    """Shard ``input_videos`` (part ``part`` of ``num_parts``) under
    ``<output_prefix>/datasets/`` (resuming verified shards), or describe ``existing_dataset``;
    write the Dataset artifact (one part's: its ``part.json``). ``fingerprint``: the content
    fingerprint of the input (``validate``'s; "" = computed here), part of the shard folder and
    of the artifact's metadata, which the training steps' folders hash."""
    from umt.data import dataset_json
    from umt.data.manifest import read_classes
    from umt.data.shard import available_cpus, shard_dataset
    from umt.data.shard_parts import Part
    from umt.data.transcode import TranscodeSettings

    if existing_dataset:  # (plan_shards then plans one part)
        return _describe_existing(existing_dataset, dataset, fingerprint)
    fingerprint = _current_fingerprint(input_videos, fingerprint) if input_videos else ""
    out = _dataset_dir(output_prefix, input_videos, samples_per_shard, short_side, classes,
                       fingerprint)
    piece = Part(int(part), int(num_parts)) if num_parts > 1 else None
    print(f"sharding {input_videos}{f' (part {piece})' if piece else ''} -> {out}")
    info = shard_dataset(input_videos, out, TranscodeSettings(short_side=short_side),
                         samples_per_shard=samples_per_shard, workers=available_cpus(),
                         classes=read_classes(classes) if classes else None, part=piece,
                         progress=False)
    print(f"wrote {info.num_samples} samples in {len(info.shards)} shards, "
          f"{info.num_failed} inputs failed")
    if piece:
        return _publish(info, info.location, dataset, {"part": piece.index,
                                                       "num_parts": piece.count,
                                                       "fingerprint": fingerprint})
    return _publish(info, storage.join(out, dataset_json.FILENAME), dataset,
                    {"fingerprint": fingerprint})


def merge_shards(input_videos: str, existing_dataset: str, output_prefix: str, *,
                 shard_plan: Sequence[dict[str, Any]], classes: str = "",
                 samples_per_shard: int = 1000, short_side: int = 320,
                 dataset: Any) -> dict[str, Any]:
    """The shard fan-out's one Dataset: the parts of ``shard_plan`` merged into dataset.json
    (one part: its dataset.json as it is), or ``existing_dataset`` described."""
    from umt.data import dataset_json
    from umt.data.shard_parts import merge_parts

    # kfp.local and the backend hand list items over as JSON numbers: 2.0 for 2.
    num_parts = int(shard_plan[0]["num_parts"]) if shard_plan else 1
    fingerprint = str(shard_plan[0].get("fingerprint", "")) if shard_plan else ""
    if existing_dataset:
        return _describe_existing(existing_dataset, dataset, fingerprint)
    out = _dataset_dir(output_prefix, input_videos, samples_per_shard, short_side, classes,
                       fingerprint)
    if num_parts > 1:
        info = merge_parts(out, num_parts)
        print(f"merged {num_parts} parts: {info.num_samples} samples in {len(info.shards)} "
              f"shards, {info.num_failed} inputs failed -> {info.location}")
    else:
        info = dataset_json.load(out)
    return _publish(info, info.location, dataset, {"fingerprint": fingerprint})


# -- training and evaluation jobs ---------------------------------------------------------------
def run_id() -> str:
    """The KFP run id, from the pod's label (``use_field_path_as_env``), never a task input:
    a cached task that took it as an input would never hit the cache on a cluster."""
    return os.environ.get("KFP_RUN_ID", "").strip()


def _check_failure_marker(output_dir: str, rid: str) -> None:
    """A task retried (KFP ``set_retry``) after its job failed for good fails at once."""
    if not rid:
        return
    marker = storage.join(output_dir, FAILURE_MARKER)
    try:
        record = json.loads(storage.read_bytes(marker))
    except (FileNotFoundError, ValueError):
        return
    if record.get("run_id") == rid:
        raise RuntimeError(f"not running job {record.get('job', '')} again: it failed in an "
                           f"earlier attempt of this task in run {rid} (rerun the pipeline to "
                           f"try again): {record.get('message', '')}")


def _write_failure_marker(output_dir: str, rid: str, job: str, message: str) -> None:
    if rid:
        storage.write_bytes(storage.join(output_dir, FAILURE_MARKER), json.dumps(
            {"run_id": rid, "job": job, "message": message[:4000],
             "time": datetime.now().isoformat(timespec="seconds")}).encode())


def queue_metrics(result: Any) -> dict[str, float]:
    """``queue_hours``: how long Kueue held the job before admitting it (only for a job that
    waited in a Kueue queue). Its GPU hours start at admission."""
    waited = result.status.queued_seconds() if hasattr(result.status, "queued_seconds") else None
    if waited is None:
        return {}
    print(f"job {result.name} waited {waited:.0f}s in Kueue queue {result.status.queue}")
    return {"queue_hours": waited / 3600}


def _job_seconds(result: Any, measured: float) -> float:
    """Job wall time as its backend recorded it (start -> finish): right even when this
    launcher adopted a job an earlier attempt started. Falls back to what we measured."""
    recorded = result.status.duration_seconds()
    return measured if recorded is None else recorded


def read_summary(result: Any, output_dir: str) -> dict[str, Any]:
    summary = getattr(result, "summary", None)
    if summary:
        return dict(summary)
    try:
        return json.loads(storage.read_bytes(storage.join(output_dir, "summary.json")))
    except FileNotFoundError:
        return {}


def read_history(output_dir: str) -> list[dict[str, Any]]:
    """The stage's ``metrics.jsonl`` (one record per logged step); [] when there is none."""
    try:
        text = storage.read_bytes(storage.join(output_dir, "metrics.jsonl")).decode()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def launch(step: planning.StepPlan, checkpoint: str, *, nodes: int, gpus_per_node: int,
           node_pool: str, image: str, s3_secret: str, job_yaml: str,
           job_backend: str = "cluster", kueue_queue: str = "", priority_class: str = "",
           job_namespace: str = "") -> tuple[Any, float]:
    """Run the planned job to the end (cluster or local executor); (JobResult, seconds).
    ``job_backend``: the kind of job; ``kueue_queue``, ``priority_class``, ``job_namespace``:
    the platform's ("" = none / the pipeline's namespace)."""
    from umt.launch import JobFailedError, S3Credentials, run_training_job
    from umt.launch.backend import shares_filesystem
    from umt.pipeline.run_state import stop_jobs_on_signal

    rid = run_id()
    _check_failure_marker(step.output_dir, rid)
    backend = planning.job_backend(job_backend)
    started = time.monotonic()
    try:
        # The plan loaded the config already (with the parent's identity where the job gets
        # its checkpoint URI, and output_uri where the job gets its folder): not again.
        result = run_training_job(
            step.stage, step.config, step.job_overrides(checkpoint), nodes=nodes,
            gpus_per_node=gpus_per_node, node_pool=node_pool, backend=backend,
            output_uri=step.output_dir, run_id=rid or None, rendered_yaml_path=job_yaml,
            image=image or None, s3=S3Credentials(secret=s3_secret) if s3_secret else None,
            local_workdir=planning.local_jobs_dir(), resolved=step.resolved,
            kueue_queue=kueue_queue or None, priority_class=priority_class or None,
            namespace=job_namespace or None,
            # A SIGTERM stops a cluster job only when the run was stopped, not when just this
            # pod goes (drain, scale-down): the retry or a rerun adopts the job. Local jobs
            # are this process's children and end with it either way.
            run_stopped=None if shares_filesystem(backend) else stop_jobs_on_signal)
    except JobFailedError as e:
        if getattr(e, "permanent", True):
            _write_failure_marker(step.output_dir, rid, e.status.name, str(e))
        raise
    return result, time.monotonic() - started


def _model_metadata(step: planning.StepPlan, *, checkpoint: str, parent_checkpoint: str,
                    summary: dict[str, Any], data: str, provided: bool = False) -> dict[str, Any]:
    cfg = step.resolved
    return {
        "stage": step.stage, "checkpoint": checkpoint, "skipped": False, "provided": provided,
        "architecture": planning.config_value(cfg, "model.name", ""),
        "num_frames": planning.config_value(cfg, "model.num_frames", 0),
        "resolution": planning.config_value(cfg, "model.img_size", 0),
        "step": summary.get("steps", 0), "config": step.config, "config_hash": step.config_hash,
        # What a child's plan hashes as its parent: our folder (known before we trained).
        "identity": checkpoint if provided else step.output_dir,
        "output_dir": "" if provided else step.output_dir,
        "parent": parent_checkpoint, "dataset": data,
    }


def parent_model(parent: Any, what: str) -> dict[str, Any]:
    meta = read_metadata(parent) if parent is not None else {}
    if parent is not None and (meta.get("skipped") or not meta.get("checkpoint")):
        raise ValueError(f"{what} needs a trained parent model, but its parent step was "
                         f"skipped ({meta.get('reason', 'no checkpoint')}); enable it or give "
                         "an existing checkpoint")
    return meta


def train(stage: str, *, dataset: Any, parent: Any = None, enabled: bool = True,
          model_size: str, steps: int = 0, batch_size: int = 0, num_frames: int = 0,
          overrides: Sequence[str] = (), existing_checkpoint: str = "", train_data: str = "",
          data_fingerprint: str = "", checkpoint_fingerprints: dict[str, str] | None = None,
          output_prefix: str, nodes: int, gpus_per_node: int, node_pool: str, image: str = "",
          s3_secret: str = "umt-s3", job_backend: str = "cluster", kueue_queue: str = "",
          priority_class: str = "", job_namespace: str = "", model: Any, metrics: Any,
          job: Any) -> dict[str, Any]:
    """One training stage from ``dataset`` (or ``train_data``, whose content fingerprint is
    ``data_fingerprint``) and ``parent``'s checkpoint (or ``existing_checkpoint``, whose
    fingerprint is ``checkpoint_fingerprints[stage]``)."""
    if not enabled:
        skip(f"{stage} is disabled by a pipeline parameter", model, metrics, job)
        return {"skipped": True}
    data = train_data or read_metadata(dataset)["dataset_json"]
    if not train_data:
        data_fingerprint = read_metadata(dataset).get("fingerprint", "")
    if existing_checkpoint:
        if not storage.exists(existing_checkpoint):
            raise FileNotFoundError(f"existing checkpoint {existing_checkpoint} does not exist")
        try:  # the config says what the checkpoint is (architecture, frames, resolution)
            step = planning.plan_step(stage, model_size, output_prefix, data=data,
                                      num_frames=num_frames, extra=overrides)
        except ValueError:  # a stage not registered here: the checkpoint is all we know
            step = planning.StepPlan(stage, "", [], "", "", "")
        meta = _model_metadata(step, checkpoint=existing_checkpoint, summary={}, data=data,
                               parent_checkpoint="", provided=True)
        # A child's folder hashes this: the URI and what is there now.
        meta["identity"] = planning.checkpoint_identity(
            existing_checkpoint, (checkpoint_fingerprints or {}).get(stage, ""))
        write_json(model, meta, meta)
        log_metrics(metrics, {}, stage=stage)
        write_text(job, f"# no job: {stage} starts from the existing checkpoint "
                        f"{existing_checkpoint}\n")
        print(f"{stage}: using the existing checkpoint {existing_checkpoint}")
        return meta
    parent_meta = parent_model(parent, stage)
    step = planning.plan_step(stage, model_size, output_prefix, data=data,
                              parent=parent_meta.get("identity", ""), steps=steps,
                              batch_size=batch_size, num_frames=num_frames, extra=overrides,
                              data_fingerprint=data_fingerprint)
    print(f"{stage}: preset {step.config}, output {step.output_dir}\n  overrides: "
          + " ".join(step.job_overrides(parent_meta.get("checkpoint", ""))))
    result, measured = launch(step, parent_meta.get("checkpoint", ""), nodes=nodes,
                              gpus_per_node=gpus_per_node, node_pool=node_pool, image=image,
                              s3_secret=s3_secret, job_yaml=job.path, job_backend=job_backend,
                              kueue_queue=kueue_queue,
                              priority_class=priority_class, job_namespace=job_namespace)
    summary = read_summary(result, step.output_dir)
    if not summary.get("checkpoint"):
        raise RuntimeError(f"{stage} succeeded but {step.output_dir}/summary.json names no "
                           "checkpoint")
    seconds = _job_seconds(result, measured)
    meta = _model_metadata(step, checkpoint=summary["checkpoint"], summary=summary, data=data,
                           parent_checkpoint=parent_meta.get("checkpoint", ""))
    meta.update(nodes=nodes, gpus_per_node=gpus_per_node, node_pool=node_pool,
                job_name=result.name, wall_seconds=round(seconds, 1))
    if "energy_kwh" in summary:  # measured by the stage (NVML energy counters), if it does
        meta["energy_kwh_measured"] = summary["energy_kwh"]
    write_json(model, meta, meta)
    history = read_history(step.output_dir)
    speeds = [r["clips_per_s"] for r in history[1:] or history if r.get("clips_per_s")]
    hours = seconds / 3600
    values = {"final_loss": summary.get("final_loss"), "steps": summary.get("steps"),
              "clips_per_s": sorted(speeds)[len(speeds) // 2] if speeds else None,
              "wall_hours": hours, "gpu_hours": hours * nodes * gpus_per_node}
    numbers = log_metrics(metrics, {**{k: values[k] for k in TRAIN_METRICS},
                                    **queue_metrics(result)}, stage=stage)
    write_step_record(step.output_dir, {"model": meta, "metrics": numbers})
    return meta


def finetune(task: str, *, tasks: Sequence[str] = (planning.ALL_TASKS,),
             task_data: dict[str, str] | None = None,
             task_data_fingerprints: dict[str, str] | None = None,
             **kwargs: Any) -> dict[str, Any]:
    """The fine-tune of ``task`` (the catalogue's): skipped unless ``task`` is in ``tasks``;
    its data is ``task_data["<task>_train"]`` or the pipeline's dataset."""
    stage = _task_stage(task, catalogue.finetune_of, "fine-tune")
    key = planning.task_data_key(stage)
    return train(stage.name, enabled=planning.task_enabled(stage, tasks),
                 train_data=(task_data or {}).get(key, ""),
                 data_fingerprint=(task_data_fingerprints or {}).get(key, ""), **kwargs)


def _task_stage(task: str, lookup: Any, what: str) -> catalogue.Stage:
    stage = lookup(task)
    if stage is None:
        have = [t for t in catalogue.tasks() if lookup(t) is not None]
        raise ValueError(f"task={task!r} has no {what} stage; tasks with one: {', '.join(have)}")
    return stage


# -- step records: what the report reads ------------------------------------------------------
STEP_RECORD = "pipeline-step.json"


def write_step_record(output_dir: str, record: dict[str, Any]) -> None:
    """What a step's artifacts say, also beside its job's outputs: the report reads the run's
    steps from the plan's output folders, so it needs no input per step."""
    storage.write_bytes(storage.join(output_dir, STEP_RECORD),
                        json.dumps(record, sort_keys=True, default=str).encode())


def read_step_record(output_dir: str) -> dict[str, Any]:
    try:
        return json.loads(storage.read_bytes(storage.join(output_dir, STEP_RECORD)))
    except FileNotFoundError:
        return {}


def _flat_numbers(data: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat_numbers(value, f"{name}_"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


def read_eval_metrics(output_dir: str) -> dict[str, Any]:
    """``<output_dir>/metrics.json`` of an evaluation (or the ``metrics`` of its summary)."""
    try:
        return json.loads(storage.read_bytes(storage.join(output_dir, "metrics.json")))
    except FileNotFoundError:
        summary = read_summary(None, output_dir)
        if isinstance(summary.get("metrics"), dict):
            return summary["metrics"]
        raise FileNotFoundError(f"the evaluation wrote neither {output_dir}/metrics.json nor "
                                "metrics in summary.json") from None


def confusion_subset(matrix: list[list[float]], names: list[str],
                     limit: int = MAX_CONFUSION_CLASSES) -> tuple[list[str], list[list[float]]]:
    """The ``limit`` classes with the most samples (rows = true class), in their order."""
    support = [sum(row) for row in matrix]
    keep = sorted(sorted(range(len(matrix)), key=lambda i: -support[i])[:limit])
    return [names[i] for i in keep], [[matrix[i][j] for j in keep] for i in keep]


def evaluate(task: str, *, model: Any, dataset: Any, tasks: Sequence[str] = (planning.ALL_TASKS,),
             task_data: dict[str, str] | None = None,
             task_data_fingerprints: dict[str, str] | None = None, model_size: str,
             num_frames: int = 0,
             overrides: Sequence[str] = (), output_prefix: str, nodes: int, gpus_per_node: int,
             node_pool: str, image: str = "", s3_secret: str = "umt-s3",
             job_backend: str = "cluster", kueue_queue: str = "", priority_class: str = "",
             job_namespace: str = "", metrics: Any, confusion: Any,
             job: Any) -> dict[str, Any]:
    """Evaluate ``model`` on ``task`` (the catalogue's evaluation of it) as a job; skipped
    unless ``task`` is in ``tasks``; data: ``task_data["<task>_eval"]`` or the dataset."""
    entry = _task_stage(task, catalogue.evaluation_of, "evaluation")
    stage = entry.name
    if not planning.task_enabled(entry, tasks):
        skip(f"{stage} is disabled by a pipeline parameter", metrics, confusion, job)
        return {"skipped": True}
    parent = parent_model(model, stage)
    key = planning.task_data_key(entry)
    if (task_data or {}).get(key):
        data, data_fingerprint = task_data[key], (task_data_fingerprints or {}).get(key, "")
    else:
        meta = read_metadata(dataset)
        data, data_fingerprint = meta["dataset_json"], meta.get("fingerprint", "")
    step = planning.plan_step(stage, model_size, output_prefix, data=data,
                              parent=parent["identity"], num_frames=num_frames, extra=overrides,
                              trains=False, data_fingerprint=data_fingerprint)
    print(f"{stage}: {parent['checkpoint']} on {data}, output {step.output_dir}")
    result, seconds = launch(step, parent["checkpoint"], nodes=nodes,
                             gpus_per_node=gpus_per_node, node_pool=node_pool, image=image,
                             s3_secret=s3_secret, job_yaml=job.path, job_backend=job_backend,
                              kueue_queue=kueue_queue,
                             priority_class=priority_class, job_namespace=job_namespace)
    full = read_eval_metrics(step.output_dir)
    # The Metrics artifact gets the headline numbers of the job's summary (stable names such as
    # top1, t2v_r1), or all numbers of metrics.json when it names none.
    headline = read_summary(result, step.output_dir).get("metrics")
    values = headline if isinstance(headline, dict) and headline else full
    matrix, names = full.get("confusion_matrix"), full.get("class_names")
    numbers = _flat_numbers({k: v for k, v in values.items() if k != "confusion_matrix"})
    hours = _job_seconds(result, seconds) / 3600
    numbers.update(wall_hours=hours, gpu_hours=hours * nodes * gpus_per_node,
                   **queue_metrics(result))
    # The file keeps everything, the full confusion matrix included (the report draws it).
    numbers = log_metrics(metrics, numbers, task=task, stage=stage, model=parent["checkpoint"],
                          output_dir=step.output_dir, nodes=nodes, gpus_per_node=gpus_per_node,
                          confusion_matrix=matrix or [], class_names=names or [])
    if matrix:
        names = list(names or [str(i) for i in range(len(matrix))])
        shown, sub = confusion_subset(matrix, names)
        confusion.log_confusion_matrix(shown, [[int(v) for v in row] for row in sub])
        write_json(confusion, {"classes": shown, "matrix": sub, "of_classes": len(names)})
    else:
        write_json(confusion, {"classes": [], "matrix": []})
    write_step_record(step.output_dir, read_json_file(metrics))
    return numbers


# -- the end -----------------------------------------------------------------------------------
def cleanup(state: str = "", error: str = "", job_backend: str = "cluster",
            job_namespace: str = "") -> str:
    """Exit handler: stop the run's unfinished jobs when the run was stopped on purpose.

    Whether it was is read from the run's own Workflow (:mod:`umt.pipeline.run_state`):

    * stopped (KFP's Terminate, ``argo stop``, the run's deadline, the run deleted): every
      unfinished job of the run is deleted -- nothing follows them any more;
    * not stopped (the run failed): the jobs still running are ones whose launcher pod was
      lost (a drain, a deleted pod: Argo retries neither an ``Error`` node nor an attempt past
      its retry window), healthy: they are kept, and a rerun adopts them by their names;
    * unknown (the Workflow cannot be read): deleted, as GPUs are dearer than a resume.

    Local jobs are processes of their launcher tasks and end with them: nothing to do."""
    from umt.launch.gc import delete_run_jobs, unfinished_run_jobs
    from umt.pipeline.run_state import read_run_state

    rid = run_id()
    print(f"pipeline finished: {state or 'unknown'}{' (' + error + ')' if error else ''}")
    from umt.launch.backend import shares_filesystem

    backend = planning.job_backend(job_backend)
    if shares_filesystem(backend):
        return "local run: every job ended with its task"
    if not rid:
        return "no KFP_RUN_ID in the environment: nothing to clean up"
    run = read_run_state(timeout=30.0)
    print(f"run {rid} is {run.state}: {run.reason}")
    if run.state == "running":
        kept = unfinished_run_jobs(rid, namespace=job_namespace or None,
                                   backend=backend)
        return (f"the run was not stopped: kept {len(kept)} unfinished jobs of run {rid}"
                + (f" ({', '.join(kept)}: their launchers were lost; rerun the pipeline to "
                   f"adopt them, or `umt job gc --run-id {rid}` to stop them)" if kept else ""))
    deleted = delete_run_jobs(rid, namespace=job_namespace or None,
                              backend=backend)
    return (f"deleted {len(deleted)} unfinished jobs of run {rid}"
            + (f": {', '.join(deleted)}" if deleted else ""))


# -- the report --------------------------------------------------------------------------------
def _eval_details(output_dir: str) -> dict[str, Any]:
    """An evaluation's metrics.json, less its bulky per-sample parts (the report computes the
    chance level from its counts); {} when unreadable (the report then shows no chance)."""
    try:
        full = read_eval_metrics(output_dir)
    except (FileNotFoundError, ValueError) as exc:
        log.warning("report: no metrics.json in %s (%s)", output_dir, exc)
        return {}
    return {k: v for k, v in full.items() if k not in ("confusion_matrix", "per_class_accuracy",
                                                        "class_names")}


def report(*, plan: Any, dataset: Any, title: str, gpu_power_watts: float,
           grid_g_per_kwh: float, markdown: Any, html: Any) -> dict[str, Any]:
    """Collect what the run's steps wrote and write the Markdown and HTML reports.

    The run's steps are the plan's (the ``validate`` artifact): every stage of the catalogue
    is planned (its record is read from its output folder), provided (an existing
    checkpoint), skipped (with the reason) or not part of the plan at all.
    """
    from umt.report import Report, Step, render_html, render_markdown

    body = read_json_file(plan)
    planned, provided = body.get("steps", {}), body.get("provided", {})
    skipped = body.get("skipped", {})
    data_meta = read_metadata(dataset)
    steps = [Step("Data", "", "data", metadata=data_meta)]
    confusion: dict[str, Any] = {}
    for stage in catalogue.STAGES.values():
        kind = "train" if stage.trains else "eval"
        if stage.name in provided:
            steps.append(Step(stage.title, stage.name, kind, "provided",
                              {"stage": stage.name, "checkpoint": provided[stage.name]}))
        elif stage.name in skipped:
            steps.append(Step(stage.title, stage.name, kind, "skipped",
                              reason=skipped[stage.name]))
        elif stage.name in planned:
            output_dir = planned[stage.name]["output_dir"]
            record = read_step_record(output_dir)
            if not record:
                steps.append(Step(stage.title, stage.name, kind, "skipped",
                                  reason=f"no {STEP_RECORD} in {output_dir}"))
            elif stage.trains:
                steps.append(Step(stage.title, stage.name, kind, "done", record["model"],
                                  record.get("metrics", {}), read_history(output_dir),
                                  plan=planned[stage.name]))
            else:
                if record.get("confusion_matrix"):
                    confusion = {"matrix": record["confusion_matrix"],
                                 "class_names": record.get("class_names") or []}
                steps.append(Step(stage.title, stage.name, kind, "done",
                                  {k: v for k, v in record.items() if k != "metrics"},
                                  record.get("metrics", {}), plan=planned[stage.name],
                                  details=_eval_details(output_dir)))
    name = data_meta.get("dataset_json", "").rstrip("/").rsplit("/", 2)[-2:-1]
    rep = Report(title=title, steps=steps, confusion=confusion, gpu_power_watts=gpu_power_watts,
                 grid_g_per_kwh=grid_g_per_kwh,
                 dataset={"name": f"data: {name[0] if name else 'dataset'}", **{
                     k: data_meta.get(k, "") for k in ("dataset_json", "num_samples",
                                                       "num_shards", "num_failed",
                                                       "num_classes", "classes", "source")}})
    write_text(markdown, render_markdown(rep))
    write_text(html, render_html(rep))
    summary = {s.name: s.status for s in steps}
    print(render_markdown(rep))
    return summary
