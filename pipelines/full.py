"""The full UMT pipeline: validate -> shard -> Stage 1 -> Stage 2 -> fine-tunes -> evaluations
-> report, with an exit handler that deletes the run's unfinished jobs.

Sharding fans out: ``plan_shards`` lists ``shard_parts`` parts, each with ``validate``'s content
fingerprint of the input; a ``ParallelFor`` runs one ``shard_videos`` task per part (each cached
and retried on its own, at most ``SHARD_PARALLELISM`` at once); ``merge_shards`` joins them into
the one Dataset the stages read. ``shard_parts=1``: one task shards everything, as before, and
the merge publishes its dataset.json.

    umt run pipelines/full.py --local                      # the whole DAG on this machine
    kfp dsl compile --py pipelines/full.py --output full.yaml
    kfp run create -e umt -f full.yaml output_prefix=s3://bucket/runs input_videos=s3://bucket/k710.csv
    umt submit pipelines/full.py --endpoint $KFP_ENDPOINT output_prefix=s3://bucket/runs ...

The downstream tasks are the stage catalogue's (``umt.catalogue``): one fine-tune task per
fine-tune stage and one evaluation task per evaluation, each starting from its catalogue parent.
A stage is skipped by a parameter (``existing_dataset``, ``existing_stage1_checkpoint``,
``existing_stage2_checkpoint``, ``run_stage2``, ``tasks``): every task always runs and a
disabled one says so in its outputs. No ``dsl.If``/``dsl.OneOf`` over artifacts (kfp.local 2.17
cannot run OneOf over artifacts).
"""

import sys
from pathlib import Path

# `kfp dsl compile --py pipelines/full.py` imports this file by path, without the checkout on
# sys.path: make `components` importable from anywhere.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from kfp import dsl  # noqa: E402

from components import (  # noqa: E402
    cleanup,
    credentials,
    evaluate,
    finetune,
    merge_shards,
    plan_shards,
    pretrain_stage1,
    pretrain_stage2,
    report,
    shard_videos,
    validate,
)
from components.tasks import cpu_task, exit_task, launcher_task, s3_secret_of  # noqa: E402
from umt import catalogue  # noqa: E402

# Shard parts running at once (KFP takes the loop's parallelism at compile time): 16 pods of 4
# CPUs each. More parts than this queue; each part's object-store traffic is its own.
SHARD_PARALLELISM = 16


