"""The backend-neutral job request: what decides one training job, whatever runs it.

    from umt.launch import TrainingJob, render_job_yaml
    req = TrainingJob(stage="stage1", config="b16", nodes=4, gpus_per_node=8,
                      node_pool="gke-a100", output_uri="s3://b/runs/b16")
    print(render_job_yaml(req))          # the cluster's default backend's object

A :class:`TrainingJob` is checked when it is made (every value Kubernetes or the stage's command
line would refuse, all at once: :mod:`umt.launch.values`) and names its job deterministically
(:func:`job_name`). Every backend builds its object from the pieces here, so every job runs the
same way:

* the command ``torchrun -m <catalogue module> --config ... key=value ...`` with no torchrun
  flags: the backend's runtime sets the ``PET_*`` variables torchrun reads (node count, rank,
  processes per node, rendezvous), so one command runs on 1 or 64 nodes or in the local
  executor. User strings reach the container only as items of this list (no shell anywhere);
* labels ``app.kubernetes.io/part-of=umt``, ``umt/stage``, ``umt/run-id`` (selectable: a run's
  jobs are found by them) on the job and every pod; with ``kueue_queue`` also Kueue's
  ``kueue.x-k8s.io/queue-name`` on the job (Kueue then holds it suspended until admitted);
* ``terminationGracePeriodSeconds`` of the pods from ``termination_grace_seconds`` (the time a
  preempted or drained pod has to checkpoint after SIGTERM), also given to the training process
  as ``UMT_SIGTERM_GRACE_S``;
* requests of 8 CPUs and 60Gi per GPU (2 and 8Gi on CPU) capped to the node pool's machines,
  memory limit == request, GPUs as limits;
* the hardened pod: UID 1000 (non-root), no privilege escalation, all capabilities dropped,
  seccomp ``RuntimeDefault``, a read-only root filesystem with writable ``emptyDir`` volumes for
  ``/tmp`` and the image's ``$HOME`` (``/home/umt``: caches of torch, Hugging Face,
  matplotlib), ``/dev/shm`` in memory, the node pool's selector, tolerations and affinity, no
  Istio sidecar;
* S3 credentials only by ``secretKeyRef`` to a Secret, never as values;
* the stage config, loaded once (:func:`resolved_config`) so a typo fails here and not on a GPU
  node, and where the job writes its outputs (:func:`output_dir`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from kubernetes.client import (
    V1Capabilities,
    V1Container,
    V1ContainerPort,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1EnvVarSource,
    V1LocalObjectReference,
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
from umt.launch.images import default_image, pull_secrets
from umt.launch.node_pools import GPU_RESOURCE, get_node_pool, placement
from umt.launch.serialize import to_dict
from umt.launch.stages import (
    is_local_config_file,
    job_config_args,
    stage_module,
    validate_stage_config,
)

# Labels: selectable (``kubectl get <jobs> -l umt/run-id=...``), also on every pod.
LABEL_STAGE = "umt/stage"
LABEL_RUN_ID = "umt/run-id"
LABEL_PART_OF = "app.kubernetes.io/part-of"
# Kueue admits the job by this label on the job object (not its pods: Kueue's pod integration
# would gate them a second time).
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
ANNOTATION_SPEC_HASH = "umt/spec-hash"
# The training process's budget between SIGTERM and SIGKILL (the pods' grace period).
SIGTERM_GRACE_ENV = "UMT_SIGTERM_GRACE_S"
# torchrun SIGKILLs its trainers this long after forwarding a SIGTERM (its default, 30 s,
# would cut a checkpoint short): set to the grace period.
TORCHRUN_SHUTDOWN_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
# The grace period when the request names none: the training process's own default
# (umt.runtime.preemption.DEFAULT_GRACE_S; tests/test_launch_pytorchjob.py checks they agree),
# long enough for an L/16 checkpoint to S3, rendered so that pod, torchrun and trainer agree.
DEFAULT_TERMINATION_GRACE_S = 120

# Replica pods are '<job>-worker-<i>' and each gets a Service of the same name, which must be a
# DNS-1035 label (<= 63 chars); keep room for '-worker-' and the index.
MAX_NAME_LENGTH = 48
UID = 1000  # the non-root user of images/train.Dockerfile
HOME = "/home/umt"  # its $HOME: caches go there, so it is a writable volume
DEFAULT_ACTIVE_DEADLINE = 14 * 24 * 3600
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
# What happens when a replica's container fails (the Training Operator's set; a backend maps
# them to its own failure policy) and which pods go when the job ends.
RESTART_POLICIES = ("OnFailure", "Always", "ExitCode", "Never")
CLEAN_POD_POLICIES = ("None", "Running", "All")
CPU_PER_GPU, MEMORY_GIB_PER_GPU = 8, 60  # defaults, capped to what the pool's nodes hold
# Fields that change nothing in the job, so they do not change its name either.
NOT_IDENTITY = ("name", "validate_config", "allow_local_output", "resolved")


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
    image_pull_policy: str = "IfNotPresent"  # fine: umt images are named by an immutable tag
    # Secrets to pull the image with (default: UMT_IMAGE_PULL_SECRETS, comma-separated).
    image_pull_secrets: list[str] = field(default_factory=pull_secrets)
    name: str | None = None  # default: from stage + output folder (job_name)
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
    kueue_queue: str | None = None  # Kueue LocalQueue: the job waits (suspended) until admitted
    priority_class: str | None = None
    schedule_timeout_seconds: int | None = None  # scheduler-plugins: give up waiting after
    elastic_min_nodes: int | None = None  # set both for an elastic (c10d rendezvous) job
    elastic_max_nodes: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    # Seconds a pod gets between SIGTERM (preemption, drain, deletion) and SIGKILL; None:
    # DEFAULT_TERMINATION_GRACE_S. Spot nodes give 30 s (GKE, AKS) to 2 min (EKS) notice.
    termination_grace_seconds: int | None = None
    spot: bool = False  # on the node pool's spot / preemptible nodes
    # GPU jobs request the node pool's RDMA fabric (EFA, InfiniBand: node_pools.Fabric).
    fabric: bool = True
    validate_config: bool = True  # load the stage config now (imports its config schema)
    # A local (not s3://) train.output_dir is refused: each pod has its own filesystem, so the
    # checkpoints would be lost. True when it is a shared volume mounted in every pod (a PVC),
    # and for the local executor (one machine, one filesystem).
    allow_local_output: bool = False
    # False only for an image that must write outside /tmp and $HOME=/home/umt.
    read_only_root_filesystem: bool = True
    # The stage config the caller already loaded for this stage, config and overrides (the
    # pipeline's plan has it): rendering checks nothing again and loads nothing. Its
    # model.pretrained and train.output_dir may be placeholders: rendering reads neither
    # when output_uri is set.
    resolved: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_values(self)
        pool = get_node_pool(self.node_pool)
        placement(pool, self.spot)  # a pool without spot capacity fails here
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
    for secret in req.image_pull_secrets:
        p.dns_subdomain("image_pull_secrets", secret)
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
    # A LocalQueue name is an object name, and it is a label value: both rules hold.
    p.dns_label("kueue_queue", req.kueue_queue)
    p.integer("termination_grace_seconds", req.termination_grace_seconds, 0)
    p.check(isinstance(req.spot, bool), "spot", req.spot, "must be true or false")
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
    p.labels("labels", req.labels, reserved=(LABEL_STAGE, LABEL_RUN_ID, LABEL_PART_OF,
                                              LABEL_KUEUE_QUEUE))
    p.labels("annotations", req.annotations, reserved=(ANNOTATION_SPEC_HASH,),
             check_values=False)
    p.raise_if_any()


# -- naming and labels -------------------------------------------------------------------------
def _dns_label(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def short_hash(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def job_name(req: TrainingJob, cfg: Any = None) -> str:
    """Deterministic, from what makes the job distinct: its stage and the folder it writes
    (two jobs on one folder would be two writers of its checkpoints). So a retried task and a
    rerun of the pipeline (another run id) find the job by its name and adopt it, and one
    component run twice in a run (another config or data set: another folder) gets two jobs.
    With no known output folder, the whole request (the run id included) names it."""
    if req.name:
        name = req.name
    else:
        out = output_dir(req, cfg)
        if out:
            identity: dict[str, Any] = {"stage": req.stage, "output_dir": out}
        else:
            identity = {f.name: getattr(req, f.name) for f in fields(req)
                        if f.name not in NOT_IDENTITY}
            identity["s3"] = asdict(req.s3) if req.s3 is not None else None
        stage = _dns_label(req.stage)[: MAX_NAME_LENGTH - 15].strip("-") or "stage"
        name = f"umt-{stage}-{short_hash(identity)}"
    if len(name) > MAX_NAME_LENGTH or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        raise ValueError(f"job name {name!r} must be a DNS-1035 label of at most "
                         f"{MAX_NAME_LENGTH} characters (pods are named '<job>-worker-<i>')")
    return name


def job_labels(req: TrainingJob) -> dict[str, str]:
    """The labels of the job and of each of its pods."""
    labels = {LABEL_PART_OF: "umt", LABEL_STAGE: values.label_value(req.stage), **req.labels}
    if req.run_id:
        labels[LABEL_RUN_ID] = values.label_value(req.run_id)
    return labels


def _without_run_id(node: Any) -> Any:
    """``node`` with the run-id label dropped from every ``labels`` mapping in it."""
    if isinstance(node, dict):
        return {k: ({lk: lv for lk, lv in v.items() if lk != LABEL_RUN_ID}
                    if k == "labels" and isinstance(v, dict) else _without_run_id(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_without_run_id(v) for v in node]
    return node


def object_labels(req: TrainingJob) -> dict[str, str]:
    """The labels of the job object itself: its pods' and the Kueue queue."""
    labels = job_labels(req)
    if req.kueue_queue:
        labels[LABEL_KUEUE_QUEUE] = req.kueue_queue
    return labels


