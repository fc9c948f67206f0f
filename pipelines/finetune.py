"""Fine-tune and evaluate action recognition from an existing Stage-1 checkpoint (e.g. an
official UMT one) on your data, with the same components:
validate -> describe data -> register the checkpoint -> fine-tune -> evaluate -> report.

    umt submit pipelines/finetune.py output_prefix=s3://bucket/runs \\
        checkpoint=s3://bucket/ckpt/b16_ptk710_f8_res224.pth \\
        train_data=s3://bucket/k400/train/dataset.json \\
        task_data='{"action_eval": "s3://bucket/k400/val/dataset.json"}'
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
    evaluate,
    pretrain_stage1,
    report,
    shard_videos,
    validate,
)
from components import finetune as finetune_step  # noqa: E402  (the pipeline is `finetune`)
from components.tasks import cpu_task, exit_task, launcher_task, s3_secret_of  # noqa: E402


@dsl.pipeline(name="umt-finetune-action",
              display_name="UMT: fine-tune and evaluate action recognition",
              description="Action-recognition fine-tune + evaluation PyTorchJobs from an "
                          "existing Stage-1 checkpoint, and a report.")
def finetune(
    checkpoint: str,
    train_data: str,
    task_data: dict = {},
    output_prefix: str = "s3://EDIT_ME_BUCKET/umt/runs",
    model_size: str = "base",
    num_frames: int = 0,
    batch_size: int = 0,
    finetune_steps: int = 0,
    finetune_overrides: list = [],
    eval_overrides: list = [],
    nodes: int = 1,
    gpus_per_node: int = 8,
    node_pool: str = "gke-a100",
    image: str = "",
    s3_secret: str = "umt-s3",
    job_backend: str = "cluster",
    kueue_queue: str = "",
    priority_class: str = "",
    job_namespace: str = "",
):
    """Fine-tunes a Stage-1 checkpoint for action recognition and evaluates it.

    Args:
        checkpoint: The Stage-1 checkpoint to start from (local path or s3:// URI).
        train_data: dataset.json of the labelled training videos (from `umt shard`).
        task_data: {"action_eval": dataset.json of the evaluation videos} (absent = train_data).
        output_prefix: s3:// prefix (a folder locally) for checkpoints and job outputs.
        model_size: tiny, base or large (the presets of both stages).
        num_frames: Frames per clip (0 = the presets').
        batch_size: Batch size per GPU (0 = the preset's).
        finetune_steps: Fine-tuning optimizer steps (0 = the preset's).
        finetune_overrides: Extra fine-tune config overrides, key=value.
        eval_overrides: Extra evaluation config overrides, key=value.
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
                nodes=nodes, gpus_per_node=gpus_per_node, node_pool=node_pool, image=image,
                s3_secret=s3_secret,
                job_backend=job_backend, kueue_queue=kueue_queue,
                priority_class=priority_class, job_namespace=job_namespace)
    with dsl.ExitHandler(done, name="umt"):
        s3 = s3_secret_of(credentials(s3_secret=s3_secret))
        checked = cpu_task(validate(
            existing_dataset=train_data, existing_stage1_checkpoint=checkpoint,
            batch_size=batch_size, finetune_steps=finetune_steps,
            finetune_overrides=finetune_overrides, eval_overrides=eval_overrides,
            task_data=task_data, run_stage2=False, tasks=["action"],
            downstream_nodes=nodes, **jobs),
            "Validate settings and plan jobs", s3_secret=s3)
        # Never cached: it fingerprints the inputs' content (issue 16.5; components/tasks.py).
        checked.set_caching_options(False)
        prints = checked.outputs
        data = cpu_task(shard_videos(output_prefix=output_prefix, existing_dataset=train_data,
                                     fingerprint=prints["data_fingerprint"]),
                        "Describe the training data", s3_secret=s3).after(checked)
        base = launcher_task(pretrain_stage1(
            dataset=data.outputs["dataset"], existing_checkpoint=checkpoint,
            checkpoint_fingerprints=prints["checkpoint_fingerprints"], **jobs),
            "Stage-1 checkpoint (given)", s3_secret=s3)
        tuned = launcher_task(finetune_step(
            task="action", dataset=data.outputs["dataset"], pretrained=base.outputs["model"],
            steps=finetune_steps, batch_size=batch_size, overrides=finetune_overrides,
            task_data=task_data, task_data_fingerprints=prints["task_data_fingerprints"],
            **jobs),
            "Fine-tune: action recognition", s3_secret=s3)
        scored = launcher_task(evaluate(
            task="action", model=tuned.outputs["model"], dataset=data.outputs["dataset"],
            task_data=task_data, task_data_fingerprints=prints["task_data_fingerprints"],
            overrides=eval_overrides, **jobs),
            "Evaluate: action recognition", s3_secret=s3)
        cpu_task(report(plan=checked.outputs["plan"], dataset=data.outputs["dataset"],
                        title="UMT action fine-tuning run"),
                 "Report", s3_secret=s3).after(base, tuned, scored)
