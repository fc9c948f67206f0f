"""The PyTorchJob backend (Kubeflow Training Operator v1.9, ``kubeflow.org/v1``): the job object,
its checks, its conditions, and the cluster calls.

    umt job render stage1 --config b16 --nodes 4 --gpus-per-node 8 --node-pool gke-a100 \\
        --backend pytorchjob | kubectl apply -f -

Shape of the job (the pod, command and labels are :mod:`umt.launch.request`'s):

* Master (exactly 1 replica) + ``nodes - 1`` Workers (elastic jobs: Workers only), each a
  pod with one container named ``pytorch``. The operator injects ``PET_NNODES``,
  ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and ``PET_MASTER_PORT``, which
  torchrun reads.
* ``nprocPerNode`` = GPUs per node, as a string (the CRD's type; ``8`` would be rejected).
* ``restartPolicy: OnFailure``: a crashed container restarts in place, keeps its node and GPUs,
  and the stage resumes from its last checkpoint. (``ExitCode`` looks tempting but fails the job
  when torchrun on a *surviving* node exits 1 after losing its peer.)
* ``backoffLimit`` defaults to 3 x nodes: with static rendezvous one lost node makes every node
  restart, and the operator counts each container restart.
* ``cleanPodPolicy: Running``: when the job ends, pods still running (a worker hung in NCCL after
  the master failed) are deleted and free their GPUs; finished pods keep their logs.
* ``activeDeadlineSeconds`` defaults to 14 days (twice the paper's longest run): a job stuck for
  good (a hang no NCCL timeout catches, a rendezvous that never completes) is failed by the
  operator and frees its GPUs even when no launcher is watching.

Checks (:func:`pytorchjob_errors`), on top of :mod:`umt.launch.crd`'s schema and API-server
layers: ``webhook``, the operator's validating webhook (``pkg/webhooks/pytorch``, release-1.9):
DNS-1035 name, only Master/Worker replicas, a container named ``pytorch`` with an image, exactly
one Master (``replicas: 1`` spelt out), Workers >= 1, elastic policy needs Workers,
``elasticPolicy.nProcPerNode`` excludes ``nprocPerNode``, supported ``runPolicy.managedBy``;
``operator`` / ``torchrun``: plain strings the schema accepts but that fail at run time
(``restartPolicy`` and ``cleanPodPolicy`` values, ``nprocPerNode`` forms). The same checks run
in ``umt job render``, before submitting, in the local executor and inside the tests' fake API
server, so a job that passes here is one the real server accepts.

Conditions: the operator keeps one per type (Created, Running, Restarting, Succeeded,
Suspended, Failed) and moves them with a few rules the local executor mirrors
(:func:`set_condition`, ``pkg/util/status.go::setCondition`` on release-1.9): once Failed is
true, nothing changes any more; Running and Restarting replace each other; Succeeded or Failed
turn Running to False. The phase is the type of the last condition that is True (what
``kubectl get pytorchjobs`` prints as STATE); the job started when it was Created and finished
when it Succeeded or Failed.
"""

from __future__ import annotations

import copy
import re
from datetime import datetime, timezone
from typing import Any

from kubeflow.training.models import (
    KubeflowOrgV1ElasticPolicy,
    KubeflowOrgV1JobCondition,
    KubeflowOrgV1PyTorchJob,
    KubeflowOrgV1PyTorchJobSpec,
    KubeflowOrgV1ReplicaSpec,
    KubeflowOrgV1RunPolicy,
    KubeflowOrgV1SchedulingPolicy,
)
from kubernetes.client import V1ContainerPort, V1ObjectMeta

from umt.launch import crd, request
from umt.launch.backend import RenderedJob
from umt.launch.cluster import KubeJobBackend
from umt.launch.crd import InvalidJobError
from umt.launch.request import CLEAN_POD_POLICIES, RESTART_POLICIES, TrainingJob
from umt.launch.serialize import from_dict, to_dict
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

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
PLURAL = "pytorchjobs"
CONTAINER = "pytorch"
PORT_NAME, PORT = "pytorchjob-port", 23456  # the operator's defaults, spelt out
CRD_PATH = crd.CRDS / "kubeflow.org_pytorchjobs.v1.9.yaml"
INSTALL_COMMAND = ('kubectl apply --server-side -k "github.com/kubeflow/training-operator.git/'
                   'manifests/overlays/standalone?ref=v1.9.1"')
