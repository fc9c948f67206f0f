"""``pretrain_stage2``: Stage 2 (vision-language UMT pretraining) as a PyTorchJob."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.base import component


@component
def pretrain_stage2(
    model: Output[Model],
    metrics: Output[Metrics],
    job: Output[Artifact],
    dataset: Input[Dataset],
    stage1_model: Input[Model],
    output_prefix: str,
    enabled: bool = True,
    model_size: str = "base",
    steps: int = 0,
    batch_size: int = 0,
    num_frames: int = 0,
    overrides: list = [],
    existing_checkpoint: str = "",
    checkpoint_fingerprints: dict = {},
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
    """Trains Stage 2 (UTA + video-text contrastive, matching, masked language modelling).

    Starts from the Stage-1 checkpoint; runs as a PyTorchJob writing to
    <output_prefix>/stage2-<config hash>/ (stable across retries, so it resumes).

    Args:
        dataset: Captioned videos (dataset.json).
        stage1_model: The Stage-1 model it starts from.
        enabled: False: skip (the outputs say so) and let downstream steps skip too.
        existing_checkpoint: Use this checkpoint instead of training (skips the job).

    Returns:
    """
    from umt.pipeline import steps as s

    s.train("stage2", dataset=dataset, parent=stage1_model, enabled=enabled,
            model_size=model_size, steps=steps, batch_size=batch_size, num_frames=num_frames,
            overrides=overrides, existing_checkpoint=existing_checkpoint,
            checkpoint_fingerprints=checkpoint_fingerprints,
            output_prefix=output_prefix, nodes=nodes, gpus_per_node=gpus_per_node,
            node_pool=node_pool, image=image, s3_secret=s3_secret,
            job_backend=job_backend, kueue_queue=kueue_queue, priority_class=priority_class,
            job_namespace=job_namespace, model=model,
            metrics=metrics, job=job)
