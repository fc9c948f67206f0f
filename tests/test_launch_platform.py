"""Issue 16, item 7: platform settings of a job -- a Kueue queue (the job waits suspended until
admitted, reported as queued, with no launcher timeout running meanwhile) and the node pool's
RDMA fabric (EFA on EKS p4d/p4de, InfiniBand on AKS ND A100 v4) -- rendered and, for Kueue,
run against the fake API server playing Kueue's webhook and admission."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import yaml
from kube_api_server import Attempt, kube_api, kubeconfig  # noqa: F401 - fixtures
from typer.testing import CliRunner

from umt.launch import run_training_job, to_dict
from umt.launch.backends.pytorchjob import build_pytorchjob, pytorchjob_errors
from umt.launch.cli import job_app
from umt.launch.request import TrainingJob

runner = CliRunner()


def render(*args: str) -> dict:
    result = runner.invoke(job_app, ["render", "stage1", "--config", "tiny", "--output",
                                     "s3://b/x", *args])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.stdout)


def containers(job: dict) -> list[dict]:
    return [r["template"]["spec"]["containers"][0]
            for r in job["spec"]["pytorchReplicaSpecs"].values()]


def test_eks_p4d_jobs_request_efa_with_the_nccl_environment():
    job = render("--node-pool", "eks-p4d", "--nodes", "2")
    for c in containers(job):
        limits = c["resources"]["limits"]
        assert limits["vpc.amazonaws.com/efa"] == "4" and limits["hugepages-2Mi"] == "5120Mi"
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["FI_PROVIDER"] == "efa" and env["FI_EFA_USE_DEVICE_RDMA"] == "1"
    assert pytorchjob_errors(job) == []
    assert all("vpc.amazonaws.com/efa" not in c["resources"]["limits"]
               for c in containers(render("--node-pool", "eks-p4d", "--no-fabric")))


@pytest.mark.parametrize("pool,resource", [("eks-a100", "vpc.amazonaws.com/efa"),
                                           ("aks-a100", "rdma/rdma_shared_device_a"),
                                           ("gke-a100", None), ("cpu", None)])
def test_each_pool_brings_its_own_fabric_or_none(pool, resource):
    gpus = 0 if pool == "cpu" else 8
    job = to_dict(build_pytorchjob(TrainingJob(stage="stage1", node_pool=pool, nodes=2,
                                               gpus_per_node=gpus, output_uri="s3://b/x",
                                               validate_config=False)))
    limits = containers(job)[0]["resources"]["limits"]
    extra = set(limits) - {"memory", "nvidia.com/gpu"}
    assert extra == ({resource, "hugepages-2Mi"} if resource == "vpc.amazonaws.com/efa"
                     else {resource} if resource else set())
    assert pytorchjob_errors(job) == []


def test_the_kueue_queue_labels_the_job_not_its_pods():
    job = render("--kueue-queue", "team-a")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    for rspec in job["spec"]["pytorchReplicaSpecs"].values():
        assert "kueue.x-k8s.io/queue-name" not in rspec["template"]["metadata"]["labels"]
    bad = runner.invoke(job_app, ["render", "stage1", "--config", "tiny", "--output",
                                  "s3://b/x", "--kueue-queue", "Team A"])
    assert bad.exit_code == 2 and "--kueue-queue" in bad.output


def test_a_job_kueue_holds_is_reported_queued_and_no_timeout_runs_meanwhile(
        kube_api, kubeconfig, caplog, tmp_path):
    kube_api.kueue_admit_after = None  # admitted by the thread below
    kube_api.script = lambda job, pod: [Attempt(lines=["step", "done"])]

    def admit_later():
        name = kube_api.wait_for(lambda: next(iter(kube_api.jobs), None))[1]
        time.sleep(2.0)  # queued far longer than every launcher limit below
        assert kube_api.pods == {}  # nothing started while suspended
        kube_api.kueue_admit(name)

    threading.Thread(target=admit_later, daemon=True).start()
    with caplog.at_level(logging.INFO, logger="umt.launch.run"):
        result = run_training_job("stage1", "tiny", nodes=2, gpus_per_node=8,
                                  node_pool="gke-a100", output_uri=str(tmp_path / "out"),
                                  allow_local_output=True, validate_config=False,
                                  kueue_queue="team-a", poll_interval=0.05, wait_timeout=1.0,
                                  start_grace=0.2, unschedulable_timeout=0.2,
                                  log_sink=lambda _: None)
    assert result.status.succeeded
    assert any("is queued in Kueue queue team-a" in r.getMessage()
               for r in caplog.records)
    conditions = {c.type: c.status for c in result.status.conditions}
    assert conditions["Suspended"] == "False"
