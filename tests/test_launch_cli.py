"""``umt job ...`` and ``umt doctor`` through their typer commands, against the fake API server
(tests/kube_api_server.py) and the moto S3 server (tests/conftest.py)."""

from __future__ import annotations

import typer
import yaml
from kube_api_server import Attempt, Stuck, kube_api, kubeconfig  # noqa: F401 - fixtures
from kube_kinds import job_kind  # noqa: F401 - fixture
from typer.testing import CliRunner

from umt.launch.backends.pytorchjob import pytorchjob_errors
from umt.launch.cli import doctor, job_app
from umt.launch.doctor import run_checks

runner = CliRunner()
RENDER = ["render", "stage1", "--config", "tiny", "--nodes", "2", "--gpus-per-node", "8",
          "--node-pool", "gke-a100", "train.steps=5"]
OUT = ["--output", "s3://b/run"]  # cluster jobs need shared output storage


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


def test_one_run_writing_two_folders_gets_two_job_names():
    """Issue 16.3: a component run twice in one run (other data or config: another folder)
    must not adopt (or fail on) the first one's job; the same folder is the same job."""
    def name(*args):
        result = runner.invoke(job_app, RENDER + ["--run-id", "R", *args])
        assert result.exit_code == 0, result.output
        return yaml.safe_load(result.stdout)["metadata"]["name"]

    a = name("--output", "s3://b/runs/A")
    assert name("--output", "s3://b/runs/B") != a
    assert name("--output", "s3://b/runs/A") == a
    # another run id, the same folder: the same job (a rerun adopts it)
    result = runner.invoke(job_app, RENDER + ["--run-id", "R2", "--output", "s3://b/runs/A"])
    assert yaml.safe_load(result.stdout)["metadata"]["name"] == a


def test_render_of_a_paper_preset_needs_a_data_source():
    """b16/l16 have no data.source: a GPU job must never train on synthetic clips by default."""
    for preset in ("b16", "l16"):
        result = runner.invoke(job_app, ["render", "stage1", "--config", preset, *OUT])
        assert result.exit_code == 2
        assert "data.source" in result.output
        assert "required" in result.output or "Missing mandatory value" in result.output
        assert not result.stdout.startswith("apiVersion")
    ok = runner.invoke(job_app, ["render", "stage1", "--config", "b16", *OUT,
                                 "data.source=s3://b/k710/dataset.json"])
    assert ok.exit_code == 0, ok.output


def test_cluster_jobs_refuse_a_local_output_dir():
    """Checkpoints in a pod's own filesystem: invisible to other nodes, lost on restart."""
    for nodes in ("2", "1"):
        result = runner.invoke(job_app, [*RENDER[:5], nodes, *RENDER[6:]])  # tiny: runs/...
        assert result.exit_code == 2, result.output
        assert "is a local path" in result.output  # the preset's runs/...
        assert "--allow-local-output" in result.output
        result = runner.invoke(job_app, [*RENDER[:5], nodes, *RENDER[6:], "--output", "/out"])
        assert result.exit_code == 2 and "/out is a local path" in result.output
    result = runner.invoke(job_app, RENDER + ["--output", "/mnt/pvc/run", "--allow-local-output"])
    assert result.exit_code == 0, result.output  # a shared volume the user mounts in every pod
    assert "train.output_dir=/mnt/pvc/run" in result.stdout
    assert runner.invoke(job_app, RENDER + ["train.output_dir=s3://b/x"]).exit_code == 0


def test_render_caps_default_requests_to_the_node_pools_machines():
    """16 A100s per pod on GKE means an a2-megagpu-16g: 96 vCPUs, not the 128 of 8 per GPU."""
    result = runner.invoke(job_app, [*RENDER[:7], "16", *RENDER[8:], *OUT])
    assert result.exit_code == 0, result.output
    job = yaml.safe_load(result.stdout)
    res = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "resources"]
    assert res["requests"] == {"cpu": "86", "memory": "960Gi"}
    assert res["limits"]["nvidia.com/gpu"] == "16"
    too_big = runner.invoke(job_app, [*RENDER[:7], "16", *RENDER[8:], *OUT, "--cpu", "128"])
    assert too_big.exit_code == 2 and "does not fit node pool gke-a100" in too_big.output


def test_render_rejects_a_bad_config_before_anything_runs():
    result = runner.invoke(job_app, RENDER + ["train.stepz=5"])
    assert result.exit_code == 2
    assert "stepz" in result.output
    result = runner.invoke(job_app, RENDER[:-1] + ["--gpus-per-node", "32"])
    assert result.exit_code == 2 and "at most 16 GPUs" in result.output


