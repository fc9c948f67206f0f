"""The backend seam: backends are found by name, a new one is a module in umt/launch/backends/
(nothing else edited), ``cluster`` is the cluster's default, rendering loads a config once, and
the launcher imports no training library.

The fake backend below is written to a folder added to the package's search path, which is what
dropping a file into ``umt/launch/backends/`` does.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from umt.launch import (
    TrainingJob,
    backend,
    backend_class,
    backend_names,
    make_backend,
    render_job,
    render_job_yaml,
    request,
    run_training_job,
)
from umt.launch import backends as backends_package
from umt.launch.backends.local import LocalBackend
from umt.launch.backends.local_trainjob import LocalTrainJobBackend
from umt.launch.backends.pytorchjob import PyTorchJobBackend, build_pytorchjob
from umt.launch.backends.trainjob import TrainJobBackend
from umt.launch.cli import job_app
from umt.launch.doctor import needed_permissions
from umt.launch.serialize import to_yaml

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

FAKE_BACKEND = '''
"""A minimal backend: its job is a plain dict; it "runs" by writing the stage's summary."""

import json
from datetime import datetime, timezone

from umt import storage
from umt.launch import request
from umt.launch.backend import Backend, JobInfo, Permission, RenderedJob, Submission
from umt.launch.status import SUCCEEDED, JobStatus

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class FakeJobBackend(Backend):
    name = "fakejob"
    kind = "FakeJob"
    api_version = "example.org/v1"
    plural = "fakejobs"
    shares_filesystem = True

    @classmethod
    def render(cls, req, *, validate=True):
        cfg = request.resolved_config(req)
        request.check_shared_output(req, cfg)
        job = {"apiVersion": cls.api_version, "kind": cls.kind,
               "metadata": {"name": request.job_name(req), "labels": request.job_labels(req)},
               "spec": {"command": request.command(req)}}
        return RenderedJob(job, request.output_dir(req, cfg))

    @classmethod
    def permissions(cls):
        return [Permission("create", cls.plural, "example.org")]

    @classmethod
    def from_options(cls, **options):
        return cls()

    def __init__(self):
        self.namespace, self.jobs = "fake", {}

    def submit(self, job, *, replace_failed=True):
        self.jobs[job["metadata"]["name"]] = job
        out = [a.split("=", 1)[1] for a in job["spec"]["command"]
               if a.startswith("train.output_dir=")][-1]
        storage.write_bytes(storage.join(out, "summary.json"),
                            json.dumps({"stage": "stage1", "checkpoint": "c.pt"}).encode())
        return Submission(job["metadata"]["name"], self.namespace, created=True)

    def wait(self, name, *, timeout=None, on_status=None):
        return JobStatus(name, SUCCEEDED, "done", started_at=T0,
                         finished_at=T0.replace(minute=1))

    def logs(self, name, *, follow=False, replica=None, index=0):
        return iter(["fake log line"])

    def delete(self, name):
        self.jobs.pop(name, None)

    def list_jobs(self, label_selector):
        return [JobInfo(name, self.wait(name)) for name in self.jobs]
