"""What ``run_training_job`` guarantees a pipeline component (issue 10) and a terminated run
(issue 12 §6), against the fake Kubernetes API server (tests/kube_api_server.py), the moto S3
server (tests/conftest.py) and small in-process backends:

* it returns the stage's ``summary.json`` (local folder or s3://), and a missing or broken one
  is an error naming its URI;
* a failed, deadline-exceeded or deleted job fails the call (never a success), ``permanent``;
* SIGTERM deletes the job at once (KFP gives the launcher about a second);
* ``delete_run_jobs`` / ``umt job gc`` delete a run's unfinished jobs and nothing else.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest
from kube_api_server import Attempt, Stuck, kube_api, kubeconfig  # noqa: F401 - fixtures
from kube_kinds import job_kind  # noqa: F401 - fixture
from typer.testing import CliRunner

from umt import storage
from umt.launch import (
    JobCancelledError,
    JobFailedError,
    JobStartError,
    JobStatus,
    Submission,
    SummaryError,
    TrainingJob,
    delete_run_jobs,
    run_training_job,
    to_dict,
)
from umt.launch.backends.pytorchjob import build_pytorchjob
from umt.launch.cli import job_app
from umt.launch.status import RUNNING

runner = CliRunner()


class OneShot:
    """A backend whose job 'runs' by writing ``payload`` as its summary.json (None: nothing)."""

    shares_filesystem = True

    def __init__(self, payload: bytes | None, cwd: str | None = None):
        self.payload, self.cwd, self.job = payload, cwd, None

    def submit(self, job, *, replace_failed=True):
        self.job = to_dict(job)
        return Submission(job.metadata.name, "local", created=True)

    def wait(self, name, timeout=None, on_status=None):
        command = self.job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"][
            "containers"][0]["command"]
        outs = [a.split("=", 1)[1] for a in command if a.startswith("train.output_dir=")]
        out = outs[-1] if outs else "runs/stage1-tiny"  # the tiny preset's own output_dir
        if self.cwd and not out.startswith(("/", "s3://")):
            out = str(Path(self.cwd) / out)
        if self.payload is not None:
            storage.write_bytes(storage.join(out, "summary.json"), self.payload)
        return JobStatus(name, "Succeeded", "done")

    def logs(self, name, follow=False, replica=None, index=0):
        return iter([])

    def delete(self, name):
        raise AssertionError("not cancelled")


SUMMARY = {"stage": "stage1", "steps": 40, "total_steps": 40, "final_loss": 0.61,
           "checkpoint": "/x/checkpoints/step_40.pt", "output_dir": "/x"}


def local_run(backend, **kw):
    kw.setdefault("validate_config", False)
    return run_training_job("stage1", "tiny", backend=backend, node_pool="cpu", gpus_per_node=0,
                            log_sink=lambda _: None, s3=None, **kw)


def test_the_result_carries_the_stages_summary(tmp_path):
    out = tmp_path / "run"
    result = local_run(OneShot(json.dumps(SUMMARY).encode()), output_uri=str(out))
    assert result.summary == SUMMARY
    assert result.output_dir == str(out)


def test_the_summary_is_read_from_s3(kube_api, kubeconfig, s3_bucket):
    """The cluster path end to end: the job's (fake) pods write summary.json to S3."""
    kube_api.s3_summaries = True
    result = run_training_job("stage1", "tiny", nodes=2, gpus_per_node=8, node_pool="gke-a100",
                              output_uri=f"{s3_bucket}/runs/s1", validate_config=False,
                              poll_interval=0.02, log_sink=lambda _: None)
    assert result.output_dir == f"{s3_bucket}/runs/s1"
    assert result.summary["checkpoint"] == f"{s3_bucket}/runs/s1/checkpoints/step_3.pt"
    assert result.summary["job"] == result.name and result.summary["stage"] == "stage1"


