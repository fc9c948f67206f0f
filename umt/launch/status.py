"""Job conditions as the Training Operator reports them, and a small summary of them.

The operator keeps one condition per type (Created, Running, Restarting, Succeeded, Suspended,
Failed) and moves them with a few rules we mirror in the local executor
(``pkg/util/status.go::setCondition`` on release-1.9):

* once Failed is true, nothing changes any more;
* Running and Restarting replace each other;
* Succeeded or Failed turn Running to False.

The job's phase is the type of the last condition that is True, which is also what
``kubectl get pytorchjobs`` prints in its STATE column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from kubeflow.training.models import KubeflowOrgV1JobCondition

CREATED, RUNNING, RESTARTING = "Created", "Running", "Restarting"
SUCCEEDED, FAILED, SUSPENDED = "Succeeded", "Failed", "Suspended"
PENDING = "Pending"  # no condition yet: the operator has not seen the job
FINISHED = (SUCCEEDED, FAILED)


def set_condition(conditions: list[KubeflowOrgV1JobCondition], type_: str, reason: str,
                  message: str, status: str = "True") -> list[KubeflowOrgV1JobCondition]:
    """Return ``conditions`` with ``type_`` set, following the operator's rules."""
    if any(c.type == FAILED and c.status == "True" for c in conditions):
        return conditions
    now = datetime.now(timezone.utc)
    current = next((c for c in conditions if c.type == type_), None)
    if current is not None and current.status == status and current.reason == reason:
        return conditions
    transition = current.last_transition_time if (
        current is not None and current.status == status) else now
    kept = []
    for c in conditions:
        if c.type == type_ or {c.type, type_} == {RUNNING, RESTARTING}:
            continue
        if type_ in FINISHED and c.type == RUNNING:
            c = KubeflowOrgV1JobCondition(type=c.type, status="False", reason=c.reason,
                                          message=c.message, last_update_time=now,
                                          last_transition_time=now)
        kept.append(c)
    kept.append(KubeflowOrgV1JobCondition(type=type_, status=status, reason=reason,
                                          message=message, last_update_time=now,
                                          last_transition_time=transition))
    return kept


@dataclass
class JobStatus:
    """Where a job stands: its phase, the message that explains it, all conditions."""

    name: str
    phase: str = PENDING
    message: str = ""
    conditions: list[KubeflowOrgV1JobCondition] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED

    @property
    def succeeded(self) -> bool:
        return self.phase == SUCCEEDED

    @property
    def failed(self) -> bool:
        return self.phase == FAILED

    @classmethod
    def from_conditions(cls, name: str,
                        conditions: list[KubeflowOrgV1JobCondition] | None) -> "JobStatus":
        conditions = list(conditions or [])
        true = [c for c in conditions if c.status == "True"]
        # A finished job is finished whatever order its conditions were listed in.
        for final in (FAILED, SUCCEEDED):
            done = next((c for c in true if c.type == final), None)
            if done is not None:
                return cls(name, final, done.message or "", conditions)
        if not true:
            return cls(name, PENDING, "", conditions)
        last = true[-1]
        return cls(name, last.type, last.message or "", conditions)
