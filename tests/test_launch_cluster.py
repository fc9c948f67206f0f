"""The cluster launcher against a Kubernetes API server on 127.0.0.1 (tests/kube_api_server.py).

The real ``kubernetes`` client talks HTTP to it; the server validates every PyTorchJob against
the Training Operator v1.9 CRD and webhook rules and moves jobs like the operator does.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest
from kube_api_server import Attempt, kube_api, kubeconfig  # noqa: F401 - fixtures

from umt.launch import (
    InvalidJobError,
    JobCancelledError,
    JobFailedError,
    TrainingJob,
    build_pytorchjob,
    run_training_job,
    to_dict,
)
from umt.launch.cluster import PyTorchJobBackend
from umt.launch.status import FAILED, RUNNING, SUCCEEDED

NS = "umt"


def job_request(**kw) -> TrainingJob:
    kw = {"validate_config": False, "nodes": 2, **kw}
    return TrainingJob(stage="stage1", config="tiny", gpus_per_node=8, node_pool="gke-a100",
                       **kw)


def run(kubeconfig, lines=None, **kw):
    kw.setdefault("validate_config", False)
    return run_training_job("stage1", "tiny", nodes=2, gpus_per_node=8, node_pool="gke-a100",
                            kubeconfig=str(kubeconfig), poll_interval=0.02,
                            log_sink=(lines.append if lines is not None else lambda _: None),
                            **kw)


def test_submit_wait_and_stream_the_masters_log(kube_api, kubeconfig, tmp_path):
    lines: list[str] = []
    result = run(kubeconfig, lines, run_id="run-1", rendered_yaml_path=str(tmp_path / "j.yaml"))
    assert result.created and result.namespace == NS and result.status.phase == SUCCEEDED
    name = result.name
    assert lines == [f"{name}-master-0 step 1", f"{name}-master-0 step 2",
                     f"{name}-master-0 done"]  # the master's, once each, in order
    stored = kube_api.job(name)
    assert stored["metadata"]["labels"]["umt/run-id"] == "run-1"
    assert [c["type"] for c in stored["status"]["conditions"]] == ["Created", "Running",
                                                                   "Succeeded"]
    # What we sent is what we wrote as the artifact, and it asked for strict field checks.
    assert (tmp_path / "j.yaml").read_text().startswith("apiVersion: kubeflow.org/v1")
    posts = [p for m, p in kube_api.requests if m == "POST" and "pytorchjobs" in p]
    assert posts and "fieldValidation=Strict" in posts[0]


def test_resubmitting_adopts_the_existing_job(kube_api, kubeconfig):
    kube_api.script = lambda job, pod: [Attempt(lines=["slow"], exit_code=0, line_interval=0.5)]
    backend = PyTorchJobBackend(kubeconfig=str(kubeconfig), poll_interval=0.02)
    job = build_pytorchjob(job_request(run_id="run-2"))
    assert backend.submit(job).created
    result = run(kubeconfig, run_id="run-2")  # e.g. KFP retrying the launcher step
    assert not result.created and result.name == job.metadata.name
    assert result.status.succeeded
    assert len(kube_api.jobs) == 1


def test_a_different_job_with_the_same_name_is_not_adopted(kube_api, kubeconfig):
    backend = PyTorchJobBackend(kubeconfig=str(kubeconfig))
    backend.submit(build_pytorchjob(job_request(name="umt-mine")))
    with pytest.raises(RuntimeError, match="different PyTorchJob named umt-mine"):
        backend.submit(build_pytorchjob(job_request(name="umt-mine", nodes=4)))


def test_a_failed_job_raises_with_reason_and_log_tail(kube_api, kubeconfig):
    kube_api.script = lambda job, pod: [Attempt(lines=["loading", "CUDA error: boom"],
                                                exit_code=1, line_interval=0.2)]
    with pytest.raises(JobFailedError) as err:
        run(kubeconfig, backoff_limit=3)
    assert err.value.status.phase == FAILED
    assert "backoff limit" in str(err.value)
    assert "CUDA error: boom" in str(err.value)  # the log tail travels with the error


def test_never_restart_policy_fails_on_the_first_crash(kube_api, kubeconfig):
    kube_api.script = lambda job, pod: [Attempt(lines=["x"], exit_code=2)]
    with pytest.raises(JobFailedError, match="Master replica"):
        run(kubeconfig, restart_policy="Never")


def test_exit_code_policy_recreates_pods_killed_by_signals(kube_api, kubeconfig):
    attempts = {}

    def script(job, pod):
        # First run of each pod is SIGKILLed (137), the second succeeds.
        n = attempts[pod] = attempts.get(pod, 0) + 1
        return [Attempt(lines=[f"attempt {n}"], exit_code=137), Attempt(lines=["ok"])]

    kube_api.script = script
    lines: list[str] = []
    result = run(kubeconfig, lines, restart_policy="ExitCode")
    assert result.status.succeeded and lines[-1] == "ok"


def test_waiting_rides_out_api_errors(kube_api, kubeconfig):
    kube_api.script = lambda job, pod: [Attempt(lines=["a", "b"], line_interval=0.1)]
    kube_api.fail_next += [("GET", r"/pytorchjobs/", 503), ("GET", r"/pytorchjobs/", 500),
                           ("GET", r"/pytorchjobs/", 429)]
    assert run(kubeconfig).status.succeeded
    assert not kube_api.fail_next  # all three were hit


def test_a_job_deleted_while_we_wait_fails_the_wait(kube_api, kubeconfig):
    kube_api.script = lambda job, pod: [Attempt(lines=["forever"], exit_code=None)]
    backend = PyTorchJobBackend(kubeconfig=str(kubeconfig), poll_interval=0.02)
    sub = backend.submit(build_pytorchjob(job_request()))
    threading.Timer(0.3, backend.delete, args=(sub.name,)).start()
    with pytest.raises(JobFailedError, match="deleted"):
        backend.wait(sub.name)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cancellation_deletes_the_job(kube_api, kubeconfig, sig):
    """KFP terminating a run sends SIGTERM to the launcher; Ctrl-C is SIGINT."""
    kube_api.script = lambda job, pod: [Attempt(lines=["training"], exit_code=None)]
    main = threading.main_thread().ident

    def cancel_when_running() -> None:
        kube_api.wait_for(lambda: any(
            c["type"] == RUNNING for j in kube_api.jobs.values()
            for c in j.get("status", {}).get("conditions", [])))
        time.sleep(0.1)
        signal.pthread_kill(main, sig)

    threading.Thread(target=cancel_when_running, daemon=True).start()
    with pytest.raises(JobCancelledError, match="deleted"):
        run(kubeconfig)
    assert kube_api.jobs == {} and kube_api.pods == {}
    assert signal.getsignal(signal.SIGTERM) is not None  # handler restored


def test_unknown_fields_are_rejected_by_the_server(kube_api, kubeconfig):
    backend = PyTorchJobBackend(kubeconfig=str(kubeconfig))
    body = to_dict(build_pytorchjob(job_request()))
    body["spec"]["runPolicy"]["backoffLimt"] = 3  # typo: silently dropped without Strict
    with pytest.raises(InvalidJobError, match="backoffLimt"):
        backend.submit(body)
    assert kube_api.jobs == {}


def test_webhook_denials_are_invalid_jobs(kube_api, kubeconfig):
    backend = PyTorchJobBackend(kubeconfig=str(kubeconfig))
    body = to_dict(build_pytorchjob(job_request()))
    body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "name"] = "trainer"
    with pytest.raises(InvalidJobError, match="admission webhook.*pytorch"):
        backend.submit(body)


def test_missing_crd_and_missing_rbac_say_what_to_do(kube_api, kubeconfig):
    backend = PyTorchJobBackend(kubeconfig=str(kubeconfig))
    job = build_pytorchjob(job_request())
    kube_api.crd_installed = False
    with pytest.raises(RuntimeError, match="install the Training Operator"):
        backend.submit(job)
    kube_api.crd_installed = True
    kube_api.allowed.discard(("create", "pytorchjobs"))
    with pytest.raises(PermissionError, match="umt doctor"):
        backend.submit(job)


def test_logs_follow_a_restarted_container_without_repeating(kube_api, kubeconfig):
    # The first container crashes before the launcher's first connection: its lines come
    # from the previous container's log.
    kube_api.script = lambda job, pod: [Attempt(lines=["a1", "a2"], exit_code=1,
                                                line_interval=0.0),
                                        Attempt(lines=["b1", "b2"], exit_code=0,
                                                line_interval=0.2)]
    lines: list[str] = []
    result = run(kubeconfig, lines, backoff_limit=5)
    assert result.status.succeeded
    assert lines == ["a1", "a2", "b1", "b2"]


def test_list_and_logs_by_name(kube_api, kubeconfig):
    backend = PyTorchJobBackend(kubeconfig=str(kubeconfig), poll_interval=0.02)
    sub = backend.submit(build_pytorchjob(job_request(run_id="r9")))
    assert backend.wait(sub.name).succeeded
    assert [j["metadata"]["name"] for j in backend.list("umt/run-id=r9")] == [sub.name]
    assert backend.list("umt/run-id=other") == []
    assert list(backend.logs(sub.name, replica="worker"))[-1] == f"{sub.name}-worker-0 done"
