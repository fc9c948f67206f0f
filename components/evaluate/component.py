"""``evaluate``: one downstream evaluation (the stage catalogue's, by task) as a job."""

from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.base import component


@component
def evaluate(
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    job: Output[Artifact],
    task: str,
    model: Input[Model],
    dataset: Input[Dataset],
    output_prefix: str,
    tasks: list = ["*"],
    task_data: dict = {},
    task_data_fingerprints: dict = {},
    model_size: str = "base",
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
    """Evaluates a fine-tuned model (stage eval-<task> of umt.catalogue) as a job.

    Writes to <output_prefix>/eval-<task>-<config hash>/; the job's metrics.json becomes the
    Metrics artifact (same names in every run, so KFP's run comparison lines up).

    Args:
        task: The downstream task, e.g. action, retrieval, qa or mc (umt.catalogue).
        model: The model to evaluate.
        dataset: The pipeline's dataset (used unless task_data names this task's).
        node_pool: Node pool of the evaluation pods, e.g. gke-a100.

    Returns:
        metrics: The task's metrics (top-1/top-5, R@1/5/10, accuracy...) plus gpu_hours.
        confusion: Action recognition: the confusion matrix of the most frequent classes.
    """
    from umt.pipeline import steps as s

    s.evaluate(task, model=model, dataset=dataset, tasks=tasks, task_data=task_data,
               task_data_fingerprints=task_data_fingerprints, model_size=model_size,
               num_frames=num_frames, overrides=overrides,
               output_prefix=output_prefix, nodes=nodes, gpus_per_node=gpus_per_node,
               node_pool=node_pool, image=image, s3_secret=s3_secret,
               job_backend=job_backend, kueue_queue=kueue_queue, priority_class=priority_class,
               job_namespace=job_namespace, metrics=metrics, confusion=confusion, job=job)
