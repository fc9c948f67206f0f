"""A small Kubernetes API server for tests: real HTTP on 127.0.0.1, spoken to by the real client.

It serves what the launcher and ``umt doctor`` use, with the API server's status codes and
``Status`` bodies:

* ``kubeflow.org/v1`` pytorchjobs: create (409 on a taken name, also while the old object is
  still being deleted; 422 on schema errors, unknown fields rejected under
  ``fieldValidation=Strict``; 403 "admission webhook ... denied" on the Training Operator
  webhook's rules), get, list (label selectors), delete (``propagationPolicy=Background``: the
  job goes at once, its pods with it; ``Foreground``: the job gets a ``deletionTimestamp`` and the
  ``foregroundDeletion`` finalizer and goes only after its pods, ``deletion_delay`` later);
* pods (list with label selectors), and ``pods/log`` with ``follow`` (chunked streaming),
  ``timestamps``, ``previous`` and ``container``. Pods that cannot start: ``stuck`` gives a pod
  a :class:`Stuck` state (unschedulable, or a container waiting in ImagePullBackOff,
  CreateContainerConfigError, ...), optionally only for its first seconds;
* secrets (get), for ``umt doctor``;
* ``argoproj.io/v1alpha1`` workflows (get) from ``workflows``: the run's own Workflow, which a
  launcher reads to tell a terminated run (KFP's Terminate: ``activeDeadlineSeconds: 0``) from
  a drained pod; ``patch`` of a job's labels (a JSON merge patch, as ``kubectl label``);
* ``customresourcedefinitions/pytorchjobs.kubeflow.org`` (``crd_readable=False``: 403, as for
  Kubeflow profile users), API discovery of ``kubeflow.org/v1``, ``/version``,
  ``selfsubjectaccessreviews``;
* RBAC: ``allowed`` lists (verb, resource) pairs; anything else is 403 Forbidden;
* ``trainer.kubeflow.org/v1alpha1`` TrainJobs with a fake Trainer, JobSet and Kueue
  (tests/kube_trainer.py), when a test sets ``trainer.installed``.

A fake operator + kubelet moves each job like the Training Operator v1.9 would: Created, pods
``<job>-<replica>-<i>`` that go Pending -> Running -> Succeeded/Failed following a per-pod
script, in-place container restarts for OnFailure/Always (restart counts against
``backoffLimit``), pod re-creation for ExitCode >= 128, Running/Restarting/Succeeded/Failed
conditions, ``cleanPodPolicy`` on completion, ``activeDeadlineSeconds`` (Failed with the
operator's message, every pod deleted; counted from the job's start), ``runPolicy.suspend``
(Suspended, no pods; resumed: Suspended False, pods created). It plays Kueue too: a job
created with the ``kueue.x-k8s.io/queue-name`` label is suspended (Kueue's webhook) and
admitted ``kueue_admit_after`` seconds later (None: when a test calls
:meth:`FakeKubeAPI.kueue_admit`). When a job's master role succeeds, the fake plays the
stage's last act: it writes ``summary.json`` into the ``train.output_dir=`` its command names
when that is a local folder, and to s3:// (through ``umt.storage``) only with
``s3_summaries`` (a test with the moto server); ``write_summaries=False`` writes none.
``request_times`` records when each request arrived (for "deleted within a second" checks).

Fixtures: ``kube_api`` (the server) and ``kubeconfig`` (a kubeconfig file pointing at it, also
exported as ``$KUBECONFIG``).
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from kube_trainer import GROUP_PATH, FakeTrainer, trainjob_crd

from umt.launch.backends import pytorchjob

SHARED_CRD = Path(__file__).resolve().parents[2] / "shared" / "schemas" / \
    "kubeflow.org_pytorchjobs.v1.9.yaml"
CRD_FILE = SHARED_CRD if SHARED_CRD.exists() else pytorchjob.CRD_PATH
ALL_VERBS = {(v, r) for v in ("create", "get", "list", "watch", "delete", "patch", "update")
             for r in ("pytorchjobs", "trainjobs", "trainingruntimes", "pods", "pods/log",
                       "secrets", "workflows")}
GROUPS = {"pytorchjobs": "kubeflow.org", "trainjobs": "trainer.kubeflow.org",
          "trainingruntimes": "trainer.kubeflow.org", "workflows": "argoproj.io"}
UNSCHEDULABLE = "Unschedulable"


@functools.lru_cache(maxsize=1)
def _load_crd() -> dict[str, Any]:
    return yaml.load(CRD_FILE.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def now_rfc3339(nanos: bool = False) -> str:
    t = datetime.now(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z" if nanos else t.strftime(
        "%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Attempt:
    """One run of a pod's container: print ``lines``, then exit (``None``: run forever)."""

    lines: list[str] = field(default_factory=lambda: ["step 1", "step 2", "done"])
    exit_code: int | None = 0
    line_interval: float = 0.01


