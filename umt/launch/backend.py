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
    def submit(self, job: Any, *, replace_failed: bool = True) -> Submission:
        """Create the job; adopt an existing running or succeeded job with the same name;
        replace a failed one (delete it, wait until it is gone, create the new one), or with
        ``replace_failed=False`` raise its failure again (:class:`JobFailedError`,
        ``already_failed``)."""

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
    """The job failed (or was deleted); the message carries the operator's reason and the log
    tail.

    ``permanent``: running the same job again would not help, so a retry of the task (KFP's
    ``set_retry``) must not start it again. True when the job itself failed — its own
    ``backoffLimit`` or ``activeDeadlineSeconds`` was spent, a replica failed under
    ``Never``/``ExitCode`` — or was deleted (someone stopped it on purpose). A retried
    launcher finds such a job by its name and, with ``replace_failed=False`` (the default of
    ``run_training_job``), raises this again at once (``already_failed``) instead of
    training a second time. :class:`JobStartError` is permanent only for reasons no retry can
    fix (an invalid image name).
    """

    def __init__(self, status: JobStatus, log_tail: list[str] | None = None, *,
                 permanent: bool = True, already_failed: bool = False):
        self.status = status
        self.log_tail = log_tail or []
        self.permanent = permanent
        self.already_failed = already_failed
        tail = ("\nlast lines of the master's log:\n  " + "\n  ".join(self.log_tail)
                if self.log_tail else "")
        again = (f" (in an earlier attempt; not running it again: `umt job delete "
                 f"{status.name}`, or another run id, to train again)" if already_failed else "")
        super().__init__(f"job {status.name} {status.phase.lower()}{again}: "
                         f"{status.message}{tail}")


class JobStartError(JobFailedError):
    """The job's pods cannot start (image pull, missing Secret, unschedulable past a limit):
    the operator would wait forever, so the launcher gives up with the pod's own reason.
    Not permanent by default: a registry outage or a Secret created later lets a retry work."""

    def __init__(self, status: JobStatus, log_tail: list[str] | None = None, *,
                 permanent: bool = False):
        super().__init__(status, log_tail, permanent=permanent)


class SummaryError(RuntimeError):
    """The job succeeded but its ``summary.json`` is missing or unreadable; ``uri`` names it."""

    def __init__(self, uri: str, problem: str):
        self.uri = uri
        super().__init__(f"the job succeeded but its summary {uri} {problem}; every stage "
                         "writes summary.json to train.output_dir when it finishes")


class JobCancelledError(RuntimeError):
    """We stopped waiting because the caller was cancelled (SIGTERM / Ctrl-C); job deleted."""