def fabric(req: TrainingJob):
    """The node pool's RDMA fabric when this job uses it (GPU jobs, unless ``fabric=False``)."""
    pool = get_node_pool(req.node_pool)
    return pool.fabric if req.fabric and req.gpus_per_node and pool.fabric else None


def spec_hash(job: Any) -> str:
    """The hash of what runs (the object's ``spec``): the ``umt/spec-hash`` annotation lets an
    adopting launcher tell "my job" from a same-named stranger. The run-id label of its pods
    is left out: which run follows a job changes nothing in it (a rerun adopts it)."""
    data = job if isinstance(job, dict) else to_dict(job)
    return short_hash(_without_run_id(data.get("spec")))


# -- the container -----------------------------------------------------------------------------
def command(req: TrainingJob) -> list[str]:
    config, overrides = job_config_args(req.config, req.overrides)
    if req.output_uri:
        overrides.append(f"train.output_dir={req.output_uri}")
    args = ["torchrun", "-m", stage_module(req.stage)]
    if config:
        args += ["--config", config]
    return args + overrides


def termination_grace(req: TrainingJob) -> int:
    """The pods' grace period between SIGTERM and SIGKILL, in seconds."""
    if req.termination_grace_seconds is None:
        return DEFAULT_TERMINATION_GRACE_S
    return req.termination_grace_seconds


