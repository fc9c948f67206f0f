"""Delete the PyTorchJobs a pipeline run left behind: ``umt job gc --run-id <id>``.

    umt job gc --run-id 3f1c...        # every unfinished job labelled umt/run-id=<id>
    umt job gc --run-id 3f1c... --all  # finished ones too (their pods and logs go with them)

    from umt.launch import delete_run_jobs
    delete_run_jobs(run_id)            # the pipeline's exit task

PyTorchJobs have no owner reference to the KFP run that created them, so a terminated run leaves
its jobs training (and holding GPUs). Termination is covered by four things, any one of which is
enough: the launcher deletes its job on SIGTERM, the pipeline's exit task calls
:func:`delete_run_jobs`, every job has an ``activeDeadlineSeconds``, and this command.
"""

from __future__ import annotations

import logging
from typing import Any

from umt.launch.pytorchjob import LABEL_RUN_ID
from umt.launch.values import Problems, label_value

log = logging.getLogger(__name__)


def run_selector(run_id: str) -> str:
    """The label selector of a run's jobs (the same sanitising as when they were rendered)."""
    return f"{LABEL_RUN_ID}={label_value(run_id)}"


def delete_run_jobs(run_id: str, *, namespace: str | None = None, include_finished: bool = False,
                    kubeconfig: str | None = None, context: str | None = None,
                    backend: Any = None) -> list[str]:
    """Delete the PyTorchJobs labelled with ``run_id`` that have not finished (all of them
    with ``include_finished``); returns their names. Jobs already gone are not an error, so
    the exit task and a later ``umt job gc`` can both run."""
    p = Problems()
    p.check(isinstance(run_id, str) and bool(run_id.strip()), "run_id", run_id,
            "must be a non-empty string")
    p.dns_label("namespace", namespace)
    p.raise_if_any()
    if backend is None:
        from umt.launch.cluster import PyTorchJobBackend

        backend = PyTorchJobBackend(kubeconfig=kubeconfig, context=context, namespace=namespace)
    deleted = []
    for job in backend.list(run_selector(run_id)):
        name = job["metadata"]["name"]
        status = backend.status_of(name, job)
        if status.finished and not include_finished:
            log.info("keeping finished job %s (%s)", name, status.phase)
            continue
        if job["metadata"].get("deletionTimestamp"):
            log.info("job %s is already being deleted", name)
            continue
        backend.delete(name)
        log.warning("deleted PyTorchJob %s/%s of run %s (%s)", backend.namespace, name, run_id,
                    status.phase)
        deleted.append(name)
    return deleted

