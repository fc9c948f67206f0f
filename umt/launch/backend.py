"""The one interface training launches go through, and the registry of backends.

A backend turns a :class:`umt.launch.request.TrainingJob` into its own job object and runs it
somewhere. Each one owns everything specific to its kind of job:

* ``render(req)``: its object and where the job writes its outputs (no cluster needed);
* ``validate(obj)``: the checks against its CRD (``umt/launch/crds/``) and controller rules;
* ``status_of(name, obj)``: its conditions mapped to a neutral :class:`JobStatus`, with the
  start and finish times the job's duration comes from;
* ``submit`` (create, adopt a running or succeeded job of the same name, replace a failed one),
  ``status``, ``wait``, ``logs``, ``delete`` and ``list_jobs`` (a run's jobs, for gc);
* ``doctor_checks(cluster, namespace)``: its CRD is served, and ``permissions()``: the RBAC
  verbs it uses (the Role rule ``manifests/base/role.yaml`` grants for its resource);
* ``name`` (``--backend NAME``), ``kind``, ``api_version``, ``plural``.

**Registry.** Every module of the package :mod:`umt.launch.backends` is imported on first use
(``pkgutil``), and every :class:`Backend` subclass that sets ``name`` registers itself when its
class is created. So a new backend is one module in ``umt/launch/backends/`` (plus its CRD
file in ``umt/launch/crds/`` and its Role rule): ``make_backend``, ``render_job``,
``run_training_job``, ``umt job ... --backend``, gc and doctor find it without another file
being edited. ``"cluster"`` names the backend the cluster at hand runs: :func:`make_backend`
asks it (:mod:`umt.launch.detect`: TrainJob where Kubeflow Trainer v2 is installed, else
PyTorchJob, :data:`CLUSTER_PREFERENCE`); without a cluster to ask (rendering on a laptop) it is
:data:`CLUSTER_DEFAULT`. An object that is not a :class:`Backend` (a test's stand-in) gets the
default's job objects.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator

from umt.launch.serialize import to_dict, to_yaml
from umt.launch.status import JobStatus

CLUSTER = "cluster"  # the name for "whatever this cluster runs by default"
# What "cluster" is where no cluster can be asked (umt.launch.detect): the job kind the shipped
# manifests (manifests/jobs) and most clusters with the Training Operator v1 know.
CLUSTER_DEFAULT = "pytorchjob"
# What "cluster" is on a cluster serving these kinds, first served first: Trainer v2 is where
# Kubeflow went (the Training Operator v1 is maintenance-only and left the Kubeflow platform).
CLUSTER_PREFERENCE = ("trainjob", "pytorchjob")
_REGISTRY: dict[str, type["Backend"]] = {}


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


@dataclass
class RenderedJob:
    """A backend's job object and the ``train.output_dir`` the stage writes its config,
    checkpoints and ``summary.json`` to (None: unknown, when the config was not loaded and
    neither --output nor an override says)."""

    job: Any  # the typed object (or a plain dict) the backend submits
    output_dir: str | None

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self.job)

    def to_yaml(self) -> str:
        return to_yaml(self.job)

    @property
    def name(self) -> str:
        return self.to_dict()["metadata"]["name"]


@dataclass
class JobInfo:
    """One job found by :meth:`Backend.list_jobs`."""

    name: str
    status: JobStatus
    deleting: bool = False  # already being deleted (a deletionTimestamp)


@dataclass(frozen=True)
class Permission:
    """One RBAC verb on one resource, as a Role rule grants it."""

    verb: str
    resource: str
    group: str = ""
    subresource: str = ""

    def __str__(self) -> str:
        return f"{self.verb} {self.resource}{'/' + self.subresource if self.subresource else ''}"


class Backend:
    """Base class of the backends. Subclasses with a ``name`` register themselves."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # of its job objects, e.g. PyTorchJob
    api_version: ClassVar[str] = ""  # e.g. kubeflow.org/v1
    plural: ClassVar[str] = ""  # the API resource, e.g. pytorchjobs
    # Every replica sees one filesystem (the local executor), so a local output is fine.
    shares_filesystem: ClassVar[bool] = False
    namespace: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name:
            known = _REGISTRY.get(name)
            if known is not None and (known.__module__, known.__qualname__) != (
                    cls.__module__, cls.__qualname__):
                raise ValueError(f"two backends named {name!r}: {known.__module__}."
                                 f"{known.__qualname__} and {cls.__module__}.{cls.__qualname__}")
            _REGISTRY[name] = cls

    # -- the job object (no cluster needed) -------------------------------------------------
    @classmethod
    def render(cls, req: Any, *, validate: bool = True) -> RenderedJob:
        """The job object for ``req`` (checked with :meth:`validate` unless told not to)."""
        raise NotImplementedError

    @classmethod
    def validate(cls, obj: dict[str, Any]) -> None:
        """Raise :class:`umt.launch.crd.InvalidJobError` listing every problem the cluster
        would find in ``obj``, or return quietly."""
        raise NotImplementedError

    @classmethod
    def status_of(cls, name: str, obj: dict[str, Any]) -> JobStatus:
        """The status of the job object ``obj`` as the API server returned it."""
        raise NotImplementedError

    @classmethod
    def permissions(cls) -> list[Permission]:
        """The RBAC verbs the backend uses in the jobs' namespace (its Role rules)."""
        return []

    @classmethod
    def doctor_checks(cls, cluster: Any, namespace: str) -> list[Any]:
        """``umt doctor``'s checks of this backend (:class:`umt.launch.doctor.Check`)."""
        return []

    @classmethod
    def from_options(cls, **options: Any) -> "Backend":
        """An instance from :func:`make_backend`'s options (namespace, kubeconfig, context,
        poll_interval, start_grace, unschedulable_timeout, local_workdir); each backend takes
        those it uses."""
        raise NotImplementedError

    # -- running -----------------------------------------------------------------------------
    def submit(self, job: Any, *, replace_failed: bool = True) -> Submission:
        """Create the job; adopt an existing running or succeeded job with the same name;
        replace a failed one (delete it, wait until it is gone, create the new one), or with
        ``replace_failed=False`` raise its failure again (:class:`JobFailedError`,
        ``already_failed``)."""
        raise NotImplementedError

    def status(self, name: str) -> JobStatus:
        """The job's current phase and conditions."""
        raise NotImplementedError

    def wait(self, name: str, *, timeout: float | None = None,
             on_status: Callable[[JobStatus], None] | None = None) -> JobStatus:
        """Block until the job succeeds or fails (``timeout=None``: as long as it takes)."""
        raise NotImplementedError

    def logs(self, name: str, *, follow: bool = False, replica: str | None = None,
             index: int = 0) -> Iterator[str]:
        """Lines of one replica's training container (``replica=None``: the master role);
        ``follow`` streams until the job finishes."""
        raise NotImplementedError

    def delete(self, name: str) -> None:
        """Stop the job and remove it (no error when it is already gone)."""
        raise NotImplementedError

    def list_jobs(self, label_selector: str) -> list[JobInfo]:
        """The backend's jobs matching ``label_selector`` (``umt/run-id=...``)."""
        raise NotImplementedError