@dataclass
class Stuck:
    """Why a pod cannot start: ``reason`` Unschedulable (PodScheduled=False) or a container
    waiting reason (ImagePullBackOff, ErrImagePull, InvalidImageName,
    CreateContainerConfigError, ...) of ``container`` (``init-pytorch``: the operator's init
    container on workers). ``until``: seconds after the pod's creation when it clears (None:
    never)."""

    reason: str
    message: str = ""
    container: str | None = None  # None: the pod's training container
    until: float | None = None


@dataclass
class Pod:
    name: str
    namespace: str
    job: str
    rtype: str  # master | worker
    index: int
    restart_policy: str  # the *pod's* policy: OnFailure | Always | Never
    attempts: list[Attempt]
    phase: str = "Pending"
    started: float = 0.0
    restart_count: int = 0
    logs: list[list[tuple[str, str]]] = field(default_factory=lambda: [[]])  # per container run
    exit_code: int | None = None
    stuck: Stuck | None = None
    created: float = field(default_factory=time.monotonic)
    container: str = "pytorch"  # the training container (a TrainJob's: node)
    labels: dict[str, str] | None = None  # None: the Training Operator's labels
    created_at: str = field(default_factory=now_rfc3339)

    def stuck_now(self) -> Stuck | None:
        s = self.stuck
        if s is None or (s.until is not None and time.monotonic() - self.created >= s.until):
            return None
        return s

    def _status(self) -> dict[str, Any]:
        stuck = self.stuck_now()
        if stuck is not None and self.phase == "Pending":
            if stuck.reason == UNSCHEDULABLE:
                return {"phase": "Pending", "conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": UNSCHEDULABLE,
                    "message": stuck.message, "lastTransitionTime": now_rfc3339()}]}
            container = stuck.container or self.container
            waiting = {"name": container, "restartCount": 0, "ready": False,
                       "image": "x", "imageID": "",
                       "state": {"waiting": {"reason": stuck.reason,
                                             "message": stuck.message}}}
            key = "initContainerStatuses" if container.startswith("init") else \
                "containerStatuses"
            return {"phase": "Pending", "conditions": [{"type": "PodScheduled",
                                                        "status": "True"}], key: [waiting]}
        state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        if self.phase == "Running":
            state = {"running": {"startedAt": now_rfc3339()}}
        elif self.phase in ("Succeeded", "Failed"):
            state = {"terminated": {"exitCode": self.exit_code or 0}}
        return {"phase": self.phase, "containerStatuses": [{
            "name": self.container, "restartCount": self.restart_count, "ready": True,
            "image": "x", "imageID": "", "state": state}]}

    def to_dict(self) -> dict[str, Any]:
        init = [{"name": "init-pytorch", "image": "alpine"}] if self.rtype == "worker" else []
        labels = self.labels if self.labels is not None else {
            "training.kubeflow.org/job-name": self.job,
            "training.kubeflow.org/operator-name": "pytorchjob-controller",
            "training.kubeflow.org/replica-type": self.rtype,
            "training.kubeflow.org/replica-index": str(self.index),
            **({"training.kubeflow.org/job-role": "master"} if self.rtype == "master" else {})}
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": labels,
                         "creationTimestamp": self.created_at},
            "spec": {"restartPolicy": self.restart_policy,
                     "containers": [{"name": self.container, "image": "x"}],
                     **({"initContainers": init} if init else {})},
            "status": self._status(),
        }


