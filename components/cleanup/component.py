"""``cleanup``: the exit handler; stops the unfinished jobs of a stopped run."""

from kfp import dsl

from components.base import component


@component
def cleanup(status: dsl.PipelineTaskFinalStatus, job_backend: str = "cluster",
            job_namespace: str = ""):
    """Deletes this run's unfinished jobs when the run was stopped (terminated, timed out,
    deleted: nothing follows them any more); keeps those of a run that failed without being
    stopped (their launcher pods were lost; a rerun adopts them). Runs after everything
    else, whatever happened; never cached.

    Args:
        status: How the pipeline ended (KFP fills it in).
    """
    from umt.pipeline import steps

    print(steps.cleanup(status.state, str(status.error_message or ""), job_backend,
                        job_namespace))
