"""The local TrainJob backend: a Kubeflow Trainer v2 TrainJob run on this machine, the way the
Trainer, JobSet and the torch plugin would run it on the project runtime.

    umt job run stage1 --backend trainjob --config tiny --nodes 2 train.steps=20
    umt run pipelines/full.py --local job_backend=trainjob

The job object is the one ``--backend trainjob`` sends to a cluster (validated against the
Trainer v2.3.0 CRD and webhook rules); it must name the project runtime
(``TrainingRuntime/umt-torch``, :mod:`umt.launch.trainer_runtime`: there is no cluster to read
another one from). Each of ``trainer.numNodes`` nodes becomes a local process group (through the
executor of :mod:`umt.launch.backends.local`) running ``trainer.command`` with ``trainer.env``
and what the torch plugin injects: ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK`` (the
node's completion index), ``PET_MASTER_ADDR`` / ``PET_MASTER_PORT``; no ``MASTER_ADDR``,
``WORLD_SIZE`` or ``RANK`` (the Trainer sets none; torchrun does for its workers). So the pod
command is the same command as on a cluster, and as in the PyTorchJob.

Restarts follow the runtime's JobSet failure policy: nodes never restart in place; the first
node that exits non-zero fails the node Job, every other node is stopped (SIGTERM, then SIGKILL
after the pods' ``terminationGracePeriodSeconds``) and all start again, up to the runtime's
``maxRestarts``; past it the job fails as JobSet reports it. Conditions are the TrainJob's
(``Complete``, ``Failed``; reason ``DeadlineExceeded`` past ``activeDeadlineSeconds``).

Differences a laptop forces, and nothing else: the master address is ``127.0.0.1`` and the port
a free one; images, resources, node selectors, tolerations and volumes are ignored; there is no
Kueue here (a queue label changes nothing: the job runs at once); a disruption cannot be told
from a crash (every failure counts against ``maxRestarts``, where on a cluster a preempted pod
restarts the JobSet for free); ``PYTHONUNBUFFERED=1`` is set as the training image sets it.
"""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from umt.launch import trainer_runtime
from umt.launch.backends.local import LocalBackend, LocalExecutor, Replica, _kill_group
from umt.launch.backends.trainjob import COMPLETE, CONTAINER, TrainJobs, job_status
from umt.launch.backends.trainjob import validate_trainjob as _validate_trainjob
from umt.launch.status import FAILED, RESTARTING, SUCCEEDED, JobStatus


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class LocalTrainJobExecutor(LocalExecutor):
    """One TrainJob as local processes (see the module docstring)."""

    def _validate(self) -> None:
        _validate_trainjob(self.job)
        ref = self.job["spec"]["runtimeRef"]
        if ref.get("name") != trainer_runtime.NAME or ref.get("kind") != trainer_runtime.KIND:
            raise ValueError(f"TrainJob {self.job['metadata']['name']}: runtimeRef "
                             f"{ref.get('kind')}/{ref.get('name')}: the local executor runs "
                             f"TrainJobs on the project runtime {trainer_runtime.KIND}/"
                             f"{trainer_runtime.NAME} only (no cluster to read others from)")
        self.runtime = trainer_runtime.runtime()
        self.created_at = _now()
        self.restarts = 0
        failure = self.runtime["spec"]["template"]["spec"].get("failurePolicy") or {}
        self.max_restarts = int(failure.get("maxRestarts", 0))

    @staticmethod
    def _run_policy(spec: dict[str, Any]) -> dict[str, Any]:
        return {"activeDeadlineSeconds": spec.get("activeDeadlineSeconds")}

    def _node_patch(self) -> dict[str, Any]:
        """Our runtimePatches' node pod spec, merged over the runtime's (the fields read
        here: the grace period)."""
        merged = dict(trainer_runtime.node_pod(self.runtime)["spec"])
        for patch in self.job["spec"].get("runtimePatches") or []:
            for rjob in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
                if rjob["name"] == trainer_runtime.NODE:
                    merged.update(rjob["template"]["spec"]["template"].get("spec") or {})
        return merged

    def _grace_seconds(self, spec: dict[str, Any]) -> int | None:
        return self._node_patch().get("terminationGracePeriodSeconds")

    def _deadline_message(self) -> str:
        return "TrainJob exceeded its active deadline"

    def _replicas(self, spec: dict[str, Any]) -> list[Replica]:
        trainer = spec.get("trainer") or {}
        container = {"name": CONTAINER, "command": trainer.get("command") or [],
                     "args": trainer.get("args") or [], "env": trainer.get("env") or []}
        nodes = int(trainer.get("numNodes") or 1)
        return [Replica("Node", i, i, "Never", container, self.dir / f"node-{i}.log")
                for i in range(nodes)]

    def _operator_env(self, replica: Replica) -> dict[str, str]:
        trainer = self.job["spec"].get("trainer") or {}
        return {"PYTHONUNBUFFERED": "1",
                "PET_NNODES": str(len(self.replicas)),
                "PET_NPROC_PER_NODE": str(trainer.get("numProcPerNode") or 1),
                "PET_NODE_RANK": str(replica.node_rank),
                "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(self.port)}

    # -- conditions: the TrainJob's, as metav1.Conditions ------------------------------------
    def _set(self, type_: str, message: str) -> None:
        """Only the final conditions exist on a TrainJob (Running/Restarting are read from
        its jobs' status, :meth:`status`)."""
        if type_ not in (SUCCEEDED, FAILED) or any(
                c["type"] in (COMPLETE, FAILED) for c in self.conditions):
            return
        kind, reason = ((COMPLETE, "AllJobsCompleted") if type_ == SUCCEEDED else
                        (FAILED, "DeadlineExceeded" if "deadline" in message else "FailedJobs"))
        self.conditions.append({"type": kind, "status": "True", "reason": reason,
                                "message": message, "lastTransitionTime": _now()})

    def status(self) -> JobStatus:
        with self._lock:
            states = [r.state for r in self.replicas]
            obj = {"metadata": {**self.job["metadata"], "creationTimestamp": self.created_at},
                   "spec": self.job["spec"],
                   "status": {"conditions": list(self.conditions), "jobsStatus": [{
                       "name": trainer_runtime.NODE, "ready": 0,
                       "active": int(any(s == "Running" for s in states)),
                       "failed": int(any(s == RESTARTING for s in states)),
                       "succeeded": int(all(s == SUCCEEDED for s in states)),
                       "suspended": 0}]}}
            # No Kueue here: the label must not make a local job read as queued.
            obj["metadata"]["labels"] = {
                k: v for k, v in (obj["metadata"].get("labels") or {}).items()
                if k != "kueue.x-k8s.io/queue-name"}
            return job_status(self.name, obj)

    # -- restarts: JobSet's failure policy ---------------------------------------------------
    def _on_exit(self, replica: Replica, code: int) -> None:
        if code == 0:
            replica.state = SUCCEEDED
            return
        replica.state = FAILED
        if self.restarts >= self.max_restarts:
            self._finish(FAILED, "jobset failed due to reaching max number of restarts "
                                 f"(node {replica.index} exited with code {code})")
            return
        self.restarts += 1
        self._stop_others(replica)
        for r in self.replicas:  # every node starts again, together
            r.state, r.restarts = RESTARTING, r.restarts + 1
            r.restart_at = time.monotonic() + self.restart_delay

    def _stop_others(self, failed: Replica) -> None:
        for r in self.replicas:
            proc = r.proc
            if r is failed or proc is None or proc.poll() is not None:
                continue
            _kill_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_grace + 1)
            except subprocess.TimeoutExpired:
                _kill_group(proc, signal.SIGKILL)
                proc.wait()

    def _check_success(self) -> None:
        if all(r.state == SUCCEEDED for r in self.replicas):
            self._finish(SUCCEEDED, "jobset completed successfully")

    def cancel(self) -> None:
        with self._lock:
            if not self._done.is_set():
                self.deleted = True
                self.conditions.append({
                    "type": FAILED, "status": "True", "reason": "Deleted", "lastTransitionTime":
                    _now(), "message": f"TrainJob {self.name} was deleted; its nodes were "
                                       "stopped."})
            self._done.set()
        self._stop_all(0.0)

    def log_path(self, replica: str | None = None, index: int = 0) -> Path:
        if replica is not None and replica.lower() == "worker":
            index += 1  # worker i is node i + 1, as for a PyTorchJob
        return self.dir / f"node-{index}.log"


class LocalTrainJobBackend(TrainJobs, LocalBackend):
    """:class:`umt.launch.backend.Backend` running TrainJobs as processes on this machine."""

    name = "local-trainjob"
    executor_class = LocalTrainJobExecutor
