"""User values on their way into a PyTorchJob (issue 7 §5, issue 12 §5): bad Kubernetes values
are refused before anything renders, naming option, value and what is allowed; names and labels
derived from user strings are sanitised; user strings reach the container only as argv items;
no secret value ever appears in a rendered job, its YAML artifact or the launcher's log."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import yaml
from typer.testing import CliRunner

from umt.launch import (
    InvalidOptionError,
    TrainingJob,
    job_name,
    run_training_job,
    to_dict,
)
from umt.launch.backends.local import LocalExecutor
from umt.launch.backends.pytorchjob import build_pytorchjob, pytorchjob_errors
from umt.launch.cli import job_app
from umt.launch.values import label_value

runner = CliRunner()
RENDER = ["render", "stage1", "--config", "tiny", "--output", "s3://b/run"]


@pytest.mark.parametrize("args,want", [
    (["--namespace", "Bad NS"], "--namespace 'Bad NS': must be an RFC 1123 label"),
    (["--namespace", "x" * 64], "must be an RFC 1123 label: at most 63"),
    (["--memory", "-5Gi"], "--memory '-5Gi': must be a positive Kubernetes quantity"),
    (["--memory", "lots"], "--memory 'lots': must be a Kubernetes quantity such as 64Gi"),
    (["--memory", "60"], "--memory '60': must be at least 6Mi"),
    (["--cpu", "0"], "--cpu '0': must be a positive Kubernetes quantity"),
    (["--cpu", "8 cores"], "--cpu '8 cores': must be a Kubernetes quantity such as 8, 7.5"),
    (["--shm-size", "-1Gi"], "--shm-size '-1Gi': must be a positive"),
    (["--backoff-limit", "-3"], "--backoff-limit -3: must be an integer >= 0"),
    (["--active-deadline", "-1"], "--active-deadline -1: must be an integer >= 1"),
    (["--active-deadline", "0"], "--active-deadline 0: must be an integer >= 1"),
    (["--nodes", "0"], "--nodes 0: must be an integer >= 1"),
    (["--gpus-per-node", "-1"], "--gpus-per-node -1: must be an integer >= 0"),
    (["--gpus-per-node", "32"], "--gpus-per-node 32: node pool gke-a100"),
    (["--name", "Bad_Name"], "--name 'Bad_Name': must be a DNS-1035 label"),
    (["--name", "a" * 49], "of at most 48 characters"),
    (["--run-id", "  "], "--run-id '  ': must be a non-empty string"),
    (["--image", "ghcr.io/x/umt-train"], "must be pinned: an exact tag"),
    (["--image", "ghcr.io/x/umt-train:latest"], "never latest or no tag"),
    (["--image", "UPPER/case:1"], "must be an image reference"),
    (["--s3-secret", "my secret"], "--s3-secret 'my secret': must be an RFC 1123 subdomain"),
    (["--service-account", "SA!"], "--service-account 'SA!': must be an RFC 1123 subdomain"),
    (["--priority-class", "High"], "--priority-class 'High'"),
    (["--elastic", "3:1", "--nodes", "2"], "--elastic '3:1': needs 1 <= MIN <= --nodes (2)"),
    (["--restart-policy", "Sometimes"], "--restart-policy 'Sometimes': must be one of"),
    (["--", "--config=/etc/passwd"], "OVERRIDES '--config=/etc/passwd': overrides are key=value"),
    (["--", "-h"], "OVERRIDES '-h'"),
])
def test_render_refuses_bad_values_naming_option_value_and_what_is_allowed(args, want):
    result = runner.invoke(job_app, RENDER + args)
    assert result.exit_code == 2, result.output
    assert want in result.output
    assert "apiVersion" not in result.stdout  # nothing rendered


def test_every_problem_is_reported_at_once_and_before_the_config_loads():
    result = runner.invoke(job_app, RENDER + ["--namespace", "Bad NS", "--memory", "-5Gi",
                                              "--backoff-limit", "-3", "train.stepz=1"])
    assert result.exit_code == 2
    for want in ("--namespace 'Bad NS'", "--memory '-5Gi'", "--backoff-limit -3"):
        assert want in result.output
    assert "stepz" not in result.output  # values first: no stage code imported for nothing


def test_submit_refuses_them_too_without_calling_any_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))  # a call would fail differently
    result = runner.invoke(job_app, ["submit", *RENDER[1:], "--namespace", "Bad NS"])
    assert result.exit_code == 2 and "--namespace 'Bad NS'" in result.output
    result = runner.invoke(job_app, ["wait", "x", "--namespace", "Bad NS"])
    assert result.exit_code == 2 and "--namespace 'Bad NS'" in result.output


def test_the_python_api_raises_the_same_error():
    with pytest.raises(InvalidOptionError) as err:
        TrainingJob(stage="stage1", memory="-5Gi", labels={"umt/run-id": "mine", "ok": "x y"},
                    env={"AWS_SECRET_ACCESS_KEY": "abc", "1BAD": "x"}, validate_config=False)
    problems = "\n".join(err.value.problems)
    assert "--memory '-5Gi'" in problems
    assert "labels 'umt/run-id': is set by umt itself" in problems
    assert "labels {'ok': 'x y'}: label values are" in problems
    assert "env 'AWS_SECRET_ACCESS_KEY': looks like a credential: put it in a Secret" in problems
    assert "env '1BAD'" in problems
    assert isinstance(err.value, ValueError)  # callers catching ValueError keep working


@pytest.mark.parametrize("value", ["64Gi", "512Mi", "1.5G", "100000000"])
def test_good_quantities_pass(value):
    job = to_dict(build_pytorchjob(TrainingJob(stage="stage1", gpus_per_node=1, memory=value,
                                               cpu="500m", validate_config=False)))
    assert pytorchjob_errors(job) == []


@pytest.mark.parametrize("image", ["ghcr.io/umt-project/umt-train:0.1.0",
                                   "localhost:5000/umt-train:0.1.0-abc123def456-dirty",
                                   "umt-train@sha256:" + "a" * 64,
                                   "registry.example.com/ml/umt-train:1.2@sha256:" + "0" * 64])
def test_pinned_images_pass(image):
    assert build_pytorchjob(TrainingJob(stage="stage1", image=image, validate_config=False))


@pytest.mark.parametrize("run_id", ["3f1c7a52-6c7e-4a6b-9c1e-2b1f0e9d7a11", "Run 1/ü",
                                    "x" * 300, "-leading-and-trailing-", "a b", "a-b", "!!!",
                                    "line\nbreak"])
def test_run_ids_are_sanitised_into_valid_distinct_labels_and_names(run_id):
    job = to_dict(build_pytorchjob(TrainingJob(stage="stage1", run_id=run_id,
                                               validate_config=False)))
    assert pytorchjob_errors(job) == []  # labels, names: what the API server accepts
    label = job["metadata"]["labels"]["umt/run-id"]
    assert label == label_value(run_id)
    pod_labels = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]["labels"]
    assert pod_labels["umt/run-id"] == label


def test_sanitising_keeps_ids_apart_and_valid_ids_unchanged():
    uuid = "3f1c7a52-6c7e-4a6b-9c1e-2b1f0e9d7a11"
    assert label_value(uuid) == uuid  # KFP run ids select as themselves
    assert label_value("a b") != label_value("a-b")  # gc of one must not delete the other
    assert label_value("x" * 300) != label_value("x" * 299)
    names = {job_name(TrainingJob(stage="stage1", run_id=r, validate_config=False))
             for r in ("a b", "a-b", "a_b")}
    assert len(names) == 3


def test_user_strings_reach_the_container_only_as_argv_items(tmp_path):
    """Shell metacharacters in overrides are data: one argv item each, never a shell."""
    marker = tmp_path / "pwned"
    hostile = [f"train.output_dir=s3://b/$(touch {marker})", f"data.source=x;touch {marker}",
               f"model.name=`touch {marker}`", "train.tag=a b\nc|d&e>f"]
    job = to_dict(build_pytorchjob(TrainingJob(stage="stage1", overrides=hostile,
                                               validate_config=False)))
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["torchrun", "-m", "umt.train.stage1"]
    assert container["command"][3:] == hostile and "args" not in container
    assert not {"sh", "bash", "-c"} & set(container["command"])
    # Run it (the local executor runs the pod's command) with a replica that records argv.
    script = tmp_path / "argv.py"
    script.write_text("import json, sys; print(json.dumps(sys.argv[1:]))")
    for rspec in job["spec"]["pytorchReplicaSpecs"].values():
        c = rspec["template"]["spec"]["containers"][0]
        c["command"] = [sys.executable, str(script), *c["command"][3:]]
    ex = LocalExecutor(job, tmp_path / "jobs")
    assert ex.start().wait(timeout=60).succeeded
    assert json.loads(ex.log_path().read_text()) == hostile
    assert not marker.exists()


SECRET = "sentinel-AKIA-secret-9f8e7d"


def test_no_secret_value_in_rendered_jobs_artifacts_or_logs(tmp_path, monkeypatch, caplog):
    """Credentials in the launcher's own environment (as in a KFP pod with the S3 Secret as
    env) are never copied into the job; the pods read them through secretKeyRef."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SECRET + "-id")
    rendered = runner.invoke(job_app, RENDER + ["--nodes", "2"])
    assert rendered.exit_code == 0, rendered.output
    assert SECRET not in rendered.output
    job = yaml.safe_load(rendered.stdout)
    for rspec in job["spec"]["pytorchReplicaSpecs"].values():
        for env in rspec["template"]["spec"]["containers"][0]["env"]:
            if env["name"] in ("UMT_SIGTERM_GRACE_S", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"):
                continue  # the SIGTERM budget, a plain number
            assert "value" not in env and env["valueFrom"]["secretKeyRef"]["name"] == "umt-s3"
    # The local executor hands the value to the replica (its environment) and nowhere else.
    script = tmp_path / "uses_secret.py"
    script.write_text("import os, pathlib, sys\n"
                      "want = pathlib.Path(sys.argv[1]).read_text()\n"
                      "ok = os.environ['AWS_SECRET_ACCESS_KEY'] == want\n"
                      "pathlib.Path(sys.argv[2]).write_text(str(ok))\n")
    (tmp_path / "expected").write_text(SECRET)

    from umt.launch.backends.local import LocalBackend

    class ScriptBackend(LocalBackend):
        def submit(self, job, *, replace_failed=True):
            body = to_dict(job)
            for rspec in body["spec"]["pytorchReplicaSpecs"].values():
                rspec["template"]["spec"]["containers"][0]["command"] = [
                    sys.executable, str(script), str(tmp_path / "expected"),
                    str(tmp_path / "seen")]
            return super().submit(body, replace_failed=replace_failed)

    backend = ScriptBackend(tmp_path / "jobs", secrets={"umt-s3": {
        "AWS_SECRET_ACCESS_KEY": SECRET}}, poll_interval=0.05)
    lines: list[str] = []
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"stage": "stage1"}))
    with caplog.at_level(logging.DEBUG):
        result = run_training_job("stage1", "tiny", backend=backend, node_pool="cpu",
                                  gpus_per_node=0, output_uri=str(out), validate_config=False,
                                  rendered_yaml_path=str(tmp_path / "job.yaml"),
                                  log_sink=lines.append)
    assert result.status.succeeded
    assert (tmp_path / "seen").read_text() == "True"  # the replica got it
    for path in [tmp_path / "job.yaml", *(tmp_path / "jobs").rglob("*")]:
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
    assert SECRET not in caplog.text and SECRET not in "\n".join(lines)
