"""Kubeflow Trainer v2.3.0 inside the tests' Kubernetes API server (tests/kube_api_server.py):
``trainer.kubeflow.org/v1alpha1`` TrainJobs and TrainingRuntimes, and a fake Trainer + JobSet +
Kueue that move TrainJobs as the real ones would.

* create (``POST .../trainjobs``): 422 on CRD schema errors (unknown fields under
  ``fieldValidation=Strict``), 403 "admission webhook ... denied" on the Trainer webhook's rules
  and when the named ``TrainingRuntime`` does not exist in the namespace; 409 on a taken name.
  A job labelled ``kueue.x-k8s.io/queue-name`` is suspended by "Kueue" (``spec.suspend: true``)
  and admitted ``kueue_admit_after`` seconds later (None: when a test calls :meth:`kueue_admit`);
* get, list (label selectors), delete (Background: the job and its pods go at once; Foreground:
  ``deletionTimestamp`` first, gone after ``api.deletion_delay``);
* ``trainingruntimes`` get (``runtimes``: the project runtime in ``umt`` by default);
* the controller: ``Suspended`` True while suspended (no pods) and False/``Resumed`` after; node
  pods ``<job>-node-0-<i>-<random>`` labelled as JobSet labels them (jobset-name,
  replicatedjob-name, job-completion-index, restart-attempt) and with the pod labels of the
  TrainJob's runtime patch; ``restartPolicy: Never`` pods that follow ``api.script`` /
  ``api.stuck`` (called with ``(job, "<job>-node-<i>")``, stable across restarts); a failed pod
  restarts the whole JobSet (every pod recreated under a new name, the next scripted attempt) up
  to the runtime's ``failurePolicy.maxRestarts``, then ``Failed`` (``ReachedMaxRestarts``); all
  pods succeeded: ``Complete`` (and the stage's ``summary.json``, as for PyTorchJobs);
  ``activeDeadlineSeconds`` from the start or the last resume: ``Failed``/``DeadlineExceeded``;
  ``status.jobsStatus`` of the node Job.
"""

from __future__ import annotations

import copy
import functools
import time
import uuid
from typing import Any

import yaml

from umt.launch import trainer_runtime
from umt.launch.backends import trainjob

GROUP_PATH = "/apis/trainer.kubeflow.org/v1alpha1"
KUEUE_LABEL = "kueue.x-k8s.io/queue-name"
WEBHOOK = 'admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request: '


