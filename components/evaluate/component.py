"""``evaluate``: one downstream evaluation (action | retrieval | qa | mc) as a PyTorchJob."""

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
    enabled: bool = True,
    eval_data: str = "",
    model_size: str = "base",
    num_frames: int = 0,
    overrides: list = [],
    nodes: int = 1,
    gpus_per_node: int = 8,
    node_pool: str = "gke-a100",
    image: str = "",
    s3_secret: str = "umt-s3",
):
    """Evaluates a fine-tuned model (stage eval-<task>) as a PyTorchJob.

    Writes to <output_prefix>/eval-<task>-<config hash>/; the job's metrics.json becomes the
    Metrics artifact (same names in every run, so KFP's run comparison lines up).

    Args:
        task: action, retrieval, qa or mc.
        model: The model to evaluate.
        dataset: The pipeline's dataset (used unless eval_data is set).
        output_prefix: Folder or s3:// prefix the job writes under.
        enabled: False: skip (the outputs say so).
        eval_data: Evaluation data, a dataset.json ("" = the pipeline's dataset).
        model_size: tiny, small, base or large (the stage's preset).
        num_frames: Frames per clip (0 = the preset's).
        overrides: Extra config overrides, key=value.
        nodes: Nodes (pods) of the job.
        gpus_per_node: GPUs per node (0 = a CPU job).
        node_pool: Node pool of the evaluation pods, e.g. gke-a100.
        image: Training image ("" = umt-train of this package's version).
        s3_secret: Kubernetes Secret with the S3 credentials ("" = none).

    Returns:
        metrics: The task's metrics (top-1/top-5, R@1/5/10, accuracy...) plus gpu_hours.
        confusion: Action recognition: the confusion matrix of the most frequent classes.
        job: The rendered PyTorchJob YAML.
    """
    from umt.pipeline import steps as s

    s.evaluate(task, model=model, dataset=dataset, enabled=enabled, eval_data=eval_data,
               model_size=model_size, num_frames=num_frames, overrides=overrides,
               output_prefix=output_prefix, nodes=nodes, gpus_per_node=gpus_per_node,
               node_pool=node_pool, image=image, s3_secret=s3_secret, metrics=metrics,
               confusion=confusion, job=job)
