"""``finetune``: one downstream fine-tune (the stage catalogue's, by task) as a job."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.base import component


@component
def finetune(
    model: Output[Model],
    metrics: Output[Metrics],
    job: Output[Artifact],
    task: str,
    dataset: Input[Dataset],
    pretrained: Input[Model],
    output_prefix: str,
    tasks: list = ["*"],
    task_data: dict = {},
    task_data_fingerprints: dict = {},
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
    job_backend: str = "cluster",
    kueue_queue: str = "",
    priority_class: str = "",
    job_namespace: str = "",
):
    """Fine-tunes a pretrained model for one downstream task (stage finetune-<task>).

    Runs as a job writing to <output_prefix>/finetune-<task>-<config hash>/ (stable across
    retries, so it resumes). The stage, its config schema and what it starts from are the
    stage catalogue's (umt.catalogue).

    Args:
        task: The downstream task, e.g. action, retrieval or qa (umt.catalogue).
        dataset: The pipeline's dataset (used unless task_data names this task's).
        pretrained: The model it starts from (the catalogue's parent stage).
    """
    from umt.pipeline import steps as s

    s.finetune(task, tasks=tasks, task_data=task_data,
               task_data_fingerprints=task_data_fingerprints, dataset=dataset, parent=pretrained,
               model_size=model_size, steps=steps, batch_size=batch_size,
               num_frames=num_frames, overrides=overrides, output_prefix=output_prefix,
               nodes=nodes, gpus_per_node=gpus_per_node, node_pool=node_pool, image=image,
               s3_secret=s3_secret, job_backend=job_backend, kueue_queue=kueue_queue, priority_class=priority_class,
               job_namespace=job_namespace, model=model, metrics=metrics, job=job)
