"""`umt submit`: compile + start a run through kfp's own Client, against a small KFP API server
on 127.0.0.1 that records what it is sent (there is no KFP backend on this machine)."""

from __future__ import annotations

import json
import threading
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from typer.testing import CliRunner

pytest.importorskip("kfp")

from umt.catalogue import evaluations, finetunes  # noqa: E402
from umt.cli import app  # noqa: E402
from umt.pipeline.loader import PipelineError  # noqa: E402
from umt.pipeline.submit import resolve_endpoint, submit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FULL = str(ROOT / "pipelines" / "full.py")


class FakeKFP(BaseHTTPRequestHandler):
    """Just enough of the KFP v2beta1 REST API for kfp.Client's submit and upload paths."""

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> tuple[str, dict, bytes]:
        url = urlparse(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append({"method": self.command, "path": url.path,
                                     "query": parse_qs(url.query), "body": body,
                                     "headers": dict(self.headers)})
        return url.path, parse_qs(url.query), body

    def do_GET(self):
        path, query, _ = self._record()
        state = self.server.state
        if path.endswith("/healthz"):
            return self._reply({"multi_user": False})
        name = ""
        if "filter" in query:
            name = json.loads(query["filter"][0])["predicates"][0]["stringValue"]
        if path == "/apis/v2beta1/experiments":
            found = [e for e in state["experiments"] if e["display_name"] == name]
            return self._reply({"experiments": found, "total_size": len(found)})
        if path == "/apis/v2beta1/pipelines":
            found = [p for p in state["pipelines"] if p["display_name"] == name]
            return self._reply({"pipelines": found or None, "total_size": len(found)})
        self._reply({"error": f"not faked: GET {path}"}, 404)

    def do_POST(self):
        path, query, body = self._record()
        state = self.server.state
        if path == "/apis/v2beta1/experiments":
            exp = {**json.loads(body), "experiment_id": f"exp-{len(state['experiments']) + 1}"}
            state["experiments"].append(exp)
            return self._reply(exp)
        if path == "/apis/v2beta1/runs":
            run = {**json.loads(body), "run_id": f"run-{len(state['runs']) + 1}"}
            state["runs"].append(run)
            return self._reply(run)
        if path == "/apis/v2beta1/pipelines/upload":
            p = {"pipeline_id": f"p-{len(state['pipelines']) + 1}",
                 "display_name": query["name"][0]}
            state["pipelines"].append(p)
            state["packages"].append(_upload(self.headers, body))
            return self._reply(p)
        if path == "/apis/v2beta1/pipelines/upload_version":
            v = {"pipeline_id": query["pipelineid"][0], "display_name": query["name"][0],
                 "pipeline_version_id": f"v-{len(state['versions']) + 1}"}
            state["versions"].append(v)
            state["packages"].append(_upload(self.headers, body))
            return self._reply(v)
        self._reply({"error": f"not faked: POST {path}"}, 404)


def _upload(headers, body: bytes) -> dict:
    """The uploaded pipeline package from a multipart/form-data body."""
    message = BytesParser(policy=email_policy).parsebytes(
        f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body)
    (part,) = [p for p in message.iter_parts() if p.get_filename()]
    return next(yaml.safe_load_all(part.get_payload(decode=True)))


@pytest.fixture
def kfp_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKFP)
    server.requests = []
    server.state = {"experiments": [], "runs": [], "pipelines": [], "versions": [],
                    "packages": []}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_submit_compiles_types_the_arguments_and_creates_a_run(kfp_server, tmp_path):
    server, url = kfp_server
    done = submit(FULL, ["output_prefix=s3://bucket/runs", "nodes=8", "tasks=[\"action\"]",
                         'stage1_overrides=["train.log_every=1"]', "gpu_power_watts=350"],
                  endpoint=url, experiment="video", service_account="pipeline-runner",
                  pipeline_root="s3://bucket/pipelines", package_dir=str(tmp_path))
    assert done.run_id == "run-1"
    (exp,) = server.state["experiments"]
    assert exp["display_name"] == "video"
    (run,) = server.state["runs"]
    assert run["experiment_id"] == exp["experiment_id"] == done.experiment_id
    assert run["service_account"] == "pipeline-runner"
    config = run["runtime_config"]
    assert config["pipeline_root"] == "s3://bucket/pipelines"
    assert config["parameters"] == {"output_prefix": "s3://bucket/runs", "nodes": 8,
                                    "tasks": ["action"], "stage1_overrides": ["train.log_every=1"],
                                    "gpu_power_watts": 350.0}
    # the compiled package itself (pipeline + Kubernetes platform spec), as kfp run create
    # sends it
    spec, platform = run["pipeline_spec"]["pipeline_spec"], run["pipeline_spec"]["platform_spec"]
    assert spec["pipelineInfo"]["name"] == "umt-full"
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-pretrain-stage1"]["secretAsEnv"][0]["optional"] is True
    # caching left to the compiled spec (enable_caching=True would turn it on for the exit
    # handler too): every body task cached, the exit task not
    tasks = spec["root"]["dag"]["tasks"]
    assert not tasks["cleanup"].get("cachingOptions", {}).get("enableCache")


