"""Build the PyTorchJob for one training stage: typed, validated, deterministically named.

    from umt.launch import TrainingJob, build_pytorchjob, to_yaml
    job = build_pytorchjob(TrainingJob(stage="stage1", config="b16", nodes=4,
                                       gpus_per_node=8, node_pool="gke-a100"))
    print(to_yaml(job))          # kubectl apply -f -

Shape of the job (Training Operator v1, ``kubeflow.org/v1``):

* Master (exactly 1 replica) + ``nodes - 1`` Workers (elastic jobs: Workers only), each a
  pod with one container named ``pytorch`` running
  ``torchrun -m <stage module> --config ... key=value ...``. No torchrun flags: the operator
  injects ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and
  ``PET_MASTER_PORT`` and torchrun reads them, so the same command runs on 1 or 64 nodes, on a
  cluster or in the local executor.
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
* Pods run as UID 1000 (non-root), no privilege escalation, all capabilities dropped, seccomp
  ``RuntimeDefault`` and a read-only root filesystem with writable ``emptyDir`` volumes for
  ``/tmp`` and the image's ``$HOME`` (``/home/umt``: caches of torch, Hugging Face, matplotlib).
* Every user value is checked first (:mod:`umt.launch.values`); user strings reach the
  container only as items of its ``command`` list (no shell anywhere).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from kubeflow.training.models import (
    KubeflowOrgV1ElasticPolicy,
    KubeflowOrgV1PyTorchJob,
    KubeflowOrgV1PyTorchJobSpec,
    KubeflowOrgV1ReplicaSpec,
    KubeflowOrgV1RunPolicy,
    KubeflowOrgV1SchedulingPolicy,
)
from kubernetes.client import (
    V1Capabilities,
    V1Container,
    V1ContainerPort,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1EnvVarSource,
    V1ObjectMeta,
    V1PodSecurityContext,
    V1PodSpec,
    V1PodTemplateSpec,
    V1ResourceRequirements,
    V1SeccompProfile,
    V1SecretKeySelector,
    V1SecurityContext,
    V1Volume,
    V1VolumeMount,
)

from umt.launch import values
from umt.launch.images import default_image
from umt.launch.node_pools import GPU_RESOURCE, get_node_pool
from umt.launch.serialize import to_dict
from umt.launch.stages import (
    is_local_config_file,
    job_config_args,
    stage_module,
    validate_stage_config,
)
from umt.launch.validate import CLEAN_POD_POLICIES, RESTART_POLICIES, validate_pytorchjob

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
PLURAL = "pytorchjobs"
CONTAINER = "pytorch"
PORT_NAME, PORT = "pytorchjob-port", 23456  # the operator's defaults, spelt out

# Labels: selectable (``kubectl get pytorchjobs -l umt/run-id=...``), also on every pod.
LABEL_STAGE = "umt/stage"
LABEL_RUN_ID = "umt/run-id"
LABEL_PART_OF = "app.kubernetes.io/part-of"
ANNOTATION_SPEC_HASH = "umt/spec-hash"

# Replica pods are '<job>-worker-<i>' and each gets a Service of the same name, which must be a
# DNS-1035 label (<= 63 chars); keep room for '-worker-' and the index.
MAX_NAME_LENGTH = 48
UID = 1000  # the non-root user of images/train.Dockerfile
HOME = "/home/umt"  # its $HOME: caches go there, so it is a writable volume
DEFAULT_ACTIVE_DEADLINE = 14 * 24 * 3600
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


@dataclass
class S3Credentials:
    """A Secret holding the S3 client settings (see ``manifests/base/s3-secret.yaml``)."""

    secret: str = "umt-s3"
    # env var -> (key in the Secret, optional?)
    keys: dict[str, tuple[str, bool]] = field(default_factory=lambda: {
        "AWS_ACCESS_KEY_ID": ("AWS_ACCESS_KEY_ID", False),
        "AWS_SECRET_ACCESS_KEY": ("AWS_SECRET_ACCESS_KEY", False),
        "AWS_DEFAULT_REGION": ("AWS_DEFAULT_REGION", True),
        "AWS_ENDPOINT_URL": ("AWS_ENDPOINT_URL", True),  # MinIO / non-AWS S3
    })


@dataclass
class TrainingJob:
    """Everything that decides one training job. Defaults suit an A100 cluster."""

    stage: str
    config: str | None = None  # preset name (in the image) or YAML file (inlined)
    overrides: list[str] = field(default_factory=list)
    nodes: int = 1
    gpus_per_node: int = 8  # 0: a CPU job (smoke tests, the local executor)
    procs_per_node: int | None = None  # default: one per GPU, or 1 on CPU
    node_pool: str = "gke-a100"
    image: str | None = None  # default: images.default_image()
    image_pull_policy: str = "IfNotPresent"
    name: str | None = None  # default: derived from run_id + stage, or from the spec
    namespace: str | None = None
    run_id: str | None = None  # KFP run id (or any id of the enclosing run) -> label
    output_uri: str | None = None  # -> train.output_dir=...
    service_account: str | None = "umt-training"
    s3: S3Credentials | None = field(default_factory=S3Credentials)
    env: dict[str, str] = field(default_factory=dict)
    cpu: str | None = None  # per pod; default 8 per GPU (2 for CPU jobs), capped to the node
    memory: str | None = None  # per pod; default 60Gi per GPU (8Gi for CPU jobs), capped
    shm_size: str | None = None  # /dev/shm; default from the node pool
    restart_policy: str = "OnFailure"
    backoff_limit: int | None = None  # default 3 x nodes
    clean_pod_policy: str = "Running"
    ttl_seconds_after_finished: int | None = 7 * 24 * 3600
    active_deadline_seconds: int | None = DEFAULT_ACTIVE_DEADLINE  # None: no deadline
    # All-or-nothing scheduling; needs the operator's --gang-scheduler-name=volcano or
    # scheduler-plugins (the operator then sets each pod's schedulerName itself).
    gang_scheduling: bool = False
    queue: str | None = None  # Volcano queue
    priority_class: str | None = None
    schedule_timeout_seconds: int | None = None  # scheduler-plugins: give up waiting after
    elastic_min_nodes: int | None = None  # set both for an elastic (c10d rendezvous) job
    elastic_max_nodes: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    validate_config: bool = True  # load the stage config now (imports the stage module)
    # A local (not s3://) train.output_dir is refused: each pod has its own filesystem, so the
    # checkpoints would be lost. True when it is a shared volume mounted in every pod (a PVC),
    # and for the local executor (one machine, one filesystem).
    allow_local_output: bool = False
    # False only for an image that must write outside /tmp and $HOME=/home/umt.
    read_only_root_filesystem: bool = True

    def __post_init__(self) -> None:
        check_values(self)
        pool = get_node_pool(self.node_pool)
        if self.gpus_per_node > pool.gpus_per_node:
            raise ValueError(f"--gpus-per-node {self.gpus_per_node}: node pool {pool.name} "
                             f"({pool.description}) has at most {pool.gpus_per_node} GPUs per "
                             "node")
        machine = pool.smallest_fit(self.gpus_per_node)
        if machine is not None:
            for what, asked, usable, unit in (
                    ("cpu", self.cpu, machine.usable_cpu, ""),
                    ("memory", self.memory, machine.usable_memory_gib * 2**30, "Gi")):
                if asked is not None and values.quantity(asked) > usable:
                    shown = usable if not unit else f"{usable // 2**30}{unit}"
                    raise ValueError(
                        f"--{what} {asked!r} per pod does not fit node pool {pool.name}: its "
                        f"{machine.name} nodes ({machine.vcpus} vCPUs, {machine.memory_gib} GiB) "
                        f"leave about {shown} for a pod after system reservations")

    @property
    def nproc(self) -> int:
        return self.procs_per_node or self.gpus_per_node or 1


def check_values(req: TrainingJob) -> None:
    """Every value of ``req`` that Kubernetes (or the stage's command line) would refuse,
    raised at once as :class:`umt.launch.values.InvalidOptionError` (a ValueError)."""
    p = values.Problems()
    p.integer("nodes", req.nodes, 1)
    p.integer("gpus_per_node", req.gpus_per_node, 0)
    p.integer("procs_per_node", req.procs_per_node, 1)
    p.dns_label("namespace", req.namespace)
    if req.name is not None:
        p.check(isinstance(req.name, str) and len(req.name) <= MAX_NAME_LENGTH
                and bool(re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", req.name)), "name", req.name,
                f"must be a DNS-1035 label of at most {MAX_NAME_LENGTH} characters (lowercase "
                "letters, digits, '-', starting with a letter): pods are named "
                "'<job>-worker-<i>'")
    if req.run_id is not None:
        p.check(isinstance(req.run_id, str) and bool(req.run_id.strip()), "run_id", req.run_id,
                "must be a non-empty string")
    p.image("image", req.image)
    p.check(req.image_pull_policy in PULL_POLICIES, "image_pull_policy", req.image_pull_policy,
            f"must be one of {', '.join(PULL_POLICIES)}")
    p.dns_subdomain("service_account", req.service_account)
    if req.s3 is not None:
        p.dns_subdomain("s3", req.s3.secret)
    for key, value in req.env.items():
        if not isinstance(key, str) or not values.ENV_NAME.match(key):
            p.add("env", key, "variable names are letters, digits and '_', not starting with "
                              "a digit")
        elif values.SECRET_NAME.search(key):
            p.add("env", key, "looks like a credential: put it in a Secret (--s3-secret, or "
                              "secretKeyRef in your own patch), never as a plain value in the "
                              "job, where the YAML, the KFP artifact and `kubectl get` show it")
        p.check(isinstance(value, str), "env", {key: value}, "values are strings")
    p.quantity("cpu", req.cpu, "8, 7.5 or 500m")
    p.memory("memory", req.memory)
    p.memory("shm_size", req.shm_size)
    p.check(req.restart_policy in RESTART_POLICIES, "restart_policy", req.restart_policy,
            f"must be one of {', '.join(RESTART_POLICIES)}")
    p.check(req.clean_pod_policy in CLEAN_POD_POLICIES, "clean_pod_policy", req.clean_pod_policy,
            f"must be one of {', '.join(CLEAN_POD_POLICIES)}")
    p.integer("backoff_limit", req.backoff_limit, 0)
    p.integer("ttl_seconds_after_finished", req.ttl_seconds_after_finished, 0)
    p.integer("active_deadline_seconds", req.active_deadline_seconds, 1, 2**63 - 1)
    p.integer("schedule_timeout_seconds", req.schedule_timeout_seconds, 1)
    p.dns_subdomain("priority_class", req.priority_class)
    p.dns_subdomain("queue", req.queue)
    elastic = (req.elastic_min_nodes, req.elastic_max_nodes)
    if (elastic[0] is None) != (elastic[1] is None):
        p.add("elastic", f"{elastic[0]}:{elastic[1]}", "set both the minimum and the maximum "
                                                        "number of nodes (MIN:MAX), or neither")
    elif elastic[0] is not None and not (1 <= elastic[0] <= req.nodes <= elastic[1]):
        p.add("elastic", f"{elastic[0]}:{elastic[1]}",
              f"needs 1 <= MIN <= --nodes ({req.nodes}) <= MAX")
    if req.config is not None and not is_local_config_file(req.config):
        p.check(isinstance(req.config, str) and bool(values.PRESET.match(req.config)), "config",
                req.config, "must be a preset name (letters, digits, '_', '.', '-') or an "
                            "existing .yaml file")
    for item in req.overrides:
        p.check(isinstance(item, str) and bool(values.OVERRIDE.match(item)), "overrides", item,
                "overrides are key=value with a dotted key (train.steps=10), never options")
    p.labels("labels", req.labels, reserved=(LABEL_STAGE, LABEL_RUN_ID, LABEL_PART_OF))
    p.labels("annotations", req.annotations, reserved=(ANNOTATION_SPEC_HASH,),
             check_values=False)
    p.raise_if_any()


def _dns_label(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def _short_hash(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def job_name(req: TrainingJob) -> str:
    """Deterministic: the same run + stage (or the same spec) always gives the same name,
    which is what makes resubmitting adopt the running job instead of starting a second one."""
    if req.name:
        name = req.name
    else:
        identity = ({"run_id": req.run_id, "stage": req.stage} if req.run_id else
                    {k: v for k, v in asdict(req).items()
                     if k not in ("name", "validate_config", "allow_local_output")})
        stage = _dns_label(req.stage)[: MAX_NAME_LENGTH - 15].strip("-") or "stage"
        name = f"umt-{stage}-{_short_hash(identity)}"
    if len(name) > MAX_NAME_LENGTH or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        raise ValueError(f"job name {name!r} must be a DNS-1035 label of at most "
                         f"{MAX_NAME_LENGTH} characters (pods are named '<job>-worker-<i>')")
    return name


def _env(req: TrainingJob) -> list[V1EnvVar]:
    env = [V1EnvVar(name=k, value=v) for k, v in sorted(req.env.items())]
    if req.s3 is not None:
        for var, (key, optional) in req.s3.keys.items():
            if var in req.env:
                continue
            env.append(V1EnvVar(name=var, value_from=V1EnvVarSource(
                secret_key_ref=V1SecretKeySelector(name=req.s3.secret, key=key,
                                                   optional=optional or None))))
    return env


CPU_PER_GPU, MEMORY_GIB_PER_GPU = 8, 60  # defaults, capped to what the pool's nodes hold


def default_requests(gpus: int, node_pool: str) -> tuple[str, str]:
    """(cpu, memory) a pod asks for by default: 8 CPUs and 60Gi per GPU (2 and 8Gi on CPU),
    at most what the smallest machine of the pool that fits the GPUs leaves for pods."""
    cpu, memory_gib = (CPU_PER_GPU * gpus, MEMORY_GIB_PER_GPU * gpus) if gpus else (2, 8)
    machine = get_node_pool(node_pool).smallest_fit(gpus)
    if machine is not None:
        cpu = min(cpu, machine.usable_cpu)
        memory_gib = min(memory_gib, machine.usable_memory_gib)
    return str(cpu), f"{memory_gib}Gi"


def _resources(req: TrainingJob) -> V1ResourceRequirements:
    gpus = req.gpus_per_node
    default_cpu, default_memory = default_requests(gpus, req.node_pool)
    cpu = str(req.cpu) if req.cpu is not None else default_cpu
    memory = str(req.memory) if req.memory is not None else default_memory
    requests = {"cpu": cpu, "memory": memory}
    # Memory limit == request: an over-eager dataloader gets OOM-killed (and restarted) instead
    # of evicting its neighbours. No CPU limit: throttling only slows the input pipeline.
    limits = {"memory": memory}
    if gpus:
        # Extended resources: requests must equal limits; limits alone imply the request.
        limits[GPU_RESOURCE] = str(gpus)
    return V1ResourceRequirements(requests=requests, limits=limits)


def command(req: TrainingJob) -> list[str]:
    config, overrides = job_config_args(req.config, req.overrides)
    if req.output_uri:
        overrides.append(f"train.output_dir={req.output_uri}")
    args = ["torchrun", "-m", stage_module(req.stage)]
    if config:
        args += ["--config", config]
    return args + overrides


def _pod_template(req: TrainingJob, labels: dict[str, str]) -> V1PodTemplateSpec:
    pool = get_node_pool(req.node_pool)
    shm = req.shm_size or f"{pool.shm_gib}Gi"
    container = V1Container(
        name=CONTAINER,
        image=req.image or default_image(),
        image_pull_policy=req.image_pull_policy,
        command=command(req),
        env=_env(req) or None,
        ports=[V1ContainerPort(name=PORT_NAME, container_port=PORT)],
        resources=_resources(req),
        volume_mounts=[V1VolumeMount(name="dshm", mount_path="/dev/shm"), *(
            [V1VolumeMount(name="tmp", mount_path="/tmp"),
             V1VolumeMount(name="home", mount_path=HOME)]
            if req.read_only_root_filesystem else [])],
        security_context=V1SecurityContext(
            allow_privilege_escalation=False,
            capabilities=V1Capabilities(drop=["ALL"]),
            read_only_root_filesystem=req.read_only_root_filesystem or None),
    )
    volumes = [V1Volume(name="dshm",
                        empty_dir=V1EmptyDirVolumeSource(medium="Memory", size_limit=shm))]
    if req.read_only_root_filesystem:
        # On the node's disk, without a size limit: what the writable root layer was (a
        # limit would evict a pod whose checkpoint staging in /tmp crosses it).
        volumes += [V1Volume(name="tmp", empty_dir=V1EmptyDirVolumeSource()),
                    V1Volume(name="home", empty_dir=V1EmptyDirVolumeSource())]
    spec = V1PodSpec(
        containers=[container],
        service_account_name=req.service_account,
        node_selector=dict(pool.node_selector) or None,
        tolerations=list(pool.tolerations) or None,
        affinity=pool.affinity,
        volumes=volumes,
        # Pod-level, so it also covers the operator's init container on workers.
        security_context=V1PodSecurityContext(
            run_as_non_root=True, run_as_user=UID, run_as_group=UID, fs_group=UID,
            seccomp_profile=V1SeccompProfile(type="RuntimeDefault")),
        priority_class_name=req.priority_class,
    )
    # Istio sidecars (Kubeflow profile namespaces) keep pods from ever completing and get in
    # the way of NCCL; training pods talk to nothing that needs the mesh.
    annotations = {"sidecar.istio.io/inject": "false"}
    return V1PodTemplateSpec(metadata=V1ObjectMeta(labels=labels, annotations=annotations),
                             spec=spec)


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


def _output_dir(req: TrainingJob, cfg: Any) -> str | None:
    """``train.output_dir`` the job will use: the loaded config's when it was loaded, else
    --output, else the last override (None when the config was not loaded and nothing says)."""
    train = getattr(cfg, "train", None)
    if getattr(train, "output_dir", None):
        return str(train.output_dir)
    if req.output_uri:
        return req.output_uri
    _, overrides = job_config_args(req.config, req.overrides)
    for item in reversed(overrides):
        key, _, value = item.partition("=")
        if key.strip() == "train.output_dir":
            return value.strip().strip("'\"")
    return None


def check_shared_output(req: TrainingJob, cfg: Any = None) -> None:
    """Refuse a local ``train.output_dir`` for a cluster job (see ``allow_local_output``)."""
    if req.allow_local_output:
        return
    output = _output_dir(req, cfg)
    if output is None or str(output).startswith("s3://"):
        return
    where = f"{req.nodes} nodes" if req.nodes > 1 else "a pod"
    raise ValueError(
        f"train.output_dir={output} is a local path, but the job runs on {where} of a "
        "cluster: each pod has its own filesystem, so checkpoints written by rank 0 are not "
        "visible to the other nodes and are lost when a pod restarts. Write to shared storage "
        "(--output s3://bucket/prefix), or pass --allow-local-output (allow_local_output=True) "
        "if that path is a shared volume (a PVC) mounted in every pod")


@dataclass
class RenderedJob:
    job: KubeflowOrgV1PyTorchJob
    # train.output_dir the stage writes config.yaml, checkpoints and summary.json to (None:
    # unknown, when the config was not loaded and neither --output nor an override says).
    output_dir: str | None


def build_pytorchjob(req: TrainingJob, *, validate: bool = True) -> KubeflowOrgV1PyTorchJob:
    """The job object for ``req``; raises ``ValueError`` (or ``InvalidJobError``) on bad input."""
    return render_job(req, validate=validate).job


def render_job(req: TrainingJob, *, validate: bool = True) -> RenderedJob:
    """:func:`build_pytorchjob`, and where the job will write its outputs."""
    cfg = None
    if req.validate_config:
        overrides = list(req.overrides) + (
            [f"train.output_dir={req.output_uri}"] if req.output_uri else [])
        cfg = validate_stage_config(req.stage, req.config, overrides)
    check_shared_output(req, cfg)
    name = job_name(req)
    labels = {LABEL_PART_OF: "umt", LABEL_STAGE: values.label_value(req.stage), **req.labels}
    if req.run_id:
        labels[LABEL_RUN_ID] = values.label_value(req.run_id)
    template = _pod_template(req, labels)
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
        metadata=V1ObjectMeta(name=name, namespace=req.namespace, labels=labels,
                              annotations=dict(req.annotations) or None),
        spec=KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(req.nproc),
            pytorch_replica_specs=replicas,
            run_policy=_run_policy(req),
            elastic_policy=elastic,
        ),
    )
    # The hash of what runs lets an adopting launcher tell "my job" from a same-named stranger.
    job.metadata.annotations = {**(job.metadata.annotations or {}),
                                ANNOTATION_SPEC_HASH: spec_hash(job)}
    if validate:
        validate_pytorchjob(to_dict(job))
    return RenderedJob(job, _output_dir(req, cfg))


def spec_hash(job: KubeflowOrgV1PyTorchJob | dict[str, Any]) -> str:
    data = job if isinstance(job, dict) else to_dict(job)
    return _short_hash(data.get("spec"))