def env(req: TrainingJob) -> list[V1EnvVar]:
    net = fabric(req)
    values_ = {**(net.env if net else {}), **req.env}  # the caller's own values win
    # The trainer checkpoints within the grace (umt.runtime.preemption), torchrun waits for it.
    values_.setdefault(SIGTERM_GRACE_ENV, str(termination_grace(req)))
    values_.setdefault(TORCHRUN_SHUTDOWN_ENV, str(termination_grace(req)))
    out = [V1EnvVar(name=k, value=v) for k, v in sorted(values_.items())]
    if req.s3 is not None:
        for var, (key, optional) in req.s3.keys.items():
            if var in req.env:
                continue
            out.append(V1EnvVar(name=var, value_from=V1EnvVarSource(
                secret_key_ref=V1SecretKeySelector(name=req.s3.secret, key=key,
                                                   optional=optional or None))))
    return out


def default_requests(gpus: int, node_pool: str) -> tuple[str, str]:
    """(cpu, memory) a pod asks for by default: 8 CPUs and 60Gi per GPU (2 and 8Gi on CPU),
    at most what the smallest machine of the pool that fits the GPUs leaves for pods."""
    cpu, memory_gib = (CPU_PER_GPU * gpus, MEMORY_GIB_PER_GPU * gpus) if gpus else (2, 8)
    machine = get_node_pool(node_pool).smallest_fit(gpus)
    if machine is not None:
        cpu = min(cpu, machine.usable_cpu)
        memory_gib = min(memory_gib, machine.usable_memory_gib)
    return str(cpu), f"{memory_gib}Gi"


def resources(req: TrainingJob) -> V1ResourceRequirements:
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
    net = fabric(req)
    if net:
        limits.update(net.resources)
    return V1ResourceRequirements(requests=requests, limits=limits)


def volume_mounts(req: TrainingJob) -> list[V1VolumeMount]:
    return [V1VolumeMount(name="dshm", mount_path="/dev/shm"), *(
        [V1VolumeMount(name="tmp", mount_path="/tmp"),
         V1VolumeMount(name="home", mount_path=HOME)]
        if req.read_only_root_filesystem else [])]