def test_render_inlines_a_local_config_file(tmp_path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("train:\n  steps: 7\n  output_dir: s3://b/x\nmodel:\n  num_frames: 4\n"
                   "data:\n  source: s3://b/d.json\n")
    result = runner.invoke(job_app, ["render", "stage1", "--config", str(cfg),
                                     "--gpus-per-node", "0", "--node-pool", "cpu"])
    assert result.exit_code == 0, result.output
    job = yaml.safe_load(result.stdout)
    command = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "command"]
    assert "--config" not in command  # the file does not exist inside the container
    assert {"train.steps=7", "train.output_dir=s3://b/x", "model.num_frames=4"} <= set(command)


def test_submit_wait_logs_status_delete(kube_api, kubeconfig):
    submitted = runner.invoke(job_app, ["submit", *RENDER[1:], *OUT, "--run-id", "cli"])
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
    again = runner.invoke(job_app, ["submit", *RENDER[1:], *OUT, "--run-id", "cli"])
    assert again.exit_code == 0 and "adopted" in again.output
    assert runner.invoke(job_app, ["delete", name]).exit_code == 0
    assert kube_api.job(name) is None


def test_wait_exits_1_when_the_job_fails(kube_api, kubeconfig):
    kube_api.script = lambda job, pod: [Attempt(lines=["Traceback: boom"], exit_code=1,
                                                line_interval=0.1)]
    name = runner.invoke(job_app, ["submit", *RENDER[1:], *OUT, "--restart-policy", "Never"]
                         ).stdout.strip()
    result = runner.invoke(job_app, ["wait", name, "--poll-interval", "0.05"])
    assert result.exit_code == 1
    assert "failed" in result.output and "Traceback: boom" in result.output


S3_KEYS = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "r"}


def test_wait_exits_1_when_pods_cannot_start_and_leaves_the_job(kube_api, kubeconfig):
    kube_api.stuck = lambda job, pod: Stuck("CreateContainerConfigError",
                                            'secret "umt-s3" not found')
    name = runner.invoke(job_app, ["submit", *RENDER[1:], *OUT]).stdout.strip()
    result = runner.invoke(job_app, ["wait", name, "--poll-interval", "0.05", "--start-grace",
                                     "0.2", "--timeout", "20"])
    assert result.exit_code == 1
    assert f"pod {name}-master-0, container pytorch cannot start: CreateContainerConfigError: " \
           'secret "umt-s3" not found' in result.output
    assert f"umt job delete {name}" in result.output
    assert kube_api.job(name) is not None  # `umt job wait` does not own the job


def test_doctor_passes_on_a_ready_cluster_and_bucket(job_kind, kube_api, kubeconfig,
                                                     s3_bucket):
    """It says which job kinds the cluster serves and checks the backend `cluster` means
    there: TrainJob where Trainer v2 is installed (here beside the Training Operator)."""
    kube_api.secrets[("umt", "umt-s3")] = S3_KEYS
    checks = run_checks(output_uri=f"{s3_bucket}/runs")
    kind = job_kind.cls.kind
    runtime = [("runtime", True)] if job_kind.backend == "trainjob" else []
    assert [(c.name, c.ok) for c in checks] == [
        ("cluster", True), ("backend", True), (f"{kind} CRD", True), ("RBAC", True),
        *runtime, ("S3 secret", True), ("output", True)]
    assert not any(c.warning for c in checks)
    by_name = {c.name: c for c in checks}
    assert f"--backend cluster means {job_kind.backend}" in by_name["backend"].detail
    assert "TrainJob served" in by_name["backend"].detail or job_kind.backend == "pytorchjob"
    assert "AWS_DEFAULT_REGION" in by_name["S3 secret"].detail
    assert "s3cr" not in by_name["S3 secret"].detail
    reviews = [p for m, p in kube_api.requests if "selfsubjectaccessreviews" in p]
    # one question per verb the launcher needs (patch: adopting; TrainJobs: also get
    # trainingruntimes)
    assert len(reviews) == len(job_kind.cls.permissions()) == 8 + bool(runtime)
    result = runner.invoke(doctor_app(), ["doctor", "--output", f"{s3_bucket}/runs"])
    assert result.exit_code == 0, result.output


def test_doctor_says_when_the_runtime_is_missing(kube_api, kubeconfig):
    kube_api.trainer.installed = True
    kube_api.trainer.runtimes.clear()
    check = {c.name: c for c in run_checks(backend="trainjob")}["runtime"]
    assert not check.ok and "kubectl -n umt apply -k manifests/runtime" in check.detail
    kube_api.allowed.discard(("get", "trainingruntimes"))
    check = {c.name: c for c in run_checks(backend="trainjob")}["runtime"]
    assert check.ok and check.warning


