"""Delete the jobs a pipeline run left behind: ``umt job gc --run-id <id> [--backend NAME]``.

    umt job gc --run-id 3f1c...        # every unfinished job labelled umt/run-id=<id>
    umt job gc --run-id 3f1c... --all  # finished ones too (their pods and logs go with them)

    from umt.launch import delete_run_jobs
    delete_run_jobs(run_id)            # the pipeline's exit task

Cluster jobs have no owner reference to the KFP run that created them, so a terminated run leaves
its jobs training (and holding GPUs). Termination is covered by four things: a launcher deletes
its job on SIGTERM when the run was stopped, the pipeline's exit task calls
:func:`delete_run_jobs` when the run was stopped (``umt.pipeline.steps.cleanup``), every job
has an ``activeDeadlineSeconds``, and this command.
"""

from __future__ import annotations

import logging
from typing import Any

from umt.launch.backend import CLUSTER, make_backend
from umt.launch.request import LABEL_RUN_ID
from umt.launch.values import Problems, label_value

log = logging.getLogger(__name__)


def run_selector(run_id: str) -> str:
    """The label selector of a run's jobs (the same sanitising as when they were rendered)."""
    return f"{LABEL_RUN_ID}={label_value(run_id)}"


def unfinished_run_jobs(run_id: str, *, namespace: str | None = None,
                        backend: str | Any = CLUSTER) -> list[str]:
    """The names of the jobs labelled with ``run_id`` that have not finished."""
    impl = make_backend(backend if backend is not None else CLUSTER, namespace=namespace)
    return [job.name for job in impl.list_jobs(run_selector(run_id))
            if not job.status.finished and not job.deleting]


def delete_run_jobs(run_id: str, *, namespace: str | None = None, include_finished: bool = False,
                    kubeconfig: str | None = None, context: str | None = None,
                    backend: str | Any = CLUSTER) -> list[str]:
    """Delete the jobs labelled with ``run_id`` that have not finished (all of them with
    ``include_finished``); returns their names. ``backend``: a registered backend's name
    (``cluster``: the cluster's default) or a backend. Jobs already gone are not an error, so
    the exit task and a later ``umt job gc`` can both run."""
    p = Problems()
    p.check(isinstance(run_id, str) and bool(run_id.strip()), "run_id", run_id,
            "must be a non-empty string")
    p.dns_label("namespace", namespace)
    p.raise_if_any()
    impl = make_backend(backend if backend is not None else CLUSTER, namespace=namespace,
                        kubeconfig=kubeconfig, context=context)
    deleted = []
    for job in impl.list_jobs(run_selector(run_id)):
        if job.status.finished and not include_finished:
            log.info("keeping finished job %s (%s)", job.name, job.status.phase)
            continue
        if job.deleting:
            log.info("job %s is already being deleted", job.name)
            continue
        impl.delete(job.name)
        log.warning("deleted %s %s/%s of run %s (%s)", impl.kind, impl.namespace, job.name,
                    run_id, job.status.phase)
        deleted.append(job.name)
    return deleted
