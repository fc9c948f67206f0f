"""``umt job ...`` and ``umt doctor``: training jobs for kubectl-minded users.

    umt doctor --output s3://bucket/runs                      # before spending a GPU
    umt job render stage1 --config b16 --nodes 4 --gpus-per-node 8 --node-pool gke-a100 \\
        data.source=s3://bucket/k710/dataset.json --output s3://bucket/runs/b16 \\
        | kubectl apply -f -
    umt job submit stage1 --config b16 --nodes 4 ... [--wait]  # same, through the API
    umt job wait NAME          # stream the master's log until it ends; exit 1 if it failed
    umt job logs NAME [-f] [--replica worker --index 2]
    umt job status NAME
    umt job delete NAME
    umt job gc --run-id RUN    # delete the unfinished jobs of a (terminated) pipeline run
    umt job run stage1 --config tiny --nodes 2 train.steps=20  # the same job, run locally
    umt job render stage1 --backend trainjob ...   # a Kubeflow Trainer v2 TrainJob

``--backend NAME`` picks the kind of job (``umt job render --help`` lists the registered ones);
the default, ``cluster``, is the kind the configured cluster serves, TrainJob first
(``umt.launch.detect``; PyTorchJob when no cluster can be asked).

Every value is checked before anything is rendered (umt.launch.values): a bad namespace,
quantity, count or name fails here with the option, the value and what is allowed (exit 2).

Mounted by ``umt/cli.py`` as ``app.add_typer(job_app, name="job")`` and
``app.command("doctor")(doctor)``.
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import List, Optional

import typer

from umt.launch.backend import (
    CLUSTER,
    CLUSTER_DEFAULT,
    JobCancelledError,
    JobFailedError,
    JobStartError,
    SummaryError,
    backend_names,
)
from umt.launch.crd import InvalidJobError
from umt.launch.node_pools import NODE_POOLS
from umt.launch.request import (
    DEFAULT_ACTIVE_DEADLINE,
    RESTART_POLICIES,
    S3Credentials,
    TrainingJob,
)

job_app = typer.Typer(help="Render, submit and follow training jobs.",
                      no_args_is_help=True, add_completion=False,
                      pretty_exceptions_enable=False)

StageArg = typer.Argument(..., help="Stage (umt.catalogue), e.g. stage1.")
OverridesArg = typer.Argument(None, help="Config overrides key=value, e.g. train.steps=1000.")
ConfigOpt = typer.Option(None, "--config", "-c",
                         help="Preset (tiny, b16, l16) or a YAML file (inlined into the job).")
NodesOpt = typer.Option(1, "--nodes", "-n", help="Pods (Master + Workers).")
GpusOpt = typer.Option(8, "--gpus-per-node", "-g", help="GPUs per pod; 0 for a CPU job.")
PoolOpt = typer.Option("gke-a100", "--node-pool", "-p",
                       help=f"One of: {', '.join(NODE_POOLS)}.")
ImageOpt = typer.Option(None, "--image",
                        help="Training image (default: umt-train:<version>-<sha> of this build).")
PullSecretOpt = typer.Option(None, "--image-pull-secret",
                             help="Secret to pull the image with (repeatable; default: "
                                  "$UMT_IMAGE_PULL_SECRETS).")
NameOpt = typer.Option(None, "--name", help="Job name (default: from stage + output folder).")
NamespaceOpt = typer.Option(None, "--namespace", help="Default: the kubeconfig context's.")
RunIdOpt = typer.Option(None, "--run-id", help="Id of the enclosing run (label umt/run-id).")
OutputOpt = typer.Option(None, "--output", "-o", help="train.output_dir, e.g. s3://b/runs/x.")
S3SecretOpt = typer.Option("umt-s3", "--s3-secret",
                           help="Secret with AWS_* keys; '' for none (IRSA, workload identity).")
RestartOpt = typer.Option("OnFailure", "--restart-policy",
                          help=f"One of: {', '.join(RESTART_POLICIES)}.")
BackoffOpt = typer.Option(None, "--backoff-limit", help="Restarts before failing (3 x nodes).")
DeadlineOpt = typer.Option(
    None, "--active-deadline",
    help=f"Fail the job after N seconds (default {DEFAULT_ACTIVE_DEADLINE}: 14 days).")
GangOpt = typer.Option(False, "--gang", help="Gang scheduling (Volcano / scheduler-plugins).")
QueueOpt = typer.Option(None, "--queue", help="Volcano queue.")
KueueOpt = typer.Option(None, "--kueue-queue",
                        help="Kueue LocalQueue (label kueue.x-k8s.io/queue-name): the job waits "
                             "suspended until the queue admits it.")
GraceOpt = typer.Option(None, "--termination-grace",
                        help="Seconds a pod has after SIGTERM (preemption, drain) to checkpoint "
                             "before SIGKILL (default 120, the trainer's own).")
SpotOpt = typer.Option(False, "--spot", help="Run on the node pool's spot / preemptible nodes.")
FabricOpt = typer.Option(True, "--fabric/--no-fabric",
                         help="GPU jobs request the node pool's RDMA fabric (EFA on eks-*, "
                              "InfiniBand on aks-a100).")
PriorityOpt = typer.Option(None, "--priority-class", help="PriorityClass of the pods.")
ElasticOpt = typer.Option(None, "--elastic", help="MIN:MAX nodes for an elastic job.")
CpuOpt = typer.Option(None, "--cpu", help="CPU request per pod (default 8 per GPU).")
MemoryOpt = typer.Option(None, "--memory", help="Memory per pod (default 60Gi per GPU).")
ShmOpt = typer.Option(None, "--shm-size", help="/dev/shm size, e.g. 128Gi.")
ServiceAccountOpt = typer.Option("umt-training", "--service-account",
                                 help="ServiceAccount of the training pods.")
WritableRootOpt = typer.Option(
    False, "--writable-root-filesystem",
    help="Drop readOnlyRootFilesystem (only for an image that writes outside /tmp and "
         "/home/umt).")
AllowLocalOutputOpt = typer.Option(
    False, "--allow-local-output",
    help="Accept a local train.output_dir: only for a shared volume (PVC) mounted in every pod.")
StartGraceOpt = typer.Option(
    600.0, "--start-grace",
    help="Seconds a pod may sit in an image pull / container config error before failing.")
UnschedulableOpt = typer.Option(
    None, "--unschedulable-timeout",
    help="Fail when a pod stays unschedulable this long (default: wait, warning every 5 min).")
KubeconfigOpt = typer.Option(None, "--kubeconfig", help="Default: $KUBECONFIG, in-cluster.")
BackendOpt = typer.Option(
    CLUSTER, "--backend",
    help=f"Job backend: {', '.join(backend_names())}, or {CLUSTER}: the kind the cluster "
         f"serves, TrainJob first ({CLUSTER_DEFAULT} when no cluster can be asked).")
LOCAL_BACKENDS = {"pytorchjob": "local", "trainjob": "local-trainjob"}
ContextOpt = typer.Option(None, "--context", help="kubeconfig context.")


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg="red", err=True)
    return typer.Exit(code)


def _request(stage: str = StageArg, overrides: Optional[List[str]] = OverridesArg,
             config: Optional[str] = ConfigOpt, nodes: int = NodesOpt,
             gpus_per_node: int = GpusOpt, node_pool: str = PoolOpt,
             image: Optional[str] = ImageOpt, name: Optional[str] = NameOpt,
             namespace: Optional[str] = NamespaceOpt, run_id: Optional[str] = RunIdOpt,
             output: Optional[str] = OutputOpt, s3_secret: str = S3SecretOpt,
             restart_policy: str = RestartOpt, backoff_limit: Optional[int] = BackoffOpt,
             active_deadline: Optional[int] = DeadlineOpt, gang: bool = GangOpt,
             queue: Optional[str] = QueueOpt, priority_class: Optional[str] = PriorityOpt,
             elastic: Optional[str] = ElasticOpt, cpu: Optional[str] = CpuOpt,
             memory: Optional[str] = MemoryOpt, shm_size: Optional[str] = ShmOpt,
             allow_local_output: bool = AllowLocalOutputOpt,
             service_account: str = ServiceAccountOpt,
             writable_root_filesystem: bool = WritableRootOpt,
             image_pull_secret: Optional[List[str]] = PullSecretOpt,
             kueue_queue: Optional[str] = KueueOpt,
             termination_grace: Optional[int] = GraceOpt,
             spot: bool = SpotOpt, fabric: bool = FabricOpt) -> TrainingJob:
    """The job the options describe (the command-line options of ``umt job render`` and
    ``submit``: see ``_job_command``); a bad value exits 2 naming it."""
    elastic_min = elastic_max = None
    if elastic:
        try:
            elastic_min, elastic_max = (int(x) for x in elastic.split(":"))
        except ValueError:
            raise _fail(f"--elastic must be MIN:MAX, got {elastic!r}", 2) from None
    optional = {} if active_deadline is None else {"active_deadline_seconds": active_deadline}
    if image_pull_secret:
        optional["image_pull_secrets"] = list(image_pull_secret)
    try:
        return TrainingJob(
            stage=stage, config=config, overrides=list(overrides or []), nodes=nodes,
            gpus_per_node=gpus_per_node, node_pool=node_pool, image=image, name=name,
            namespace=namespace, run_id=run_id, output_uri=output,
            s3=S3Credentials(secret=s3_secret) if s3_secret else None,
            restart_policy=restart_policy, backoff_limit=backoff_limit,
            gang_scheduling=gang, queue=queue, fabric=fabric,
            priority_class=priority_class, elastic_min_nodes=elastic_min,
            elastic_max_nodes=elastic_max, cpu=cpu, memory=memory, shm_size=shm_size,
            allow_local_output=allow_local_output, service_account=service_account or None,
            read_only_root_filesystem=not writable_root_filesystem, kueue_queue=kueue_queue,
            termination_grace_seconds=termination_grace, spot=spot, **optional)
    except ValueError as e:
        raise _fail(str(e), 2) from None


def _render(req: TrainingJob, backend: str):
    from umt.launch.backend import render_job
    from umt.launch.detect import resolve

    try:
        # "cluster": the kind the configured cluster runs, if one answers (umt.launch.detect).
        return render_job(req, resolve(backend, namespace=req.namespace))
    except (ValueError, InvalidJobError) as e:  # a bad config or job: say why, no traceback
        raise _fail(str(e), 2) from None


def _job_command(command):
    """A command ``command(req, <its own options>)`` as the typer command whose options are
    ``_request``'s (the job: ``--nodes``, ``--node-pool``, ...), then its own; it gets the job
    they describe as ``req``. ``render`` and ``submit`` describe a job with the same options."""
    job_options = inspect.signature(_request, eval_str=True).parameters
    own_options = list(inspect.signature(command, eval_str=True).parameters.values())[1:]

    @functools.wraps(command)
    def with_job(**options):
        req = _request(**{key: options.pop(key) for key in job_options})
        return command(req, **options)

    with_job.__signature__ = inspect.Signature([*job_options.values(), *own_options])
    return with_job


@job_app.command("render")
@_job_command
def render(req: TrainingJob, backend: str = BackendOpt):
    """Print the job's YAML (validated) for `kubectl apply -f -`."""
    typer.echo(_render(req, backend).to_yaml(), nl=False)