'''


@pytest.fixture
def fake_backend(tmp_path, monkeypatch):
    """``fakejob`` registered the documented way: a module in the backends package."""
    folder = tmp_path / "more_backends"
    folder.mkdir()
    (folder / "fakejob.py").write_text(textwrap.dedent(FAKE_BACKEND))
    monkeypatch.setattr(backends_package, "__path__", [*backends_package.__path__, str(folder)])
    yield "fakejob"
    backend._REGISTRY.pop("fakejob", None)
    sys.modules.pop(f"{backends_package.__name__}.fakejob", None)


def test_the_shipped_backends_are_registered_and_cluster_is_the_default():
    assert {"pytorchjob", "trainjob", "local", "local-trainjob"} <= set(backend_names())
    # Without a cluster to ask, "cluster" is the PyTorchJob backend (umt.launch.detect).
    assert backend_class("cluster") is PyTorchJobBackend is backend_class("pytorchjob")
    assert backend_class("trainjob") is TrainJobBackend
    assert backend_class("local") is LocalBackend
    assert backend_class("local-trainjob") is LocalTrainJobBackend
    assert isinstance(make_backend("local"), LocalBackend)
    with pytest.raises(ValueError, match="backend must be 'cluster'.*local, local-trainjob, "
                                         "pytorchjob, trainjob"):
        backend_class("nope")


def test_cluster_and_local_render_todays_pytorchjob():
    req = TrainingJob(stage="stage1", config="tiny", nodes=2, output_uri="s3://b/x")
    expected = to_yaml(build_pytorchjob(req))
    assert render_job_yaml(req) == render_job_yaml(req, "pytorchjob") == expected
    assert render_job_yaml(req, "local") == expected
    assert render_job(req).output_dir == "s3://b/x"


def test_a_new_backend_module_is_picked_up_without_editing_another_file(fake_backend,
                                                                        tmp_path):
    assert fake_backend in backend_names()
    req = TrainingJob(stage="stage1", config="tiny", output_uri=str(tmp_path / "out"),
                      allow_local_output=True, run_id="r1")
    job = render_job(req, fake_backend).job
    assert job["kind"] == "FakeJob" and job["metadata"]["labels"]["umt/run-id"] == "r1"
    assert job["spec"]["command"][:3] == ["torchrun", "-m", "umt.train.stage1"]
    impl = make_backend(fake_backend)
    assert type(impl).__name__ == "FakeJobBackend"
    # `umt job render --backend` prints its object, and the default is unchanged.
    result = runner.invoke(job_app, ["render", "stage1", "--config", "tiny", "--backend",
                                     fake_backend, "--output", "s3://b/x"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["kind"] == "FakeJob"
    result = runner.invoke(job_app, ["render", "stage1", "--config", "tiny", "--output",
                                     "s3://b/x"])
    assert yaml.safe_load(result.output)["kind"] == "PyTorchJob"
    # run_training_job runs it (a local output is fine: it shares this filesystem), and the
    # job's duration is the backend's.
    result = run_training_job("stage1", "tiny", backend=fake_backend,
                              output_uri=str(tmp_path / "out"), log_sink=lambda _: None)
    assert result.summary["checkpoint"] == "c.pt" and result.status.duration_seconds() == 60
    # gc and doctor ask it too: its Role rule is part of what the Role must grant.
    assert ("create", "fakejobs") in {(p.verb, p.resource) for p in needed_permissions()}


def test_an_unknown_backend_is_refused_by_umt_job():
    result = runner.invoke(job_app, ["render", "stage1", "--config", "tiny", "--backend",
                                     "nope", "--output", "s3://b/x"])
    assert result.exit_code == 2 and "backend must be" in result.output


def test_a_loaded_config_is_not_loaded_again(monkeypatch):
    req = TrainingJob(stage="stage1", config="tiny", output_uri="s3://b/x")
    expected = render_job_yaml(req)
    cfg = request.resolved_config(req)
    calls = []
    real = request.validate_stage_config
    monkeypatch.setattr(request, "validate_stage_config",
                        lambda *a: calls.append(a) or real(*a))
    again = TrainingJob(stage="stage1", config="tiny", output_uri="s3://b/x", resolved=cfg)
    assert render_job_yaml(again) == expected and calls == []
    assert request.job_name(again) == request.job_name(req)  # not part of the job's identity
    render_job_yaml(req)
    assert len(calls) == 1


BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'timm', 'open_clip', 'transformers'):
            raise ModuleNotFoundError(f'{name} is blocked', name=name)  # as when absent
sys.meta_path.insert(0, Block())
"""


def test_umt_job_render_needs_no_training_library():
    """Every stage of the catalogue renders with torch, timm, open_clip and transformers
    unavailable: the launcher image and `umt job render` need none of them."""
    from umt import catalogue

    code = BLOCK + (
        "import sys\n"
        "from umt.launch.cli import job_app\n"
        "job_app(['render', sys.argv[1], '--config', 'tiny', '--output', 's3://b/x',\n"
        "         'model.pretrained=s3://b/parent.pt', *sys.argv[2:]])\n")
    from umt.pipeline.plan import data_overrides

    for stage, entry in catalogue.STAGES.items():
        data = data_overrides(stage, list(entry.data))
        done = subprocess.run([sys.executable, "-c", code, stage, *data], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (stage, done.stderr[-2000:])
        assert yaml.safe_load(done.stdout)["kind"] == "PyTorchJob", stage