def test_the_output_dir_of_the_loaded_config_counts(tmp_path):
    """No --output: the preset's relative train.output_dir, under the replicas' cwd."""
    result = local_run(OneShot(json.dumps(SUMMARY).encode(), cwd=str(tmp_path)),
                       validate_config=True)
    assert result.output_dir == "runs/stage1-tiny"
    assert result.summary == SUMMARY
    assert (tmp_path / "runs" / "stage1-tiny" / "summary.json").exists()


@pytest.mark.parametrize("payload,problem", [
    (None, "does not exist"),
    (b"{not json", "is not valid JSON"),
    (b"[1, 2]", "is not a JSON object with a 'stage' key"),
])
def test_a_missing_or_broken_summary_is_an_error_naming_its_uri(tmp_path, payload, problem):
    out = tmp_path / "run"
    with pytest.raises(SummaryError) as err:
        local_run(OneShot(payload), output_uri=str(out))
    assert err.value.uri == str(out / "summary.json")
    assert f"{out / 'summary.json'} {problem}" in str(err.value)


def test_an_unreadable_s3_summary_names_the_object(s3_env, tmp_path):
    with pytest.raises(SummaryError, match=r"s3://no-such-bucket/run/summary.json could not be "
                                           r"read \(.*NoSuchBucket"):
        local_run(OneShot(None), output_uri="s3://no-such-bucket/run")


def test_an_unknown_output_dir_is_an_error_not_an_empty_summary():
    with pytest.raises(SummaryError, match="names no train.output_dir"):
        local_run(OneShot(b"{}"))


def test_a_job_past_its_active_deadline_fails_permanently(job_kind, kube_api, kubeconfig):
    """A stuck job (here: training forever) is failed by the operator at its rendered deadline,
    and its pods are gone; the launcher reports it, a retry must not start it again. (The
    default backend, "cluster", is the kind the cluster serves: TrainJob where Trainer v2
    is installed, beside the Training Operator here.)"""
    kube_api.script = lambda job, pod: [Attempt(lines=["stuck in a collective"], exit_code=None)]
    t0 = time.monotonic()
    with pytest.raises(JobFailedError, match="active longer than specified deadline|"
                                             "exceeded its active deadline") as err:
        run_training_job("stage1", "tiny", nodes=2, gpus_per_node=8, node_pool="gke-a100",
                         output_uri="s3://b/x", validate_config=False, poll_interval=0.02,
                         active_deadline_seconds=1, log_sink=lambda _: None)
    assert 1 <= time.monotonic() - t0 < 20
    assert err.value.permanent
    assert kube_api.pods == {}
    (name,) = [n for _, n in job_kind.jobs]  # the kind "cluster" chose
    assert err.value.status.name == name


def test_the_default_deadline_is_rendered():
    job = to_dict(build_pytorchjob(TrainingJob(stage="stage1", validate_config=False)))
    assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == 14 * 24 * 3600


def test_a_job_deleted_by_someone_else_fails_the_task(job_kind, kube_api, kubeconfig):
    kube_api.script = lambda job, pod: [Attempt(lines=["training"], exit_code=None)]
    backend = job_kind.make(kubeconfig, poll_interval=0.02)

    def delete_when_running():
        name = kube_api.wait_for(lambda: next(iter(job_kind.jobs), None))[1]
        kube_api.wait_for(lambda: kube_api.pods)
        backend.delete(name)

    threading.Thread(target=delete_when_running, daemon=True).start()
    with pytest.raises(JobFailedError, match="deleted while we waited") as err:
        run_training_job("stage1", "tiny", nodes=1, gpus_per_node=8, node_pool="gke-a100",
                         output_uri="s3://b/x", validate_config=False, backend=backend,
                         log_sink=lambda _: None)
    assert err.value.permanent


