"""Where a job stands, in the same words for every backend.

A backend maps its own conditions onto one phase (:mod:`umt.launch.backends.pytorchjob` has the
Training Operator's rules) and records when the job started and finished, so the job's duration
comes from the backend, right even when a launcher adopted a job an earlier attempt started:

* ``Pending``: the controller has not seen the job yet;
* ``Created``: accepted, no replica running yet (pods being scheduled, images pulled);
* ``Running``, ``Restarting`` (a replica failed and is being restarted);
* ``Suspended``: held (``spec.suspend``, set by someone);
* ``Queued``: held by Kueue (the job carries ``kueue.x-k8s.io/queue-name`` and is suspended):
  waiting for its queue's quota; ``queued_at`` / ``admitted_at`` say for how long;
* ``Succeeded``, ``Failed``: finished; nothing changes any more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

CREATED, RUNNING, RESTARTING = "Created", "Running", "Restarting"
SUCCEEDED, FAILED, SUSPENDED = "Succeeded", "Failed", "Suspended"
PENDING = "Pending"  # no condition yet: the controller has not seen the job
QUEUED = "Queued"  # suspended by Kueue until its queue admits it
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
FINISHED = (SUCCEEDED, FAILED)


def parse_time(value: Any) -> datetime | None:
    """A condition's timestamp: a datetime, or RFC 3339 text from a raw API object."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return value if isinstance(value, datetime) else None


@dataclass
class JobStatus:
    """A job's phase, the message that explains it, when it started and finished, and the
    backend's own conditions (each with ``type``, ``status``, ``message`` and
    ``last_transition_time``: what ``umt job status`` prints)."""

    name: str
    phase: str = PENDING
    message: str = ""
    conditions: list[Any] = field(default_factory=list)
    started_at: datetime | None = None  # the controller accepted the job
    finished_at: datetime | None = None  # it succeeded or failed
    queue: str | None = None  # the Kueue LocalQueue it waits in (its label), if any
    queued_at: datetime | None = None  # created into a Kueue queue
    admitted_at: datetime | None = None  # Kueue admitted it (unsuspended)

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED

    @property
    def succeeded(self) -> bool:
        return self.phase == SUCCEEDED

    @property
    def failed(self) -> bool:
        return self.phase == FAILED

    @property
    def queued(self) -> bool:
        return self.phase == QUEUED

    def queued_seconds(self, now: datetime | None = None) -> float | None:
        """How long Kueue held the job: creation to admission, or to ``now`` while it is
        still queued; None for a job that never waited in a Kueue queue."""
        start = parse_time(self.queued_at)
        end = parse_time(self.admitted_at) or (now if self.queued else None)
        try:
            if start and end and end >= start:
                return (end - start).total_seconds()
        except TypeError:
            pass
        return None

    def duration_seconds(self) -> float | None:
        """Seconds from start to finish as the backend recorded them; None when it did not
        record both (or they make no sense)."""
        start, end = parse_time(self.started_at), parse_time(self.finished_at)
        try:
            if start and end and end > start:
                return (end - start).total_seconds()
        except TypeError:  # naive vs aware timestamps: no answer
            pass
        return None


def with_kueue(status: JobStatus, obj: dict[str, Any], suspended_type: str = SUSPENDED
               ) -> JobStatus:
    """``status`` of the job object ``obj`` with Kueue's part: a suspended job with a queue
    label is ``Queued`` (Kueue suspends it at creation and unsuspends it on admission), and the
    wait runs from its creation to the moment its ``suspended_type`` condition turned False."""
    meta = obj.get("metadata") or {}
    queue = (meta.get("labels") or {}).get(KUEUE_QUEUE_LABEL)
    if not queue:
        return status
    status.queue = queue
    status.queued_at = parse_time(meta.get("creationTimestamp"))
    for c in status.conditions:
        ctype = c.get("type") if isinstance(c, dict) else getattr(c, "type", None)
        cstatus = c.get("status") if isinstance(c, dict) else getattr(c, "status", None)
        when = (c.get("lastTransitionTime") if isinstance(c, dict)
                else getattr(c, "last_transition_time", None))
        if ctype == suspended_type and cstatus == "False":
            status.admitted_at = parse_time(when)
    if status.admitted_at is not None:
        # GPU time (the job's duration) starts when Kueue let it run, not in the queue.
        status.started_at = status.admitted_at
    if status.phase == SUSPENDED:
        status.phase = QUEUED
        status.message = (f"queued in Kueue queue {queue} (suspended until admitted)"
                          + (f": {status.message}" if status.message else ""))
    return status