# The operator labels every pod of a job with it (Training Operator v1.7+).
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPES = ("Master", "Worker")
MANAGED_BY = ("kubeflow.org/training-operator", "kueue.x-k8s.io/multikueue")
_NPROC_FORMS = re.compile(r"^(auto|cpu|gpu|[1-9][0-9]*)$")


# -- the job object ----------------------------------------------------------------------------
def _run_policy(req: TrainingJob) -> KubeflowOrgV1RunPolicy:
    scheduling = None
    if req.gang_scheduling or req.queue or req.priority_class:
        scheduling = KubeflowOrgV1SchedulingPolicy(
            # All pods or none: a half-scheduled job holds GPUs while it waits forever.
            min_available=(req.elastic_min_nodes or req.nodes) if req.gang_scheduling else None,
            queue=req.queue, priority_class=req.priority_class,
            schedule_timeout_seconds=req.schedule_timeout_seconds)
    return KubeflowOrgV1RunPolicy(
        clean_pod_policy=req.clean_pod_policy,
        backoff_limit=req.backoff_limit if req.backoff_limit is not None else 3 * req.nodes,
        ttl_seconds_after_finished=req.ttl_seconds_after_finished,
        active_deadline_seconds=req.active_deadline_seconds,
        scheduling_policy=scheduling,
    )


def render_pytorchjob(req: TrainingJob, *, validate: bool = True) -> RenderedJob:
    """The PyTorchJob of ``req`` and where it writes its outputs; raises ``ValueError`` (or
    :class:`InvalidJobError`) on bad input."""
    cfg = request.resolved_config(req)
    request.check_shared_output(req, cfg)
    name = request.job_name(req, cfg)
    labels = request.job_labels(req)
    template = request.pod_template(req, labels, request.container(
        req, CONTAINER, [V1ContainerPort(name=PORT_NAME, container_port=PORT)]))
    elastic = None
    if req.elastic_min_nodes is None:
        replicas = {"Master": KubeflowOrgV1ReplicaSpec(
            replicas=1, restart_policy=req.restart_policy, template=template)}
        if req.nodes > 1:
            replicas["Worker"] = KubeflowOrgV1ReplicaSpec(
                replicas=req.nodes - 1, restart_policy=req.restart_policy, template=template)
    else:
        # Elastic jobs are Workers only: the operator counts min/max in Worker replicas and
        # points the c10d rendezvous at worker-0 (a Master would sit outside min..max).
        replicas = {"Worker": KubeflowOrgV1ReplicaSpec(
            replicas=req.nodes, restart_policy=req.restart_policy, template=template)}
        elastic = KubeflowOrgV1ElasticPolicy(
            min_replicas=req.elastic_min_nodes, max_replicas=req.elastic_max_nodes,
            rdzv_backend="c10d", max_restarts=3 * req.nodes)
    job = KubeflowOrgV1PyTorchJob(
        api_version=API_VERSION,
        kind=KIND,
        metadata=V1ObjectMeta(name=name, namespace=req.namespace,
                              labels=request.object_labels(req),
                              annotations=dict(req.annotations) or None),
        spec=KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(req.nproc),
            pytorch_replica_specs=replicas,
            run_policy=_run_policy(req),
            elastic_policy=elastic,
        ),
    )
    job.metadata.annotations = {**(job.metadata.annotations or {}),
                                request.ANNOTATION_SPEC_HASH: request.spec_hash(job)}
    if validate:
        validate_pytorchjob(to_dict(job))
    return RenderedJob(job, request.output_dir(req, cfg))


def build_pytorchjob(req: TrainingJob, *, validate: bool = True) -> KubeflowOrgV1PyTorchJob:
    """The typed job object of ``req``."""
    return render_pytorchjob(req, validate=validate).job


