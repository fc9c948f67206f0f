"""The TrainJob backend (Kubeflow Trainer v2.3.0, ``trainer.kubeflow.org/v1alpha1``): the job
object, its checks, its conditions, and where its pods are.

    umt job render stage1 --backend trainjob --config b16 --nodes 2 --gpus-per-node 8 \\
        --node-pool gke-a100 --kueue-queue team-a --output s3://b/r data.source=... \\
        | kubectl apply -f -

Shape of the job (the command, labels, resources and pod pieces are :mod:`umt.launch.request`'s,
as for a PyTorchJob):

* ``runtimeRef`` to the project runtime ``TrainingRuntime/umt-torch``
  (:mod:`umt.launch.trainer_runtime`, shipped as ``manifests/runtime``): pod hardening,
  ``/dev/shm``, the service account, restarts (JobSet's failure policy) live there;
* ``trainer``: image, our ``torchrun -m umt.train.<stage>`` command, env (S3 credentials by
  ``secretKeyRef``), ``numNodes``, ``numProcPerNode`` (= GPUs, spelt out: the runtime's
  ``auto`` would count CPUs on a CPU job) and ``resourcesPerNode``;
* one ``runtimePatches`` entry, ours (``manager`` :data:`MANAGER`): the node pool's selector,
  tolerations and affinity (spot ones with ``spot``), the job's ``/dev/shm`` size, its service
  account, ``terminationGracePeriodSeconds``, the umt labels on every pod;
* ``activeDeadlineSeconds``; the Kueue queue label when ``kueue_queue`` is set (Kueue suspends
  the job at creation and unsuspends it when the queue admits it).

What a TrainJob cannot carry per job is refused (:func:`unsupported`), never dropped: the
restart policy, backoff limit, clean-pod policy and TTL (the runtime's), Volcano gang
scheduling and queues, priority classes (use Kueue: ``kueue.x-k8s.io/priority-class``), elastic
node counts (Trainer v2.3.0 has none) and the image pull policy.

Checks (:func:`trainjob_errors`): the CRD's schema (unknown fields rejected) and API-server
layers (:mod:`umt.launch.crd`), then the rules the CRD's CEL expressions and the Trainer's
validating webhook add (``pkg/runtime/framework/plugins/{jobset,torch}``): a DNS-1035 name of
at most 63 characters, ``managedBy`` values, ``numNodes >= 1``, a domain-prefixed ``manager``,
patches only of the runtime's ``node`` job and container and no env there, no ``PET_*`` in
``trainer.env`` (the torch plugin sets them).

Conditions (``metav1.Condition``, one per type): ``Suspended`` (True while ``spec.suspend``;
False with reason ``Resumed`` after), ``Complete`` and ``Failed`` copied from the JobSet (or
``Failed``/``DeadlineExceeded`` past ``activeDeadlineSeconds``). There is no Running condition:
``status.jobsStatus`` tells active and failed node Jobs.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from kubernetes.client.exceptions import ApiException

from umt.launch import crd, request, trainer_runtime
from umt.launch.backend import Permission, RenderedJob
from umt.launch.cluster import KubeJobBackend
from umt.launch.crd import InvalidJobError
from umt.launch.request import TrainingJob
from umt.launch.serialize import to_dict
from umt.launch.status import (
    CREATED,
    FAILED,
    PENDING,
    RESTARTING,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    JobStatus,
    parse_time,
    with_kueue,
)
from umt.launch.values import Problems

API_VERSION = "trainer.kubeflow.org/v1alpha1"
KIND = "TrainJob"
PLURAL = "trainjobs"
CONTAINER = trainer_runtime.NODE
CRD_PATH = crd.CRDS / "trainer.kubeflow.org_trainjobs.v2.3.0.yaml"
INSTALL_COMMAND = ('kubectl apply --server-side -k "github.com/kubeflow/trainer.git/'
                   'manifests/overlays/manager?ref=v2.3.0"')
# Who owns our runtimePatches entry (a domain-prefixed path, as the webhook requires).
MANAGER = "umt-project.github.io/launcher"
MANAGED_BY = ("trainer.kubeflow.org/trainjob-controller", "kueue.x-k8s.io/multikueue")
COMPLETE = "Complete"  # the TrainJob's success condition
# Labels JobSet (and the Job controller) put on every pod of a TrainJob: pod names carry
# random suffixes, so pods are found by these.
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
RESTART_ATTEMPT_LABEL = "jobset.sigs.k8s.io/restart-attempt"
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
# The torch plugin's own variables: a TrainJob may not set them.
RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR",
                "PET_MASTER_PORT")
_FQDN = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DEFAULTS = {f: TrainingJob.__dataclass_fields__[f].default for f in (
    "restart_policy", "clean_pod_policy", "ttl_seconds_after_finished", "image_pull_policy")}


# -- the job object ----------------------------------------------------------------------------
def unsupported(req: TrainingJob) -> None:
    """Refuse, naming each option and value, what a TrainJob cannot carry per job."""
    p = Problems()
    runtime = f"the runtime {trainer_runtime.NAME}'s"
    for key, value in _DEFAULTS.items():
        p.check(getattr(req, key) == value, key, getattr(req, key),
                f"the trainjob backend takes {runtime} ({value}); a TrainJob cannot set it "
                "(use --backend pytorchjob for another value)")
    p.check(req.backoff_limit is None, "backoff_limit", req.backoff_limit,
            f"the trainjob backend restarts by {runtime} JobSet failure policy "
            f"(maxRestarts {trainer_runtime.MAX_RESTARTS}); a TrainJob cannot set it")
    for key in ("gang_scheduling", "queue", "schedule_timeout_seconds"):
        p.check(not getattr(req, key), key, getattr(req, key),
                "Volcano / scheduler-plugins settings are PyTorchJob's; with a TrainJob use "
                "Kueue (--kueue-queue), which admits all of a job's pods or none")
    p.check(req.priority_class is None, "priority_class", req.priority_class,
            "a TrainJob cannot set the pods' priority class; with Kueue label the job "
            "kueue.x-k8s.io/priority-class=<WorkloadPriorityClass> (--label)")
    p.check(req.elastic_min_nodes is None, "elastic",
            f"{req.elastic_min_nodes}:{req.elastic_max_nodes}",
            "Trainer v2.3.0 has no elastic node counts; use --backend pytorchjob")
    p.raise_if_any()


def _pod_patch(req: TrainingJob, pod: dict[str, Any]) -> dict[str, Any]:
    """What our runtimePatches entry sets in every node pod: ``pod`` is the pod the request
    would have (request.pod_template), the runtime holds the rest."""
    spec = pod["spec"]
    patch: dict[str, Any] = {
        # The job's /dev/shm size (the pool's, or --shm-size) replaces the runtime's.
        "volumes": [v for v in spec["volumes"] if v["name"] == "dshm"],
    }
    for key in ("nodeSelector", "tolerations", "affinity", "serviceAccountName",
                "terminationGracePeriodSeconds"):
        if spec.get(key) is not None:
            patch[key] = spec[key]
    if not req.read_only_root_filesystem:
        patch["containers"] = [{"name": CONTAINER,
                                "securityContext": {"readOnlyRootFilesystem": False}}]
    return patch


def render_trainjob(req: TrainingJob, *, validate: bool = True) -> RenderedJob:
    """The TrainJob of ``req`` and where it writes its outputs; raises ``ValueError`` (or
    :class:`InvalidJobError`) on bad input."""
    # Imported here, not with the module: the package imports its ~400 models at once
    # (seconds), and every backend module is imported whenever any backend is used.
    from kubeflow_trainer_api.models import (
        TrainerV1alpha1RuntimePatch,
        TrainerV1alpha1RuntimeRef,
        TrainerV1alpha1Trainer,
        TrainerV1alpha1TrainJob,
        TrainerV1alpha1TrainJobSpec,
    )

    unsupported(req)
    cfg = request.resolved_config(req)
    request.check_shared_output(req, cfg)
    name = request.job_name(req)
    main = request.container(req, CONTAINER)
    pod = to_dict(request.pod_template(req, request.job_labels(req), main))
    node_patch = {"name": trainer_runtime.NODE, "template": {"spec": {"template": {
        "metadata": {"labels": request.job_labels(req)},
        "spec": _pod_patch(req, pod)}}}}
    job = TrainerV1alpha1TrainJob(
        api_version=API_VERSION,
        kind=KIND,
        metadata={"name": name, "namespace": req.namespace,
                  "labels": request.object_labels(req),
                  "annotations": dict(req.annotations) or None},
        spec=TrainerV1alpha1TrainJobSpec(
            runtime_ref=TrainerV1alpha1RuntimeRef(
                name=trainer_runtime.NAME, kind=trainer_runtime.KIND,
                api_group=trainer_runtime.GROUP),
            trainer=TrainerV1alpha1Trainer.from_dict({
                "image": main.image,
                "command": main.command,
                "env": to_dict(main.env) if main.env else None,
                "numNodes": req.nodes,
                "numProcPerNode": req.nproc,
                "resourcesPerNode": to_dict(main.resources),
            }),
            runtime_patches=[TrainerV1alpha1RuntimePatch.from_dict({
                "manager": MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [node_patch]}}},
            })],
            active_deadline_seconds=req.active_deadline_seconds,
        ),
    )
    job.metadata.annotations = {**(job.metadata.annotations or {}),
                                request.ANNOTATION_SPEC_HASH: request.spec_hash(job)}
    if validate:
        validate_trainjob(to_dict(job))
    return RenderedJob(job, request.output_dir(req, cfg))


def build_trainjob(req: TrainingJob, *, validate: bool = True) -> Any:
    """The typed job object of ``req`` (a ``kubeflow_trainer_api`` ``TrainerV1alpha1TrainJob``)."""
    return render_trainjob(req, validate=validate).job


# -- checks ------------------------------------------------------------------------------------
def _node_patches(job: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(manager, replicated-job patch) of every runtime patch."""
    out = []
    for patch in (job.get("spec") or {}).get("runtimePatches") or []:
        template = ((patch.get("trainingRuntimeSpec") or {}).get("template") or {})
        for rjob in (template.get("spec") or {}).get("replicatedJobs") or []:
            out.append((patch.get("manager", ""), rjob))
    return out


