"""Run one training stage as a job and see it through: the entry point components call.

    from umt.launch import run_training_job
    result = run_training_job("stage1", "b16", ["data.source=s3://b/k710/dataset.json"],
                              nodes=4, gpus_per_node=8, node_pool="gke-a100",
                              output_uri="s3://b/runs/b16", run_id=kfp_run_id,
                              rendered_yaml_path=job_yaml.path)

It renders and validates the job with the chosen backend (``backend="cluster"``: the cluster's
default backend; ``"local"``: processes here; any registered name, see :mod:`umt.launch.backend`)
so a bad config fails here, not on a GPU node, writes the YAML artifact, submits it or adopts the
job a previous attempt created, streams the master's log to stdout, waits as long as the job
runs, and

* returns a :class:`JobResult` when the job succeeded, with the stage's ``summary.json`` read
  from ``train.output_dir`` (local or s3://): ``result.summary["checkpoint"]``, its final
  metrics; a summary that is missing or unreadable raises :class:`SummaryError` naming the URI,
* raises :class:`JobFailedError` (with the controller's reason and the log tail) when it failed
  or was deleted; ``permanent`` says a retry would not help, and a retried call
  (``replace_failed=False``, the default) that finds the job of its name Failed raises it again
  at once instead of training a second time (KFP's ``set_retry`` covers a lost launcher pod,
  not a job that spent its own ``backoffLimit``),
* deletes the job and raises :class:`JobStartError` (a ``JobFailedError``) when its pods cannot
  start (image pull or container config errors past ``start_grace`` seconds; unschedulable past
  ``unschedulable_timeout`` if set), so they stop holding nodes,
* when we are signalled (SIGTERM, Ctrl-C): deletes the job and raises
  :class:`JobCancelledError`, or, with ``run_stopped`` given (a pipeline's launcher), asks it
  first: a SIGTERM reaches a launcher pod alike when its run is terminated and when only the
  pod goes (a node drain, an autoscaler scale-down, ``kubectl delete pod``, a retry's
  deadline). Only a stopped run deletes the job; otherwise (or when the run's state cannot be
  read) the job keeps training and :class:`JobDetachedError` is raised, so the task ends
  non-zero and its retry, or a rerun, adopts the job by its name.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from umt import storage
from umt.launch.backend import (
    CLUSTER,
    JobCancelledError,
    JobDetachedError,
    JobFailedError,
    JobStartError,
    SummaryError,
    backend_class,
    make_backend,
    shares_filesystem,
)
from umt.launch.detect import resolve
from umt.launch.request import TrainingJob
from umt.launch.status import SUSPENDED, JobStatus

log = logging.getLogger(__name__)
LOG_TAIL_LINES = 30


MAX_SUMMARY_BYTES = 16 << 20  # a summary is a few KB; refuse to parse anything absurd


@dataclass
class JobResult:
    name: str
    namespace: str
    status: JobStatus
    created: bool  # False: an existing job of the same name was adopted
    yaml_path: str | None
    replaced: bool = False  # True: a failed job of the same name was deleted first
    output_dir: str | None = None  # train.output_dir (as the job sees it)
    # <output_dir>/summary.json: at least stage, steps, checkpoint (URI), output_dir and the
    # stage's final metrics; evaluation stages write their metrics there too.
    summary: dict[str, Any] = field(default_factory=dict)


def summary_uri(output_dir: str, cwd: str | None = None) -> str:
    """Where a stage writing to ``output_dir`` leaves its summary; a relative local folder is
    relative to the replicas' working directory ``cwd`` (the local executor's)."""
    if not storage.is_s3(output_dir) and cwd and not os.path.isabs(output_dir):
        output_dir = os.path.join(cwd, output_dir)
    return storage.join(output_dir, "summary.json")


def read_summary(output_dir: str, cwd: str | None = None) -> dict[str, Any]:
    """The stage's ``summary.json``; :class:`SummaryError` (naming the URI) if it is missing,
    unreadable, too large or not a JSON object with a ``stage``."""
    uri = summary_uri(output_dir, cwd)
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise SummaryError(uri, "does not exist") from None
    except Exception as e:  # storage errors (permissions, endpoint down): say which object
        raise SummaryError(uri, f"could not be read ({type(e).__name__}: {e})") from None
    if len(data) > MAX_SUMMARY_BYTES:
        raise SummaryError(uri, f"is {len(data)} bytes, more than a summary can be")
    try:
        summary = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise SummaryError(uri, f"is not valid JSON ({e})") from None
    if not isinstance(summary, dict) or "stage" not in summary:
        raise SummaryError(uri, "is not a JSON object with a 'stage' key")
    return summary


class LogPump(threading.Thread):
    """Streams the master's log to ``sink`` and keeps the last lines for error messages."""

    def __init__(self, backend: Any, name: str, sink: Callable[[str], None]):
        super().__init__(name=f"logs-{name}", daemon=True)
        self.backend, self.job, self.sink = backend, name, sink
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)

    def run(self) -> None:
        try:
            for line in self.backend.logs(self.job, follow=True):
                self.tail.append(line)
                self.sink(line)
        except Exception as e:  # logs are a convenience; the job's status is the verdict
            log.warning("log streaming for %s stopped: %s", self.job, e)


def _on_sigterm(signum: int, frame: Any) -> None:
    # KeyboardInterrupt, not a normal exception: no library retry loop swallows it.
    raise KeyboardInterrupt(f"signal {signum}")


def _report(status: JobStatus) -> None:
    if status.phase == SUSPENDED:
        # Someone holds it (spec.suspend): say so, it is not stuck; no timeout runs meanwhile.
        # A job Kueue holds is Queued, reported by the wait itself (cluster._QueueWatch).
        log.warning("job %s is suspended (held until it is resumed): %s", status.name,
                    status.message)
    else:
        log.info("job %s: %s %s", status.name, status.phase, status.message)