def _matches(labels: dict[str, str], selector: str | None) -> bool:
    for term in filter(None, (selector or "").split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakeKubeAPI:
    """State, the fake operator/kubelet, and the HTTP front end."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], Pod] = {}
        self.crd_installed = True
        self.crd_readable = True  # False: users may not read CRDs (Kubeflow profile users)
        self.allowed: set[tuple[str, str]] = set(ALL_VERBS)
        self.user = "system:serviceaccount:umt:umt-pipeline"
        self.requests: list[tuple[str, str]] = []
        self.request_times: list[tuple[float, str, str]] = []  # (monotonic, method, path)
        self.write_summaries = True
        self.s3_summaries = False
        # Inject failures: (method, path regex, status) consumed by the first matching request.
        self.fail_next: list[tuple[str, str, int]] = []
        # Per-pod scripts: (job name, pod name) -> attempts; default: succeed after 3 lines.
        self.script: Callable[[str, str], list[Attempt]] = lambda job, pod: [Attempt(
            lines=[f"{pod} step 1", f"{pod} step 2", f"{pod} done"])]
        # (job name, pod name) -> why the pod cannot start, or None (it starts).
        self.stuck: Callable[[str, str], Stuck | None] = lambda job, pod: None
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}  # (ns, name) -> plain data
        self.workflows: dict[tuple[str, str], dict[str, Any]] = {}  # (ns, name) -> Workflow
        self.deletion_delay = 0.3  # seconds a Foreground-deleted job waits for its pods
        # Kueue: a job with a queue label is suspended at creation and admitted this long
        # after (None: only when a test calls kueue_admit()).
        self.kueue_admit_after: float | None = 0.5
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._crd = _load_crd()
        # Kubeflow Trainer v2 (off unless a test installs it: trainer.installed = True).
        self.trainer = FakeTrainer(self)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._threads = [threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                          kwargs={"poll_interval": 0.05}),
                         threading.Thread(target=self._reconcile_loop, daemon=True)]

    def start(self) -> "FakeKubeAPI":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def write_kubeconfig(self, path: Path, namespace: str = "umt") -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "test-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                      "namespace": namespace}}],
        }))
        return path

    # -- admission -------------------------------------------------------------------------
    def admit(self, job: dict[str, Any], strict: bool) -> tuple[int, str] | None:
        """(status, message) of the rejection the real API server would send, or None."""
        name = (job.get("metadata") or {}).get("name", "")
        schema = pytorchjob.schema_errors(job)
        unknown = [e for e in schema if "Additional properties" in e]
        other = [e for e in schema if e not in unknown]
        if other or (strict and unknown):
            return 422, (f'PyTorchJob.kubeflow.org "{name}" is invalid: '
                         + "; ".join(e.removeprefix("schema: ") for e in other + unknown))
        denied = pytorchjob.webhook_errors(job)
        if denied:
            return 403, ('admission webhook "validator.pytorchjob.training-operator.kubeflow.org"'
                         " denied the request: " + "; ".join(denied))
        return None

    # -- the fake operator and kubelet -----------------------------------------------------
    def _reconcile_loop(self) -> None:
        while not self._stop.wait(0.01):
            with self.lock:
                for key in list(self.jobs):
                    self._reconcile(key)
                self.trainer.reconcile()

    def _set_condition(self, job: dict[str, Any], type_: str, message: str,
                       reason: str | None = None) -> None:
        """The operator's setCondition rules, on plain dicts (independent of umt.launch)."""
        status = job.setdefault("status", {})
        conds = status.setdefault("conditions", [])
        if any(c["type"] == "Failed" and c["status"] == "True" for c in conds):
            return
        current = next((c for c in conds if c["type"] == type_), None)
        reason = reason or f"PyTorchJob{type_}"
        if current and current["status"] == "True" and current["reason"] == reason:
            return
        kept = []
        for c in conds:
            if c["type"] == type_ or {c["type"], type_} == {"Running", "Restarting"}:
                continue
            if type_ in ("Succeeded", "Failed") and c["type"] == "Running":
                c = {**c, "status": "False"}
            kept.append(c)
        stamp = now_rfc3339()
        kept.append({"type": type_, "status": "True", "reason": reason, "message": message,
                     "lastUpdateTime": stamp, "lastTransitionTime": stamp})
        status["conditions"] = kept
        if type_ in ("Succeeded", "Failed"):
            status["completionTime"] = stamp

    def _finished(self, job: dict[str, Any]) -> bool:
        return any(c["type"] in ("Succeeded", "Failed") and c["status"] == "True"
                   for c in job.get("status", {}).get("conditions", []))

    def _create_pod(self, ns: str, job: dict[str, Any], rtype: str, i: int) -> None:
        name = job["metadata"]["name"]
        policy = job["spec"]["pytorchReplicaSpecs"][rtype].get("restartPolicy", "OnFailure")
        pod_name = f"{name}-{rtype.lower()}-{i}"
        self.pods[(ns, pod_name)] = Pod(
            pod_name, ns, name, rtype.lower(), i,
            "Never" if policy == "ExitCode" else policy, list(self.script(name, pod_name)),
            stuck=self.stuck(name, pod_name))

    def _reconcile(self, key: tuple[str, str]) -> None:
        ns, name = key
        job = self.jobs[key]
        deleting = job["metadata"].get("deletionTimestamp")
        if deleting:  # foreground deletion: pods first, then the job
            if time.monotonic() >= job["metadata"]["_deleteAt"]:
                for k in [k for k, p in self.pods.items() if p.job == name and k[0] == ns]:
                    del self.pods[k]
                del self.jobs[key]
            return
        if self._finished(job):
            return
        if self._held_by_kueue(job):
            return
        specs = job["spec"]["pytorchReplicaSpecs"]
        pods = [p for p in self.pods.values() if p.namespace == ns and p.job == name]
        if not pods:
            job["status"]["startTime"] = now_rfc3339()
            job["metadata"]["_startedAt"] = time.monotonic()
            for rtype, rspec in specs.items():
                for i in range(rspec.get("replicas", 1)):
                    self._create_pod(ns, job, rtype, i)
            return
        for pod in pods:
            self._kubelet(pod)
        run_policy = job["spec"].get("runPolicy") or {}
        deadline = run_policy.get("activeDeadlineSeconds")
        if deadline is not None and time.monotonic() - job["metadata"]["_startedAt"] > deadline:
            # The operator's pastActiveDeadline: Failed, and every pod deleted.
            self._set_condition(job, "Failed", f"Job {name} has failed because it was active "
                                "longer than specified deadline")
            for pod in pods:
                self.pods.pop((pod.namespace, pod.name), None)
            return
        limit = run_policy.get("backoffLimit")
        restarts = sum(p.restart_count for p in pods if p.phase == "Running")
        if limit is not None and restarts and restarts >= limit:
            self._fail(job, pods, f"Job {name} has failed because it has reached the "
                                  "specified backoff limit")
            return
        statuses = {}
        for rtype, rspec in specs.items():
            mine = [p for p in pods if p.rtype == rtype.lower()]
            active = sum(p.phase == "Running" for p in mine)
            succeeded = sum(p.phase == "Succeeded" for p in mine)
            failed = [p for p in mine if p.phase == "Failed"]
            statuses[rtype] = {"active": active, "succeeded": succeeded, "failed": len(failed)}
            for pod in failed:
                policy = rspec.get("restartPolicy", "OnFailure")
                if policy == "ExitCode" and (pod.exit_code or 0) >= 128:
                    del self.pods[(ns, pod.name)]  # the operator deletes it; recreated next
                    self._create_pod(ns, job, rtype, pod.index)
                    self.pods[(ns, pod.name)].attempts = pod.attempts[1:] or pod.attempts[-1:]
                    self._set_condition(job, "Restarting", f"PyTorchJob {name} is restarting "
                                        f"because 1 {rtype} replica(s) failed.")
                else:
                    self._fail(job, pods, f"PyTorchJob {name} is failed because 1 {rtype} "
                                          "replica(s) failed.")
                    return
            if rtype == "Master" or "Master" not in specs:
                if active:
                    self._set_condition(job, "Running", f"PyTorchJob {name} is running.")
                if succeeded == rspec.get("replicas", 1):
                    if self.write_summaries:
                        _write_summary(job, rspec["template"]["spec"]["containers"][0].get(
                            "command") or [], self.s3_summaries)
                    self._set_condition(job, "Succeeded",
                                        f"PyTorchJob {name} is successfully completed.")
                    self._clean_pods(job, pods)
        job["status"]["replicaStatuses"] = statuses

    def _held_by_kueue(self, job: dict[str, Any]) -> bool:
        """Kueue's part and the operator's answer to it: a suspended job has a Suspended
        condition and no pods; when Kueue unsuspends it, Suspended turns False (Resumed)."""
        meta, name = job["metadata"], job["metadata"]["name"]
        run_policy = job["spec"].setdefault("runPolicy", {})
        if meta.get("_admitAt") is not None and time.monotonic() >= meta["_admitAt"]:
            run_policy["suspend"], meta["_admitAt"] = False, None
        if run_policy.get("suspend"):
            self._set_condition(job, "Suspended", f"PyTorchJob {name} is suspended.")
            for key in [k for k, p in self.pods.items() if p.job == name]:
                del self.pods[key]
            return True
        for c in job.get("status", {}).get("conditions", []):
            if c["type"] == "Suspended" and c["status"] == "True":
                c.update(status="False", reason="PyTorchJobResumed",
                         message=f"PyTorchJob {name} is resumed.",
                         lastTransitionTime=now_rfc3339(), lastUpdateTime=now_rfc3339())
        return False

    def kueue_admit(self, name: str, namespace: str = "umt") -> None:
        """Kueue admits a queued PyTorchJob: it is unsuspended."""
        with self.lock:
            self.jobs[(namespace, name)]["spec"]["runPolicy"]["suspend"] = False

    def _kubelet(self, pod: Pod) -> None:
        t = time.monotonic()
        if pod.phase == "Pending" and pod.stuck_now() is not None:
            return
        if pod.phase == "Pending":
            pod.phase, pod.started = "Running", t
            return
        if pod.phase != "Running":
            return
        attempt = pod.attempts[min(pod.restart_count, len(pod.attempts) - 1)]
        due = int((t - pod.started) / attempt.line_interval) + 1 if attempt.line_interval else \
            len(attempt.lines)
        log = pod.logs[-1]
        while len(log) < min(due, len(attempt.lines)):
            log.append((now_rfc3339(nanos=True), attempt.lines[len(log)]))
        if len(log) < len(attempt.lines) or attempt.exit_code is None:
            return
        pod.exit_code = attempt.exit_code
        if attempt.exit_code == 0 and pod.restart_policy != "Always":
            pod.phase = "Succeeded"
        elif pod.restart_policy in ("OnFailure", "Always"):
            pod.restart_count += 1  # restarted in place: same pod, new container log
            pod.logs.append([])
            pod.started = t
        else:
            pod.phase = "Failed"

    def _clean_pods(self, job: dict[str, Any], pods: list[Pod]) -> None:
        policy = (job["spec"].get("runPolicy") or {}).get("cleanPodPolicy", "None")
        for pod in pods:
            if policy == "All" or (policy == "Running" and pod.phase in ("Running", "Pending")):
                self.pods.pop((pod.namespace, pod.name), None)

    def _fail(self, job: dict[str, Any], pods: list[Pod], message: str) -> None:
        self._set_condition(job, "Failed", message)
        self._clean_pods(job, pods)

    # -- helpers for tests -----------------------------------------------------------------
    def job(self, name: str, namespace: str = "umt") -> dict[str, Any] | None:
        with self.lock:
            return copy.deepcopy(self.jobs.get((namespace, name)))

    def pod(self, name: str, namespace: str = "umt") -> Pod | None:
        with self.lock:
            return self.pods.get((namespace, name))

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                value = predicate()
            if value:
                return value
            time.sleep(0.01)
        raise AssertionError("timed out waiting on the fake API server")


def _write_summary(job: dict[str, Any], command: list[str], to_s3: bool) -> None:
    """What a stage writes when it finishes (see umt/train/*: summary.json); ``command``: the
    training container's."""
    from umt import storage

    outs = [a.split("=", 1)[1] for a in command if a.startswith("train.output_dir=")]
    if not outs or (storage.is_s3(outs[-1]) and not to_s3):
        return
    stage = (job["metadata"].get("labels") or {}).get("umt/stage", "stage")
    summary = {"stage": stage, "steps": 3, "output_dir": outs[-1],
               "checkpoint": storage.join(outs[-1], "checkpoints", "step_3.pt"),
               "final_loss": 0.25, "job": job["metadata"]["name"]}
    storage.write_bytes(storage.join(outs[-1], "summary.json"), json.dumps(summary).encode())


def _status_body(code: int, message: str, reason: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


VERSION = {"major": "1", "minor": "30", "gitVersion": "v1.30.0-fake", "gitCommit": "0",
           "gitTreeState": "clean", "buildDate": "2024-01-01T00:00:00Z", "goVersion": "go1.22",
           "compiler": "gc", "platform": "linux/amd64"}
REASONS = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 409: "AlreadyExists",
           422: "Invalid", 500: "InternalError", 503: "ServiceUnavailable"}
JOBS = re.compile(r"^/apis/kubeflow\.org/v1/namespaces/([^/]+)/pytorchjobs(?:/([^/]+))?$")
SECRETS = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets/([^/]+)$")
WORKFLOWS = re.compile(r"^/apis/argoproj\.io/v1alpha1/namespaces/([^/]+)/workflows/([^/]+)$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?(/log)?$")
CRD = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
SSAR = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


def _make_handler(api: FakeKubeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        # -- plumbing ------------------------------------------------------------------
        def _send(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, message: str) -> None:
            self._send(code, _status_body(code, message, REASONS.get(code, "Unknown")))

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"{}")

        def _forbidden(self, verb: str, resource: str, ns: str) -> bool:
            if (verb, resource) in api.allowed:
                return False
            group = GROUPS.get(resource, "")
            self._error(403, f'{resource} is forbidden: User "{api.user}" cannot {verb} '
                             f'resource "{resource}" in API group "{group}" in the '
                             f'namespace "{ns}"')
            return True

        def _route(self, method: str) -> None:
            url = urlparse(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            api.requests.append((method, self.path))
            api.request_times.append((time.monotonic(), method, self.path))
            for i, (m, pattern, code) in enumerate(api.fail_next):
                if m == method and re.search(pattern, url.path):
                    api.fail_next.pop(i)
                    if method == "POST" and JOBS.match(url.path):
                        self._body()  # drain what the client sent before answering
                    return self._error(code, "injected failure")
            if url.path.rstrip("/") == "/version" and method == "GET":
                return self._send(200, VERSION)
            if url.path == "/apis/kubeflow.org/v1" and method == "GET":
                return self._discovery()
            if url.path.startswith(CRD) and method == "GET":
                return self._crd(url.path[len(CRD):])
            if url.path.startswith(GROUP_PATH):
                return api.trainer.route(self, method, url.path, query)
            if url.path == SSAR and method == "POST":
                return self._ssar(self._body())
            if m := JOBS.match(url.path):
                if not api.crd_installed:
                    if method in ("POST", "PUT", "PATCH"):
                        self._body()
                    return self._error(404, "the server could not find the requested resource")
                return self._jobs(method, m.group(1), m.group(2), query)
            if (m := PODS.match(url.path)) and method == "GET":
                return self._pods(m.group(1), m.group(2), bool(m.group(3)), query)
            if (m := SECRETS.match(url.path)) and method == "GET":
                return self._secret(m.group(1), m.group(2))
            if (m := WORKFLOWS.match(url.path)) and method == "GET":
                return self._workflow(m.group(1), m.group(2))
            self._error(404, f"the server could not find the requested resource {url.path}")

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._route("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._route("POST")

        def do_DELETE(self) -> None:  # noqa: N802
            self._route("DELETE")

        def do_PATCH(self) -> None:  # noqa: N802
            self._route("PATCH")

        # -- resources -----------------------------------------------------------------
        def _discovery(self) -> None:
            if not api.crd_installed:
                return self._error(404, "the server could not find the requested resource")
            self._send(200, {"kind": "APIResourceList", "apiVersion": "v1",
                             "groupVersion": "kubeflow.org/v1", "resources": [{
                                 "name": "pytorchjobs", "singularName": "pytorchjob",
                                 "namespaced": True, "kind": "PyTorchJob",
                                 "verbs": ["create", "delete", "get", "list", "patch",
                                           "update", "watch"]}]})

        def _crd(self, name: str) -> None:
            if not api.crd_readable:
                return self._error(403, f'customresourcedefinitions.apiextensions.k8s.io '
                                        f'"{name}" is forbidden: User "{api.user}" cannot get '
                                        'resource "customresourcedefinitions" in API group '
                                        '"apiextensions.k8s.io" at the cluster scope')
            if name == trainjob_crd()["metadata"]["name"] and api.trainer.installed:
                return self._send(200, trainjob_crd())
            if not api.crd_installed or name != api._crd["metadata"]["name"]:
                return self._error(404, f'customresourcedefinitions.apiextensions.k8s.io '
                                        f'"{name}" not found')
            self._send(200, api._crd)

        def _ssar(self, review: dict[str, Any]) -> None:
            attrs = (review.get("spec") or {}).get("resourceAttributes") or {}
            resource = attrs.get("resource", "") + (
                "/" + attrs["subresource"] if attrs.get("subresource") else "")
            allowed = (attrs.get("verb"), resource) in api.allowed
            review["status"] = {"allowed": allowed,
                                **({} if allowed else {"reason": "no RBAC rule allows it"})}
            self._send(201, review)

        def _jobs(self, method: str, ns: str, name: str | None, query: dict[str, str]) -> None:
            verb = {"POST": "create", "DELETE": "delete", "PATCH": "patch"}.get(
                method, "get" if name else "list")
            if method == "POST":
                body = self._body()
                if self._forbidden(verb, "pytorchjobs", ns):
                    return None
                return self._create(ns, body, query.get("fieldValidation") == "Strict")
            if self._forbidden(verb, "pytorchjobs", ns):
                return None
            with api.lock:
                if name is None:
                    items = [self._public(j) for (n, _), j in api.jobs.items() if n == ns and
                             _matches(j["metadata"].get("labels") or {},
                                      query.get("labelSelector"))]
                    return self._send(200, {"apiVersion": "kubeflow.org/v1",
                                            "kind": "PyTorchJobList", "items": items,
                                            "metadata": {}})
                job = api.jobs.get((ns, name))
                if job is None:
                    return self._error(404, f'pytorchjobs.kubeflow.org "{name}" not found')
                if method == "PATCH":
                    return self._patch_labels(job)
                if method == "DELETE":
                    if query.get("propagationPolicy") == "Foreground":
                        meta = job["metadata"]
                        if not meta.get("deletionTimestamp"):
                            meta["deletionTimestamp"] = now_rfc3339()
                            meta["finalizers"] = ["foregroundDeletion"]
                            meta["_deleteAt"] = time.monotonic() + api.deletion_delay
                        return self._send(200, self._public(job))
                    del api.jobs[(ns, name)]
                    for key in [k for k, p in api.pods.items() if p.job == name and k[0] == ns]:
                        del api.pods[key]  # garbage collection of owned pods
                    return self._send(200, _status_body(200, "deleted", "") | {
                        "status": "Success"})
                return self._send(200, self._public(job))

        @staticmethod
        def _public(job: dict[str, Any]) -> dict[str, Any]:
            out = copy.deepcopy(job)
            out["metadata"].pop("_deleteAt", None)  # our own bookkeeping
            out["metadata"].pop("_createdAt", None)
            out["metadata"].pop("_admitAt", None)
            out["metadata"].pop("_startedAt", None)
            return out

        def _patch_labels(self, job: dict[str, Any]) -> None:
            patch = self._body()
            if self.headers.get("Content-Type") != "application/merge-patch+json" or set(
                    patch) - {"metadata"} or set(patch.get("metadata") or {}) - {"labels"}:
                return self._error(422, "this fake patches metadata.labels only, as a merge "
                                        "patch")
            labels = job["metadata"].setdefault("labels", {})
            for key, value in (patch["metadata"].get("labels") or {}).items():
                if value is None:
                    labels.pop(key, None)
                else:
                    labels[key] = value
            return self._send(200, self._public(job))

        def _workflow(self, ns: str, name: str) -> None:
            if self._forbidden("get", "workflows", ns):
                return None
            workflow = api.workflows.get((ns, name))
            if workflow is None:
                return self._error(404, f'workflows.argoproj.io "{name}" not found')
            self._send(200, workflow)

        def _secret(self, ns: str, name: str) -> None:
            if self._forbidden("get", "secrets", ns):
                return None
            data = api.secrets.get((ns, name))
            if data is None:
                return self._error(404, f'secrets "{name}" not found')
            self._send(200, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                             "metadata": {"name": name, "namespace": ns},
                             "data": {k: base64.b64encode(v.encode()).decode()
                                      for k, v in data.items()}})

        def _create(self, ns: str, body: dict[str, Any], strict: bool) -> None:
            name = (body.get("metadata") or {}).get("name", "")
            rejected = api.admit(body, strict)
            if rejected:
                return self._error(*rejected)
            with api.lock:
                if (ns, name) in api.jobs:
                    return self._error(409, f'pytorchjobs.kubeflow.org "{name}" already exists')
                stored = copy.deepcopy(body)
                stored["metadata"].update(namespace=ns, uid=str(uuid.uuid4()),
                                          resourceVersion="1",
                                          creationTimestamp=now_rfc3339(),
                                          _createdAt=time.monotonic())
                stored["status"] = {}
                api._set_condition(stored, "Created", f"PyTorchJob {name} is created.")
                if "kueue.x-k8s.io/queue-name" in (stored["metadata"].get("labels") or {}):
                    # Kueue's mutating webhook: held until the queue admits it.
                    stored["spec"].setdefault("runPolicy", {})["suspend"] = True
                    if api.kueue_admit_after is not None:
                        stored["metadata"]["_admitAt"] = time.monotonic() + \
                            api.kueue_admit_after
                api.jobs[(ns, name)] = stored
                return self._send(201, self._public(stored))

        def _pods(self, ns: str, name: str | None, log: bool, query: dict[str, str]) -> None:
            if self._forbidden("get" if name else "list", "pods/log" if log else "pods", ns):
                return None
            with api.lock:
                if name is None:
                    items = [p.to_dict() for (n, _), p in api.pods.items() if n == ns]
                    items = [i for i in items
                             if _matches(i["metadata"]["labels"], query.get("labelSelector"))]
                    return self._send(200, {"apiVersion": "v1", "kind": "PodList",
                                            "items": items, "metadata": {}})
                pod = api.pods.get((ns, name))
                if pod is None:
                    return self._error(404, f'pods "{name}" not found')
                if not log:
                    return self._send(200, pod.to_dict())
                if query.get("container", pod.container) != pod.container:
                    return self._error(400, f"container {query['container']} is not valid")
                if pod.phase == "Pending":
                    return self._error(400, f'container "{pod.container}" in pod "{name}" is '
                                            "waiting to start: ContainerCreating")
            # Go's ParseBool, as the real server: the Python client sends 'True'.
            flag = {k: query.get(k, "").lower() == "true"
                    for k in ("follow", "timestamps", "previous")}
            if flag["previous"]:
                if len(pod.logs) < 2:
                    return self._error(400, f'previous terminated container "pytorch" in pod '
                                            f'"{name}" not found')
                return self._stream_log(pod, False, flag["timestamps"], run=-2)
            self._stream_log(pod, flag["follow"], flag["timestamps"])

        def _stream_log(self, pod: Pod, follow: bool, timestamps: bool, run: int = -1) -> None:
            def fmt(entries: list[tuple[str, str]]) -> bytes:
                return b"".join((f"{ts} {line}\n" if timestamps else f"{line}\n").encode()
                                for ts, line in entries)

            if not follow:
                with api.lock:
                    data = fmt(pod.logs[run])
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            with api.lock:
                run = len(pod.logs) - 1  # follow the current container until it ends
            sent = 0
            try:
                while True:
                    with api.lock:
                        entries = pod.logs[run][sent:]
                        ended = (run < len(pod.logs) - 1 or pod.phase != "Running"
                                 or (pod.namespace, pod.name) not in api.pods)
                    if entries:
                        data = fmt(entries)
                        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                        self.wfile.flush()
                        sent += len(entries)
                    elif ended or api._stop.is_set():
                        break
                    else:
                        time.sleep(0.01)
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler


@pytest.fixture
def kube_api():
    """The fake API server (its jobs start in namespace ``umt``); stopped after the test."""
    server = FakeKubeAPI().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kubeconfig(kube_api, tmp_path, monkeypatch):
    """A kubeconfig for ``kube_api`` (context namespace ``umt``), exported as $KUBECONFIG."""
    path = kube_api.write_kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path



