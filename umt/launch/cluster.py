"""Jobs as custom resources on a cluster, through the Kubernetes API: what every cluster backend
shares (:class:`KubeJobBackend`; a backend module adds its object, its conditions and where its
pods are).

What earlier launchers got wrong, and what this one does instead:

* resubmitting (a retried KFP task) *adopts* the job with the same name (HTTP 409) when it is
  the same spec and still running or already succeeded, instead of failing or starting a second
  copy; a *failed* one (or one being deleted) is deleted (foreground: its pods first), waited
  for, and replaced (a user resubmitting), or with ``replace_failed=False`` (a KFP retry of a
  job that failed on its own: ``run_training_job``'s default) its failure is raised again at
  once, without training a second time;
* unknown fields are rejected (``fieldValidation=Strict``), not silently dropped;
* waiting has no built-in deadline (the job's ``activeDeadlineSeconds`` is the bound) and rides
  out API hiccups (5xx, 429, dropped connections) instead of declaring the job failed;
* a Failed job raises, so the KFP task fails too;
* pods that can never start (image pull errors, a missing Secret) fail the wait after a grace
  period, naming pod, container and reason; unschedulable pods are reported periodically (the
  cluster autoscaler may be adding nodes) and fail it only past an optional limit.
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import datetime, timezone
from typing import Any, Callable, ClassVar, Iterator

import urllib3
from kubernetes.client.exceptions import ApiException

from umt.launch import doctor
from umt.launch.backend import (
    Backend,
    JobFailedError,
    JobInfo,
    JobStartError,
    Permission,
    Submission,
)
from umt.launch.crd import InvalidJobError
from umt.launch.kube import Cluster, connect
from umt.launch.request import ANNOTATION_SPEC_HASH, LABEL_RUN_ID, spec_hash
from umt.launch.serialize import to_dict
from umt.launch.status import FAILED, QUEUED, SUCCEEDED, SUSPENDED, JobStatus

log = logging.getLogger(__name__)

TRANSIENT_HTTP = {429, 500, 502, 503, 504}
LOG_READ_TIMEOUT = 300.0  # seconds without a log line before we reconnect (no lines lost)
_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
TRANSIENT_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
# Container waiting reasons that never fix themselves without a person (a CrashLoopBackOff is
# the controller's business: restarts, backoffLimit).
IMAGE_REASONS = {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
                 "RegistryUnavailable"}
CONFIG_REASONS = {"CreateContainerConfigError", "CreateContainerError"}
PERMANENT_REASONS = {"InvalidImageName"}  # fail at once: no retry can fix the spec
UNSCHEDULABLE = "Unschedulable"
HINTS = {
    "image": "check the image name/tag (--image, UMT_IMAGE_REPOSITORY) and that the nodes may "
             "pull from its registry (imagePullSecrets)",
    "config": "a Secret or ConfigMap the pod references is missing or lacks a key, e.g. the S3 "
              "Secret (docs/cluster.md, section 2; `umt doctor` checks it)",
}
# What every cluster backend reads of its pods: why they cannot start, the training log.
POD_PERMISSIONS = [Permission("get", "pods"), Permission("list", "pods"),
                   Permission("get", "pods", subresource="log")]


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


def _spec_hash_of(job: dict[str, Any], ours: bool = False) -> str | None:
    """The ``umt/spec-hash`` a rendered job carries (one we did not render has none; ours is
    computed when missing)."""
    annotations = (job.get("metadata") or {}).get("annotations") or {}
    return annotations.get(ANNOTATION_SPEC_HASH) or (spec_hash(job) if ours else None)


def _earlier_run(body: dict[str, Any], existing: dict[str, Any]) -> str | None:
    """The run id of ``existing`` when it belongs to another run than ``body`` (both
    labelled), else None."""
    ours = (body["metadata"].get("labels") or {}).get(LABEL_RUN_ID)
    theirs = ((existing.get("metadata") or {}).get("labels") or {}).get(LABEL_RUN_ID)
    return theirs if ours and theirs and ours != theirs else None


class KubeJobBackend(Backend):
    """A :class:`umt.launch.backend.Backend` whose jobs are custom resources in one namespace.

    A subclass (one per kind of job) sets ``name``, ``kind``, ``api_version``, ``plural``,
    ``container`` (the training container, whose log is the job's), ``install_hint`` and
    ``install_command``, and implements ``render``, ``validate``, ``status_of``,
    ``pod_selector`` (the label selector of a job's pods) and ``log_pod`` (the pod of a
    replica).
    """

    container: ClassVar[str] = ""
    install_hint: ClassVar[str] = ""  # "install X (docs/cluster.md, section 1)"
    install_command: ClassVar[str] = ""  # the kubectl command doctor prints

    def __init__(self, cluster: Cluster | None = None, *, kubeconfig: str | None = None,
                 context: str | None = None, namespace: str | None = None,
                 poll_interval: float = 15.0, request_timeout: float = 60.0,
                 start_grace: float = 600.0, unschedulable_timeout: float | None = None,
                 unschedulable_warn_every: float = 300.0, delete_timeout: float = 600.0):
        """``start_grace``: seconds a pod may sit in an image-pull or container-config error
        before the wait fails; ``unschedulable_timeout``: the same for unschedulable pods
        (None: wait, warning every ``unschedulable_warn_every`` seconds); ``delete_timeout``:
        how long to wait for a failed job being replaced to go away."""
        self.cluster = cluster or connect(kubeconfig, context, namespace)
        self.namespace = namespace or self.cluster.namespace
        self.poll_interval = poll_interval
        self.request_timeout = request_timeout
        self.start_grace = start_grace
        self.unschedulable_timeout = unschedulable_timeout
        self.unschedulable_warn_every = unschedulable_warn_every
        self.delete_timeout = delete_timeout

    @classmethod
    def from_options(cls, *, namespace: str | None = None, kubeconfig: str | None = None,
                     context: str | None = None, poll_interval: float = 15.0,
                     start_grace: float = 600.0, unschedulable_timeout: float | None = None,
                     **_: Any) -> "KubeJobBackend":
        return cls(kubeconfig=kubeconfig, context=context, namespace=namespace,
                   poll_interval=poll_interval, start_grace=start_grace,
                   unschedulable_timeout=unschedulable_timeout)

    @classmethod
    def group_version(cls) -> tuple[str, str]:
        group, _, version = cls.api_version.rpartition("/")
        return group, version

    # -- what the subclass says ------------------------------------------------------------
    def pod_selector(self, name: str) -> str:
        """The label selector of the pods of job ``name``."""
        raise NotImplementedError

    def log_pod(self, name: str, replica: str | None = None, index: int = 0) -> str:
        """The pod of one replica of job ``name`` (``replica=None``: the master role)."""
        raise NotImplementedError

    @classmethod
    def permissions(cls) -> list[Permission]:
        group = cls.group_version()[0]
        return [Permission(verb, cls.plural, group)
                for verb in ("create", "get", "list", "delete", "patch")] + POD_PERMISSIONS

    @classmethod
    def doctor_checks(cls, cluster: Cluster, namespace: str) -> list[doctor.Check]:
        return [doctor.check_crd(cluster, f"{cls.kind} CRD", cls.api_version, cls.plural,
                                 cls.install_command),
                doctor.check_rbac(cluster, namespace, cls.permissions(),
                                  f"may create/list/delete {cls.plural} and read pod logs")]

    # -- objects ---------------------------------------------------------------------------
    def get(self, name: str) -> dict[str, Any]:
        return self.cluster.custom.get_namespaced_custom_object(
            *self.group_version(), self.namespace, self.plural, name,
            _request_timeout=self.request_timeout)

    def list(self, label_selector: str | None = None) -> list[dict[str, Any]]:
        resp = self.cluster.custom.list_namespaced_custom_object(
            *self.group_version(), self.namespace, self.plural, label_selector=label_selector,
            _request_timeout=self.request_timeout)
        return resp.get("items", [])

    def submit(self, job: Any, *, replace_failed: bool = True) -> Submission:
        body = job if isinstance(job, dict) else to_dict(job)
        name = body["metadata"]["name"]
        body["metadata"]["namespace"] = self.namespace
        replaced = False
        for _ in range(5):  # a name taken again while we replaced it: decide again
            try:
                self.cluster.custom.create_namespaced_custom_object(
                    *self.group_version(), self.namespace, self.plural, body,
                    field_validation="Strict", _request_timeout=self.request_timeout)
                return Submission(name, self.namespace, created=True, replaced=replaced)
            except ApiException as e:
                if e.status == 409:
                    if self._adopt_or_clear(body, replace_failed):
                        return Submission(name, self.namespace, created=False)
                    replaced = True
                    continue
                if e.status == 404:
                    raise RuntimeError(
                        f"the API server has no {self.api_version} {self.plural}: "
                        f"{self.install_hint} and run `umt doctor`") from None
                if e.status in (400, 403, 422) and "admission webhook" in _reason(e):
                    # The controller's webhook said no (a validation error, not RBAC).
                    raise InvalidJobError(name, [_reason(e)], self.kind) from None
                if e.status == 403:
                    raise PermissionError(
                        f"not allowed to create {self.plural} in namespace {self.namespace}: "
                        f"{_reason(e)} (apply manifests/base for the umt Role, run `umt doctor`)"
                    ) from None
                if e.status in (400, 422):
                    raise InvalidJobError(name, [f"apiserver: {_reason(e)}"], self.kind) from None
                raise
        raise RuntimeError(f"{self.kind} {self.namespace}/{name} keeps being re-created by "
                           "someone else while we replace it; giving up")

    def _adopt_or_clear(self, body: dict[str, Any], replace_failed: bool = True) -> bool:
        """A job of this name exists: True to adopt it (same spec, running or succeeded);
        False once a failed (or terminating) one is gone and the name is free again; raise
        the failure of a failed one when it may not be replaced.

        Names come from the job's output folder (``request.job_name``), so the job found may
        be an *earlier run's* (``umt/run-id`` differs): a rerun adopts it when it still runs
        or succeeded with this spec, taking it over (the label is moved to this run, so this
        run's exit task and ``umt job gc`` find it), and replaces it when it failed or
        finished with another spec (a rerun is a deliberate new attempt)."""
        name = body["metadata"]["name"]
        try:
            existing = self.get(name)
        except ApiException as e:
            if e.status == 404:
                return False  # gone between our create and get: create again
            raise
        meta = existing.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            log.warning("%s %s/%s is being deleted: waiting until it is gone to create "
                        "the new one", self.kind, self.namespace, name)
            self._wait_gone(name, meta.get("uid"))
            return False
        current = self.status_of(name, existing)
        earlier = _earlier_run(body, existing)
        same_spec = _spec_hash_of(existing) == _spec_hash_of(body, ours=True)
        if earlier and current.finished and (current.failed or not same_spec):
            log.warning("%s %s/%s of the earlier run %s %s: deleting it and creating this "
                        "run's", self.kind, self.namespace, name, earlier,
                        current.phase.lower() if same_spec else "finished with another spec")
            self._replace(name, meta.get("uid"))
            return False
        self._check_adoptable(body, existing)
        if current.failed and not replace_failed:
            raise JobFailedError(current, already_failed=True)
        if current.failed:
            log.warning("%s %s/%s already exists and failed (%s): deleting it and "
                        "creating a new one", self.kind, self.namespace, name, current.message)
            self._replace(name, meta.get("uid"))
            return False
        if current.phase == SUCCEEDED:
            log.warning("%s %s/%s already succeeded: adopting it, not running it again "
                        "(delete it to train again)", self.kind, self.namespace, name)
        else:
            log.info("adopting existing %s %s/%s (%s)", self.kind, self.namespace, name,
                     current.phase)
        if earlier:
            self._take_over(name, body)
        return True

    def _replace(self, name: str, uid: str | None) -> None:
        # Foreground: the job goes only after its pods, whose names the new job reuses.
        self.delete(name, propagation="Foreground")
        self._wait_gone(name, uid)

    def _take_over(self, name: str, body: dict[str, Any]) -> None:
        """Move an adopted job's run-id label to this run (a merge patch of its labels)."""
        run_id = (body["metadata"].get("labels") or {}).get(LABEL_RUN_ID)
        try:
            self.cluster.custom.patch_namespaced_custom_object(
                *self.group_version(), self.namespace, self.plural, name,
                {"metadata": {"labels": {LABEL_RUN_ID: run_id}}},
                _request_timeout=self.request_timeout)
            log.info("%s %s/%s now belongs to run %s", self.kind, self.namespace, name, run_id)
        except ApiException as e:
            if e.status not in (403, 404):
                raise
            log.warning("could not move %s %s/%s to run %s (%s %s): `umt job gc --run-id` "
                        "of this run will not find it", self.kind, self.namespace, name, run_id,
                        e.status, _reason(e))

    def _wait_gone(self, name: str, uid: str | None) -> None:
        deadline = time.monotonic() + self.delete_timeout
        while True:
            try:
                obj = self.get(name)
                if uid and (obj.get("metadata") or {}).get("uid") != uid:
                    return  # someone created a new one already: the caller decides again
            except ApiException as e:
                if e.status == 404:
                    return
                if not _is_transient(e):
                    raise
            except TRANSIENT_ERRORS:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.kind} {self.namespace}/{name} was still being deleted after "
                    f"{self.delete_timeout:.0f}s (a finalizer or a stuck pod?): `kubectl -n "
                    f"{self.namespace} describe {self.kind.lower()} {name}`")
            time.sleep(min(self.poll_interval, 2.0))

    def _check_adoptable(self, body: dict[str, Any], existing: dict[str, Any]) -> None:
        ours, theirs = _spec_hash_of(body, ours=True), _spec_hash_of(existing)
        if theirs != ours:
            phase = self.status_of(body["metadata"]["name"], existing).phase
            raise RuntimeError(
                f"a different {self.kind} named {body['metadata']['name']} already exists in "
                f"{self.namespace} ({phase}; spec hash {theirs} != {ours}); delete it "
                "(`umt job delete NAME`) or choose another --name / --run-id")

    def status(self, name: str) -> JobStatus:
        return self.status_of(name, self.get(name))

    def list_jobs(self, label_selector: str) -> list[JobInfo]:
        return [JobInfo(obj["metadata"]["name"], self.status_of(obj["metadata"]["name"], obj),
                        bool(obj["metadata"].get("deletionTimestamp")))
                for obj in self.list(label_selector)]

    def delete(self, name: str, propagation: str = "Background") -> None:
        """Background: the job goes now, its pods and services after it; Foreground: the job
        stays (with a deletionTimestamp) until its pods are gone."""
        try:
            self.cluster.custom.delete_namespaced_custom_object(
                *self.group_version(), self.namespace, self.plural, name,
                propagation_policy=propagation, _request_timeout=self.request_timeout)
        except ApiException as e:
            if e.status != 404:
                raise

    # -- waiting ---------------------------------------------------------------------------
    def wait(self, name: str, *, timeout: float | None = None,
             on_status: Callable[[JobStatus], None] | None = None) -> JobStatus:
        """Poll until Succeeded or Failed. ``timeout=None`` waits as long as the job runs;
        time the job spends Suspended (a queue such as Kueue has not admitted it) does not
        count against ``timeout``: queueing is not the job being stuck."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last_phase, errors, polled = None, 0, time.monotonic()
        watch = _PodWatch(self, name)
        queue = _QueueWatch(name, self.unschedulable_warn_every)
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
                queue.note(current)
                if current.phase in (SUSPENDED, QUEUED) and deadline is not None:
                    deadline += time.monotonic() - polled  # waiting is not being stuck
                if current.phase != last_phase:
                    last_phase = current.phase
                    if on_status:
                        on_status(current)
                if current.finished:
                    return current
                if not current.queued:  # a queued job has no pods to watch yet
                    watch.check()  # raises JobStartError for pods that cannot start
            polled = time.monotonic()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {name} still {last_phase} after {timeout:.0f}s")
            # Back off on repeated errors (up to 10 polls) so a flapping API server recovers.
            time.sleep(self.poll_interval * min(1 + errors, 10))

    # -- logs ------------------------------------------------------------------------------
    def logs(self, name: str, *, follow: bool = False, replica: str | None = None,
             index: int = 0) -> Iterator[str]:
        if not follow:
            text = self.cluster.core.read_namespaced_pod_log(
                self.log_pod(name, replica, index), self.namespace, container=self.container,
                _request_timeout=self.request_timeout)
            yield from text.splitlines()
            return
        yield from self._follow(name, lambda: self.log_pod(name, replica, index))

    def _previous_lines(self, pod: str) -> list[tuple[str, str]]:
        try:
            text = self.cluster.core.read_namespaced_pod_log(
                pod, self.namespace, container=self.container, previous=True, timestamps=True,
                _request_timeout=self.request_timeout)
        except ApiException:
            return []  # 400: no previous container (the usual case)
        out = []
        for line in text.splitlines():
            ts, _, body = line.partition(" ")
            if _RFC3339.match(ts):
                out.append((_ts_key(ts), body))
        return out

    def _follow(self, name: str, find_pod: Callable[[], str]) -> Iterator[str]:
        """Stream a replica's log across container restarts, pod re-creations (a JobSet
        restart gives the replica a new pod name: ``find_pod`` is asked again on every
        reconnect) and dropped connections, without repeating lines (timestamps tell where
        the previous stream stopped)."""
        last = ""
        while True:
            try:
                pod = find_pod()
                # A container that crashed between two connections: show its last words.
                for key, text in self._previous_lines(pod):
                    if key > last:
                        last = key
                        yield text
                # The read timeout turns a silently dropped connection (idle NAT / load
                # balancer) into a reconnect instead of a log that stops forever.
                resp = self.cluster.core.read_namespaced_pod_log(
                    pod, self.namespace, container=self.container, follow=True, timestamps=True,
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
                    # A short job can end between two connections: its last lines (or all
                    # of them) are still in the finished pod's log.
                    yield from self._rest_of_log(find_pod, last)
                    return
            except ApiException as e:
                if e.status == 404:
                    return
            time.sleep(min(self.poll_interval, 5.0))

    def _rest_of_log(self, find_pod: Callable[[], str], after: str) -> Iterator[str]:
        """The lines of the replica's (finished) log newer than ``after``; none when the pod is
        gone or unreadable."""
        try:
            text = self.cluster.core.read_namespaced_pod_log(
                find_pod(), self.namespace, container=self.container, timestamps=True,
                _request_timeout=self.request_timeout)
        except (ApiException, *TRANSIENT_ERRORS):
            return
        for line in text.splitlines():
            ts, _, body = line.partition(" ")
            if _RFC3339.match(ts) and _ts_key(ts) > after:
                yield body


class _QueueWatch:
    """Says, in the launcher's log, how long a job waits in its Kueue queue: when it is
    queued, every ``every`` seconds while it waits, and when it is admitted."""

    def __init__(self, job: str, every: float):
        self.job, self.every = job, every
        self.last_said: float | None = None
        self.was_queued = False

    def note(self, status: JobStatus) -> None:
        now = time.monotonic()
        if status.queued:
            if self.last_said is None or now - self.last_said >= self.every:
                waited = status.queued_seconds(datetime.now(timezone.utc))
                log.warning("job %s is queued in Kueue queue %s (%s so far): suspended until "
                            "the queue admits it", self.job, status.queue,
                            "?" if waited is None else f"{waited:.0f}s")
                self.last_said = now
            self.was_queued = True
        elif self.was_queued:
            waited = status.queued_seconds()
            log.warning("job %s admitted by Kueue queue %s after %s", self.job, status.queue,
                        "?" if waited is None else f"{waited:.0f}s in the queue")
            self.was_queued = False


class _PodWatch:
    """What keeps a job's pods from starting, seen across polls of one wait."""

    def __init__(self, backend: KubeJobBackend, job: str):
        self.backend, self.job = backend, job
        self.since: dict[tuple[str, str, str], float] = {}  # (pod, container, kind) -> first seen
        self.warned: dict[tuple[str, str, str], float] = {}
        self.enabled = True

    def _pods(self) -> list[Any]:
        b = self.backend
        try:
            return b.cluster.core.list_namespaced_pod(
                b.namespace, label_selector=b.pod_selector(self.job),
                _request_timeout=b.request_timeout).items
        except ApiException as e:
            if e.status == 403:
                log.warning("may not list pods in %s (%s): pods that cannot start will not be "
                            "detected", b.namespace, _reason(e))
                self.enabled = False
            elif not _is_transient(e):
                log.warning("listing the pods of %s failed: %s %s", self.job, e.status, e.reason)
            return []
        except TRANSIENT_ERRORS:
            return []

    @staticmethod
    def problems(pod: Any) -> dict[tuple[str, str, str], tuple[str, str]]:
        """(pod, container, kind) -> (reason, message) for what keeps ``pod`` from running."""
        out: dict[tuple[str, str, str], tuple[str, str]] = {}
        name, status = pod.metadata.name, pod.status
        if status is None:
            return out
        for c in status.conditions or []:
            if c.type == "PodScheduled" and c.status == "False" and c.reason == UNSCHEDULABLE:
                out[(name, "", UNSCHEDULABLE)] = (UNSCHEDULABLE, c.message or "")
        for cs in (status.init_container_statuses or []) + (status.container_statuses or []):
            waiting = cs.state.waiting if cs.state else None
            reason = waiting.reason if waiting else None
            if reason in IMAGE_REASONS or reason in CONFIG_REASONS:
                kind = "image" if reason in IMAGE_REASONS else "config"
                out[(name, cs.name, kind)] = (reason, waiting.message or "")
        return out

    def check(self) -> None:
        if not self.enabled:
            return
        b, now = self.backend, time.monotonic()
        current: dict[tuple[str, str, str], tuple[str, str]] = {}
        for pod in self._pods():
            current.update(self.problems(pod))
        for key in [k for k in self.since if k not in current]:  # resolved (or pod replaced)
            del self.since[key]
            self.warned.pop(key, None)
        for key, (reason, message) in sorted(current.items()):
            pod, container, kind = key
            since = self.since.setdefault(key, now)
            waited = now - since
            if kind == UNSCHEDULABLE:
                limit = b.unschedulable_timeout
                if key not in self.warned or now - self.warned[key] >= b.unschedulable_warn_every:
                    self.warned[key] = now
                    log.warning("pod %s is unschedulable (%.0fs so far): %s; the cluster "
                                "autoscaler may be adding nodes%s", pod, waited, message,
                                "" if limit is None else f" (giving up after {limit:.0f}s)")
                if limit is not None and waited >= limit:
                    self._give_up(f"pod {pod} could not be scheduled for {waited:.0f}s: "
                                  f"{message} (no node pool has room for it, or none matches "
                                  "its node selector / tolerations)")
                continue
            grace = 0.0 if reason in PERMANENT_REASONS else b.start_grace
            if key not in self.warned:
                self.warned[key] = now
                log.warning("pod %s, container %s: %s: %s (failing the job's wait after "
                            "%.0fs unless it recovers)", pod, container, reason, message, grace)
            if waited >= grace:
                self._give_up(f"pod {pod}, container {container} cannot start: {reason}: "
                              f"{message} (for {waited:.0f}s). {HINTS[kind]}",
                              permanent=reason in PERMANENT_REASONS)

    def _give_up(self, message: str, permanent: bool = False) -> None:
        raise JobStartError(JobStatus(self.job, FAILED, message), permanent=permanent)
