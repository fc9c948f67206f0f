"""``validate``: check every pipeline setting in seconds, before anything GPU-bound."""

from typing import NamedTuple

from kfp.dsl import Artifact, Output

from components.base import component


@component
def validate(
    plan: Output[Artifact],
    output_prefix: str,
    input_videos: str = "",
    existing_dataset: str = "",
    classes: str = "",
    samples_per_shard: int = 1000,
    shard_parts: int = 1,
    short_side: int = 320,
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
    tasks: list = ["*"],
    task_data: dict = {},
    nodes: int = 1,
    gpus_per_node: int = 8,
    downstream_nodes: int = 1,
    node_pool: str = "gke-a100",
    image: str = "",
    s3_secret: str = "umt-s3",
    job_backend: str = "cluster",
    kueue_queue: str = "",
    priority_class: str = "",
    job_namespace: str = "",
) -> NamedTuple("Fingerprints", [("data_fingerprint", str), ("checkpoint_fingerprints", dict),
                               ("task_data_fingerprints", dict)]):
    """Checks the pipeline's settings and plans every job; fails listing all problems.

    Loads each enabled stage's config with its overrides and renders its job (the
    launcher's own validation), checks the values KFP cannot constrain (model size, node pool,
    task switches), that the data and checkpoints exist, that the output prefix is writable
    with the S3 Secret's credentials and, on a cluster, the job CRD, RBAC and Secret.

    Args:
        output_prefix: Folder or s3:// prefix for shards, checkpoints and job outputs.
        input_videos: Manifest (.csv/.jsonl), folder or s3:// prefix of videos to shard.
        existing_dataset: dataset.json of already sharded data; skips sharding.
        classes: Class-names file fixing label indices ("" = sorted label names).
        samples_per_shard: Samples per WebDataset shard.
        shard_parts: Parts the sharding is split into (1 to 10000).
        short_side: Short side (pixels) videos are transcoded to.
        model_size: tiny, base or large (the presets of every stage).
        num_frames: Frames per clip in every stage (0 = the preset's).
        batch_size: Batch size per GPU in every training stage (0 = the preset's).
        stage1_steps: Stage-1 optimizer steps (0 = the preset's).
        stage2_steps: Stage-2 optimizer steps (0 = the preset's).
        finetune_steps: Optimizer steps of each fine-tune (0 = the preset's).
        stage1_overrides: Extra Stage-1 config overrides, key=value.
        stage2_overrides: Extra Stage-2 config overrides, key=value.
        finetune_overrides: Extra overrides for every fine-tune, key=value.
        eval_overrides: Extra overrides for every evaluation, key=value.
        existing_stage1_checkpoint: Start from this Stage-1 checkpoint; skips Stage 1.
        existing_stage2_checkpoint: Start from this Stage-2 checkpoint; skips Stage 2.
        run_stage2: Run Stage 2 (vision-language pretraining).
        tasks: Downstream tasks to fine-tune and evaluate (umt.catalogue; "*" = all).
        nodes: Nodes (pods) per pretraining job.
        gpus_per_node: GPUs per node (0 = CPU jobs).
        downstream_nodes: Nodes per fine-tune and evaluation job.
        node_pool: Node pool of the training pods (umt.launch.NODE_POOLS), e.g. gke-a100.
        s3_secret: Kubernetes Secret with the S3 credentials ("" = IRSA / workload identity).
        shard_plan: The shard parts (plan_shards' output): their content fingerprint keys the
            dataset folder ([] = none).

    Returns:
        plan: The plan: every job's stage, preset, overrides, output folder and rendered YAML.
        data_fingerprint: Content fingerprint of input_videos / existing_dataset.
        checkpoint_fingerprints: Content fingerprints of the existing checkpoints, by stage.
        task_data_fingerprints: Content fingerprints of the task_data files, by key.
    """
    params = {k: v for k, v in locals().items() if k != "plan"}  # every parameter, by name
    from umt.pipeline.validate import validate_step

    return validate_step(params, plan)