@job_app.command("submit")
@_job_command
def submit(req: TrainingJob,
           wait: bool = typer.Option(False, "--wait", help="Stream logs and wait for the end."),
           start_grace: float = StartGraceOpt,
           unschedulable_timeout: Optional[float] = UnschedulableOpt,
           kubeconfig: Optional[str] = KubeconfigOpt, context: Optional[str] = ContextOpt,
           backend: str = BackendOpt):
    """Create the job (adopt a running or succeeded one of the same name, replace a failed
    one) and print its name."""
    rendered = _render(req, backend)
    impl = _backend(backend, kubeconfig, context, req.namespace, start_grace=start_grace,
                    unschedulable_timeout=unschedulable_timeout)
    try:
        sub = impl.submit(rendered.job)
    except (RuntimeError, PermissionError, InvalidJobError) as e:
        raise _fail(str(e)) from None
    typer.echo(f"{impl.kind.lower()}/{sub.name} {sub.action} in namespace {sub.namespace}",
               err=True)
    typer.echo(sub.name)
    if wait:
        _wait(impl, sub.name, logs=True, timeout=None)


def _backend(backend: str, kubeconfig: Optional[str], context: Optional[str],
             namespace: Optional[str], poll_interval: float = 10.0, start_grace: float = 600.0,
             unschedulable_timeout: Optional[float] = None):
    from umt.launch.backend import make_backend
    from umt.launch.values import Problems

    problems = Problems()
    problems.dns_label("namespace", namespace)
    if problems.items:
        raise _fail("; ".join(problems.items), 2)
    try:
        return make_backend(backend, kubeconfig=kubeconfig, context=context,
                            namespace=namespace, poll_interval=poll_interval,
                            start_grace=start_grace, unschedulable_timeout=unschedulable_timeout)
    except ValueError as e:  # no backend of that name
        raise _fail(str(e), 2) from None
    except RuntimeError as e:
        raise _fail(str(e)) from None