def _asked(run_stopped: Callable[[], bool]) -> bool:
    """``run_stopped()``, False when it fails: a healthy job is never deleted on a guess (a
    stopped run's exit task, ``umt job gc`` and the job's deadline still stop it)."""
    try:
        return bool(run_stopped())
    except Exception as e:
        log.warning("could not tell whether the run was stopped (%s): keeping the job", e)
        return False


def run_training_job(stage: str, config: str | None = None, overrides: Sequence[str] = (), *,
                     nodes: int = 1, gpus_per_node: int = 8, node_pool: str = "gke-a100",
                     backend: str | Any = CLUSTER,
                     rendered_yaml_path: str | None = None,
                     log_sink: Callable[[str], None] | None = None,
                     wait_timeout: float | None = None, poll_interval: float = 15.0,
                     kubeconfig: str | None = None, context: str | None = None,
                     local_workdir: str = "runs/local-jobs", start_grace: float = 600.0,
                     unschedulable_timeout: float | None = None,
                     replace_failed: bool = False,
                     run_stopped: Callable[[], bool] | None = None,
                     **job_options: Any) -> JobResult:
    """Render, submit-or-adopt, stream, wait, read the summary; raise on failure; delete on
    cancellation.

    ``backend``: a registered backend's name (``cluster``: the cluster's default) or a backend.
    ``job_options`` are the other fields of :class:`TrainingJob` (image, namespace, name,
    run_id, output_uri, restart_policy, backoff_limit, gang_scheduling, allow_local_output,
    ``resolved``: the stage config the caller already loaded, ...). ``wait_timeout=None``
    waits as long as the job runs: bound jobs with ``active_deadline_seconds`` instead, which
    the controller enforces even if we are gone.
    ``start_grace`` / ``unschedulable_timeout``: see
    :class:`umt.launch.cluster.KubeJobBackend`.
    ``replace_failed``: a Failed job of the same name (an earlier attempt of this call) is
    deleted and run again instead of its failure being raised again.
    ``run_stopped``: asked once when we are signalled; True (the enclosing run was stopped on
    purpose) deletes the job, False leaves it running (:class:`JobDetachedError`). None: a
    signal always deletes it (``umt job``: Ctrl-C is the user's).
    """
    known = {f.name for f in fields(TrainingJob)}
    unknown = set(job_options) - known
    if unknown:
        raise TypeError(f"unknown job options: {sorted(unknown)}")
    if shares_filesystem(backend):
        job_options.setdefault("allow_local_output", True)
    req = TrainingJob(stage=stage, config=config, overrides=list(overrides), nodes=nodes,
                      gpus_per_node=gpus_per_node, node_pool=node_pool, **job_options)
    # "cluster": the kind the cluster runs (TrainJob where Trainer v2 is installed).
    backend = resolve(backend, kubeconfig=kubeconfig, context=context, namespace=req.namespace)
    kind = backend_class(backend)
    rendered = kind.render(req)
    name = rendered.name
    if rendered_yaml_path:
        Path(rendered_yaml_path).parent.mkdir(parents=True, exist_ok=True)
        Path(rendered_yaml_path).write_text(rendered.to_yaml())
    impl = make_backend(backend, namespace=req.namespace, kubeconfig=kubeconfig,
                        context=context, poll_interval=poll_interval,
                        local_workdir=local_workdir, start_grace=start_grace,
                        unschedulable_timeout=unschedulable_timeout)
    sink = log_sink or (lambda line: print(line, flush=True))

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    submitted = False
    try:
        submitted = True  # from here on the job may exist, even if submit() is interrupted
        submission = impl.submit(rendered.job, replace_failed=replace_failed)
        log.info("%s %s/%s %s", kind.kind, submission.namespace, name, submission.action)
        pump = LogPump(impl, name, sink)
        pump.start()
        try:
            status = impl.wait(name, timeout=wait_timeout, on_status=_report)
        except JobStartError as e:
            # Its pods would sit on their nodes (holding GPUs) until someone notices.
            log.error("deleting job %s: its pods cannot start", name)
            impl.delete(name)
            e.status.message += f" -- job {name} deleted so its pods free their nodes"
            raise JobStartError(e.status, permanent=e.permanent) from None
        # Let the last lines arrive (a container still running after the end, e.g. kept by
        # cleanPodPolicy None, would keep the stream open: do not wait for it for long).
        pump.join(timeout=10)
        if not status.succeeded:
            raise JobFailedError(status, list(pump.tail))
        if rendered.output_dir is None:
            raise SummaryError("<train.output_dir>/summary.json", "cannot be located: the job "
                               "names no train.output_dir (pass output_uri, or let the config "
                               "be loaded: validate_config=True)")
        summary = read_summary(rendered.output_dir, getattr(impl, "cwd", None))
        return JobResult(name, submission.namespace, status, submission.created,
                         rendered_yaml_path, getattr(submission, "replaced", False),
                         rendered.output_dir, summary)
    except KeyboardInterrupt:
        if in_main:  # a second SIGTERM must not cut the decision (or the delete) short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if not submitted:
            raise JobCancelledError("cancelled before the job was submitted") from None
        if run_stopped is not None and not _asked(run_stopped):
            log.warning("signalled, but the run was not stopped: leaving job %s running", name)
            raise JobDetachedError(name) from None
        log.warning("cancelled: deleting job %s", name)
        impl.delete(name)
        raise JobCancelledError(f"cancelled while running job {name}; the job was deleted"
                                ) from None
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
