"""Pretraining only: validate -> shard -> Stage 1 -> Stage 2 -> report (the same components).

    umt run pipelines/pretrain.py --local
    umt submit pipelines/pretrain.py output_prefix=s3://bucket/runs input_videos=s3://bucket/k710.csv
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])  # importable without PYTHONPATH (kfp dsl compile)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from kfp import dsl  # noqa: E402

from components import (  # noqa: E402
    cleanup,
    credentials,
    pretrain_stage1,
    pretrain_stage2,
    report,
    shard_videos,
    validate,
)
from components.tasks import cpu_task, exit_task, launcher_task, s3_secret_of  # noqa: E402


@dsl.pipeline(name="umt-pretrain", display_name="UMT: shard and pretrain (Stage 1 + 2)",
              description="WebDataset sharding, Stage-1 and Stage-2 UMT pretraining "
                          "PyTorchJobs and a report.")
def pretrain(
    output_prefix: str = "s3://EDIT_ME_BUCKET/umt/runs",
    input_videos: str = "",
    existing_dataset: str = "",
    classes: str = "",
    samples_per_shard: int = 1000,
    model_size: str = "base",
    num_frames: int = 0,
    batch_size: int = 0,
    stage1_steps: int = 0,
    stage2_steps: int = 0,
    stage1_overrides: list = [],
    stage2_overrides: list = [],
    existing_stage1_checkpoint: str = "",
    run_stage2: bool = True,
    nodes: int = 4,
    gpus_per_node: int = 8,
    node_pool: str = "gke-a100",
    image: str = "",
    s3_secret: str = "umt-s3",
    job_backend: str = "cluster",
    kueue_queue: str = "",
    priority_class: str = "",
    job_namespace: str = "",
):
    """Shards videos and pretrains UMT: Stage 1 (video-only), then Stage 2 (vision-language).

    Args:
        output_prefix: s3:// prefix (a folder locally) for shards, checkpoints and job outputs.
        input_videos: Manifest (.csv/.jsonl), folder or s3:// prefix of videos to shard.
        existing_dataset: dataset.json of already sharded data; skips sharding.
        classes: Class-names file fixing label indices ("" = sorted label names).
        samples_per_shard: Samples per WebDataset shard.
        model_size: tiny, base or large (the presets of both stages).
        num_frames: Frames per clip (0 = the presets').
        batch_size: Batch size per GPU (0 = the presets').
        stage1_steps: Stage-1 optimizer steps (0 = the preset's).
        stage2_steps: Stage-2 optimizer steps (0 = the preset's).
        stage1_overrides: Extra Stage-1 config overrides, key=value.
        stage2_overrides: Extra Stage-2 config overrides, key=value.
        existing_stage1_checkpoint: Start from this Stage-1 checkpoint; skips Stage 1.
        run_stage2: Run Stage 2 after Stage 1.
        nodes: Nodes (pods) per job.
        gpus_per_node: GPUs per node (0 = CPU jobs).
        node_pool: Node pool of the training pods, e.g. gke-a100.
        image: Training image ("" = the umt-train image of this build).
        s3_secret: Kubernetes Secret with the S3 credentials ("" = IRSA / workload identity).
        job_backend: Kind of training job: cluster (the kind the cluster serves, TrainJob
            first), trainjob (Kubeflow Trainer v2) or pytorchjob (Training Operator v1).
        kueue_queue: Kueue LocalQueue of the training jobs ("" = none): they wait, suspended,
            until Kueue admits them (the launcher reports them queued, no timeout runs).
        priority_class: PriorityClass of the training pods ("" = the cluster default).
        job_namespace: Namespace of the training jobs ("" = the pipeline's own; the runner
            needs the umt-launcher Role there).
    """
    done = exit_task(cleanup(job_backend=job_backend, job_namespace=job_namespace))
    jobs = dict(output_prefix=output_prefix, model_size=model_size, num_frames=num_frames,
                batch_size=batch_size, nodes=nodes, gpus_per_node=gpus_per_node,
                node_pool=node_pool, image=image, s3_secret=s3_secret,
                job_backend=job_backend, kueue_queue=kueue_queue,
                priority_class=priority_class, job_namespace=job_namespace)
    with dsl.ExitHandler(done, name="umt"):
        s3 = s3_secret_of(credentials(s3_secret=s3_secret))
        checked = cpu_task(validate(
            input_videos=input_videos, existing_dataset=existing_dataset, classes=classes,
            samples_per_shard=samples_per_shard, stage1_steps=stage1_steps,
            stage2_steps=stage2_steps, stage1_overrides=stage1_overrides,
            stage2_overrides=stage2_overrides,
            existing_stage1_checkpoint=existing_stage1_checkpoint, run_stage2=run_stage2,
            tasks=[], **jobs),
            "Validate settings and plan jobs", s3_secret=s3)
        # Never cached: it fingerprints the inputs' content (issue 16.5; components/tasks.py).
        checked.set_caching_options(False)
        prints = checked.outputs
        data = cpu_task(shard_videos(
            output_prefix=output_prefix, input_videos=input_videos,
            existing_dataset=existing_dataset, classes=classes,
            samples_per_shard=samples_per_shard, fingerprint=prints["data_fingerprint"]),
            "Shard videos to WebDataset",
            s3_secret=s3, cpu="4", memory="8Gi", memory_limit="16Gi",
            retries=2).after(checked)
        stage1 = launcher_task(pretrain_stage1(
            dataset=data.outputs["dataset"], steps=stage1_steps, overrides=stage1_overrides,
            existing_checkpoint=existing_stage1_checkpoint,
            checkpoint_fingerprints=prints["checkpoint_fingerprints"], **jobs),
            "Stage 1: video pretraining", s3_secret=s3)
        stage2 = launcher_task(pretrain_stage2(
            dataset=data.outputs["dataset"], stage1_model=stage1.outputs["model"],
            enabled=run_stage2, steps=stage2_steps, overrides=stage2_overrides,
            checkpoint_fingerprints=prints["checkpoint_fingerprints"], **jobs),
            "Stage 2: vision-language pretraining", s3_secret=s3)
        cpu_task(report(plan=checked.outputs["plan"], dataset=data.outputs["dataset"],
                        title="UMT pretraining run"),
                 "Report", s3_secret=s3).after(stage1, stage2)