# -- checks ------------------------------------------------------------------------------------
def _replica_specs(job: dict[str, Any]) -> dict[str, Any]:
    specs = (job.get("spec") or {}).get("pytorchReplicaSpecs")
    return specs if isinstance(specs, dict) else {}


def schema_errors(job: dict[str, Any]) -> list[str]:
    return crd.schema_errors(job, CRD_PATH, "v1")


def apiserver_errors(job: dict[str, Any]) -> list[str]:
    return crd.apiserver_errors(job, {rtype: (rspec or {}).get("template")
                                      for rtype, rspec in _replica_specs(job).items()})


def webhook_errors(job: dict[str, Any]) -> list[str]:
    """The Training Operator v1.9 validating webhook's rules, in its order."""
    errs = []
    name = (job.get("metadata") or {}).get("name") or ""
    if len(name) > 63 or not crd.DNS1035.match(name):
        errs.append(f"webhook: metadata.name {name!r} must be a DNS-1035 label (lowercase "
                    "letters, digits, '-', starting with a letter, <= 63 chars)")
    spec = job.get("spec") or {}
    managed_by = (spec.get("runPolicy") or {}).get("managedBy")
    if managed_by is not None and managed_by not in MANAGED_BY:
        errs.append(f"webhook: spec.runPolicy.managedBy {managed_by!r} not in {MANAGED_BY}")
    specs = spec.get("pytorchReplicaSpecs")
    elastic = spec.get("elasticPolicy")
    if elastic is not None:
        if "Worker" not in (specs or {}):
            errs.append("webhook: spec.pytorchReplicaSpecs[Worker] must be configured if "
                        "elastic policy is used")
        if elastic.get("nProcPerNode") is not None and spec.get("nprocPerNode") is not None:
            errs.append("webhook: spec.elasticPolicy.nProcPerNode must not be used with "
                        "spec.nprocPerNode")
    if not specs:
        errs.append("webhook: spec.pytorchReplicaSpecs is required")
        return errs
    for rtype, rspec in specs.items():
        where = f"spec.pytorchReplicaSpecs[{rtype}]"
        if rtype not in REPLICA_TYPES:
            errs.append(f"webhook: {where}: replica type must be one of {REPLICA_TYPES}")
        containers = ((((rspec or {}).get("template") or {}).get("spec") or {})
                      .get("containers") or [])
        if not containers:
            errs.append(f"webhook: {where}.template.spec.containers must be specified")
        for i, c in enumerate(containers):
            if not c.get("image"):
                errs.append(f"webhook: {where}.template.spec.containers[{i}].image is required")
        if not any(c.get("name") == CONTAINER for c in containers):
            errs.append(f"webhook: {where}.template.spec.containers must have a container "
                        f"named {CONTAINER!r}")
        replicas = (rspec or {}).get("replicas")
        if rtype == "Master" and replicas != 1:
            errs.append(f"webhook: {where}.replicas must be 1 (and spelt out)")
        elif rtype != "Master" and isinstance(replicas, int) and replicas < 1:
            errs.append(f"webhook: {where}.replicas must be at least 1")
    return errs


def runtime_errors(job: dict[str, Any]) -> list[str]:
    """Values the schema lets through (plain strings) but that break once the job runs."""
    errs = []
    spec = job.get("spec") or {}
    nproc = spec.get("nprocPerNode")
    if isinstance(nproc, str) and not _NPROC_FORMS.match(nproc):
        errs.append(f"torchrun: spec.nprocPerNode {nproc!r} must be auto, cpu, gpu or a "
                    "positive integer (as a string)")
    for rtype, rspec in _replica_specs(job).items():
        policy = (rspec or {}).get("restartPolicy")
        if policy is not None and policy not in RESTART_POLICIES:
            # The operator copies it into the pods, which the API server then refuses.
            errs.append(f"operator: spec.pytorchReplicaSpecs[{rtype}].restartPolicy {policy!r} "
                        f"not in {RESTART_POLICIES}")
    clean = (spec.get("runPolicy") or {}).get("cleanPodPolicy")
    if clean is not None and clean not in CLEAN_POD_POLICIES:
        errs.append(f"operator: spec.runPolicy.cleanPodPolicy {clean!r} not in "
                    f"{CLEAN_POD_POLICIES}")
    return errs