@functools.lru_cache(maxsize=1)
def trainjob_crd() -> dict[str, Any]:
    return yaml.load(trainjob.CRD_PATH.read_text(),
                     Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _condition(job: dict[str, Any], type_: str, status: str, reason: str, message: str,
               now: str) -> None:
    """meta.SetStatusCondition: one condition per type; the time moves when status does."""
    conds = job.setdefault("status", {}).setdefault("conditions", [])
    current = next((c for c in conds if c["type"] == type_), None)
    if current is None:
        conds.append({"type": type_, "status": status, "reason": reason, "message": message,
                      "lastTransitionTime": now})
        return
    if current["status"] != status:
        current["lastTransitionTime"] = now
    current.update(status=status, reason=reason, message=message)


class FakeTrainer:
    """The trainer.kubeflow.org part of a :class:`kube_api_server.FakeKubeAPI`."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.installed = False  # a test opts in: most clusters of the older tests have v1 only
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.runtimes: dict[tuple[str, str], dict[str, Any]] = {
            ("umt", trainer_runtime.NAME): trainer_runtime.runtime()}
        self.kueue_admit_after: float | None = 0.5
        self.restarts: dict[tuple[str, str], int] = {}

    # -- admission -------------------------------------------------------------------------
    def admit_job(self, ns: str, job: dict[str, Any], strict: bool) -> tuple[int, str] | None:
        name = (job.get("metadata") or {}).get("name", "")
        schema = trainjob.schema_errors(job)
        unknown = [e for e in schema if "Additional properties" in e]
        other = [e for e in schema if e not in unknown]
        if other or (strict and unknown):
            return 422, (f'TrainJob.trainer.kubeflow.org "{name}" is invalid: '
                         + "; ".join(e.removeprefix("schema: ") for e in other + unknown))
        denied = [e for e in trainjob.controller_errors(job) if e.startswith("crd: ")]
        if denied:
            return 422, f'TrainJob.trainer.kubeflow.org "{name}" is invalid: ' + "; ".join(denied)
        ref = (job.get("spec") or {}).get("runtimeRef") or {}
        if (ns, ref.get("name")) not in self.runtimes:
            return 403, (WEBHOOK + f'spec.runtimeRef: Invalid value: trainingruntimes.trainer.'
                         f'kubeflow.org "{ref.get("name")}" not found: specified trainingRuntime '
                         "must be created before the TrainJob is created")
        denied = [e for e in trainjob.controller_errors(job) if e.startswith("webhook: ")]
        if denied:
            return 403, WEBHOOK + "; ".join(denied)
        return None

    def on_create(self, stored: dict[str, Any]) -> None:
        """What Kueue's mutating webhook does to a job with a queue label: suspend it."""
        if KUEUE_LABEL in (stored["metadata"].get("labels") or {}):
            stored["spec"]["suspend"] = True
            if self.kueue_admit_after is not None:
                stored["metadata"]["_admitAt"] = time.monotonic() + self.kueue_admit_after

    def kueue_admit(self, name: str, namespace: str = "umt") -> None:
        """Kueue admits the job: it is unsuspended."""
        with self.api.lock:
            self.jobs[(namespace, name)]["spec"]["suspend"] = False

    # -- the controllers -------------------------------------------------------------------
    def reconcile(self) -> None:
        for key in list(self.jobs):
            self._reconcile(key)

    def _pods(self, ns: str, name: str) -> list[Any]:
        return [p for p in self.api.pods.values() if p.namespace == ns and p.job == name]

    def _delete_pods(self, ns: str, name: str) -> None:
        for pod in self._pods(ns, name):
            self.api.pods.pop((ns, pod.name), None)

    def _create_pods(self, ns: str, job: dict[str, Any]) -> None:
        from kube_api_server import Pod

        name = job["metadata"]["name"]
        attempt = self.restarts.get((ns, name), 0)
        labels = {}
        for patch in job["spec"].get("runtimePatches") or []:
            for rjob in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
                labels.update(((rjob["template"]["spec"]["template"].get("metadata") or {})
                               .get("labels") or {}))
        for i in range(int(job["spec"].get("trainer", {}).get("numNodes") or 1)):
            logical = f"{name}-node-{i}"
            script = list(self.api.script(name, logical))
            pod_name = f"{name}-node-0-{i}-{uuid.uuid4().hex[:5]}"
            self.api.pods[(ns, pod_name)] = Pod(
                pod_name, ns, name, "node", i, "Never",
                [script[min(attempt, len(script) - 1)]], stuck=self.api.stuck(name, logical),
                container=trainjob.CONTAINER, labels={
                    **labels, trainjob.JOBSET_NAME_LABEL: name,
                    trainjob.REPLICATED_JOB_LABEL: trainer_runtime.NODE,
                    "jobset.sigs.k8s.io/job-index": "0",
                    trainjob.COMPLETION_INDEX_LABEL: str(i),
                    trainjob.RESTART_ATTEMPT_LABEL: str(attempt)})

    def _finish(self, ns: str, job: dict[str, Any], type_: str, reason: str, message: str,
                keep_pods: bool = True) -> None:
        from kube_api_server import now_rfc3339

        _condition(job, type_, "True", reason, message, now_rfc3339())
        for pod in self._pods(ns, job["metadata"]["name"]):
            if not keep_pods or pod.phase in ("Pending", "Running"):
                self.api.pods.pop((ns, pod.name), None)  # the Job stops what still runs

    def _reconcile(self, key: tuple[str, str]) -> None:
        from kube_api_server import _write_summary, now_rfc3339

        ns, name = key
        job = self.jobs[key]
        meta, spec = job["metadata"], job["spec"]
        if meta.get("deletionTimestamp"):
            if time.monotonic() >= meta["_deleteAt"]:
                self._delete_pods(ns, name)
                del self.jobs[key]
            return
        conds = job.setdefault("status", {}).setdefault("conditions", [])
        if any(c["type"] in (trainjob.COMPLETE, "Failed") and c["status"] == "True"
               for c in conds):
            return
        now = now_rfc3339()
        if meta.get("_admitAt") is not None and time.monotonic() >= meta["_admitAt"]:
            spec["suspend"], meta["_admitAt"] = False, None
        if spec.get("suspend"):
            _condition(job, "Suspended", "True", "Suspended", "TrainJob is suspended", now)
            self._delete_pods(ns, name)  # a suspended JobSet has no pods
            meta["_startedAt"] = None
            return
        if any(c["type"] == "Suspended" and c["status"] == "True" for c in conds):
            _condition(job, "Suspended", "False", "Resumed", "TrainJob is resumed", now)
        if meta.get("_startedAt") is None:
            meta["_startedAt"] = time.monotonic()  # the deadline runs from here
        pods = self._pods(ns, name)
        if not pods:
            self._create_pods(ns, job)
            return
        for pod in pods:
            self.api._kubelet(pod)
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None and time.monotonic() - meta["_startedAt"] > deadline:
            self._finish(ns, job, "Failed", "DeadlineExceeded",
                         "TrainJob exceeded its active deadline", keep_pods=False)
            return
        failed = [p for p in pods if p.phase == "Failed"]
        if failed:
            restarts = self.restarts.get(key, 0)
            limit = (self.runtimes.get((ns, spec["runtimeRef"]["name"])) or {}).get(
                "spec", {}).get("template", {}).get("spec", {}).get("failurePolicy", {}).get(
                "maxRestarts", 0)
            if restarts >= limit:
                self._finish(ns, job, "Failed", "ReachedMaxRestarts",
                             "jobset failed due to reaching max number of restarts")
                return
            self.restarts[key] = restarts + 1  # JobSet recreates every Job (and pod)
            self._delete_pods(ns, name)
            self._create_pods(ns, job)
            pods = self._pods(ns, name)
        status = job["status"]
        status["jobsStatus"] = [{
            "name": trainer_runtime.NODE, "ready": int(all(p.phase == "Running" for p in pods)),
            "active": int(any(p.phase in ("Pending", "Running") for p in pods)),
            "succeeded": int(all(p.phase == "Succeeded" for p in pods)),
            "failed": 0, "suspended": 0}]
        if all(p.phase == "Succeeded" for p in pods):
            if self.api.write_summaries:
                _write_summary(job, spec["trainer"].get("command") or [], self.api.s3_summaries)
            self._finish(ns, job, trainjob.COMPLETE, "AllJobsCompleted",
                         "jobset completed successfully")

    # -- HTTP ------------------------------------------------------------------------------
    def discovery(self) -> dict[str, Any]:
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": "trainer.kubeflow.org/v1alpha1", "resources": [
                    {"name": plural, "singularName": plural[:-1], "namespaced": namespaced,
                     "kind": kind, "verbs": verbs}
                    for plural, kind, namespaced in (
                        ("trainjobs", "TrainJob", True),
                        ("trainingruntimes", "TrainingRuntime", True),
                        ("clustertrainingruntimes", "ClusterTrainingRuntime", False))]}

    def route(self, h: Any, method: str, path: str, query: dict[str, str]) -> None:
        """Answer a request under /apis/trainer.kubeflow.org (``h``: the request handler)."""
        api = self.api
        if not self.installed:
            if method in ("POST", "PUT", "PATCH"):
                h._body()
            return h._error(404, "the server could not find the requested resource")
        if path == GROUP_PATH and method == "GET":
            return h._send(200, self.discovery())
        parts = path[len(GROUP_PATH):].strip("/").split("/")
        if len(parts) < 3 or parts[0] != "namespaces":
            return h._error(404, f"the server could not find the requested resource {path}")
        ns, plural, name = parts[1], parts[2], (parts[3] if len(parts) > 3 else None)
        verb = {"POST": "create", "DELETE": "delete"}.get(method, "get" if name else "list")
        if plural == "trainingruntimes":
            if h._forbidden(verb, plural, ns):
                return None
            runtime = self.runtimes.get((ns, name))
            if runtime is None:
                return h._error(404, f'trainingruntimes.trainer.kubeflow.org "{name}" not found')
            return h._send(200, runtime)
        if plural != "trainjobs":
            return h._error(404, f"the server could not find the requested resource {path}")
        if method == "POST":
            body = h._body()
            if h._forbidden(verb, plural, ns):
                return None
            rejected = self.admit_job(ns, body, query.get("fieldValidation") == "Strict")
            if rejected:
                return h._error(*rejected)
            with api.lock:
                if (ns, body["metadata"]["name"]) in self.jobs:
                    return h._error(409, f'trainjobs.trainer.kubeflow.org '
                                         f'"{body["metadata"]["name"]}" already exists')
                stored = copy.deepcopy(body)
                stored["metadata"].update(namespace=ns, uid=str(uuid.uuid4()),
                                          resourceVersion="1", creationTimestamp=_now())
                stored["status"] = {}
                self.on_create(stored)
                self.restarts.pop((ns, stored["metadata"]["name"]), None)
                self.jobs[(ns, stored["metadata"]["name"])] = stored
                return h._send(201, _public(stored))
        if h._forbidden(verb, plural, ns):
            return None
        from kube_api_server import _matches, _status_body, now_rfc3339

        with api.lock:
            if name is None:
                items = [_public(j) for (n, _), j in self.jobs.items() if n == ns and
                         _matches(j["metadata"].get("labels") or {}, query.get("labelSelector"))]
                return h._send(200, {"apiVersion": "trainer.kubeflow.org/v1alpha1",
                                     "kind": "TrainJobList", "items": items, "metadata": {}})
            job = self.jobs.get((ns, name))
            if job is None:
                return h._error(404, f'trainjobs.trainer.kubeflow.org "{name}" not found')
            if method == "DELETE":
                if query.get("propagationPolicy") == "Foreground":
                    meta = job["metadata"]
                    if not meta.get("deletionTimestamp"):
                        meta["deletionTimestamp"] = now_rfc3339()
                        meta["finalizers"] = ["foregroundDeletion"]
                        meta["_deleteAt"] = time.monotonic() + api.deletion_delay
                    return h._send(200, _public(job))
                del self.jobs[(ns, name)]
                self._delete_pods(ns, name)
                return h._send(200, _status_body(200, "deleted", "") | {"status": "Success"})
            return h._send(200, _public(job))


def _now() -> str:
    from kube_api_server import now_rfc3339

    return now_rfc3339()


def _public(job: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(job)
    for key in [k for k in out["metadata"] if k.startswith("_")]:
        del out["metadata"][key]  # our own bookkeeping
    return out
