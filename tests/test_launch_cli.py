"""``umt job ...`` and ``umt doctor`` through their typer commands, against the fake API server
(tests/kube_api_server.py) and the moto S3 server (tests/conftest.py)."""

from __future__ import annotations

import typer
import yaml
from kube_api_server import Attempt, kube_api, kubeconfig  # noqa: F401 - fixtures
from typer.testing import CliRunner

from umt.launch.cli import doctor, job_app
from umt.launch.doctor import run_checks
from umt.launch.validate import pytorchjob_errors

runner = CliRunner()
RENDER = ["render", "stage1", "--config", "tiny", "--nodes", "2", "--gpus-per-node", "8",
          "--node-pool", "gke-a100", "train.steps=5"]


def doctor_app() -> typer.Typer:
    app = typer.Typer()
    app.command("doctor")(doctor)
    app.command("unused")(lambda: None)  # two commands: typer keeps 'doctor' as a subcommand
    return app


def test_render_prints_a_valid_job_for_kubectl():
    result = runner.invoke(job_app, RENDER + ["--run-id", "r1", "--output", "s3://b/run"])
    assert result.exit_code == 0, result.output
    job = yaml.safe_load(result.stdout)
    assert pytorchjob_errors(job) == []
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["torchrun", "-m", "umt.train.stage1", "--config", "tiny",
                                    "train.steps=5", "train.output_dir=s3://b/run"]
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    # Deterministic: the same command renders the same job (and name).
    assert runner.invoke(job_app, RENDER + ["--run-id", "r1", "--output", "s3://b/run"]
                         ).stdout == result.stdout


def test_render_rejects_a_bad_config_before_anything_runs():
    result = runner.invoke(job_app, RENDER + ["train.stepz=5"])
    assert result.exit_code == 2
    assert "stepz" in result.output
    result = runner.invoke(job_app, RENDER[:-1] + ["--gpus-per-node", "32"])
    assert result.exit_code == 2 and "at most 16 GPUs" in result.output


def test_render_inlines_a_local_config_file(tmp_path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("train:\n  steps: 7\n  output_dir: s3://b/x\nmodel:\n  num_frames: 4\n")
    result = runner.invoke(job_app, ["render", "stage1", "--config", str(cfg),
                                     "--gpus-per-node", "0", "--node-pool", "cpu"])
    assert result.exit_code == 0, result.output
    job = yaml.safe_load(result.stdout)
    command = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "command"]
    assert "--config" not in command  # the file does not exist inside the container
    assert {"train.steps=7", "train.output_dir=s3://b/x", "model.num_frames=4"} <= set(command)


def test_submit_wait_logs_status_delete(kube_api, kubeconfig):
    submitted = runner.invoke(job_app, ["submit", *RENDER[1:], "--run-id", "cli"])
    assert submitted.exit_code == 0, submitted.output
    name = submitted.stdout.strip().splitlines()[-1]
    assert kube_api.job(name)["metadata"]["labels"]["umt/run-id"] == "cli"
    waited = runner.invoke(job_app, ["wait", name, "--poll-interval", "0.05"])
    assert waited.exit_code == 0, waited.output
    assert f"{name}-master-0 done" in waited.stdout
    logs = runner.invoke(job_app, ["logs", name, "--replica", "worker"])
    assert logs.stdout.splitlines()[-1] == f"{name}-worker-0 done"
    status = runner.invoke(job_app, ["status", name])
    assert status.stdout.startswith(f"{name}: Succeeded")
    again = runner.invoke(job_app, ["submit", *RENDER[1:], "--run-id", "cli"])
    assert again.exit_code == 0 and "adopted" in again.output
    assert runner.invoke(job_app, ["delete", name]).exit_code == 0
    assert kube_api.job(name) is None


def test_wait_exits_1_when_the_job_fails(kube_api, kubeconfig):
    kube_api.script = lambda job, pod: [Attempt(lines=["Traceback: boom"], exit_code=1,
                                                line_interval=0.1)]
    name = runner.invoke(job_app, ["submit", *RENDER[1:], "--restart-policy", "Never"]
                         ).stdout.strip()
    result = runner.invoke(job_app, ["wait", name, "--poll-interval", "0.05"])
    assert result.exit_code == 1
    assert "failed" in result.output and "Traceback: boom" in result.output


def test_doctor_passes_on_a_ready_cluster_and_bucket(kube_api, kubeconfig, s3_bucket):
    checks = run_checks(output_uri=f"{s3_bucket}/runs")
    assert [(c.name, c.ok) for c in checks] == [("cluster", True), ("PyTorchJob CRD", True),
                                               ("RBAC", True), ("output", True)]
    reviews = [p for m, p in kube_api.requests if "selfsubjectaccessreviews" in p]
    assert len(reviews) == 8  # one question per verb the launcher needs
    result = runner.invoke(doctor_app(), ["doctor", "--output", f"{s3_bucket}/runs"])
    assert result.exit_code == 0, result.output


def test_doctor_names_each_problem(kube_api, kubeconfig, s3_env):
    kube_api.crd_installed = False
    kube_api.allowed -= {("create", "pytorchjobs"), ("get", "pods/log")}
    checks = {c.name: c for c in run_checks(output_uri="s3://no-such-bucket/runs")}
    assert not checks["PyTorchJob CRD"].ok and "training-operator" in checks[
        "PyTorchJob CRD"].detail
    assert not checks["RBAC"].ok
    assert "create pytorchjobs" in checks["RBAC"].detail
    assert "get pods/log" in checks["RBAC"].detail
    assert not checks["output"].ok and "no-such-bucket" in checks["output"].detail
    result = runner.invoke(doctor_app(), ["doctor", "--output", "s3://no-such-bucket/x"])
    assert result.exit_code == 1 and "FAIL" in result.output


def test_doctor_uses_api_discovery_when_crds_are_not_readable(kube_api, kubeconfig):
    kube_api.crd_readable = False
    crd = {c.name: c for c in run_checks()}["PyTorchJob CRD"]
    assert crd.ok and "discovery" in crd.detail


def test_doctor_without_a_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    checks = run_checks(output_uri=str(tmp_path / "out"))
    assert [(c.name, c.ok) for c in checks] == [("cluster", False), ("output", True)]