def _wait(backend, name: str, logs: bool, timeout: Optional[float]) -> None:
    from umt.launch.run import LogPump

    pump = None
    if logs:
        pump = LogPump(backend, name, lambda line: typer.echo(line))
        pump.start()
    try:
        status = backend.wait(name, timeout=timeout, on_status=lambda s: typer.echo(
            f"{backend.kind.lower()}/{name}: {s.phase} {s.message}", err=True))
    except JobStartError as e:
        raise _fail(f"{e}\n(the job is left in place: `umt job delete {name}` frees its nodes)"
                    ) from None
    except JobFailedError as e:
        raise _fail(str(e)) from None
    except TimeoutError as e:
        raise _fail(str(e)) from None
    if pump is not None:
        pump.join(timeout=10)
    if not status.succeeded:
        tail = list(pump.tail) if pump else []
        raise _fail(str(JobFailedError(status, tail)))


@job_app.command("wait")
def wait_cmd(name: str = typer.Argument(..., help="Job name."),
             logs: bool = typer.Option(True, "--logs/--no-logs", help="Stream the master's log."),
             timeout: Optional[float] = typer.Option(None, help="Give up after N seconds."),
             poll_interval: float = typer.Option(10.0, help="Seconds between status checks."),
             start_grace: float = StartGraceOpt,
             unschedulable_timeout: Optional[float] = UnschedulableOpt,
             namespace: Optional[str] = NamespaceOpt, kubeconfig: Optional[str] = KubeconfigOpt,
             context: Optional[str] = ContextOpt, backend: str = BackendOpt):
    """Wait until the job succeeds (exit 0) or fails (exit 1), streaming the master's log;
    exit 1 too when its pods cannot start (see --start-grace)."""
    _wait(_backend(backend, kubeconfig, context, namespace, poll_interval, start_grace,
                   unschedulable_timeout), name, logs, timeout)


