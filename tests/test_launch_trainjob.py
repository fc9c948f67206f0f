"""Building the TrainJob (Kubeflow Trainer v2.3.0) and the project runtime it runs on: shape,
strict validation against the v2.3.0 CRDs, what it shares with the PyTorchJob (command, env,
resources, hardening), node pools and spot capacity, Kueue, the grace period, and the options a
TrainJob cannot carry (refused, never dropped)."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from umt.launch import NODE_POOLS, TrainingJob, to_dict
from umt.launch import trainer_runtime as tr
from umt.launch.backends.pytorchjob import build_pytorchjob
from umt.launch.backends.trainjob import (
    MANAGER,
    build_trainjob,
    trainjob_errors,
)
from umt.launch.cli import job_app
from umt.launch.manifests import RUNTIME_MANIFEST
from umt.launch.node_pools import placement
from umt.launch.serialize import from_dict

runner = CliRunner()
DONE_WHEN = ["render", "stage1", "--backend", "trainjob", "--config", "b16", "--nodes", "2",
             "--gpus-per-node", "8", "--kueue-queue", "team-a", "--output", "s3://b/r",
             "data.source=s3://b/k/dataset.json"]


def build(**kw) -> dict:
    kw = {"stage": "stage1", "config": "tiny", "validate_config": False, **kw}
    return to_dict(build_trainjob(TrainingJob(**kw)))


def node_patch(job: dict) -> dict:
    (patch,) = job["spec"]["runtimePatches"]
    assert patch["manager"] == MANAGER
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == tr.NODE
    return rjob["template"]["spec"]["template"]


def effective_pod(job: dict) -> dict:
    """The node pod the Trainer makes of the runtime, our patch and ``trainer`` (a merge by
    name, as its strategic merge patch does for the fields we patch)."""
    pod = yaml.safe_load(yaml.safe_dump(tr.node_pod(tr.runtime())))
    patch = node_patch(job)
    pod["metadata"].setdefault("labels", {}).update(patch["metadata"]["labels"])
    for key, value in patch["spec"].items():
        if key == "volumes":
            by_name = {v["name"]: v for v in pod["spec"]["volumes"]}
            by_name.update({v["name"]: v for v in value})
            pod["spec"]["volumes"] = list(by_name.values())
        elif key != "containers":
            pod["spec"][key] = value
    (node,) = pod["spec"]["containers"]
    trainer = job["spec"]["trainer"]
    node.update(image=trainer["image"], command=trainer["command"],
                env=trainer.get("env", []), resources=trainer["resourcesPerNode"])
    return pod


def test_the_done_when_command_prints_one_strictly_valid_trainjob():
    result = runner.invoke(job_app, DONE_WHEN)
    assert result.exit_code == 0, result.output
    (job,) = list(yaml.safe_load_all(result.stdout))
    assert job["kind"] == "TrainJob" and job["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert trainjob_errors(job) == []
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 8
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert trainer["command"][:5] == ["torchrun", "-m", "umt.train.stage1", "--config", "b16"]
    assert trainer["command"][-1] == "train.output_dir=s3://b/r"
    # The runtime it names is the one manifests/runtime ships.
    assert job["spec"]["runtimeRef"] == {"name": tr.NAME, "kind": "TrainingRuntime",
                                         "apiGroup": "trainer.kubeflow.org"}
    shipped = yaml.safe_load(RUNTIME_MANIFEST.read_text())
    assert shipped["metadata"]["name"] == tr.NAME and tr.runtime_errors(shipped) == []


def test_the_runtime_is_strictly_valid_and_typo_fields_are_refused():
    runtime = tr.runtime()
    assert tr.runtime_errors(runtime) == []
    bad = yaml.safe_load(yaml.safe_dump(runtime))
    bad["spec"]["template"]["spec"]["failurePolicy"]["maxRestart"] = 3
    del bad["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["metadata"]
    errors = tr.runtime_errors(bad)
    assert any("maxRestart" in e and "unexpected" in e for e in errors)
    assert any("trainjob-ancestor-step" in e for e in errors)
    # The typed model of the field's library reads it back whole.
    typed = from_dict_runtime(runtime)
    assert typed == runtime


def from_dict_runtime(obj: dict) -> dict:
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainingRuntime

    return to_dict(TrainerV1alpha1TrainingRuntime.from_dict(obj))


def test_a_trainjob_runs_the_pytorchjobs_pod_command_env_resources_and_hardening():
    kw = dict(nodes=3, gpus_per_node=8, node_pool="gke-a100", output_uri="s3://b/o",
              env={"FROM_SPEC": "yes"}, run_id="r1", termination_grace_seconds=120)
    train = build(**kw)
    torch_pod = to_dict(build_pytorchjob(TrainingJob(stage="stage1", config="tiny",
                                                     validate_config=False, **kw)))[
        "spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    pod = effective_pod(train)
    mine, theirs = pod["spec"]["containers"][0], torch_pod["spec"]["containers"][0]
    for key in ("image", "imagePullPolicy", "command", "env", "resources", "securityContext",
                "volumeMounts"):
        assert mine[key] == theirs[key], key
    for key in ("securityContext", "serviceAccountName", "nodeSelector", "tolerations",
                "terminationGracePeriodSeconds"):
        assert pod["spec"][key] == torch_pod["spec"][key], key
    assert sorted(pod["spec"]["volumes"], key=lambda v: v["name"]) == sorted(
        torch_pod["spec"]["volumes"], key=lambda v: v["name"])
    assert pod["metadata"]["annotations"] == torch_pod["metadata"]["annotations"]  # no Istio
    assert pod["metadata"]["labels"]["umt/run-id"] == "r1"
    env = {e["name"]: e for e in mine["env"]}
    assert env["UMT_SIGTERM_GRACE_S"]["value"] == "120"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "umt-s3"
    assert not any(name.startswith("PET_") for name in env)  # the torch plugin's


@pytest.mark.parametrize("pool", sorted(NODE_POOLS))
def test_every_node_pool_renders_a_valid_trainjob(pool):
    gpus = NODE_POOLS[pool].gpus_per_node and 8
    job = build(node_pool=pool, gpus_per_node=min(gpus, NODE_POOLS[pool].gpus_per_node))
    assert trainjob_errors(job) == []
    spec = node_patch(job)["spec"]
    want = NODE_POOLS[pool]
    assert spec.get("nodeSelector", {}) == want.node_selector
    assert spec.get("tolerations", []) == to_dict(list(want.tolerations))
    assert spec.get("affinity") == (to_dict(want.affinity) if want.affinity else None)


@pytest.mark.parametrize("pool,label", [
    ("gke-a100", {"cloud.google.com/gke-spot": "true"}),
    ("eks-p4d", {"eks.amazonaws.com/capacityType": "SPOT"}),
    ("eks-a100", {"eks.amazonaws.com/capacityType": "SPOT"}),
    ("aks-a100", {"kubernetes.azure.com/scalesetpriority": "spot"}),
])
def test_spot_nodes_per_cloud_on_both_backends(pool, label):
    selector, tolerations = placement(NODE_POOLS[pool], spot=True)
    assert label.items() <= selector.items()
    for job, spec in ((build(node_pool=pool, spot=True), None),
                      (to_dict(build_pytorchjob(TrainingJob(
                          stage="stage1", validate_config=False, node_pool=pool, spot=True))),
                       "pytorchjob")):
        pod_spec = (node_patch(job)["spec"] if spec is None else
                    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"])
        assert label.items() <= pod_spec["nodeSelector"].items()
        assert pod_spec["tolerations"] == to_dict(tolerations)
    if pool.startswith(("gke", "aks")):  # those clouds taint their spot nodes
        assert len(tolerations) == len(NODE_POOLS[pool].tolerations) + 1


def test_spot_on_a_pool_without_spot_capacity_fails_early():
    with pytest.raises(ValueError, match="--spot: node pool gfd-a100 .* no spot capacity"):
        TrainingJob(stage="stage1", validate_config=False, node_pool="gfd-a100", spot=True)


@pytest.mark.parametrize("kw,flag", [
    ({"restart_policy": "Never"}, "--restart-policy 'Never'"),
    ({"backoff_limit": 5}, "--backoff-limit 5"),
    ({"clean_pod_policy": "All"}, "clean_pod_policy 'All'"),
    ({"image_pull_policy": "Always"}, "--image-pull-policy 'Always'"),
    ({"gang_scheduling": True}, "--gang True"),
    ({"queue": "volcano-q"}, "--queue 'volcano-q'"),
    ({"priority_class": "high"}, "--priority-class 'high'"),
    ({"elastic_min_nodes": 1, "elastic_max_nodes": 4, "nodes": 2}, "--elastic '1:4'"),
])
def test_what_a_trainjob_cannot_carry_is_refused_naming_it(kw, flag):
    with pytest.raises(ValueError, match="trainjob|TrainJob|Trainer") as err:
        build(**kw)
    assert flag in str(err.value)


def test_the_kueue_label_and_the_grace_period_on_the_pytorchjob_too():
    job = to_dict(build_pytorchjob(TrainingJob(stage="stage1", validate_config=False,
                                               kueue_queue="team-a",
                                               termination_grace_seconds=90)))
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    for rspec in job["spec"]["pytorchReplicaSpecs"].values():
        spec = rspec["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] == 90
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert env["UMT_SIGTERM_GRACE_S"] == "90"
        # Kueue reads the job, not its pods.
        assert "kueue.x-k8s.io/queue-name" not in rspec["template"]["metadata"]["labels"]


@pytest.mark.parametrize("kw,flag", [
    ({"kueue_queue": "Team A"}, "--kueue-queue 'Team A'"),
    ({"termination_grace_seconds": -1}, "--termination-grace -1"),
    ({"labels": {"kueue.x-k8s.io/queue-name": "x"}}, "reserved"),
])
def test_bad_kueue_and_grace_values_fail_early(kw, flag):
    with pytest.raises(ValueError, match=flag):
        TrainingJob(stage="stage1", validate_config=False, **kw)


def test_the_typed_model_round_trips():
    job = build(nodes=2, run_id="r", kueue_queue="q")
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    assert to_dict(TrainerV1alpha1TrainJob.from_dict(job)) == job
    assert from_dict(job["spec"]["trainer"]["resourcesPerNode"], "V1ResourceRequirements")