def test_doctor_names_each_problem(kube_api, kubeconfig, s3_env):
    kube_api.crd_installed = False
    checks = {c.name: c for c in run_checks()}
    assert not checks["backend"].ok  # no job kind served at all: say what to install
    assert "TrainJob not served, PyTorchJob not served" in checks["backend"].detail
    assert not checks["TrainJob CRD"].ok and "kubeflow/trainer" in checks["TrainJob CRD"].detail
    kube_api.allowed -= {("create", "pytorchjobs"), ("get", "pods/log")}
    checks = {c.name: c for c in run_checks(output_uri="s3://no-such-bucket/runs",
                                            backend="pytorchjob")}
    assert not checks["PyTorchJob CRD"].ok and "training-operator" in checks[
        "PyTorchJob CRD"].detail
    assert not checks["RBAC"].ok
    assert "create pytorchjobs" in checks["RBAC"].detail
    assert "get pods/log" in checks["RBAC"].detail
    assert not checks["output"].ok and "no-such-bucket" in checks["output"].detail
    assert not checks["S3 secret"].ok  # no umt-s3 in the namespace: pods would never start
    assert "Secret umt-s3 not found in namespace umt" in checks["S3 secret"].detail
    assert "kubectl -n umt create secret generic umt-s3" in checks["S3 secret"].detail
    result = runner.invoke(doctor_app(), ["doctor", "--output", "s3://no-such-bucket/x"])
    assert result.exit_code == 1 and "FAIL" in result.output


def test_doctor_checks_the_keys_of_the_jobs_s3_secret(kube_api, kubeconfig):
    kube_api.secrets[("umt", "umt-s3")] = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": ""}
    kube_api.secrets[("umt", "other")] = {"AWS_ACCESS_KEY_ID": "k"}
    check = {c.name: c for c in run_checks()}["S3 secret"]
    assert not check.ok and "has empty AWS_SECRET_ACCESS_KEY" in check.detail
    check = {c.name: c for c in run_checks(s3_secret="other")}["S3 secret"]
    assert not check.ok and "lacks AWS_SECRET_ACCESS_KEY" in check.detail
    assert "S3 secret" not in {c.name for c in run_checks(s3_secret=None)}  # IRSA etc.
    result = runner.invoke(doctor_app(), ["doctor", "--s3-secret", ""])
    assert result.exit_code == 0, result.output


def test_doctor_warns_when_it_may_not_read_secrets(kube_api, kubeconfig):
    """The launcher's Role grants no Secrets: unverifiable is a warning, not a failure."""
    kube_api.allowed.discard(("get", "secrets"))
    check = {c.name: c for c in run_checks()}["S3 secret"]
    assert check.ok and check.warning and "may not read Secret umt-s3" in check.detail
    result = runner.invoke(doctor_app(), ["doctor"])
    assert result.exit_code == 0, result.output
    assert "warn" in result.output and "S3 secret" in result.output


def test_doctor_uses_api_discovery_when_crds_are_not_readable(kube_api, kubeconfig):
    kube_api.crd_readable = False
    crd = {c.name: c for c in run_checks()}["PyTorchJob CRD"]
    assert crd.ok and "discovery" in crd.detail


def test_doctor_without_a_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    checks = run_checks(output_uri=str(tmp_path / "out"))
    assert [(c.name, c.ok) for c in checks] == [("cluster", False), ("output", True)]


def test_the_default_backend_is_the_kind_the_cluster_serves(kube_api, kubeconfig, tmp_path,
                                                            monkeypatch):
    """`--backend cluster` (the default): TrainJob where Trainer v2 is installed, PyTorchJob
    where only the Training Operator is, PyTorchJob when no cluster can be asked."""
    args = ["render", "stage1", "--config", "tiny", "--output", "s3://b/x"]
    assert yaml.safe_load(runner.invoke(job_app, args).stdout)["kind"] == "PyTorchJob"
    kube_api.trainer.installed = True
    assert yaml.safe_load(runner.invoke(job_app, args).stdout)["kind"] == "TrainJob"
    result = runner.invoke(job_app, ["submit", "stage1", "--config", "tiny", "--output",
                                     "s3://b/x", "--kueue-queue", "team-a"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() in {n for _, n in kube_api.trainer.jobs}
    assert "trainjob/" in result.output
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert yaml.safe_load(runner.invoke(job_app, args).stdout)["kind"] == "PyTorchJob"
