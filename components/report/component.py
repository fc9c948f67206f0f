"""``report``: the run's Markdown summary and self-contained HTML report."""

from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from components.base import component


@component
def report(
    markdown: Output[Markdown],
    html: Output[HTML],
    dataset: Input[Dataset],
    stage1_model: Input[Model] = None,
    stage1_metrics: Input[Metrics] = None,
    stage2_model: Input[Model] = None,
    stage2_metrics: Input[Metrics] = None,
    action_model: Input[Model] = None,
    action_metrics: Input[Metrics] = None,
    retrieval_model: Input[Model] = None,
    retrieval_metrics: Input[Metrics] = None,
    qa_model: Input[Model] = None,
    qa_metrics: Input[Metrics] = None,
    action_eval: Input[Metrics] = None,
    retrieval_eval: Input[Metrics] = None,
    qa_eval: Input[Metrics] = None,
    mc_eval: Input[Metrics] = None,
    title: str = "UMT pipeline run",
    gpu_power_watts: float = 400.0,
    grid_g_per_kwh: float = 400.0,
):
    """Writes the run report: results, loss curves, lineage, GPU-hours, energy and CO2.

    Every model and metrics input is optional, so smaller pipelines reuse this step. Loss
    curves come from each job's metrics.jsonl (read from the output prefix, not through KFP).

    Args:
        dataset: The data the run used.
        stage1_model: Stage-1 model.
        stage1_metrics: Stage-1 metrics.
        stage2_model: Stage-2 model.
        stage2_metrics: Stage-2 metrics.
        action_model: Action-recognition model.
        action_metrics: Action fine-tune metrics.
        retrieval_model: Retrieval model.
        retrieval_metrics: Retrieval fine-tune metrics.
        qa_model: Video-QA model.
        qa_metrics: QA fine-tune metrics.
        action_eval: Action-recognition evaluation.
        retrieval_eval: Retrieval evaluation.
        qa_eval: Video-QA evaluation.
        mc_eval: Multiple-choice evaluation.
        title: Title of the report.
        gpu_power_watts: Power per GPU for energy estimates (W; A100 SXM: 400).
        grid_g_per_kwh: Carbon intensity of the grid (g CO2 per kWh) for CO2 estimates.

    Returns:
        markdown: The summary as Markdown (KFP UI: Visualizations).
        html: One self-contained HTML page (inline images; the KFP UI's sandboxed iframe).
    """
    from umt.pipeline import steps as s

    s.report(dataset=dataset, title=title, gpu_power_watts=gpu_power_watts,
             grid_g_per_kwh=grid_g_per_kwh, markdown=markdown, html=html,
             models={"stage1": (stage1_model, stage1_metrics),
                     "stage2": (stage2_model, stage2_metrics),
                     "finetune-action": (action_model, action_metrics),
                     "finetune-retrieval": (retrieval_model, retrieval_metrics),
                     "finetune-qa": (qa_model, qa_metrics)},
             evals={"eval-action": action_eval, "eval-retrieval": retrieval_eval,
                    "eval-qa": qa_eval, "eval-mc": mc_eval})