def test_sigterm_deletes_the_job_within_a_second(job_kind, kube_api, kubeconfig):
    """KFP terminating a run: SIGTERM reaches the launcher, which has ~1 s before it is gone."""
    kube_api.script = lambda job, pod: [Attempt(lines=["training"], exit_code=None)]
    main = threading.main_thread().ident
    sent: list[float] = []

    def terminate_when_running():
        kube_api.wait_for(lambda: any(p.phase == RUNNING for p in kube_api.pods.values()))
        time.sleep(0.3)  # inside the poll loop's sleep, as a real launcher mostly is
        sent.append(time.monotonic())
        signal.pthread_kill(main, signal.SIGTERM)

    threading.Thread(target=terminate_when_running, daemon=True).start()
    with pytest.raises(JobCancelledError, match="deleted"):
        run_training_job("stage1", "tiny", nodes=2, gpus_per_node=8, node_pool="gke-a100",
                         output_uri="s3://b/x", validate_config=False, poll_interval=2.0,
                         log_sink=lambda _: None, backend=job_kind.backend)
    (deleted_at,) = [t for t, m, p in kube_api.request_times if m == "DELETE"]
    assert deleted_at - sent[0] < 1.0
    assert job_kind.jobs == {} and kube_api.pods == {}


@pytest.mark.parametrize("stuck,permanent", [
    (Stuck("InvalidImageName", "couldn't parse image"), True),  # no retry fixes the spec
    (Stuck("ImagePullBackOff", "registry unavailable"), False),  # a retry may work
])
def test_pods_that_cannot_start_say_whether_a_retry_could_help(job_kind, kube_api, kubeconfig,
                                                                stuck, permanent):
    kube_api.stuck = lambda job, pod: stuck
    with pytest.raises(JobStartError) as err:
        run_training_job("stage1", "tiny", nodes=1, gpus_per_node=8, node_pool="gke-a100",
                         output_uri="s3://b/x", validate_config=False, poll_interval=0.02,
                         start_grace=0.2, wait_timeout=20, log_sink=lambda _: None,
                         backend=job_kind.backend)
    assert err.value.permanent is permanent


def _submit(backend, run_id: str, stage_name: str) -> str:
    job = backend.render(TrainingJob(stage="stage1", config="tiny", gpus_per_node=8,
                                     run_id=run_id, name=stage_name, validate_config=False)).job
    return backend.submit(job).name


def test_delete_run_jobs_deletes_the_runs_unfinished_jobs_only(job_kind, kube_api, kubeconfig):
    backend = job_kind.make(kubeconfig, poll_interval=0.02)
    kube_api.script = lambda job, pod: [Attempt(lines=["done"], exit_code=0)]
    finished = _submit(backend, "run a", "umt-done")
    assert backend.wait(finished, timeout=20).succeeded
    kube_api.script = lambda job, pod: [Attempt(lines=["training"], exit_code=None)]
    running = _submit(backend, "run a", "umt-running")
    other_run = _submit(backend, "run-a", "umt-other")  # sanitises like 'run a': must survive
    # gc by run label, of the kind the cluster runs ("cluster": TrainJob where served)
    assert delete_run_jobs("run a", kubeconfig=str(kubeconfig)) == [running]
    assert {n for _, n in job_kind.jobs} == {finished, other_run}
    assert delete_run_jobs("run a", kubeconfig=str(kubeconfig)) == []  # idempotent
    assert delete_run_jobs("run a", include_finished=True, backend=backend) == [finished]
    with pytest.raises(ValueError, match="--namespace 'Bad NS'"):
        delete_run_jobs("run a", namespace="Bad NS")


def test_umt_job_gc(job_kind, kube_api, kubeconfig):
    backend = job_kind.make(kubeconfig, poll_interval=0.02)
    kube_api.script = lambda job, pod: [Attempt(lines=["training"], exit_code=None)]
    name = _submit(backend, "3f1c-kfp-run", "umt-stage1-x")
    args = ["gc", "--run-id", "3f1c-kfp-run", "--backend", job_kind.backend]
    result = runner.invoke(job_app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{job_kind.backend}/{name} deleted"
    assert job_kind.jobs == {} and kube_api.pods == {}
    again = runner.invoke(job_app, args)
    assert again.exit_code == 0 and f"no unfinished {job_kind.cls.plural}" in again.output
    bad = runner.invoke(job_app, ["gc", "--run-id", "x", "--namespace", "Bad NS"])
    assert bad.exit_code == 2 and "--namespace 'Bad NS'" in bad.output