def pytorchjob_errors(job: dict[str, Any]) -> list[str]:
    """Every problem a cluster would find, schema first (the API server checks it first)."""
    job = copy.deepcopy(job)
    return schema_errors(job) + apiserver_errors(job) + webhook_errors(job) + runtime_errors(job)


def validate_pytorchjob(job: dict[str, Any]) -> None:
    """Raise :class:`InvalidJobError` listing every problem, or return quietly."""
    errors = pytorchjob_errors(job)
    if errors:
        raise InvalidJobError((job.get("metadata") or {}).get("name", "?"), errors, KIND)


# -- conditions --------------------------------------------------------------------------------
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
        if type_ in (SUCCEEDED, FAILED) and c.type == RUNNING:
            c = KubeflowOrgV1JobCondition(type=c.type, status="False", reason=c.reason,
                                          message=c.message, last_update_time=now,
                                          last_transition_time=now)
        kept.append(c)
    kept.append(KubeflowOrgV1JobCondition(type=type_, status=status, reason=reason,
                                          message=message, last_update_time=now,
                                          last_transition_time=transition))
    return kept


def job_status(name: str, conditions: list[KubeflowOrgV1JobCondition] | None) -> JobStatus:
    """The neutral status of a PyTorchJob with these conditions."""
    conditions = list(conditions or [])
    times = {c.type: parse_time(c.last_transition_time) for c in conditions}
    started = times.get(CREATED)
    true = [c for c in conditions if c.status == "True"]
    # A finished job is finished whatever order its conditions were listed in.
    for final in (FAILED, SUCCEEDED):
        done = next((c for c in true if c.type == final), None)
        if done is not None:
            return JobStatus(name, final, done.message or "", conditions, started,
                             times.get(final))
    if not true:
        return JobStatus(name, PENDING, "", conditions, started)
    last = true[-1]
    return JobStatus(name, last.type, last.message or "", conditions, started)


# -- the backends ------------------------------------------------------------------------------
class PyTorchJobs:
    """What every backend running PyTorchJob objects shares: their rendering, checks and
    conditions (the cluster backend below, and the local executor's)."""

    kind = KIND
    api_version = API_VERSION
    plural = PLURAL

    @classmethod
    def render(cls, req: TrainingJob, *, validate: bool = True) -> RenderedJob:
        return render_pytorchjob(req, validate=validate)

    @classmethod
    def validate(cls, obj: dict[str, Any]) -> None:
        validate_pytorchjob(obj)

    @classmethod
    def status_of(cls, name: str, obj: dict[str, Any]) -> JobStatus:
        status = from_dict(obj.get("status") or {}, "KubeflowOrgV1JobStatus")
        current = job_status(name, status.conditions)
        suspend = ((obj.get("spec") or {}).get("runPolicy") or {}).get("suspend")
        if suspend and current.phase in (PENDING, CREATED):
            # Kueue suspends a queued job at creation, before the operator says so.
            current.phase = SUSPENDED
        return with_kueue(current, obj)


class PyTorchJobBackend(PyTorchJobs, KubeJobBackend):
    """PyTorchJobs on a cluster with the Training Operator v1.9, in one namespace."""

    name = "pytorchjob"
    container = CONTAINER
    install_hint = "install the Training Operator v1.9 (docs/cluster.md, section 1)"
    install_command = INSTALL_COMMAND

    def pod_selector(self, name: str) -> str:
        return f"{JOB_NAME_LABEL}={name}"

    def log_pod(self, name: str, replica: str | None = None, index: int = 0) -> str:
        """``<job>-<replica>-<index>``; ``replica=None`` is the master role (worker-0 in a
        Worker-only job, as in the operator)."""
        if replica is None:
            specs = (self.get(name).get("spec") or {}).get("pytorchReplicaSpecs") or {}
            replica = "master" if "Master" in specs else "worker"
        return f"{name}-{replica.lower()}-{index}"
