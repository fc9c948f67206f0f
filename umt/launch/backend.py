"""The one interface training launches go through.

A backend takes a finished job object and runs it somewhere: ``PyTorchJobBackend`` on a cluster
with the Training Operator v1, ``LocalBackend`` as processes on this machine. The stages and
:func:`umt.launch.run.run_training_job` only speak this protocol, so a Kubeflow Trainer v2
``TrainJob`` backend can be added by writing one more class (its job object would be a TrainJob
built from the same :class:`umt.launch.pytorchjob.TrainingJob` request).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

from umt.launch.status import JobStatus


@dataclass
class Submission:
    """What submitting did: ``created`` is False when a job of that name already existed and
    was adopted (running, or already Succeeded); ``replaced`` is True when a Failed job of that
    name (a KFP retry, a resubmission) was deleted and a new one created in its place."""

    name: str
    namespace: str
    created: bool
    replaced: bool = False

    @property
    def action(self) -> str:
        if self.replaced:
            return "created (replacing a failed job of the same name)"
        return "created" if self.created else "adopted (already existed)"


class JobBackend(Protocol):
    def submit(self, job: Any) -> Submission:
        """Create the job; adopt an existing running or succeeded job with the same name;
        replace a failed one (delete it, wait until it is gone, create the new one)."""

    def status(self, name: str) -> JobStatus:
        """The job's current phase and conditions."""

    def wait(self, name: str, *, timeout: float | None = None,
             on_status: Callable[[JobStatus], None] | None = None) -> JobStatus:
        """Block until the job succeeds or fails (``timeout=None``: as long as it takes)."""

    def logs(self, name: str, *, follow: bool = False, replica: str | None = None,
             index: int = 0) -> Iterator[str]:
        """Lines of one replica's ``pytorch`` container (``replica=None``: the master role);
        ``follow`` streams until the job finishes."""

    def delete(self, name: str) -> None:
        """Stop the job and remove it (no error when it is already gone)."""


class JobFailedError(RuntimeError):
    """The job ran and failed; the message carries the operator's reason and the log tail."""

    def __init__(self, status: JobStatus, log_tail: list[str] | None = None):
        self.status = status
        self.log_tail = log_tail or []
        tail = ("\nlast lines of the master's log:\n  " + "\n  ".join(self.log_tail)
                if self.log_tail else "")
        super().__init__(f"job {status.name} {status.phase.lower()}: {status.message}{tail}")


class JobStartError(JobFailedError):
    """The job's pods cannot start (image pull, missing Secret, unschedulable past a limit):
    the operator would wait forever, so the launcher gives up with the pod's own reason."""


class JobCancelledError(RuntimeError):
    """We stopped waiting because the caller was cancelled (SIGTERM / Ctrl-C); job deleted."""