@job_app.command("logs")
def logs_cmd(name: str = typer.Argument(..., help="Job name."),
             follow: bool = typer.Option(False, "--follow", "-f"),
             replica: Optional[str] = typer.Option(None, help="master or worker (default: the "
                                                               "master role)."),
             index: int = typer.Option(0, help="Replica index."),
             namespace: Optional[str] = NamespaceOpt, kubeconfig: Optional[str] = KubeconfigOpt,
             context: Optional[str] = ContextOpt, backend: str = BackendOpt):
    """Print a replica's log (its training container)."""
    from kubernetes.client.exceptions import ApiException

    impl = _backend(backend, kubeconfig, context, namespace, poll_interval=2.0)
    try:
        for line in impl.logs(name, follow=follow, replica=replica, index=index):
            typer.echo(line)
    except ApiException as e:
        raise _fail(f"{e.status} {e.reason}: no log for {name} ({replica or 'master'}-{index})"
                    ) from None


@job_app.command("status")
def status_cmd(name: str = typer.Argument(..., help="Job name."),
               namespace: Optional[str] = NamespaceOpt, kubeconfig: Optional[str] = KubeconfigOpt,
               context: Optional[str] = ContextOpt, backend: str = BackendOpt):
    """Print the job's phase and conditions."""
    from kubernetes.client.exceptions import ApiException

    impl = _backend(backend, kubeconfig, context, namespace)
    try:
        st = impl.status(name)
    except ApiException as e:
        raise _fail(f"{e.status} {e.reason}: {impl.kind.lower()}/{name}") from None
    typer.echo(f"{name}: {st.phase} {st.message}")
    for c in st.conditions:
        typer.echo(f"  {c.type:<11} {c.status:<5} {c.last_transition_time}  {c.message}")


@job_app.command("delete")
def delete_cmd(name: str = typer.Argument(..., help="Job name."),
               namespace: Optional[str] = NamespaceOpt, kubeconfig: Optional[str] = KubeconfigOpt,
               context: Optional[str] = ContextOpt, backend: str = BackendOpt):
    """Delete the job and its pods (no error if it is already gone)."""
    impl = _backend(backend, kubeconfig, context, namespace)
    impl.delete(name)
    typer.echo(f"{impl.kind.lower()}/{name} deleted")