def test_no_cache_turns_caching_off_for_every_task(kfp_server, tmp_path):
    """kfp 2.17's Client(enable_caching=False) reaches only top-level tasks (client.py,
    _override_caching_options), not the ExitHandler's body: --no-cache rewrites the package."""
    server, url = kfp_server
    submit(FULL, [], endpoint=url, cache=False, package_dir=str(tmp_path))
    spec = server.state["runs"][0]["pipeline_spec"]["pipeline_spec"]
    body = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    # credentials, validate, plan-shards, the shard loop, merge-shards, 2 pretrain, one fine-tune
    # and one evaluation per catalogue entry, report
    assert len(body) == 5 + 2 + len(finetunes()) + len(evaluations()) + 1
    # ... and the shard loop's own body, one DAG further down
    body = {**body, **spec["components"]["comp-for-loop-2"]["dag"]["tasks"]}
    assert "shard-videos" in body
    assert all(not t.get("cachingOptions", {}).get("enableCache") for t in body.values())
    with pytest.raises(PipelineError, match="--no-cache with --upload"):
        submit(FULL, [], endpoint=url, cache=False, upload=True, version="v1")


def test_upload_creates_the_pipeline_then_versions_and_runs_them(kfp_server, tmp_path):
    server, url = kfp_server
    first = submit(FULL, ["output_prefix=s3://b/r"], endpoint=url, upload=True, version="v1",
                   package_dir=str(tmp_path))
    second = submit(FULL, ["output_prefix=s3://b/r"], endpoint=url, upload=True, version="v2",
                    package_dir=str(tmp_path))
    assert [p["display_name"] for p in server.state["pipelines"]] == ["umt-full"]
    assert first.pipeline_id == second.pipeline_id == "p-1"
    assert [v["display_name"] for v in server.state["versions"]] == ["v1", "v2"]
    assert all(p["pipelineInfo"]["name"] == "umt-full" for p in server.state["packages"])
    runs = server.state["runs"]
    assert [r["pipeline_version_reference"] for r in runs] == [
        {"pipeline_id": "p-1", "pipeline_version_id": "v-1"},
        {"pipeline_id": "p-1", "pipeline_version_id": "v-2"}]
    assert runs[0]["runtime_config"]["parameters"] == {"output_prefix": "s3://b/r"}


def test_bad_arguments_fail_before_anything_is_sent(kfp_server, tmp_path):
    server, url = kfp_server
    with pytest.raises(PipelineError, match="unknown pipeline parameter 'nodez'"):
        submit(FULL, ["nodez=2"], endpoint=url, package_dir=str(tmp_path))
    with pytest.raises(PipelineError, match="nodes='two': must be an integer"):
        submit(FULL, ["nodes=two"], endpoint=url, package_dir=str(tmp_path))
    with pytest.raises(PipelineError, match="--upload needs --version"):
        submit(FULL, [], endpoint=url, upload=True)
    assert server.requests == []


def test_endpoint_and_token_from_the_environment(kfp_server, tmp_path, monkeypatch):
    server, url = kfp_server
    monkeypatch.delenv("KFP_ENDPOINT", raising=False)
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", url)  # what kfp.Client reads
    assert resolve_endpoint(None) == url
    monkeypatch.setenv("KFP_ENDPOINT", "http://127.0.0.1:9")  # what the kfp CLI reads wins
    assert resolve_endpoint(None) == "http://127.0.0.1:9"
    monkeypatch.setenv("KFP_ENDPOINT", url)
    token = tmp_path / "token"
    token.write_text("projected-sa-token\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    result = CliRunner().invoke(app, ["submit", FULL, "--experiment", "env",
                                      "output_prefix=s3://b/r"])
    assert result.exit_code == 0, result.output
    assert "run run-1 started in experiment env" in result.output
    auth = {r["headers"].get("authorization") for r in server.requests}
    assert auth == {"Bearer projected-sa-token"}


def test_cli_reports_an_unreachable_backend(tmp_path):
    result = CliRunner().invoke(app, ["submit", FULL, "--endpoint", "http://127.0.0.1:9"])
    assert result.exit_code == 1 and "submitting failed" in result.output
