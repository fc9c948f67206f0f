"""``report``: the run's Markdown summary and self-contained HTML report."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Output

from components.base import component


@component
def report(
    markdown: Output[Markdown],
    html: Output[HTML],
    plan: Input[Artifact],
    dataset: Input[Dataset],
    title: str = "UMT pipeline run",
    gpu_power_watts: float = 400.0,
    grid_g_per_kwh: float = 400.0,
):
    """Writes the run report: results, loss curves, lineage, GPU-hours, energy and CO2.

    The run's steps are the plan's (validate's artifact): each planned stage's results are read
    from its output folder (the record its step wrote, metrics.jsonl), so any pipeline that
    validates reuses this step. Run it after the steps it reports on (.after()).

    Args:
        plan: The validate step's plan.
        dataset: The data the run used.
        title: Title of the report.
        gpu_power_watts: Power per GPU for energy estimates (W; A100 SXM: 400).
        grid_g_per_kwh: Carbon intensity of the grid (g CO2 per kWh) for CO2 estimates.

    Returns:
        markdown: The summary as Markdown (KFP UI: Visualizations).
        html: One self-contained HTML page (inline images; the KFP UI's sandboxed iframe).
    """
    from umt.pipeline import steps as s

    s.report(plan=plan, dataset=dataset, title=title, gpu_power_watts=gpu_power_watts,
             grid_g_per_kwh=grid_g_per_kwh, markdown=markdown, html=html)
