"""``finetune_action``: fine-tune for action recognition as a PyTorchJob."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.base import component


@component
def finetune_action(
    model: Output[Model],
    metrics: Output[Metrics],
    job: Output[Artifact],
    dataset: Input[Dataset],
    pretrained: Input[Model],
    output_prefix: str,
    enabled: bool = True,
    train_data: str = "",
    model_size: str = "base",
    steps: int = 0,
    batch_size: int = 0,
    num_frames: int = 0,
    overrides: list = [],
    nodes: int = 1,
    gpus_per_node: int = 8,
    node_pool: str = "gke-a100",
    image: str = "",
    s3_secret: str = "umt-s3",
):
    """Fine-tunes for action recognition (a classifier on the video encoder).

    Starts from the Stage-1 model (video-only encoder, as the official single-modality fine-tuning); runs as a PyTorchJob writing to
    <output_prefix>/finetune-action-<config hash>/ (stable across retries, so it resumes).

    Args:
        dataset: The pipeline's dataset (used unless train_data is set).
        pretrained: The model it starts from.
        enabled: False: skip (the outputs say so) and let the evaluation skip too.
        train_data: Labelled videos: a dataset.json ("" = the pipeline's dataset).

    Returns:
    """
    from umt.pipeline import steps as s

    s.train("finetune-action", dataset=dataset, parent=pretrained, enabled=enabled,
            train_data=train_data, model_size=model_size, steps=steps, batch_size=batch_size,
            num_frames=num_frames, overrides=overrides, output_prefix=output_prefix,
            nodes=nodes, gpus_per_node=gpus_per_node, node_pool=node_pool, image=image,
            s3_secret=s3_secret, model=model, metrics=metrics, job=job)
