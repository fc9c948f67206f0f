"""The cluster launcher against a Kubernetes API server on 127.0.0.1 (tests/kube_api_server.py).

The real ``kubernetes`` client talks HTTP to it; the server validates every PyTorchJob against
the Training Operator v1.9 CRD and webhook rules and every TrainJob against the Trainer v2.3.0
CRD and webhook rules, and moves jobs like the operator (or Trainer + JobSet + Kueue) does.
Tests taking ``job_kind`` run once per cluster backend (pytorchjob, trainjob).
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import pytest
from kube_api_server import Attempt, Stuck, kube_api, kubeconfig  # noqa: F401 - fixtures
from kube_kinds import job_kind  # noqa: F401 - fixture

from umt.launch import (
    InvalidJobError,
    JobCancelledError,
    JobFailedError,
    TrainingJob,
    run_training_job,
    to_dict,
)
from umt.launch.backend import JobStartError
from umt.launch.backends.pytorchjob import PyTorchJobBackend, build_pytorchjob
from umt.launch.backends.trainjob import TrainJobBackend, build_trainjob
from umt.launch.status import FAILED, QUEUED, RUNNING, SUCCEEDED

NS = "umt"


def job_request(**kw) -> TrainingJob:
    kw = {"validate_config": False, "nodes": 2, **kw}
    return TrainingJob(stage="stage1", config="tiny", gpus_per_node=8, node_pool="gke-a100",
                       **kw)


def run(kubeconfig, lines=None, **kw):
    kw.setdefault("validate_config", False)
    kw.setdefault("backend", "pytorchjob")
    # A folder the fake kubelet writes the stage's summary.json into (a PVC, as it were).
    kw.setdefault("output_uri", str(kubeconfig.parent / "out"))
    kw.setdefault("allow_local_output", True)
    return run_training_job("stage1", "tiny", nodes=2, gpus_per_node=8, node_pool="gke-a100",
                            kubeconfig=str(kubeconfig), poll_interval=0.02,
                            log_sink=(lines.append if lines is not None else lambda _: None),
                            **kw)


def test_submit_wait_and_stream_the_masters_log(job_kind, kube_api, kubeconfig, tmp_path):
    lines: list[str] = []
    result = run(kubeconfig, lines, run_id="run-1", rendered_yaml_path=str(tmp_path / "j.yaml"),
                 backend=job_kind.backend)
    assert result.created and result.namespace == NS and result.status.phase == SUCCEEDED
    name = result.name
    master = f"{name}-{job_kind.master}"
    assert lines == [f"{master} step 1", f"{master} step 2",
                     f"{master} done"]  # the master's, once each, in order
    stored = job_kind.job(name)
    assert stored["metadata"]["labels"]["umt/run-id"] == "run-1"
    final = {"pytorchjob": ["Created", "Running", "Succeeded"], "trainjob": ["Complete"]}
    assert [c["type"] for c in stored["status"]["conditions"]] == final[job_kind.backend]
    assert result.status.started_at and result.status.finished_at  # the backend's duration
    # What we sent is what we wrote as the artifact, and it asked for strict field checks.
    assert (tmp_path / "j.yaml").read_text().startswith(
        f"apiVersion: {job_kind.cls.api_version}")
    posts = [p for m, p in kube_api.requests if m == "POST" and job_kind.cls.plural in p]
    assert posts and "fieldValidation=Strict" in posts[0]


def test_resubmitting_adopts_the_existing_job(job_kind, kube_api, kubeconfig):
    kube_api.script = lambda job, pod: [Attempt(lines=["slow"], exit_code=0, line_interval=0.5)]
    backend = job_kind.make(kubeconfig, poll_interval=0.02)
    job = job_kind.build(job_request(run_id="run-2", output_uri=str(kubeconfig.parent / "out"),
                                     allow_local_output=True))
    assert backend.submit(job).created
    # e.g. KFP retrying the launcher step
    result = run(kubeconfig, run_id="run-2", backend=job_kind.backend)
    assert not result.created and result.name == job.metadata.name
    assert result.status.succeeded
    assert len(job_kind.jobs) == 1


def test_a_retry_re_raises_a_failed_jobs_failure_without_training_again(job_kind, kube_api,
                                                                        kubeconfig):
    """A KFP retry has the same run id, hence the same job name. A job that spent its own
    restarts (backoffLimit; JobSet's maxRestarts) must not be run again by KFP's retries: the
    retry fails at once, permanent."""
    kube_api.script = lambda job, pod: [Attempt(lines=["boom"], exit_code=1)]
    kw = dict(run_id="kfp-run", backend=job_kind.backend, **job_kind.crash_kw)
    with pytest.raises(JobFailedError, match=job_kind.crash_reason) as first:
        run(kubeconfig, **kw)
    assert first.value.permanent and not first.value.already_failed
    (name,) = [n for _, n in job_kind.jobs]
    uid = job_kind.job(name)["metadata"]["uid"]
    t0 = time.monotonic()
    with pytest.raises(JobFailedError, match="earlier attempt; not running it again") as retry:
        run(kubeconfig, **kw)
    assert time.monotonic() - t0 < 5
    assert retry.value.permanent and retry.value.already_failed
    assert job_kind.crash_reason in str(retry.value)  # the original reason, again
    assert job_kind.job(name)["metadata"]["uid"] == uid  # not replaced, not run again
    assert not [m for m, _ in kube_api.requests if m == "DELETE"]


def test_replace_failed_runs_a_failed_job_again(job_kind, kube_api, kubeconfig, caplog):
    """A user resubmitting (`umt job submit`, or replace_failed=True) wants it to run again."""
    failing = {"on": True}
    kube_api.script = lambda job, pod: [
        Attempt(lines=["boom"], exit_code=1) if failing["on"] else Attempt(lines=["ok"])]
    kw = ({"restart_policy": "Never"} if job_kind.backend == "pytorchjob" else {})
    with pytest.raises(JobFailedError, match="Master replica|max number of restarts"):
        run(kubeconfig, run_id="kfp-run", backend=job_kind.backend, **kw)
    failing["on"] = False  # the retry's pods succeed
    (name,) = [n for _, n in job_kind.jobs]
    old_uid = job_kind.job(name)["metadata"]["uid"]
    kube_api.deletion_delay = 0.3  # the old job's pods take a while to go
    with caplog.at_level(logging.INFO, logger="umt.launch"):
        result = run(kubeconfig, run_id="kfp-run", replace_failed=True,
                     backend=job_kind.backend, **kw)
    assert result.status.succeeded and result.created and result.replaced
    assert job_kind.job(name)["metadata"]["uid"] != old_uid
    assert "already exists and failed" in caplog.text
    # Foreground deletion (the old pods go before the job, their names are reused), then a
    # create that only happened once the old job was gone (409s while it was terminating).
    deletes = [p for m, p in kube_api.requests if m == "DELETE"]
    assert len(deletes) == 1 and "propagationPolicy=Foreground" in deletes[0]
    posts = [p for m, p in kube_api.requests if m == "POST" and job_kind.cls.plural in p]
    assert len(posts) == 3  # the first job, the 409, the replacement


def test_a_succeeded_job_is_adopted_not_run_again(job_kind, kube_api, kubeconfig, caplog):
    backend = job_kind.make(kubeconfig, poll_interval=0.02)
    job = job_kind.build(job_request(run_id="done"))
    assert backend.wait(backend.submit(job).name).succeeded
    uid = job_kind.job(job.metadata.name)["metadata"]["uid"]
    with caplog.at_level(logging.INFO, logger="umt.launch"):
        sub = backend.submit(job)
    assert not sub.created and not sub.replaced
    assert job_kind.job(job.metadata.name)["metadata"]["uid"] == uid
    assert "already succeeded: adopting it" in caplog.text
    assert not [m for m, _ in kube_api.requests if m == "DELETE"]


def test_a_job_still_being_deleted_is_waited_for(kube_api, kubeconfig, caplog):
    kube_api.script = lambda job, pod: [Attempt(lines=["forever"], exit_code=None)]
    backend = PyTorchJobBackend(kubeconfig=str(kubeconfig), poll_interval=0.02)
    job = build_pytorchjob(job_request(run_id="again"))
    first = backend.submit(job)
    kube_api.wait_for(lambda: kube_api.pods)
    kube_api.deletion_delay = 0.3
    backend.delete(first.name, propagation="Foreground")
    assert kube_api.job(first.name)["metadata"]["deletionTimestamp"]
    kube_api.script = lambda job, pod: [Attempt(lines=["ok"])]
    with caplog.at_level(logging.WARNING, logger="umt.launch"):
        sub = backend.submit(job)
    assert sub.created and "is being deleted" in caplog.text
    assert "deletionTimestamp" not in kube_api.job(sub.name)["metadata"]
    assert backend.wait(sub.name).succeeded


def test_a_different_job_with_the_same_name_is_not_adopted(job_kind, kube_api, kubeconfig):
    backend = job_kind.make(kubeconfig)
    backend.submit(job_kind.build(job_request(name="umt-mine")))
    with pytest.raises(RuntimeError, match=f"different {job_kind.cls.kind} named umt-mine"):
        backend.submit(job_kind.build(job_request(name="umt-mine", nodes=4)))


def test_a_failed_job_raises_with_reason_and_log_tail(job_kind, kube_api, kubeconfig):
    kube_api.script = lambda job, pod: [Attempt(lines=["loading", "CUDA error: boom"],
                                                exit_code=1, line_interval=0.2)]
    with pytest.raises(JobFailedError) as err:
        run(kubeconfig, backend=job_kind.backend, **job_kind.crash_kw)
    assert err.value.status.phase == FAILED
    assert job_kind.crash_reason in str(err.value)
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


def test_waiting_rides_out_api_errors(job_kind, kube_api, kubeconfig):
    kube_api.script = lambda job, pod: [Attempt(lines=["a", "b"], line_interval=0.1)]
    jobs = rf"/{job_kind.cls.plural}/"
    kube_api.fail_next += [("GET", jobs, 503), ("GET", jobs, 500), ("GET", jobs, 429)]
    assert run(kubeconfig, backend=job_kind.backend).status.succeeded
    assert not kube_api.fail_next  # all three were hit


def test_a_job_deleted_while_we_wait_fails_the_wait(job_kind, kube_api, kubeconfig):
    kube_api.script = lambda job, pod: [Attempt(lines=["forever"], exit_code=None)]
    backend = job_kind.make(kubeconfig, poll_interval=0.02)
    sub = backend.submit(job_kind.build(job_request()))
    threading.Timer(0.3, backend.delete, args=(sub.name,)).start()
    with pytest.raises(JobFailedError, match="deleted"):
        backend.wait(sub.name)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cancellation_deletes_the_job(job_kind, kube_api, kubeconfig, sig):
    """KFP terminating a run sends SIGTERM to the launcher; Ctrl-C is SIGINT."""
    kube_api.script = lambda job, pod: [Attempt(lines=["training"], exit_code=None)]
    main = threading.main_thread().ident

    def cancel_when_running() -> None:
        kube_api.wait_for(lambda: any(p.phase == RUNNING for p in kube_api.pods.values()))
        time.sleep(0.1)
        signal.pthread_kill(main, sig)

    threading.Thread(target=cancel_when_running, daemon=True).start()
    with pytest.raises(JobCancelledError, match="deleted"):
        run(kubeconfig, backend=job_kind.backend)
    assert job_kind.jobs == {} and kube_api.pods == {}
    assert signal.getsignal(signal.SIGTERM) is not None  # handler restored


def test_unknown_fields_are_rejected_by_the_server(job_kind, kube_api, kubeconfig):
    backend = job_kind.make(kubeconfig)
    body = to_dict(job_kind.build(job_request()))
    # typos: silently dropped without Strict
    if job_kind.backend == "pytorchjob":
        body["spec"]["runPolicy"]["backoffLimt"] = 3
    else:
        body["spec"]["trainer"]["numNode"] = 3
    with pytest.raises(InvalidJobError, match="backoffLimt|numNode"):
        backend.submit(body)
    assert job_kind.jobs == {}


def test_webhook_denials_are_invalid_jobs(kube_api, kubeconfig):
    backend = PyTorchJobBackend(kubeconfig=str(kubeconfig))
    body = to_dict(build_pytorchjob(job_request()))
    body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "name"] = "trainer"
    with pytest.raises(InvalidJobError, match="admission webhook.*pytorch"):
        backend.submit(body)


def test_trainjob_webhook_denials_are_invalid_jobs(kube_api, kubeconfig):
    kube_api.trainer.installed = True
    backend = TrainJobBackend(kubeconfig=str(kubeconfig))
    body = to_dict(build_trainjob(job_request()))
    body["spec"]["trainer"]["env"] = [{"name": "PET_NNODES", "value": "9"}]
    with pytest.raises(InvalidJobError, match="admission webhook.*reserved envs.*PET_NNODES"):
        backend.submit(body)
    # A TrainJob on a runtime the namespace does not have is refused too.
    kube_api.trainer.runtimes.clear()
    with pytest.raises(InvalidJobError, match="trainingRuntime must be created before"):
        backend.submit(build_trainjob(job_request()))


def test_missing_crd_and_missing_rbac_say_what_to_do(job_kind, kube_api, kubeconfig):
    backend = job_kind.make(kubeconfig)
    job = job_kind.build(job_request())
    job_kind.installed(False)
    with pytest.raises(RuntimeError, match="install the Training Operator|install Kubeflow "
                                           "Trainer"):
        backend.submit(job)
    job_kind.installed(True)
    kube_api.allowed.discard(("create", job_kind.cls.plural))
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


def test_list_and_logs_by_name(job_kind, kube_api, kubeconfig):
    backend = job_kind.make(kubeconfig, poll_interval=0.02)
    sub = backend.submit(job_kind.build(job_request(run_id="r9")))
    assert backend.wait(sub.name).succeeded
    assert [j["metadata"]["name"] for j in backend.list("umt/run-id=r9")] == [sub.name]
    assert backend.list("umt/run-id=other") == []
    assert list(backend.logs(sub.name, replica="worker"))[-1] == \
        f"{sub.name}-{job_kind.worker} done"
    # The job's pods carry the run's labels (gc and `kubectl get pods -l` find them).
    assert kube_api.pods and all(p.to_dict()["metadata"]["labels"].get("umt/run-id") in
                                 ("r9", None) for p in kube_api.pods.values())


def stuck_backend(kubeconfig, **kw) -> PyTorchJobBackend:
    return PyTorchJobBackend(kubeconfig=str(kubeconfig), poll_interval=0.02, **kw)


@pytest.mark.parametrize("stuck", [Stuck("ImagePullBackOff", 'Back-off pulling image "x:9"'),
                                   Stuck("CreateContainerConfigError",
                                         'secret "umt-s3" not found')])
def test_pods_that_can_never_start_fail_the_launch_on_every_backend(job_kind, kube_api,
                                                                    kubeconfig, stuck):
    kube_api.stuck = lambda job, name: stuck if name.endswith(job_kind.worker) else None
    kube_api.script = lambda job, name: [Attempt(lines=["waiting for peers"], exit_code=None)]
    with pytest.raises(JobStartError) as err:
        run(kubeconfig, start_grace=0.3, wait_timeout=20, backend=job_kind.backend)
    name = err.value.status.name
    container = "pytorch" if job_kind.backend == "pytorchjob" else "node"
    assert f"container {container} cannot start: {stuck.reason}: {stuck.message}" in \
        str(err.value)
    assert "deleted so its pods free their nodes" in str(err.value)
    assert job_kind.job(name) is None and kube_api.pods == {}


def test_a_queued_job_is_reported_as_queued_with_its_wait(job_kind, kube_api, kubeconfig,
                                                          caplog):
    """Kueue holds a job with a queue label suspended until its queue admits it: the launcher
    says it is queued (not failing, not stuck), how long it waited, and runs it once admitted."""
    kube_api.kueue_admit_after = kube_api.trainer.kueue_admit_after = 1.5
    phases: list[str] = []
    backend = job_kind.make(kubeconfig, poll_interval=0.05, unschedulable_warn_every=0.2,
                            start_grace=0.01)
    job = job_kind.build(job_request(kueue_queue="team-a"))
    assert to_dict(job)["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    sub = backend.submit(job)
    with caplog.at_level(logging.WARNING, logger="umt.launch"):
        status = backend.wait(sub.name, timeout=30, on_status=lambda s: phases.append(s.phase))
    assert status.succeeded and phases[0] == QUEUED and QUEUED not in phases[1:]
    waited = status.queued_seconds()
    assert status.queue == "team-a" and waited is not None and waited >= 1
    queued = [r.getMessage() for r in caplog.records if "queued in Kueue queue team-a" in
              r.getMessage()]
    assert len(queued) >= 2  # said when queued, and again while it waited
    assert any(f"admitted by Kueue queue team-a after {waited:.0f}s" in r.getMessage()
               for r in caplog.records)
    # GPU time starts at admission: the job's duration leaves the queue out.
    assert status.started_at == status.admitted_at


def test_a_trainjob_restarts_every_node_through_jobset_and_resumes(kube_api, kubeconfig):
    """A node that crashes fails the node Job; JobSet recreates every pod (new names), the
    launcher follows the new master pod's log, and the job completes."""
    kube_api.trainer.installed = True
    kube_api.script = lambda job, pod: [
        Attempt(lines=["step 1", "step 2", "crash"], exit_code=1, line_interval=0.5) if
        pod.endswith("node-1") else Attempt(lines=["step 1", "waiting"], exit_code=None,
                                            line_interval=0.5),
        Attempt(lines=["resumed", "done"], line_interval=0.2)]
    lines: list[str] = []
    result = run(kubeconfig, lines, backend="trainjob")
    assert result.status.succeeded
    # The first master pod's log, then its replacement's (not repeated).
    assert lines[0] == "step 1" and lines[-2:] == ["resumed", "done"]
    assert lines.count("resumed") == 1
    attempts = {p.to_dict()["metadata"]["labels"]["jobset.sigs.k8s.io/restart-attempt"]
                for p in kube_api.pods.values()}
    assert attempts == {"1"}  # every pod is of the restarted JobSet


@pytest.mark.parametrize("pod,stuck,want", [
    ("master-0", Stuck("ImagePullBackOff", 'Back-off pulling image "ghcr.io/x/umt-train:9"'),
     "pod {job}-master-0, container pytorch cannot start: ImagePullBackOff: Back-off pulling "
     'image "ghcr.io/x/umt-train:9"'),
    ("master-0", Stuck("ErrImagePull", "manifest unknown"), "ErrImagePull: manifest unknown"),
    ("worker-0", Stuck("CreateContainerConfigError", 'secret "umt-s3" not found'),
     'pod {job}-worker-0, container pytorch cannot start: CreateContainerConfigError: secret '
     '"umt-s3" not found'),
    ("worker-0", Stuck("ImagePullBackOff", "no such host", container="init-pytorch"),
     "container init-pytorch cannot start: ImagePullBackOff"),
])
def test_pods_that_can_never_start_fail_the_launch(kube_api, kubeconfig, pod, stuck, want):
    kube_api.stuck = lambda job, name: stuck if name.endswith(pod) else None
    # The others wait in the rendezvous for the pod that never comes.
    kube_api.script = lambda job, name: [Attempt(lines=["waiting for peers"], exit_code=None)]
    with pytest.raises(JobStartError) as err:
        run(kubeconfig, start_grace=0.3, wait_timeout=20)  # bounded: without the check, forever
    name = err.value.status.name
    assert want.format(job=name) in str(err.value)
    assert isinstance(err.value, JobFailedError)  # a KFP task fails on it like on any failure
    assert "deleted so its pods free their nodes" in str(err.value)
    assert kube_api.job(name) is None  # the launcher owned it: no pods left holding GPUs


def test_a_pull_error_that_clears_within_the_grace_period_is_fine(kube_api, kubeconfig):
    kube_api.stuck = lambda job, pod: Stuck("ErrImagePull", "i/o timeout", until=0.2)
    assert run(kubeconfig, start_grace=30, wait_timeout=20).status.succeeded


def test_an_invalid_image_name_fails_at_once(kube_api, kubeconfig):
    kube_api.stuck = lambda job, pod: Stuck("InvalidImageName", "couldn't parse image 'A:'")
    with pytest.raises(JobStartError, match="InvalidImageName"):
        run(kubeconfig, start_grace=3600, wait_timeout=20)


def test_crash_loops_are_the_operators_business(kube_api, kubeconfig):
    kube_api.stuck = lambda job, pod: Stuck("CrashLoopBackOff", "back-off 10s", until=0.3)
    assert run(kubeconfig, start_grace=0.01, wait_timeout=20).status.succeeded


def test_unschedulable_pods_warn_and_fail_only_past_the_optional_limit(kube_api, kubeconfig,
                                                                     caplog):
    msg = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    kube_api.stuck = lambda job, pod: Stuck("Unschedulable", msg, until=0.4)
    backend = stuck_backend(kubeconfig, start_grace=0.01, unschedulable_warn_every=0.1)
    sub = backend.submit(build_pytorchjob(job_request()))
    with caplog.at_level(logging.WARNING, logger="umt.launch"):
        assert backend.wait(sub.name, timeout=20).succeeded  # the autoscaler added nodes
    warnings = [r.getMessage() for r in caplog.records if "unschedulable" in r.getMessage()]
    assert len(warnings) >= 2 and msg in warnings[0] and "autoscaler" in warnings[0]
    assert any(f"{sub.name}-worker-0" in w for w in warnings)
    kube_api.stuck = lambda job, pod: Stuck("Unschedulable", msg)
    with pytest.raises(JobStartError, match=f"pod .*-master-0 could not be scheduled .*{msg}"):
        run(kubeconfig, unschedulable_timeout=0.3, run_id="never", wait_timeout=20)


def test_without_pod_permissions_waiting_still_works(kube_api, kubeconfig, caplog):
    kube_api.allowed.discard(("list", "pods"))
    kube_api.stuck = lambda job, pod: Stuck("ImagePullBackOff", "x", until=0.3)
    backend = stuck_backend(kubeconfig, start_grace=0.01)
    sub = backend.submit(build_pytorchjob(job_request()))
    with caplog.at_level(logging.WARNING, logger="umt.launch"):
        assert backend.wait(sub.name, timeout=20).succeeded
    assert "may not list pods" in caplog.text
