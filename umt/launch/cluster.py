"""PyTorchJobs on a cluster through the Kubernetes API (Training Operator v1.9).

What earlier launchers got wrong, and what this one does instead:

* resubmitting (a retried KFP task) *adopts* the job with the same name (HTTP 409) when it is
  the same spec, instead of failing or starting a second copy;
* unknown fields are rejected (``fieldValidation=Strict``), not silently dropped;
* waiting has no built-in deadline (the job's ``activeDeadlineSeconds`` is the bound) and rides
  out API hiccups (5xx, 429, dropped connections) instead of declaring the job failed;
* a Failed job raises, so the KFP task fails too.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, Callable, Iterator

import urllib3
from kubernetes.client.exceptions import ApiException

from umt.launch.backend import JobFailedError, Submission
from umt.launch.kube import Cluster, connect
from umt.launch.pytorchjob import ANNOTATION_SPEC_HASH, API_VERSION, CONTAINER, PLURAL, spec_hash
from umt.launch.serialize import from_dict, to_dict
from umt.launch.status import FAILED, JobStatus
from umt.launch.validate import InvalidJobError

log = logging.getLogger(__name__)

GROUP, VERSION = API_VERSION.split("/")
TRANSIENT_HTTP = {429, 500, 502, 503, 504}
LOG_READ_TIMEOUT = 300.0  # seconds without a log line before we reconnect (no lines lost)
_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
TRANSIENT_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


def _is_transient(err: BaseException) -> bool:
    if isinstance(err, ApiException):
        return err.status in TRANSIENT_HTTP or err.status == 0
    return isinstance(err, TRANSIENT_ERRORS)


def _reason(err: ApiException) -> str:
    """The API server's own message out of a Status body."""
    try:
        return json.loads(err.body).get("message") or str(err.reason)
    except (TypeError, ValueError):
        return str(err.reason)


def _ts_key(ts: str) -> str:
    """RFC 3339 timestamps with trimmed nanoseconds, made comparable as strings."""
    if "." in ts:
        head, frac = ts.rstrip("Z").split(".", 1)
        return f"{head}.{frac:0<9}"
    return ts.rstrip("Z") + ".000000000"