def volumes(req: TrainingJob) -> list[V1Volume]:
    shm = req.shm_size or f"{get_node_pool(req.node_pool).shm_gib}Gi"
    out = [V1Volume(name="dshm", empty_dir=V1EmptyDirVolumeSource(medium="Memory",
                                                                  size_limit=shm))]
    if req.read_only_root_filesystem:
        # On the node's disk, without a size limit: what the writable root layer was (a
        # limit would evict a pod whose checkpoint staging in /tmp crosses it).
        out += [V1Volume(name="tmp", empty_dir=V1EmptyDirVolumeSource()),
                V1Volume(name="home", empty_dir=V1EmptyDirVolumeSource())]
    return out


def container_security_context(req: TrainingJob) -> V1SecurityContext:
    return V1SecurityContext(allow_privilege_escalation=False,
                             capabilities=V1Capabilities(drop=["ALL"]),
                             read_only_root_filesystem=req.read_only_root_filesystem or None)


def pod_security_context() -> V1PodSecurityContext:
    # Pod-level, so it also covers an operator's init containers.
    return V1PodSecurityContext(run_as_non_root=True, run_as_user=UID, run_as_group=UID,
                                fs_group=UID,
                                seccomp_profile=V1SeccompProfile(type="RuntimeDefault"))


# Istio sidecars (Kubeflow profile namespaces) keep pods from ever completing and get in the way
# of NCCL; training pods talk to nothing that needs the mesh.
POD_ANNOTATIONS = {"sidecar.istio.io/inject": "false"}


def container(req: TrainingJob, name: str,
              ports: list[V1ContainerPort] | None = None) -> V1Container:
    """The training container (a backend names it and gives it its ports)."""
    return V1Container(
        name=name,
        image=req.image or default_image(),
        image_pull_policy=req.image_pull_policy,
        command=command(req),
        env=env(req) or None,
        ports=ports,
        resources=resources(req),
        volume_mounts=volume_mounts(req),
        security_context=container_security_context(req),
    )


def pod_template(req: TrainingJob, labels: dict[str, str],
                 main: V1Container) -> V1PodTemplateSpec:
    """A replica's pod: ``main`` on the node pool, hardened, with the scratch volumes."""
    pool = get_node_pool(req.node_pool)
    selector, tolerations = placement(pool, req.spot)
    spec = V1PodSpec(
        containers=[main],
        service_account_name=req.service_account,
        node_selector=selector or None,
        tolerations=tolerations or None,
        affinity=pool.affinity,
        volumes=volumes(req),
        security_context=pod_security_context(),
        priority_class_name=req.priority_class,
        termination_grace_period_seconds=termination_grace(req),
        image_pull_secrets=[V1LocalObjectReference(name=n) for n in req.image_pull_secrets]
        or None,
    )
    return V1PodTemplateSpec(metadata=V1ObjectMeta(labels=labels,
                                                   annotations=dict(POD_ANNOTATIONS)),
                             spec=spec)


# -- the config and the outputs ----------------------------------------------------------------
def resolved_config(req: TrainingJob) -> Any:
    """The stage config of ``req``, loaded exactly as the stage will load it (so a typo fails
    now, not on a GPU node): the caller's ``req.resolved`` when it has one, None when
    ``validate_config`` is off."""
    if req.resolved is not None:
        return req.resolved
    if not req.validate_config:
        return None
    overrides = list(req.overrides) + (
        [f"train.output_dir={req.output_uri}"] if req.output_uri else [])
    return validate_stage_config(req.stage, req.config, overrides)


def output_dir(req: TrainingJob, cfg: Any = None) -> str | None:
    """``train.output_dir`` the job will use: --output (the command's last override), else the
    loaded config's, else the last override (None when nothing says)."""
    if req.output_uri:
        return req.output_uri
    train = getattr(cfg, "train", None)
    if getattr(train, "output_dir", None):
        return str(train.output_dir)
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
    output = output_dir(req, cfg)
    if output is None or str(output).startswith("s3://"):
        return
    where = f"{req.nodes} nodes" if req.nodes > 1 else "a pod"
    raise ValueError(
        f"train.output_dir={output} is a local path, but the job runs on {where} of a "
        "cluster: each pod has its own filesystem, so checkpoints written by rank 0 are not "
        "visible to the other nodes and are lost when a pod restarts. Write to shared storage "
        "(--output s3://bucket/prefix), or pass --allow-local-output (allow_local_output=True) "
        "if that path is a shared volume (a PVC) mounted in every pod")