def schema_errors(job: dict[str, Any]) -> list[str]:
    return crd.schema_errors(job, CRD_PATH, "v1alpha1")


def apiserver_errors(job: dict[str, Any]) -> list[str]:
    spec = job.get("spec") or {}
    resources = (spec.get("trainer") or {}).get("resourcesPerNode")
    templates: dict[str, Any] = {
        f"runtimePatches[{manager}].{rjob.get('name')}":
            ((rjob.get("template") or {}).get("spec") or {}).get("template")
        for manager, rjob in _node_patches(job)}
    # resourcesPerNode becomes the node container's resources: the same extended-resource rule.
    templates["trainer"] = {"spec": {"containers": [{"name": CONTAINER,
                                                      "resources": resources or {}}]}}
    return crd.apiserver_errors(job, templates)


def controller_errors(job: dict[str, Any]) -> list[str]:
    """The CRD's CEL rules and the Trainer v2.3.0 webhook's, in their order."""
    errs = []
    name = (job.get("metadata") or {}).get("name") or ""
    if len(name) > 63 or not crd.DNS1035.match(name):
        errs.append(f"crd: metadata.name {name!r} must match RFC 1035 DNS label format and be "
                    "no more than 63 characters")
    spec = job.get("spec") or {}
    managed_by = spec.get("managedBy")
    if managed_by is not None and managed_by not in MANAGED_BY:
        errs.append(f"crd: spec.managedBy {managed_by!r} not in {MANAGED_BY}")
    if not (spec.get("runtimeRef") or {}).get("name"):
        errs.append("crd: spec.runtimeRef.name is required")
    trainer = spec.get("trainer") or {}
    nodes = trainer.get("numNodes")
    if nodes is not None and (not isinstance(nodes, int) or nodes < 1):
        errs.append(f"webhook: spec.trainer.numNodes {nodes!r} must be at least 1")
    reserved = sorted({e.get("name") for e in trainer.get("env") or []} & set(RESERVED_ENV))
    if reserved:
        errs.append(f"webhook: spec.trainer.env must not have reserved envs, invalid envs "
                    f"configured: {reserved}")
    ours = (spec.get("runtimeRef") or {}).get("name") == trainer_runtime.NAME
    for manager, rjob in _node_patches(job):
        host, _, path = manager.partition("/")
        if not path or not _FQDN.match(host):
            errs.append(f"webhook: spec.runtimePatches manager {manager!r} must be a "
                        "domain-prefixed path (such as 'acme.io/foo')")
        if ours and rjob.get("name") != trainer_runtime.NODE:
            errs.append(f"webhook: spec.runtimePatches: must not have replicated job "
                        f"{rjob.get('name')!r} that doesn't exist in the runtime job template")
        pod_spec = ((((rjob.get("template") or {}).get("spec") or {}).get("template") or {})
                    .get("spec") or {})
        for c in pod_spec.get("containers") or []:
            if ours and c.get("name") != CONTAINER:
                errs.append(f"webhook: spec.runtimePatches: must not have container "
                            f"{c.get('name')!r} that doesn't exist in the runtime job node")
            if c.get("name") == CONTAINER and c.get("env"):
                errs.append("webhook: spec.runtimePatches: must not have envs for the node "
                            "container (set spec.trainer.env)")
    return errs