class PyTorchJobBackend:
    """:class:`umt.launch.backend.JobBackend` for PyTorchJobs in one namespace."""

    def __init__(self, cluster: Cluster | None = None, *, kubeconfig: str | None = None,
                 context: str | None = None, namespace: str | None = None,
                 poll_interval: float = 15.0, request_timeout: float = 60.0):
        self.cluster = cluster or connect(kubeconfig, context, namespace)
        self.namespace = namespace or self.cluster.namespace
        self.poll_interval = poll_interval
        self.request_timeout = request_timeout

    # -- objects ---------------------------------------------------------------------------
    def get(self, name: str) -> dict[str, Any]:
        return self.cluster.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=self.request_timeout)

    def list(self, label_selector: str | None = None) -> list[dict[str, Any]]:
        resp = self.cluster.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, label_selector=label_selector,
            _request_timeout=self.request_timeout)
        return resp.get("items", [])

    def submit(self, job: Any) -> Submission:
        body = job if isinstance(job, dict) else to_dict(job)
        name = body["metadata"]["name"]
        body["metadata"]["namespace"] = self.namespace
        try:
            self.cluster.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, body, field_validation="Strict",
                _request_timeout=self.request_timeout)
            return Submission(name, self.namespace, created=True)
        except ApiException as e:
            if e.status == 409:
                self._check_adoptable(body)
                log.info("adopting existing PyTorchJob %s/%s", self.namespace, name)
                return Submission(name, self.namespace, created=False)
            if e.status == 404:
                raise RuntimeError(
                    "the API server has no kubeflow.org/v1 pytorchjobs: install the Training "
                    "Operator v1.9 (README, 'Run on a cluster') and run `umt doctor`") from None
            if e.status in (400, 403, 422) and "admission webhook" in _reason(e):
                # The Training Operator's webhook said no (a validation error, not RBAC).
                raise InvalidJobError(name, [_reason(e)]) from None
            if e.status == 403:
                raise PermissionError(
                    f"not allowed to create pytorchjobs in namespace {self.namespace}: "
                    f"{_reason(e)} (apply manifests/base for the umt Role, run `umt doctor`)"
                ) from None
            if e.status in (400, 422):
                raise InvalidJobError(name, [f"apiserver: {_reason(e)}"]) from None
            raise

    def _check_adoptable(self, body: dict[str, Any]) -> None:
        existing = self.get(body["metadata"]["name"])
        ours = (body["metadata"].get("annotations") or {}).get(ANNOTATION_SPEC_HASH) \
            or spec_hash(body)
        theirs = (existing["metadata"].get("annotations") or {}).get(ANNOTATION_SPEC_HASH)
        if theirs != ours:
            raise RuntimeError(
                f"a different PyTorchJob named {body['metadata']['name']} already exists in "
                f"{self.namespace} (spec hash {theirs} != {ours}); delete it "
                "(`umt job delete NAME`) or choose another --name / --run-id")

    def status(self, name: str) -> JobStatus:
        obj = self.get(name)
        conditions = from_dict(obj.get("status") or {}, "KubeflowOrgV1JobStatus").conditions
        return JobStatus.from_conditions(name, conditions)

    def delete(self, name: str) -> None:
        try:
            # Background propagation: the operator's pods and services go with the job.
            self.cluster.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name,
                propagation_policy="Background", _request_timeout=self.request_timeout)
        except ApiException as e:
            if e.status != 404:
                raise

    # -- waiting ---------------------------------------------------------------------------
    def wait(self, name: str, *, timeout: float | None = None,
             on_status: Callable[[JobStatus], None] | None = None) -> JobStatus:
        """Poll until Succeeded or Failed. ``timeout=None`` waits as long as the job runs."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last_phase, errors = None, 0
        while True:
            try:
                current = self.status(name)
                errors = 0
            except ApiException as e:
                if e.status == 404:
                    gone = JobStatus(name, FAILED, "the job was deleted while we waited for it")
                    raise JobFailedError(gone) from None
                if not _is_transient(e):
                    raise
                errors += 1
                log.warning("API error while waiting for %s (%s); retrying", name, e.status)
            except TRANSIENT_ERRORS as e:
                errors += 1
                log.warning("lost the API server while waiting for %s (%s); retrying", name, e)
            else:
                if current.phase != last_phase:
                    last_phase = current.phase
                    if on_status:
                        on_status(current)
                if current.finished:
                    return current
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {name} still {last_phase} after {timeout:.0f}s")
            # Back off on repeated errors (up to 10 polls) so a flapping API server recovers.
            time.sleep(self.poll_interval * min(1 + errors, 10))

    # -- logs ------------------------------------------------------------------------------
    def pod_name(self, name: str, replica: str | None = None, index: int = 0) -> str:
        """``<job>-<replica>-<index>``; ``replica=None`` is the master role (worker-0 in a
        Worker-only job, as in the operator)."""
        if replica is None:
            specs = (self.get(name).get("spec") or {}).get("pytorchReplicaSpecs") or {}
            replica = "master" if "Master" in specs else "worker"
        return f"{name}-{replica.lower()}-{index}"

    def logs(self, name: str, *, follow: bool = False, replica: str | None = None,
             index: int = 0) -> Iterator[str]:
        pod = self.pod_name(name, replica, index)
        if not follow:
            text = self.cluster.core.read_namespaced_pod_log(
                pod, self.namespace, container=CONTAINER, _request_timeout=self.request_timeout)
            yield from text.splitlines()
            return
        yield from self._follow(name, pod)

    def _previous_lines(self, pod: str) -> list[tuple[str, str]]:
        try:
            text = self.cluster.core.read_namespaced_pod_log(
                pod, self.namespace, container=CONTAINER, previous=True, timestamps=True,
                _request_timeout=self.request_timeout)
        except ApiException:
            return []  # 400: no previous container (the usual case)
        out = []
        for line in text.splitlines():
            ts, _, body = line.partition(" ")
            if _RFC3339.match(ts):
                out.append((_ts_key(ts), body))
        return out

    def _follow(self, name: str, pod: str) -> Iterator[str]:
        """Stream a pod's log across container restarts and dropped connections, without
        repeating lines (timestamps tell where the previous stream stopped)."""
        last = ""
        while True:
            try:
                # A container that crashed between two connections: show its last words.
                for key, text in self._previous_lines(pod):
                    if key > last:
                        last = key
                        yield text
                # The read timeout turns a silently dropped connection (idle NAT / load
                # balancer) into a reconnect instead of a log that stops forever.
                resp = self.cluster.core.read_namespaced_pod_log(
                    pod, self.namespace, container=CONTAINER, follow=True, timestamps=True,
                    _preload_content=False,
                    _request_timeout=(self.request_timeout, LOG_READ_TIMEOUT))
                try:
                    for raw in resp:
                        line = raw.decode("utf-8", "replace").rstrip("\n")
                        ts, _, text = line.partition(" ")
                        if not _RFC3339.match(ts):  # a server that ignored timestamps=true
                            yield line
                            continue
                        if _ts_key(ts) <= last:
                            continue  # already shown before the stream was reopened
                        last = _ts_key(ts)
                        yield text
                finally:
                    resp.release_conn()
            except ApiException as e:
                # 400: container not started yet; 404: pod not created yet (or cleaned up).
                if e.status not in (400, 404) and not _is_transient(e):
                    raise
            except TRANSIENT_ERRORS:
                pass
            try:
                if self.status(name).finished:
                    return
            except ApiException as e:
                if e.status == 404:
                    return
            time.sleep(min(self.poll_interval, 5.0))
