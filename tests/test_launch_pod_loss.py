"""Issue 16, item 1: a lost or drained launcher pod never kills a healthy training job, and a
retry or a rerun adopts it; a terminated run still stops its jobs.

Against the fake Kubernetes API server (tests/kube_api_server.py), which serves the run's Argo
Workflow the way the backend leaves it (read in the KFP 2.17 and Argo sources,
``umt/pipeline/run_state.py``): KFP's Terminate patches ``spec.activeDeadlineSeconds: 0`` and
then Argo SIGTERMs the launcher; a node drain, an autoscaler scale-down or ``kubectl delete
pod`` SIGTERMs it with the Workflow untouched. Argo's side (which node is retried, whether the
exit handler runs) is not modelled here: docs/pipelines.md says what only a cluster shows.
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from kube_api_server import Attempt, kube_api, kubeconfig, now_rfc3339  # noqa: F401 - fixtures

from umt.launch import (
    JobCancelledError,
    JobDetachedError,
    JobFailedError,
    TrainingJob,
    delete_run_jobs,
    run_training_job,
)
from umt.launch.backends.pytorchjob import PyTorchJobBackend, build_pytorchjob
from umt.launch.status import RUNNING
from umt.pipeline import run_state, steps
from umt.pipeline.run_state import read_run_state, stop_jobs_on_signal, workflow_state

WORKFLOW = "umt-full-x7k2p"
OUT = {}  # the output folder of the test's stage (a local folder the fake writes summaries to)


def workflow(spec: dict | None = None, **status) -> dict:
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
            "metadata": {"name": WORKFLOW, "namespace": "umt"}, "spec": spec or {},
            "status": {"phase": "Running", "startedAt": now_rfc3339(), **status}}


@pytest.fixture
def in_run(kube_api, kubeconfig, monkeypatch, tmp_path):
    """This process is a launcher pod of run 'run-a' (its Workflow is running)."""
    OUT["dir"] = str(tmp_path / "runs" / "stage1-0123456789")
    monkeypatch.setenv(run_state.WORKFLOW_ENV, WORKFLOW)
    monkeypatch.setenv("KFP_RUN_ID", "run-a")
    kube_api.workflows[("umt", WORKFLOW)] = workflow()
    return kube_api


def launch(run_id="run-a", **kw):
    kw.setdefault("poll_interval", 0.05)
    return run_training_job("stage1", "tiny", nodes=2, gpus_per_node=8, node_pool="gke-a100",
                            output_uri=OUT["dir"], allow_local_output=True,
                            validate_config=False, run_id=run_id,
                            run_stopped=stop_jobs_on_signal, log_sink=lambda _: None, **kw)


def sigterm_when_running(api, before=None):
    """SIGTERM this process once a job runs, as Argo's emissary forwards it; ``before`` runs
    first (KFP's Terminate patching the Workflow)."""
    main = threading.main_thread().ident
    sent: list[float] = []

    def go():
        api.wait_for(lambda: any(c["type"] == RUNNING for j in api.jobs.values()
                                 for c in j.get("status", {}).get("conditions", [])))
        time.sleep(0.2)
        if before:
            before()
        sent.append(time.monotonic())
        signal.pthread_kill(main, signal.SIGTERM)

    threading.Thread(target=go, daemon=True).start()
    return sent


def test_a_drained_launcher_leaves_the_job_running_and_its_retry_adopts_it(in_run):
    api = in_run
    # Trains for a few seconds: long enough to outlive the first launcher.
    api.script = lambda job, pod: [Attempt(lines=["step"] * 300, line_interval=0.01)]
    sigterm_when_running(api)
    with pytest.raises(JobDetachedError, match="left running") as err:
        launch()
    name = err.value.name
    assert [m for _, m, _ in api.request_times if m == "DELETE"] == []
    job = api.job(name)
    assert job is not None and not any(c["type"] in ("Succeeded", "Failed")
                                       for c in job["status"]["conditions"])
    uid = job["metadata"]["uid"]
    # The retried attempt (same run, same folder, so the same name) adopts it.
    result = launch()
    assert (result.name, result.created, result.status.succeeded) == (name, False, True)
    assert api.job(name)["metadata"]["uid"] == uid  # one job all along: one writer


def test_a_terminated_run_deletes_its_job_within_a_second(in_run):
    api = in_run
    api.script = lambda job, pod: [Attempt(lines=["training"], exit_code=None)]

    def kfp_terminate():  # resource_manager.go TerminateWorkflow: a merge patch of the spec
        api.workflows[("umt", WORKFLOW)]["spec"]["activeDeadlineSeconds"] = 0

    sent = sigterm_when_running(api, before=kfp_terminate)
    with pytest.raises(JobCancelledError, match="deleted"):
        launch()
    (deleted_at,) = [t for t, m, _ in api.request_times if m == "DELETE"]
    assert deleted_at - sent[0] < 1.0
    assert api.jobs == {} and api.pods == {}


def test_when_the_run_cannot_be_read_the_job_is_kept(in_run):
    api = in_run
    api.allowed.discard(("get", "workflows"))
    api.script = lambda job, pod: [Attempt(lines=["training"], exit_code=None)]
    sigterm_when_running(api)
    with pytest.raises(JobDetachedError):
        launch()
    assert len(api.jobs) == 1


def test_a_rerun_adopts_the_running_job_of_the_earlier_run_and_takes_it_over(in_run):
    """Run a lost its launcher (no retry: the run failed, its exit task kept the job); run b,
    a rerun, finds the job by its folder's name, adopts it, and owns it for gc."""
    api = in_run
    backend = PyTorchJobBackend(kubeconfig=None, poll_interval=0.05)
    api.script = lambda job, pod: [Attempt(lines=["step"] * 300, line_interval=0.01)]
    first = backend.submit(build_pytorchjob(TrainingJob(
        stage="stage1", config="tiny", nodes=2, output_uri=OUT["dir"], run_id="run-a",
        allow_local_output=True, validate_config=False)))
    api.wait_for(lambda: api.pods)
    result = launch(run_id="run-b")
    assert (result.name, result.created) == (first.name, False)
    assert api.job(first.name)["metadata"]["labels"]["umt/run-id"] == "run-b"
    assert any(m == "PATCH" for _, m, _ in api.request_times)


def test_a_rerun_replaces_the_failed_job_of_the_earlier_run_but_a_retry_does_not(in_run):
    api = in_run
    api.script = lambda job, pod: [Attempt(lines=["CUDA error"], exit_code=1)]
    with pytest.raises(JobFailedError):
        launch(run_id="run-a", backoff_limit=0)
    with pytest.raises(JobFailedError, match="in an earlier attempt") as err:
        launch(run_id="run-a", backoff_limit=0)  # a retry of the same run: not again
    assert err.value.already_failed
    api.script = lambda job, pod: [Attempt(lines=["ok"])]
    result = launch(run_id="run-b", backoff_limit=0)  # a rerun: a deliberate new attempt
    assert result.created and result.status.succeeded
    assert result.name == err.value.status.name


def test_cleanup_deletes_only_when_the_run_was_stopped(in_run, monkeypatch):
    api = in_run
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # a pod: the cluster backend
    monkeypatch.delenv("UMT_JOB_BACKEND", raising=False)
    backend = PyTorchJobBackend(kubeconfig=None, poll_interval=0.05)
    api.script = lambda job, pod: [Attempt(lines=["training"], exit_code=None)]
    name = backend.submit(build_pytorchjob(TrainingJob(
        stage="stage1", config="tiny", output_uri=OUT["dir"], run_id="run-a",
        allow_local_output=True, validate_config=False))).name
    # The run failed (a launcher lost, not retried): the healthy job is kept.
    api.workflows[("umt", WORKFLOW)]["status"]["phase"] = "Running"
    message = steps.cleanup("FAILED")
    assert "kept 1 unfinished jobs" in message and name in message and "rerun" in message
    assert api.job(name) is not None
    # The run was terminated: its jobs go.
    api.workflows[("umt", WORKFLOW)]["spec"]["activeDeadlineSeconds"] = 0
    assert steps.cleanup("FAILED") == f"deleted 1 unfinished jobs of run run-a: {name}"
    assert api.job(name) is None


def test_cleanup_deletes_when_the_runs_state_is_unknown(in_run, monkeypatch):
    api = in_run
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.delenv("UMT_JOB_BACKEND", raising=False)
    api.allowed.discard(("get", "workflows"))
    api.script = lambda job, pod: [Attempt(lines=["training"], exit_code=None)]
    PyTorchJobBackend(kubeconfig=None).submit(build_pytorchjob(TrainingJob(
        stage="stage1", config="tiny", output_uri=OUT["dir"], run_id="run-a",
        allow_local_output=True, validate_config=False)))
    assert steps.cleanup("FAILED").startswith("deleted 1 unfinished jobs")
    assert delete_run_jobs("run-a") == []


def test_read_run_state(in_run, monkeypatch):
    api = in_run
    assert read_run_state().state == "running"
    del api.workflows[("umt", WORKFLOW)]
    assert read_run_state().stopped  # the run was deleted
    api.allowed.discard(("get", "workflows"))
    unknown = read_run_state()
    assert unknown.state == "unknown" and "manifests/base/role.yaml" in unknown.reason
    monkeypatch.delenv(run_state.WORKFLOW_ENV)
    assert read_run_state().state == "unknown"
    monkeypatch.setenv(run_state.ARGO_WORKFLOW_ENV, WORKFLOW)  # Argo's own variable works too
    assert "403" in read_run_state().reason


def test_workflow_state_reads_every_way_a_run_is_stopped():
    now = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    started = (now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def state(spec=None, meta=None, **status):
        wf = {"metadata": meta or {}, "spec": spec or {},
              "status": {"phase": "Running", "startedAt": started, **status}}
        return workflow_state(wf, now)

    assert state().state == "running"
    assert state(phase="Failed").state == "running"  # failed, not stopped: the exit task runs
    assert state({"activeDeadlineSeconds": 0}).stopped  # KFP's Terminate
    assert state({"shutdown": "Stop"}).stopped and state({"shutdown": "Terminate"}).stopped
    assert state({"activeDeadlineSeconds": 3600}).stopped  # its own deadline has passed
    assert state({"activeDeadlineSeconds": 3 * 3600}).state == "running"
    assert state(meta={"deletionTimestamp": started}).stopped
