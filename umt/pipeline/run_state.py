"""Was this pipeline run stopped on purpose? Read from the run's own Argo Workflow.

    from umt.pipeline.run_state import read_run_state
    state = read_run_state()      # RunState("stopped", "terminated: ...") / "running" / "unknown"

A SIGTERM reaches a launcher pod alike when its run is terminated and when only the pod goes (a
node drain, an autoscaler scale-down, ``kubectl delete pod``, the deadline Argo gives a retried
attempt), so the signal alone cannot say whether the job it follows must stop. The run's
Workflow can (read in the sources, KFP 2.17 / Argo Workflows 3.7+):

* KFP's Terminate patches the Workflow with ``spec.activeDeadlineSeconds: 0``
  (``backend/src/apiserver/resource/resource_manager.go::TerminateWorkflow``,
  ``util.GetTerminatePatch``); Argo then signals every running pod that is not part of an exit
  handler (``workflow/controller/exec_control.go``) and still runs the exit handler
  (``workflowpod.go``: exit-handler pods ignore the workflow deadline);
* ``argo stop`` / ``argo terminate`` set ``spec.shutdown`` (Stop runs exit handlers, Terminate
  does not: ``ShutdownStrategy.ShouldExecute``);
* a Workflow past its own ``activeDeadlineSeconds`` timed out: it is over too;
* a Workflow that is gone or being deleted (the run was deleted) takes its pods with it.

Anything else is a running Workflow: the pod is going, not the run. The Workflow's name comes
from the pod's label ``workflows.argoproj.io/workflow`` (``UMT_WORKFLOW_NAME``, set by
``components/tasks.py``; Argo also sets ``ARGO_WORKFLOW_NAME`` in its containers); reading it
needs ``get`` on ``workflows.argoproj.io`` (``manifests/base/role.yaml``). No kfp here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

log = logging.getLogger(__name__)

WORKFLOW_ENV = "UMT_WORKFLOW_NAME"
WORKFLOW_FIELD = "metadata.labels['workflows.argoproj.io/workflow']"
ARGO_WORKFLOW_ENV = "ARGO_WORKFLOW_NAME"
GROUP, VERSION, PLURAL = "argoproj.io", "v1alpha1", "workflows"
STOPPED, RUNNING, UNKNOWN = "stopped", "running", "unknown"
# A launcher has about a second after SIGTERM (docs/pipelines.md): one quick request.
SIGNAL_TIMEOUT = 1.0


@dataclass(frozen=True)
class RunState:
    state: str  # STOPPED, RUNNING or UNKNOWN
    reason: str

    @property
    def stopped(self) -> bool:
        return self.state == STOPPED


def _time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def workflow_state(workflow: dict[str, Any], now: datetime | None = None) -> RunState:
    """The state of a run from its Workflow object, as the API server returns it."""
    now = now or datetime.now(timezone.utc)
    meta, spec = workflow.get("metadata") or {}, workflow.get("spec") or {}
    status = workflow.get("status") or {}
    if meta.get("deletionTimestamp"):
        return RunState(STOPPED, "the run's Workflow is being deleted")
    if spec.get("shutdown"):
        return RunState(STOPPED, f"stopped (spec.shutdown: {spec['shutdown']})")
    deadline = spec.get("activeDeadlineSeconds")
    if deadline == 0:
        return RunState(STOPPED, "terminated (KFP's Terminate sets activeDeadlineSeconds: 0)")
    started = _time(status.get("startedAt"))
    if isinstance(deadline, int) and started and now >= started + timedelta(seconds=deadline):
        return RunState(STOPPED, f"past the run's own deadline (activeDeadlineSeconds: "
                                 f"{deadline})")
    if status.get("phase") in ("Succeeded", "Failed", "Error"):
        # Finished: its exit handler is what runs now, and it decides (steps.cleanup).
        return RunState(RUNNING, f"finished ({status['phase']}), not stopped")
    return RunState(RUNNING, "running")


def workflow_name() -> str:
    return (os.environ.get(WORKFLOW_ENV) or os.environ.get(ARGO_WORKFLOW_ENV) or "").strip()


def read_run_state(timeout: float = SIGNAL_TIMEOUT, cluster: Any = None) -> RunState:
    """The state of the run this pod belongs to (UNKNOWN, with the reason, when it cannot be
    read: no Workflow name in the environment, no permission, no API server)."""
    name = workflow_name()
    if not name:
        return RunState(UNKNOWN, f"no {WORKFLOW_ENV} / {ARGO_WORKFLOW_ENV} in the environment "
                                 "(not an Argo Workflow pod)")
    try:
        from kubernetes.client.exceptions import ApiException

        from umt.launch.kube import connect

        cluster = cluster or connect()
        try:
            workflow = cluster.custom.get_namespaced_custom_object(
                GROUP, VERSION, cluster.namespace, PLURAL, name, _request_timeout=timeout)
        except ApiException as e:
            if e.status == 404:
                return RunState(STOPPED, f"the run's Workflow {cluster.namespace}/{name} is gone")
            hint = (" (grant get on workflows.argoproj.io: manifests/base/role.yaml)"
                    if e.status == 403 else "")
            return RunState(UNKNOWN, f"reading Workflow {name}: {e.status} {e.reason}{hint}")
    except Exception as e:  # no cluster config, connection refused, timeout
        return RunState(UNKNOWN, f"reading Workflow {name}: {type(e).__name__}: {e}")
    return workflow_state(workflow)


def stop_jobs_on_signal() -> bool:
    """For ``run_training_job(run_stopped=...)``: True only when the run was stopped."""
    state = read_run_state()
    log.warning("signalled; the run is %s: %s", state.state, state.reason)
    return state.stopped
