"""Where a job stands, in the same words for every backend.

A backend maps its own conditions onto one phase (:mod:`umt.launch.backends.pytorchjob` has the
Training Operator's rules) and records when the job started and finished, so the job's duration
comes from the backend, right even when a launcher adopted a job an earlier attempt started:

* ``Pending``: the controller has not seen the job yet;
* ``Created``: accepted, no replica running yet (pods being scheduled, images pulled);
* ``Running``, ``Restarting`` (a replica failed and is being restarted);
* ``Suspended``: held (a queue such as Kueue has not admitted it);
* ``Succeeded``, ``Failed``: finished; nothing changes any more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

CREATED, RUNNING, RESTARTING = "Created", "Running", "Restarting"
SUCCEEDED, FAILED, SUSPENDED = "Succeeded", "Failed", "Suspended"
PENDING = "Pending"  # no condition yet: the controller has not seen the job
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

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED

    @property
    def succeeded(self) -> bool:
        return self.phase == SUCCEEDED

    @property
    def failed(self) -> bool:
        return self.phase == FAILED

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
