"""The local backend: a PyTorchJob run on this machine, the way the Training Operator would run
it on a cluster (a TrainJob: :mod:`umt.launch.backends.local_trainjob`, on this executor).

    umt job run stage1 --config tiny --nodes 2 --gpus-per-node 0 --node-pool cpu \\
        train.output_dir=runs/local train.steps=20

The job object is the one that would be sent to the cluster (validated against the same CRD
schema and webhook rules); each replica becomes a local process group running the ``pytorch``
container's command with the environment the operator injects (``pkg/controller.v1/pytorch``:
``MASTER_ADDR/PORT``, ``WORLD_SIZE``, ``RANK``, ``PET_NNODES``, ``PET_NPROC_PER_NODE``,
``PET_NODE_RANK``, ``PET_MASTER_ADDR/PORT``, ``PYTHONUNBUFFERED``; elastic jobs get the
``PET_RDZV_*`` set instead of a master). So a local run tests the cluster spec.

Differences that a laptop forces, and nothing else:

* the master address is ``127.0.0.1`` and the port a free one (no Service DNS; several local
  jobs must not fight over 23456);
* images, resources, node selectors and volumes are ignored; ``secretKeyRef`` values come from
  ``secrets=`` or, failing that, from the variable of the same name in our own environment;
* when the job ends, replicas still running are stopped (there are no pods to keep around);
* a replica sent SIGTERM (``kill_replica(..., SIGTERM)``, or its executor gone) gets the pod's
  ``terminationGracePeriodSeconds`` before SIGKILL, as from a kubelet, but 5 s, not Kubernetes'
  30, when the pod sets none; ``cancel()`` (a deleted job) still stops replicas within 5 s;
* the replicas die with the executor: each runs under ``umt/launch/replica.py``, which stops
  its command when the executor goes away, even by ``kill -9`` (a pod dies with its node's
  kubelet's decision; a local replica has only us).

A replica stopped by the executor (the job ended, was deleted, or restarts) gets SIGTERM and,
like a pod, ``terminationGracePeriodSeconds`` (default 5 s here) before SIGKILL.

Restarts follow the replica's ``restartPolicy`` (OnFailure/Always: restart the replica after a
short delay, like the kubelet; ExitCode: restart on codes >= 128, i.e. signals, fail on 1-127;
Never: fail) and the job fails once replicas have restarted ``backoffLimit`` times in total.
Conditions (Created, Running, Restarting, Succeeded, Failed) move as the operator moves them,
with one addition: a replica restarted under OnFailure shows as Restarting here, where on a
cluster the kubelet restarts the container in place and only its restart count tells.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from umt.launch import replica as replica_wrapper
from umt.launch.backend import Backend, JobFailedError, JobInfo, Submission
from umt.launch.backends.pytorchjob import (
    CONTAINER,
    KIND,
    PyTorchJobs,
    job_status,
    set_condition,
    validate_pytorchjob,
)
from umt.launch.serialize import to_dict
from umt.launch.status import CREATED, FAILED, RESTARTING, RUNNING, SUCCEEDED, JobStatus

log = logging.getLogger(__name__)
WRAPPER = Path(replica_wrapper.__file__)
# SIGTERM -> SIGKILL, for us and for a replica whose executor died, when the pod sets no
# terminationGracePeriodSeconds (Kubernetes would give 30 s; a laptop wants quick stops).
STOP_GRACE_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Replica:
    rtype: str  # Master | Worker
    index: int
    node_rank: int
    restart_policy: str
    container: dict[str, Any]
    log_path: Path
    proc: subprocess.Popen | None = None
    state: str = "Pending"  # Pending | Running | Succeeded | Failed | Restarting
    restarts: int = 0
    restart_at: float = 0.0
    exit_codes: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.rtype.lower()}-{self.index}"


class LocalExecutor:
    """One PyTorchJob as local processes. ``start()``, then ``wait()`` or ``cancel()``."""

    def __init__(self, job: Any, workdir: str | os.PathLike, *, cwd: str | None = None,
                 secrets: dict[str, dict[str, str]] | None = None, restart_delay: float = 2.0,
                 grace_period: float = 10.0, poll_interval: float = 0.2):
        self.job = job if isinstance(job, dict) else to_dict(job)
        self._validate()
        self.name: str = self.job["metadata"]["name"]
        self.dir = Path(workdir) / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "job.yaml").write_text(yaml.safe_dump(self.job, sort_keys=False))
        self.cwd = cwd or os.getcwd()
        self.secrets = secrets or {}
        self.restart_delay = restart_delay
        self.grace_period = grace_period
        self.poll_interval = poll_interval
        spec = self.job["spec"]
        self.run_policy = self._run_policy(spec)
        self.conditions: list = []
        self.port = free_port()
        self.replicas = self._replicas(spec)
        # SIGTERM -> SIGKILL for a replica we stop, as the pods' terminationGracePeriodSeconds
        # (the time a preempted pod has to checkpoint), else a few seconds.
        grace = self._grace_seconds(spec)
        self.stop_grace = float(grace) if grace is not None else STOP_GRACE_S
        for replica in self.replicas:  # a new job: logs of an earlier one with this name go
            replica.log_path.unlink(missing_ok=True)
        self._lock = threading.RLock()
        self._done = threading.Event()
        self._spawned = threading.Event()
        self._spawn_error: BaseException | None = None
        self.deleted = False
        self._thread: threading.Thread | None = None
        self._stopper: threading.Thread | None = None
        self._started_at = 0.0
        self._set(CREATED, f"PyTorchJob {self.name} is created.")

    # -- setup (a subclass running another kind of job overrides these) --------------------
    def _validate(self) -> None:
        validate_pytorchjob(self.job)

    @staticmethod
    def _run_policy(spec: dict[str, Any]) -> dict[str, Any]:
        return spec.get("runPolicy") or {}

    @staticmethod
    def _grace_seconds(spec: dict[str, Any]) -> int | None:
        master = spec["pytorchReplicaSpecs"].get("Master") or spec["pytorchReplicaSpecs"]["Worker"]
        return master["template"]["spec"].get("terminationGracePeriodSeconds")

    def _deadline_message(self) -> str:
        return (f"Job {self.name} has failed because it was active longer than specified "
                "deadline")

    def _replicas(self, spec: dict[str, Any]) -> list[Replica]:
        out = []
        for rtype in ("Master", "Worker"):
            rspec = spec["pytorchReplicaSpecs"].get(rtype)
            if not rspec:
                continue
            container = next(c for c in rspec["template"]["spec"]["containers"]
                             if c["name"] == CONTAINER)
            for i in range(rspec.get("replicas", 1)):
                # Workers come after the master: node rank = index + 1 (operator's setPodEnv).
                rank = i + 1 if rtype == "Worker" and "Master" in spec["pytorchReplicaSpecs"] else i
                out.append(Replica(rtype, i, rank, rspec.get("restartPolicy", "OnFailure"),
                                   container, self.dir / f"{rtype.lower()}-{i}.log"))
        return out

    def _operator_env(self, replica: Replica) -> dict[str, str]:
        spec = self.job["spec"]
        total = len(self.replicas)
        nproc = spec.get("nprocPerNode")
        env = {"PYTHONUNBUFFERED": "1"}
        if "Master" in spec["pytorchReplicaSpecs"]:
            addr, port = "127.0.0.1", str(self.port)
            nproc_int = int(nproc) if nproc and nproc.isdigit() else 1
            env.update(MASTER_ADDR=addr, PET_MASTER_ADDR=addr, MASTER_PORT=port,
                       PET_MASTER_PORT=port, WORLD_SIZE=str(total * nproc_int),
                       RANK=str(replica.node_rank), PET_NODE_RANK=str(replica.node_rank))
        if nproc is not None:
            env["PET_NPROC_PER_NODE"] = nproc
        elastic = spec.get("elasticPolicy")
        if elastic is not None:
            workers = spec["pytorchReplicaSpecs"]["Worker"].get("replicas", 1)
            env["PET_RDZV_ENDPOINT"] = f"127.0.0.1:{elastic.get('rdzvPort') or self.port}"
            env["PET_RDZV_BACKEND"] = elastic.get("rdzvBackend") or "c10d"
            env["PET_NNODES"] = (f"{elastic.get('minReplicas', workers)}:"
                                 f"{elastic.get('maxReplicas', workers)}")
            if elastic.get("maxRestarts") is not None:
                env["PET_MAX_RESTARTS"] = str(elastic["maxRestarts"])
            if elastic.get("rdzvId"):
                env["PET_RDZV_ID"] = elastic["rdzvId"]
        else:
            env["PET_NNODES"] = str(total)
        return env

    def _container_env(self, replica: Replica) -> dict[str, str]:
        env = {}
        for item in replica.container.get("env") or []:
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if ref and ref.get("key") in self.secrets.get(ref.get("name"), {}):
                env[item["name"]] = self.secrets[ref["name"]][ref["key"]]
            # Otherwise keep whatever our own environment has under that name (or nothing).
        return env

    def _spawn(self, replica: Replica) -> None:
        env = dict(os.environ)
        # Our interpreter's bin first, so 'torchrun' and 'python' are the ones of this venv.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update(self._container_env(replica))
        env.update(self._operator_env(replica))
        argv = list(replica.container.get("command") or []) + list(
            replica.container.get("args") or [])
        exe = shutil.which(argv[0], path=env["PATH"])
        if exe is None:
            raise FileNotFoundError(f"{argv[0]!r} (the {CONTAINER} container's command) is "
                                    "not on PATH here")
        # The wrapper ties the replica's life to ours (see umt/launch/replica.py); run by
        # path so that it imports nothing of umt.
        wrapped = [sys.executable, str(WRAPPER), "--parent", str(os.getpid()),
                   "--grace", str(self.stop_grace), "--", exe, *argv[1:]]
        with open(replica.log_path, "ab") as out:
            # A session per replica: killing it kills torchrun *and* its workers, like a pod.
            replica.proc = subprocess.Popen(wrapped, cwd=self.cwd, env=env,
                                            stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        replica.state = "Running"
        log.info("started %s/%s (pid %d)", self.name, replica.name, replica.proc.pid)

    # -- conditions ------------------------------------------------------------------------
    def _set(self, type_: str, message: str) -> None:
        self.conditions = set_condition(self.conditions, type_, f"{KIND}{type_}", message)

    def status(self) -> JobStatus:
        with self._lock:
            return job_status(self.name, list(self.conditions))

    # -- running ---------------------------------------------------------------------------
    def start(self) -> "LocalExecutor":
        """Start every replica (raises what starting one raised) and the monitor."""
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._monitor, name=f"local-{self.name}",
                                        daemon=True)
        self._thread.start()
        self._spawned.wait()
        if self._spawn_error is not None:
            self.wait()
            raise self._spawn_error
        return self

    def _monitor(self) -> None:
        # Linux sends a replica's parent-death signal when the *thread* that forked it ends,
        # not the process: this thread forks every replica (restarts too) and ends only once
        # they are all gone.
        try:
            with self._lock:
                try:
                    for replica in self.replicas:
                        self._spawn(replica)
                except BaseException as e:
                    self._spawn_error = e
                    self._finish(FAILED, f"could not start the replicas: {e}")
                    return
                finally:
                    self._spawned.set()
                self._set(RUNNING, f"PyTorchJob {self.name} is running.")
            while not self._done.is_set():
                with self._lock:
                    self._step()
                self._done.wait(self.poll_interval)
        except Exception as e:  # never leave processes behind because of our own bug
            log.exception("local executor failed")
            with self._lock:
                self._finish(FAILED, f"local executor error: {e}")
        finally:
            if self._stopper is not None:
                self._stopper.join()
            self._stop_all(0.0)

    def _step(self) -> None:
        now = time.monotonic()
        deadline = self.run_policy.get("activeDeadlineSeconds")
        if deadline is not None and now - self._started_at > deadline:
            self._finish(FAILED, self._deadline_message())
            return
        for replica in self.replicas:
            if replica.state == "Restarting" and now >= replica.restart_at:
                self._spawn(replica)
                self._set(RUNNING, f"PyTorchJob {self.name} is running.")
            if replica.state != "Running" or replica.proc is None:
                continue
            code = replica.proc.poll()
            if code is None:
                continue
            code = 128 - code if code < 0 else code  # killed by signal N -> 128+N, as in pods
            replica.exit_codes.append(code)
            self._on_exit(replica, code)
            if self._done.is_set():
                return
        self._check_success()

    def _on_exit(self, replica: Replica, code: int) -> None:
        policy = replica.restart_policy
        log.info("%s/%s exited with code %d", self.name, replica.name, code)
        restart = (policy == "Always" or (code != 0 and policy == "OnFailure")
                   or (code >= 128 and policy == "ExitCode"))
        if not restart:
            replica.state = "Succeeded" if code == 0 else "Failed"
            if code != 0:
                self._finish(FAILED, f"PyTorchJob {self.name} is failed because 1 "
                                     f"{replica.rtype} replica(s) failed (exit code {code}).")
            return
        total = sum(r.restarts for r in self.replicas) + 1
        limit = self.run_policy.get("backoffLimit")
        if limit is not None and total >= limit:
            replica.state = "Failed"  # not restarted: its exit is final
            # The operator sums container restarts and gives up once it reaches the limit.
            self._finish(FAILED, f"Job {self.name} has failed because it has reached the "
                                 "specified backoff limit")
            return
        replica.restarts += 1
        replica.state = "Restarting"
        replica.restart_at = time.monotonic() + self.restart_delay
        self._set(RESTARTING, f"PyTorchJob {self.name} is restarting because 1 "
                              f"{replica.rtype} replica(s) failed.")

    def _check_success(self) -> None:
        masters = [r for r in self.replicas if r.rtype == "Master"]
        workers = [r for r in self.replicas if r.rtype == "Worker"]
        if masters:
            done = all(r.state == "Succeeded" for r in masters)
        elif self.job["spec"].get("elasticPolicy") is not None:
            done = any(r.state == "Succeeded" for r in workers)
        else:
            done = all(r.state == "Succeeded" for r in workers)
        if done:
            self._finish(SUCCEEDED, f"PyTorchJob {self.name} is successfully completed.")

    def _finish(self, phase: str, message: str) -> None:
        if self._done.is_set():
            return
        self._set(phase, message)
        # After success, stragglers get a grace period to exit on their own.
        grace = self.grace_period if phase == SUCCEEDED else 0.0
        self._stopper = threading.Thread(target=self._stop_all, args=(grace,), daemon=True)
        self._stopper.start()
        self._done.set()  # last: wait() joins the stopper once this is set

    def _stop_all(self, grace: float = 0.0) -> None:
        deadline = time.monotonic() + grace
        for replica in self.replicas:
            proc = replica.proc
            if proc is None or replica.state != "Running":
                continue
            if proc.poll() is None:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _kill_group(proc, signal.SIGTERM)
                    try:
                        proc.wait(timeout=self.stop_grace + 1)  # the wrapper kills after its grace
                    except subprocess.TimeoutExpired:
                        _kill_group(proc, signal.SIGKILL)
                        proc.wait()
            # A straggler's end is recorded as a pod's would be (the job's phase is already
            # set): a worker that finished just after its master reads Succeeded, exit 0.
            with self._lock:  # the monitor may be polling the same replica
                if replica.state == "Running" and replica.proc is proc:
                    code = proc.returncode
                    replica.exit_codes.append(128 - code if code < 0 else code)
                    replica.state = "Succeeded" if code == 0 else "Failed"

    def wait(self, timeout: float | None = None) -> JobStatus:
        """Until the job finished and its processes are gone (or ``timeout``)."""
        if self._done.wait(timeout):
            if self._stopper is not None:
                self._stopper.join()
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join()
        return self.status()

    def cancel(self) -> None:
        """What deleting the job does: stop every replica now. The job counts as Failed (a
        deleted job never reads as a success)."""
        with self._lock:
            if not self._done.is_set():
                self.deleted = True
                self._set(FAILED, f"PyTorchJob {self.name} was deleted; its replicas were "
                                  "stopped.")
            self._done.set()
        self._stop_all(0.0)

    def kill_replica(self, rtype: str, index: int = 0, sig: int = signal.SIGKILL) -> None:
        """Make one replica die, like a pod whose node went away (tests use this)."""
        replica = next(r for r in self.replicas if r.rtype == rtype and r.index == index)
        if replica.proc is not None:
            _kill_group(replica.proc, sig)

    def log_path(self, replica: str | None = None, index: int = 0) -> Path:
        has_master = any(r.rtype == "Master" for r in self.replicas)
        replica = (replica or ("master" if has_master else "worker")).lower()
        return self.dir / f"{replica}-{index}.log"


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal a replica's whole process tree, like a container dying.

    torchrun starts each worker in a session of its own, so signalling torchrun's group is not
    enough: a SIGKILLed torchrun would leave its trainers running, hence SIGKILL goes to the
    replica's group and every process below it. Other signals go to the replica's wrapper
    only, which forwards them to torchrun once (torchrun passes them on to its workers, as in
    a pod); signalling the group would hand torchrun a second SIGTERM during its shutdown.
    """
    if sig != signal.SIGKILL:
        try:
            os.kill(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        return
    tree = replica_wrapper.descendants(proc.pid)
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    replica_wrapper.kill_all(tree, sig)


class LocalBackend(PyTorchJobs, Backend):
    """:class:`umt.launch.backend.Backend` running PyTorchJobs as processes on this machine.

    Jobs live as long as this object. Submitting a name it already has adopts that job when it
    is running or succeeded, and replaces it (a new run) when it failed, as on a cluster.
    """

    name = "local"
    shares_filesystem = True  # every replica sees this machine's files: local outputs are fine
    executor_class = LocalExecutor  # how one job of this backend's kind runs here

    def __init__(self, workdir: str | os.PathLike = "runs/local-jobs", *, cwd: str | None = None,
                 secrets: dict[str, dict[str, str]] | None = None, restart_delay: float = 2.0,
                 poll_interval: float = 0.5):
        self.workdir = Path(workdir)
        self.cwd = cwd
        self.secrets = secrets
        self.restart_delay = restart_delay
        self.poll_interval = poll_interval
        self.namespace = "local"
        self.executors: dict[str, LocalExecutor] = {}

    @classmethod
    def from_options(cls, *, local_workdir: str = "runs/local-jobs", **_: Any) -> "LocalBackend":
        return cls(local_workdir)

    def submit(self, job: Any, *, replace_failed: bool = True) -> Submission:
        body = job if isinstance(job, dict) else to_dict(job)
        name = body["metadata"]["name"]
        replaced = False
        existing = self.executors.get(name)
        if existing is not None:
            phase = existing.status().phase
            if phase != FAILED:
                if phase == SUCCEEDED:
                    log.warning("local job %s already succeeded: adopting it, not running it "
                                "again", name)
                return Submission(name, self.namespace, created=False)
            if not replace_failed:
                raise JobFailedError(existing.status(), already_failed=True)
            log.warning("local job %s failed before (%s): replacing it with a new run", name,
                        existing.status().message)
            existing.cancel()  # its processes are already stopping; make sure they are gone
            existing.wait()
            del self.executors[name]
            replaced = True
        executor = self.executor_class(body, self.workdir, cwd=self.cwd, secrets=self.secrets,
                                       restart_delay=self.restart_delay)
        self.executors[name] = executor.start()
        return Submission(name, self.namespace, created=True, replaced=replaced)

    def _executor(self, name: str) -> LocalExecutor:
        try:
            return self.executors[name]
        except KeyError:
            raise LookupError(f"no local job named {name}") from None

    def status(self, name: str) -> JobStatus:
        return self._executor(name).status()

    def wait(self, name: str, *, timeout: float | None = None,
             on_status: Callable[[JobStatus], None] | None = None) -> JobStatus:
        executor = self._executor(name)
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        while True:
            if executor.deleted:
                raise JobFailedError(JobStatus(name, FAILED, "the job was deleted while we "
                                               "waited for it"))
            current = executor.status()
            if on_status and current.phase != last:
                on_status(current)
            last = current.phase
            if current.finished:
                return current
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {name} still {current.phase} after {timeout:.0f}s")
            executor.wait(self.poll_interval)

    def logs(self, name: str, *, follow: bool = False, replica: str | None = None,
             index: int = 0) -> Iterator[str]:
        executor = self._executor(name)
        path = executor.log_path(replica, index)
        while not path.exists():
            if not follow or executor.status().finished:
                return
            time.sleep(self.poll_interval)
        with open(path, "r", errors="replace") as f:
            pending = ""
            while True:
                chunk = f.readline()
                if chunk:
                    pending += chunk
                    if pending.endswith("\n"):
                        yield pending.rstrip("\n")
                        pending = ""
                    continue
                if not follow or executor.status().finished:
                    # One last read: the process may have written after our previous one.
                    rest = pending + f.read()
                    yield from rest.splitlines()
                    return
                time.sleep(0.1)

    def delete(self, name: str) -> None:
        executor = self.executors.pop(name, None)
        if executor is not None:
            executor.cancel()

    def list_jobs(self, label_selector: str) -> list[JobInfo]:
        """This object's jobs with every ``key=value`` of ``label_selector``."""
        wanted = dict(item.split("=", 1) for item in label_selector.split(",") if item)
        return [JobInfo(name, executor.status()) for name, executor in self.executors.items()
                if wanted.items() <= (executor.job["metadata"].get("labels") or {}).items()]