def trainjob_errors(job: dict[str, Any]) -> list[str]:
    """Every problem a cluster would find, schema first (the API server checks it first)."""
    job = copy.deepcopy(job)
    return schema_errors(job) + apiserver_errors(job) + controller_errors(job)


def validate_trainjob(job: dict[str, Any]) -> None:
    errors = trainjob_errors(job)
    if errors:
        raise InvalidJobError((job.get("metadata") or {}).get("name", "?"), errors, KIND)


# -- conditions --------------------------------------------------------------------------------
def job_status(name: str, obj: dict[str, Any]) -> JobStatus:
    """The neutral status of a TrainJob as the API server returned it."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJobStatus  # see render_trainjob

    status = TrainerV1alpha1TrainJobStatus.from_dict(obj.get("status") or {})
    conditions = list(status.conditions or []) if status is not None else []
    jobs = list(status.jobs_status or []) if status is not None else []
    meta = obj.get("metadata") or {}
    created = parse_time(meta.get("creationTimestamp"))
    true = {c.type: c for c in conditions if c.status == "True"}
    # A finished job is finished whatever else its conditions say.
    for final, phase in ((FAILED, FAILED), (COMPLETE, SUCCEEDED)):
        done = true.get(final)
        if done is not None:
            return with_kueue(JobStatus(name, phase, done.message or "", conditions, created,
                                        parse_time(done.last_transition_time)), obj)
    if (obj.get("spec") or {}).get("suspend") or SUSPENDED in true:
        phase, message = SUSPENDED, (true[SUSPENDED].message if SUSPENDED in true else "")
    elif any((j.failed or 0) > 0 for j in jobs):
        phase, message = RESTARTING, "a node Job failed: JobSet is restarting every node"
    elif any((j.active or 0) > 0 for j in jobs):
        phase, message = RUNNING, f"TrainJob {name} is running"
    elif meta.get("uid") or created:
        phase, message = CREATED, f"TrainJob {name} is created"
    else:
        phase, message = PENDING, ""
    return with_kueue(JobStatus(name, phase, message, conditions, created), obj)


# -- the backends ------------------------------------------------------------------------------
class TrainJobs:
    """What every backend running TrainJob objects shares: their rendering, checks and
    conditions (the cluster backend below, and the local executor's)."""

    kind = KIND
    api_version = API_VERSION
    plural = PLURAL

    @classmethod
    def render(cls, req: TrainingJob, *, validate: bool = True) -> RenderedJob:
        return render_trainjob(req, validate=validate)

    @classmethod
    def validate(cls, obj: dict[str, Any]) -> None:
        validate_trainjob(obj)

    @classmethod
    def status_of(cls, name: str, obj: dict[str, Any]) -> JobStatus:
        return job_status(name, obj)


class TrainJobBackend(TrainJobs, KubeJobBackend):
    """TrainJobs on a cluster with Kubeflow Trainer v2.3, in one namespace."""

    name = "trainjob"
    container = CONTAINER
    install_hint = ("install Kubeflow Trainer v2.3 and the umt runtime (docs/cluster.md, "
                    "section 11)")
    install_command = INSTALL_COMMAND

    @classmethod
    def permissions(cls) -> list[Permission]:
        # Reading our runtime is doctor's check that TrainJobs have something to run on.
        return super().permissions() + [Permission("get", trainer_runtime.PLURAL,
                                                   trainer_runtime.GROUP)]

    @classmethod
    def doctor_checks(cls, cluster: Any, namespace: str) -> list[Any]:
        from umt.launch import doctor

        return super().doctor_checks(cluster, namespace) + [
            doctor.check_runtime(cluster, namespace)]

    def pod_selector(self, name: str) -> str:
        return f"{JOBSET_NAME_LABEL}={name}"

    def log_pod(self, name: str, replica: str | None = None, index: int = 0) -> str:
        """The newest pod of node ``index`` (``replica`` master: node 0, worker i: node i + 1,
        as in a PyTorchJob). Its name has a random suffix and changes with every JobSet
        restart, so it is looked up by label; 404 while there is none."""
        if replica is not None and replica.lower() == "worker":
            index += 1
        selector = (f"{JOBSET_NAME_LABEL}={name},{REPLICATED_JOB_LABEL}={trainer_runtime.NODE},"
                    f"{COMPLETION_INDEX_LABEL}={index}")
        pods = self.cluster.core.list_namespaced_pod(
            self.namespace, label_selector=selector, _request_timeout=self.request_timeout).items
        if not pods:
            raise ApiException(status=404, reason=f"no pod of node {index} of TrainJob {name} "
                                                  "(yet)")

        def newest(pod: Any) -> tuple[int, str]:
            attempt = (pod.metadata.labels or {}).get(RESTART_ATTEMPT_LABEL, "0")
            return (int(attempt) if attempt.isdigit() else 0,
                    str(pod.metadata.creation_timestamp or ""))

        return max(pods, key=newest).metadata.name
