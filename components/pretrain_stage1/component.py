"""``pretrain_stage1``: Stage 1 (video-only UMT pretraining) as a PyTorchJob."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.base import component


@component
def pretrain_stage1(
    model: Output[Model],
    metrics: Output[Metrics],
    job: Output[Artifact],
    dataset: Input[Dataset],
    output_prefix: str,
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
    """Trains Stage 1 (semantic masking + unmasked token alignment) as a PyTorchJob.

    This pod only launches and follows the job (CPU); the job's pods get the GPUs. Outputs go
    to <output_prefix>/stage1-<config hash>/, the same folder on every retry and rerun, so an
    interrupted training resumes from its last checkpoint.

    Args:
        dataset: The sharded videos (dataset.json).
        existing_checkpoint: Use this checkpoint instead of training (skips the job).

    Returns:
    """
    from umt.pipeline import steps as s

    s.train("stage1", dataset=dataset, model_size=model_size, steps=steps,
            batch_size=batch_size, num_frames=num_frames, overrides=overrides,
            existing_checkpoint=existing_checkpoint,
            checkpoint_fingerprints=checkpoint_fingerprints, output_prefix=output_prefix,
            nodes=nodes, gpus_per_node=gpus_per_node, node_pool=node_pool, image=image,
            s3_secret=s3_secret, job_backend=job_backend, kueue_queue=kueue_queue, priority_class=priority_class,
            job_namespace=job_namespace, model=model, metrics=metrics, job=job)
