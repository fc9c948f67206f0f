"""``cleanup``: the exit handler; deletes the run's unfinished training jobs."""

from kfp import dsl

from components.base import component


@component
def cleanup(status: dsl.PipelineTaskFinalStatus, job_backend: str = "cluster"):
    """Deletes the training jobs of this run that have not finished (a failed or terminated
    run would leave them holding GPUs). Runs after everything else, whatever happened; never
    cached.

    Args:
        status: How the pipeline ended (KFP fills it in).
    """
    from umt.pipeline import steps

    print(steps.cleanup(status.state, str(status.error_message or ""), job_backend))