@job_app.command("gc")
def gc_cmd(run_id: str = typer.Option(..., "--run-id", help="The run whose jobs to delete."),
           include_finished: bool = typer.Option(
               False, "--all", help="Also delete finished jobs (their pods and logs go too)."),
           namespace: Optional[str] = NamespaceOpt, kubeconfig: Optional[str] = KubeconfigOpt,
           context: Optional[str] = ContextOpt, backend: str = BackendOpt):
    """Delete the unfinished jobs labelled umt/run-id=RUN (a terminated pipeline run leaves
    its jobs running: they have no owner reference to it)."""
    from kubernetes.client.exceptions import ApiException

    from umt.launch.gc import delete_run_jobs, run_selector

    impl = _backend(backend, kubeconfig, context, namespace)
    kind = impl.kind.lower()
    try:
        names = delete_run_jobs(run_id, include_finished=include_finished, backend=impl)
    except ValueError as e:
        raise _fail(str(e), 2) from None
    except ApiException as e:
        raise _fail(f"{e.status} {e.reason}: deleting {impl.plural} -l {run_selector(run_id)} "
                    f"in {impl.namespace}") from None
    for name in names:
        typer.echo(f"{kind}/{name} deleted")
    if not names:
        typer.echo(f"no unfinished {impl.plural} with {run_selector(run_id)} in "
                   f"{impl.namespace}", err=True)


@job_app.command("run")
def run_local(stage: str = StageArg, overrides: Optional[List[str]] = OverridesArg,
              config: Optional[str] = ConfigOpt, nodes: int = NodesOpt,
              procs_per_node: int = typer.Option(1, "--procs-per-node",
                                                 help="torchrun processes per replica."),
              output: Optional[str] = OutputOpt,
              restart_policy: str = RestartOpt, backoff_limit: Optional[int] = BackoffOpt,
              termination_grace: Optional[int] = GraceOpt,
              workdir: str = typer.Option("runs/local-jobs", help="Job YAML and replica logs."),
              backend: str = typer.Option(
                  "pytorchjob", "--backend",
                  help=f"The kind of job run here: {', '.join(LOCAL_BACKENDS)}.")):
    """Run the job on this machine (CPU, gloo): one process group per replica, as the
    PyTorchJob (or TrainJob) would run on a cluster."""
    from umt.launch.run import run_training_job

    if backend not in LOCAL_BACKENDS:
        raise _fail(f"--backend {backend!r}: must be one of {', '.join(LOCAL_BACKENDS)}", 2)
    try:
        result = run_training_job(
            stage, config, overrides or [], nodes=nodes, gpus_per_node=0, node_pool="cpu",
            procs_per_node=procs_per_node, output_uri=output, s3=None,
            restart_policy=restart_policy, backoff_limit=backoff_limit,
            termination_grace_seconds=termination_grace, backend=LOCAL_BACKENDS[backend],
            local_workdir=workdir)  # <workdir>/<job>/ holds job.yaml and replica logs
    except (ValueError, InvalidJobError) as e:
        raise _fail(str(e), 2) from None
    except (JobFailedError, JobCancelledError, SummaryError) as e:
        raise _fail(str(e)) from None
    typer.echo(f"{result.name}: {result.status.phase}", err=True)
    typer.echo(json.dumps(result.summary, indent=2))


def doctor(namespace: Optional[str] = NamespaceOpt,
           output: Optional[str] = typer.Option(
               None, "--output", "-o", help="S3 prefix (or folder) the jobs will write to."),
           s3_secret: str = typer.Option(
               "umt-s3", "--s3-secret",
               help="Secret the jobs read S3 credentials from; '' when they use IRSA/workload "
                    "identity."),
           kubeconfig: Optional[str] = KubeconfigOpt, context: Optional[str] = ContextOpt,
           backend: str = BackendOpt):
    """Check, before any GPU is spent: cluster, the backend's CRD and RBAC, the jobs' S3
    Secret, writable output."""
    from umt.launch.doctor import run_checks

    try:
        checks = run_checks(namespace=namespace, kubeconfig=kubeconfig, context=context,
                            output_uri=output, s3_secret=s3_secret or None, backend=backend)
    except ValueError as e:  # no backend of that name
        raise _fail(str(e), 2) from None
    for c in checks:
        if not c.ok:
            mark = typer.style("FAIL", fg="red")
        elif c.warning:
            mark = typer.style("warn", fg="yellow")
        else:
            mark = typer.style("ok  ", fg="green")
        typer.echo(f"{mark} {c.name:<15} {c.detail}")
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


if __name__ == "__main__":  # python -m umt.launch.cli render ...
    job_app()