@dsl.pipeline(
    name="umt-full",
    display_name="UMT: shard, pretrain (Stage 1 + 2), fine-tune, evaluate",
    description="Unmasked Teacher video foundation models: WebDataset sharding, Stage-1 and "
                "Stage-2 pretraining PyTorchJobs, action/retrieval/QA fine-tunes, evaluations "
                "and a report with lineage, GPU-hours and CO2.",
)
def full(
    output_prefix: str = "s3://EDIT_ME_BUCKET/umt/runs",
    input_videos: str = "",
    existing_dataset: str = "",
    classes: str = "",
    samples_per_shard: int = 1000,
    short_side: int = 320,
    shard_parts: int = 1,
    model_size: str = "base",
    num_frames: int = 0,
    batch_size: int = 0,
    stage1_steps: int = 0,
    stage2_steps: int = 0,
    finetune_steps: int = 0,
    stage1_overrides: list = [],
    stage2_overrides: list = [],
    finetune_overrides: list = [],
    eval_overrides: list = [],
    existing_stage1_checkpoint: str = "",
    existing_stage2_checkpoint: str = "",
    run_stage2: bool = True,
    tasks: list = catalogue.default_tasks(),
    task_data: dict = {},
    nodes: int = 4,
    gpus_per_node: int = 8,
    downstream_nodes: int = 1,
    node_pool: str = "gke-a100",
    image: str = "",
    s3_secret: str = "umt-s3",
    job_backend: str = "cluster",
    kueue_queue: str = "",
    priority_class: str = "",
    job_namespace: str = "",
    gpu_power_watts: float = 400.0,
    grid_g_per_kwh: float = 400.0,
):
    """Shards videos, pretrains UMT (Stage 1, Stage 2), fine-tunes, evaluates and reports.

    Args:
        output_prefix: s3:// prefix (a folder locally) for shards, checkpoints and job outputs.
        input_videos: Manifest (.csv/.jsonl), folder or s3:// prefix of videos to shard.
        existing_dataset: dataset.json of already sharded data; skips sharding.
        classes: Class-names file fixing label indices ("" = sorted label names).
        samples_per_shard: Samples per WebDataset shard.
        short_side: Short side (pixels) videos are transcoded to.
        shard_parts: Parts the sharding is split into, one task (pod) each, at most 16 at once
            (1 = one task shards everything).
        model_size: tiny, base or large (the presets of every stage).
        num_frames: Frames per clip in every stage (0 = the presets').
        batch_size: Batch size per GPU in every training stage (0 = the presets').
        stage1_steps: Stage-1 optimizer steps (0 = the preset's).
        stage2_steps: Stage-2 optimizer steps (0 = the preset's).
        finetune_steps: Optimizer steps of each fine-tune (0 = the presets').
        stage1_overrides: Extra Stage-1 config overrides, key=value.
        stage2_overrides: Extra Stage-2 config overrides, key=value.
        finetune_overrides: Extra overrides for every fine-tune, key=value.
        eval_overrides: Extra overrides for every evaluation, key=value.
        existing_stage1_checkpoint: Start from this Stage-1 checkpoint; skips Stage 1.
        existing_stage2_checkpoint: Start from this Stage-2 checkpoint; skips Stage 2.
        run_stage2: Run Stage 2 (vision-language pretraining).
        tasks: Downstream tasks to fine-tune and evaluate: action (from Stage 1), retrieval
            and qa (from Stage 2), mc (multiple choice, with the retrieval model); ava
            (action detection, from Stage 1) runs only when named.
        task_data: dataset.json per task and split, e.g. {"action_train": URI,
            "action_eval": URI, "mc_eval": URI} (absent = the pipeline's dataset).
        nodes: Nodes (pods) per pretraining job.
        gpus_per_node: GPUs per node (0 = CPU jobs).
        downstream_nodes: Nodes per fine-tune and evaluation job.
        node_pool: Node pool of the training pods, e.g. gke-a100, eks-p4d, aks-a100, cpu.
        image: Training image ("" = the umt-train image of this build).
        s3_secret: Kubernetes Secret with the S3 credentials ("" = IRSA / workload identity).
        job_backend: Kind of training job: cluster (the kind the cluster serves, TrainJob
            first), trainjob (Kubeflow Trainer v2) or pytorchjob (Training Operator v1).
        kueue_queue: Kueue LocalQueue of the training jobs ("" = none): they wait, suspended,
            until Kueue admits them (the launcher reports them queued, no timeout runs).
        priority_class: PriorityClass of the training pods ("" = the cluster default).
        job_namespace: Namespace of the training jobs ("" = the pipeline's own; the runner
            needs the umt-launcher Role there).
        gpu_power_watts: Power per GPU for the report's energy estimate (W).
        grid_g_per_kwh: Grid carbon intensity for the report's CO2 estimate (g CO2 / kWh).
    """
    done = exit_task(cleanup(job_backend=job_backend, job_namespace=job_namespace))
    jobs = dict(output_prefix=output_prefix, model_size=model_size, num_frames=num_frames,
                gpus_per_node=gpus_per_node, node_pool=node_pool, image=image,
                s3_secret=s3_secret,
                job_backend=job_backend, kueue_queue=kueue_queue,
                priority_class=priority_class, job_namespace=job_namespace)
    with dsl.ExitHandler(done, name="umt"):
        s3 = s3_secret_of(credentials(s3_secret=s3_secret))
        checked = cpu_task(validate(
            output_prefix=output_prefix, input_videos=input_videos,
            existing_dataset=existing_dataset, classes=classes,
            samples_per_shard=samples_per_shard, shard_parts=shard_parts,
            short_side=short_side, model_size=model_size,
            num_frames=num_frames, batch_size=batch_size, stage1_steps=stage1_steps,
            stage2_steps=stage2_steps, finetune_steps=finetune_steps,
            stage1_overrides=stage1_overrides, stage2_overrides=stage2_overrides,
            finetune_overrides=finetune_overrides, eval_overrides=eval_overrides,
            existing_stage1_checkpoint=existing_stage1_checkpoint,
            existing_stage2_checkpoint=existing_stage2_checkpoint, run_stage2=run_stage2,
            tasks=tasks, task_data=task_data, nodes=nodes, gpus_per_node=gpus_per_node,
            downstream_nodes=downstream_nodes, node_pool=node_pool, image=image,
            s3_secret=s3_secret, job_backend=job_backend, kueue_queue=kueue_queue,
            priority_class=priority_class, job_namespace=job_namespace),
            "Validate settings and plan jobs", s3_secret=s3, memory_limit="4Gi")
        # Never cached: it fingerprints the inputs' content, which the later tasks take as
        # parameters (their cache keys and folders then change when a file changes in place).
        checked.set_caching_options(False)
        prints = checked.outputs
        planned = cpu_task(plan_shards(
            input_videos=input_videos, existing_dataset=existing_dataset,
            shard_parts=shard_parts, fingerprint=prints["data_fingerprint"]),
            "Plan the shard parts", s3_secret=s3, cpu="100m", memory="256Mi",
            memory_limit="1Gi")

        # Inside the loop only pipeline parameters and the loop item's fields: kfp.local 2.17
        # replaces every other task output a loop body reads with the loop item.
        with dsl.ParallelFor(planned.output, name="shard-parts",
                             parallelism=SHARD_PARALLELISM) as part:
            parts = cpu_task(shard_videos(
                output_prefix=output_prefix, input_videos=input_videos,
                existing_dataset=existing_dataset, classes=classes,
                samples_per_shard=samples_per_shard, short_side=short_side, part=part.part,
                num_parts=part.num_parts, fingerprint=part.fingerprint),
                "Shard videos to WebDataset", s3_secret=s3, cpu="4", memory="8Gi",
                memory_limit="16Gi", retries=2).after(checked)
        data = cpu_task(merge_shards(
            output_prefix=output_prefix, shard_plan=planned.output, input_videos=input_videos,
            existing_dataset=existing_dataset, classes=classes,
            samples_per_shard=samples_per_shard, short_side=short_side),
            "Merge the shard parts", s3_secret=s3, memory="1Gi", memory_limit="8Gi",
            retries=2).after(parts)
        dataset = data.outputs["dataset"]

        stage1 = launcher_task(pretrain_stage1(
            dataset=dataset, steps=stage1_steps, batch_size=batch_size,
            overrides=stage1_overrides, existing_checkpoint=existing_stage1_checkpoint,
            checkpoint_fingerprints=prints["checkpoint_fingerprints"], nodes=nodes, **jobs),
            catalogue.get("stage1").title, s3_secret=s3)
        stage2 = launcher_task(pretrain_stage2(
            dataset=dataset, stage1_model=stage1.outputs["model"], enabled=run_stage2,
            steps=stage2_steps, batch_size=batch_size, overrides=stage2_overrides,
            existing_checkpoint=existing_stage2_checkpoint,
            checkpoint_fingerprints=prints["checkpoint_fingerprints"], nodes=nodes, **jobs),
            catalogue.get("stage2").title, s3_secret=s3)

        # One task per downstream stage of the catalogue, fed by its parent's model.
        trained = {"stage1": stage1, "stage2": stage2}
        per_task = dict(tasks=tasks, task_data=task_data,
                        task_data_fingerprints=prints["task_data_fingerprints"],
                        nodes=downstream_nodes, dataset=dataset, **jobs)
        for stage in catalogue.finetunes():
            trained[stage.name] = launcher_task(finetune(
                task=stage.task, pretrained=trained[stage.parent].outputs["model"],
                steps=finetune_steps, batch_size=batch_size, overrides=finetune_overrides,
                **per_task), stage.title, s3_secret=s3)
        evaluations = [launcher_task(evaluate(
            task=stage.task, model=trained[stage.parent].outputs["model"],
            overrides=eval_overrides, **per_task), stage.title, s3_secret=s3)
            for stage in catalogue.evaluations()]

        cpu_task(report(
            plan=checked.outputs["plan"], dataset=dataset, title="UMT pipeline run",
            gpu_power_watts=gpu_power_watts, grid_g_per_kwh=grid_g_per_kwh),
            "Report", s3_secret=s3, memory="1Gi", memory_limit="4Gi"
        ).after(*trained.values(), *evaluations)