# -- the registry ----------------------------------------------------------------------------
def discover() -> dict[str, type[Backend]]:
    """Import every module of :mod:`umt.launch.backends`; the registry by name."""
    from umt.launch import backends

    for module in pkgutil.iter_modules(backends.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{backends.__name__}.{module.name}")
    return dict(_REGISTRY)


def backend_names() -> list[str]:
    return sorted(discover())


def backend_class(backend: str | Any = CLUSTER) -> type[Backend]:
    """The backend class of a name (``cluster``: :data:`CLUSTER_DEFAULT`) or an instance."""
    if isinstance(backend, Backend):
        return type(backend)
    if not isinstance(backend, str):
        backend = CLUSTER
    name = CLUSTER_DEFAULT if backend == CLUSTER else backend
    registry = discover()
    if name not in registry:
        raise ValueError(f"backend must be {CLUSTER!r} (the kind the cluster serves; "
                         f"{CLUSTER_DEFAULT} with no cluster to ask), one of "
                         f"{', '.join(sorted(registry))} or a Backend, got {backend!r}")
    return registry[name]


def make_backend(backend: str | Any = CLUSTER, **options: Any) -> Any:
    """A running backend: ``backend`` itself when it is one already, else the registered
    backend of that name made from ``options`` (see :meth:`Backend.from_options`)."""
    if not isinstance(backend, str):
        return backend
    if backend == CLUSTER:
        from umt.launch.detect import resolve

        backend = resolve(backend, kubeconfig=options.get("kubeconfig"),
                          context=options.get("context"), namespace=options.get("namespace"))
    return backend_class(backend).from_options(**options)


def shares_filesystem(backend: str | Any) -> bool:
    """Whether every replica of the backend's jobs sees one filesystem (the local executor),
    so a local ``train.output_dir`` is fine."""
    if isinstance(backend, str):
        return backend_class(backend).shares_filesystem
    return bool(getattr(backend, "shares_filesystem", False))


def render_job(req: Any, backend: str | Any = CLUSTER, *, validate: bool = True) -> RenderedJob:
    """``req`` rendered (and validated) by ``backend``."""
    return backend_class(backend).render(req, validate=validate)


def render_job_yaml(req: Any, backend: str | Any = CLUSTER) -> str:
    """The validated YAML of ``req``'s job, as ``umt job render`` prints it."""
    return render_job(req, backend).to_yaml()


# -- what can go wrong -----------------------------------------------------------------------
class JobFailedError(RuntimeError):
    """The job failed (or was deleted); the message carries the controller's reason and the
    log tail.

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
    the controller would wait forever, so the launcher gives up with the pod's own reason.
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


class JobDetachedError(RuntimeError):
    """The launcher was stopped (SIGTERM) but the run was not: its pod is going away on its own
    (a node drain, an autoscaler scale-down, ``kubectl delete pod``, a retry's deadline), so
    the job was left running for a retry or a rerun to adopt. ``name`` is the job's."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"the launcher was stopped while job {name} runs: the job was left "
                         "running (the run itself was not stopped); a retry of this task or a "
                         f"rerun of the pipeline adopts it (`umt job delete {name}` stops it)")
