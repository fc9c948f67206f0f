"""Building the PyTorchJob: shape, node pools, run policy, names, configs, (de)serialization."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml
from kubernetes.utils.quantity import parse_quantity
from omegaconf import OmegaConf

from umt import catalogue, storage
from umt.launch import (
    NODE_POOLS,
    S3Credentials,
    TrainingJob,
    from_dict,
    from_yaml,
    job_name,
    run_training_job,
    to_dict,
    to_yaml,
)
from umt.launch.backends.pytorchjob import build_pytorchjob, pytorchjob_errors
from umt.launch.node_pools import GFD_A100_PRODUCTS
from umt.launch.request import default_requests
from umt.launch.stages import flatten_config


class Recorder:
    """The smallest JobBackend: records the job it is given and 'runs' it by writing the
    summary.json a stage writes to its train.output_dir (``summary=None``: writes none)."""

    shares_filesystem = False

    def __init__(self, summary: dict | None = None, lines=("hello",)):
        self.summary, self.lines, self.job = summary, list(lines), None

    def submit(self, job, *, replace_failed=True):
        from umt.launch import Submission
        self.job = to_dict(job)
        return Submission(job.metadata.name, "ns", created=True)

    def wait(self, name, timeout=None, on_status=None):
        from umt.launch import JobStatus
        if self.summary is not None:
            command = self.job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"][
                "containers"][0]["command"]
            out = [a.split("=", 1)[1] for a in command if a.startswith("train.output_dir=")][-1]
            storage.write_bytes(storage.join(out, "summary.json"),
                                json.dumps(self.summary).encode())
        return JobStatus(name, "Succeeded", "done")

    def logs(self, name, follow=False, replica=None, index=0):
        return iter(self.lines)

    def delete(self, name):
        raise AssertionError("not cancelled")


SUMMARY = {"stage": "stage1", "steps": 8, "checkpoint": "s3://b/out/checkpoints/step_8.pt",
           "output_dir": "s3://b/out", "final_loss": 0.5}


def build(**kw) -> dict:
    kw = {"stage": "stage1", "config": "tiny", "validate_config": False, **kw}
    return to_dict(build_pytorchjob(TrainingJob(**kw)))


def pod(job: dict, rtype: str = "Master") -> dict:
    return job["spec"]["pytorchReplicaSpecs"][rtype]["template"]


def test_master_and_workers_run_torchrun_on_the_operators_environment():
    job = build(nodes=4, gpus_per_node=8, overrides=["train.steps=10"],
                output_uri="s3://b/run")
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 3
    assert job["spec"]["nprocPerNode"] == "8"  # a string, as the CRD wants
    for rtype in ("Master", "Worker"):
        c = pod(job, rtype)["spec"]["containers"][0]
        assert c["name"] == "pytorch"
        # No torchrun flags: PET_* from the operator say nodes, rank, master and nproc.
        assert c["command"] == ["torchrun", "-m", "umt.train.stage1", "--config", "tiny",
                                "train.steps=10", "train.output_dir=s3://b/run"]
        assert c["resources"] == {"limits": {"memory": "480Gi", "nvidia.com/gpu": "8"},
                                  "requests": {"cpu": "64", "memory": "480Gi"}}
        assert c["volumeMounts"] == [{"mountPath": "/dev/shm", "name": "dshm"},
                                     {"mountPath": "/tmp", "name": "tmp"},
                                     {"mountPath": "/home/umt", "name": "home"}]
        assert c["securityContext"] == {"allowPrivilegeEscalation": False,
                                        "capabilities": {"drop": ["ALL"]},
                                        "readOnlyRootFilesystem": True}
        spec = pod(job, rtype)["spec"]
        assert spec["volumes"] == [{"emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"},
                                    "name": "dshm"}, {"emptyDir": {}, "name": "tmp"},
                                   {"emptyDir": {}, "name": "home"}]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["serviceAccountName"] == "umt-training"
    assert pytorchjob_errors(job) == []


def test_single_node_jobs_have_no_workers():
    job = build(nodes=1, gpus_per_node=1)
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Master"]


def test_a_launcher_pod_renders_the_image_its_pipeline_was_compiled_for(monkeypatch):
    """Issue 16.4: the compiled pipeline puts UMT_TRAIN_IMAGE / UMT_IMAGE_PULL_SECRETS into
    every task's environment; the job the launcher renders there uses exactly those."""
    monkeypatch.setenv("UMT_TRAIN_IMAGE", "registry.example.com/ml/umt-train:0.1.0-abcdefabcdef")
    monkeypatch.setenv("UMT_IMAGE_PULL_SECRETS", "regcred, other")
    job = build(nodes=2, output_uri="s3://b/x")
    for rtype in ("Master", "Worker"):
        spec = pod(job, rtype)["spec"]
        assert spec["containers"][0]["image"] == \
            "registry.example.com/ml/umt-train:0.1.0-abcdefabcdef"
        assert spec["imagePullSecrets"] == [{"name": "regcred"}, {"name": "other"}]
    assert pytorchjob_errors(job) == []
    assert build(image="x.io/t:1", image_pull_secrets=[])["spec"]["pytorchReplicaSpecs"][
        "Master"]["template"]["spec"].get("imagePullSecrets") is None
    with pytest.raises(ValueError, match="--image-pull-secret"):
        build(image_pull_secrets=["Bad Name"])


def test_s3_credentials_come_from_a_secret():
    env = {e["name"]: e for e in pod(build())["spec"]["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "umt-s3", "key": "AWS_ACCESS_KEY_ID"}
    assert env["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]  # never a literal key in the spec
    # no S3: only the SIGTERM budget is set (below)
    assert {e["name"] for e in pod(build(s3=None))["spec"]["containers"][0]["env"]} == {
        "UMT_SIGTERM_GRACE_S", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"}


@pytest.mark.parametrize("grace", [None, 45])
def test_pod_torchrun_and_trainer_share_one_sigterm_grace(grace):
    from umt.launch.request import DEFAULT_TERMINATION_GRACE_S
    from umt.runtime.preemption import DEFAULT_GRACE_S

    assert DEFAULT_TERMINATION_GRACE_S == DEFAULT_GRACE_S  # the trainer's own default
    spec = pod(build(s3=None, termination_grace_seconds=grace))["spec"]
    want = DEFAULT_TERMINATION_GRACE_S if grace is None else grace
    assert spec["terminationGracePeriodSeconds"] == want
    env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
    assert env == {"UMT_SIGTERM_GRACE_S": str(want), "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(want)}
    mine = build(s3=S3Credentials(secret="other"), env={"AWS_ENDPOINT_URL": "http://m:9000"})
    env = {e["name"]: e for e in pod(mine)["spec"]["containers"][0]["env"]}
    assert env["AWS_ENDPOINT_URL"] == {"name": "AWS_ENDPOINT_URL", "value": "http://m:9000"}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "other"


@pytest.mark.parametrize("name", sorted(NODE_POOLS))
def test_every_node_pool_renders_a_valid_job(name):
    pool = NODE_POOLS[name]
    job = build(nodes=2, gpus_per_node=min(8, pool.gpus_per_node), node_pool=name)
    spec = pod(job)["spec"]
    assert spec.get("nodeSelector", {}) == pool.node_selector
    assert spec.get("tolerations", []) == to_dict(list(pool.tolerations))
    if pool.gpus_per_node:
        assert {"key": "nvidia.com/gpu", "operator": "Exists",
                "effect": "NoSchedule"} in spec["tolerations"]
    assert pytorchjob_errors(job) == []


@pytest.mark.parametrize("name", sorted(NODE_POOLS))
def test_default_requests_fit_the_smallest_machine_that_takes_the_gpus(name):
    pool = NODE_POOLS[name]
    for gpus in range(pool.gpus_per_node + 1):
        cpu, memory = default_requests(gpus, name)
        machine = pool.smallest_fit(gpus)
        if machine is None:  # machines unknown (nvidia, cpu): 8 CPUs / 60Gi per GPU
            assert (cpu, memory) == ((str(8 * gpus), f"{60 * gpus}Gi") if gpus else ("2", "8Gi"))
            continue
        assert machine.gpus >= gpus
        # Headroom for kubelet reservations and daemonsets: never the whole machine.
        assert int(cpu) < machine.vcpus and int(cpu) <= min(8 * gpus or 2, machine.vcpus)
        assert parse_quantity(memory) < machine.memory_gib * 2**30


def test_sixteen_gpus_on_gke_fit_an_a2_megagpu_16g():
    c = pod(build(nodes=2, gpus_per_node=16, node_pool="gke-a100"))["spec"]["containers"][0]
    assert c["resources"]["requests"] == {"cpu": "86", "memory": "960Gi"}  # 96 vCPUs, 1360 GB
    assert c["resources"]["limits"] == {"memory": "960Gi", "nvidia.com/gpu": "16"}
    # 8 per GPU still where the machine has room for it (a2-highgpu-8g: 96 vCPUs).
    c = pod(build(nodes=2, gpus_per_node=8, node_pool="gke-a100"))["spec"]["containers"][0]
    assert c["resources"]["requests"] == {"cpu": "64", "memory": "480Gi"}
    # a2-highgpu-1g: 12 vCPUs, 85 GB.
    c = pod(build(gpus_per_node=1, node_pool="gke-a100"))["spec"]["containers"][0]
    assert c["resources"]["requests"] == {"cpu": "8", "memory": "60Gi"}


@pytest.mark.parametrize("kw,match", [
    ({"gpus_per_node": 16, "node_pool": "gke-a100", "cpu": "128"},
     "--cpu '128' per pod does not fit"),
    ({"gpus_per_node": 8, "node_pool": "aks-a100", "memory": "1000Gi"},
     "--memory '1000Gi' per pod does not fit node pool aks-a100"),
    ({"gpus_per_node": 16, "node_pool": "eks-a100"}, "at most 8 GPUs"),
    ({"gpus_per_node": 9, "node_pool": "gfd-a100"}, "at most 8 GPUs"),
])
def test_requests_a_pool_cannot_hold_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        build(**kw)
    assert build(gpus_per_node=8, node_pool="aks-a100", memory="800Gi")  # fits ND96asr_v4


def test_gfd_pool_takes_a100_sxm4_40gb_and_80gb():
    spec = pod(build(gpus_per_node=8, node_pool="gfd-a100"))["spec"]
    assert "nodeSelector" not in spec
    (term,) = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "nvidia.com/gpu.product", "operator": "In",
                                         "values": ["NVIDIA-A100-SXM4-40GB",
                                                    "NVIDIA-A100-SXM4-80GB"]}]
    assert set(GFD_A100_PRODUCTS) == {"NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-SXM4-80GB"}


@pytest.mark.parametrize("nodes", [1, 4])
def test_cluster_jobs_need_shared_output_storage(nodes):
    with pytest.raises(ValueError, match="runs/x is a local path.*lost when a pod restarts"):
        build(nodes=nodes, output_uri="runs/x")
    with pytest.raises(ValueError, match="/data/out is a local path"):
        build(nodes=nodes, overrides=["train.output_dir=/data/out"])
    assert build(nodes=nodes, output_uri="s3://b/x")
    assert build(nodes=nodes, output_uri="/mnt/pvc/x", allow_local_output=True)
    # The name does not depend on the flag (it changes nothing in the job).
    assert job_name(TrainingJob(stage="stage1", output_uri="/p", allow_local_output=True,
                                validate_config=False)) == job_name(
        TrainingJob(stage="stage1", output_uri="/p", validate_config=False))


def test_the_preset_output_dir_counts_when_the_config_is_loaded():
    with pytest.raises(ValueError, match="is a local path"):  # tiny: runs/...
        build_pytorchjob(TrainingJob(stage="stage1", config="tiny", nodes=2))
    build_pytorchjob(TrainingJob(stage="stage1", config="tiny", nodes=2,
                                 output_uri="s3://b/tiny"))


def test_the_local_executor_may_write_local_outputs(tmp_path):
    backend = Recorder(SUMMARY)
    backend.shares_filesystem = True  # like LocalBackend
    kw = dict(nodes=2, backend=backend, output_uri=str(tmp_path / "out"),
              validate_config=False, log_sink=lambda _: None)
    assert run_training_job("stage1", "tiny", **kw).status.succeeded
    backend.shares_filesystem = False
    with pytest.raises(ValueError, match="local path"):
        run_training_job("stage1", "tiny", **kw)


def test_cpu_jobs_ask_for_no_gpu():
    job = build(nodes=2, gpus_per_node=0, node_pool="cpu", procs_per_node=2)
    c = pod(job, "Worker")["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert job["spec"]["nprocPerNode"] == "2"


def test_run_policy_scheduling_and_elastic():
    job = build(nodes=4, backoff_limit=5, ttl_seconds_after_finished=60,
                active_deadline_seconds=3600, clean_pod_policy="All", gang_scheduling=True,
                queue="research", priority_class="high")
    assert job["spec"]["runPolicy"] == {
        "activeDeadlineSeconds": 3600, "backoffLimit": 5, "cleanPodPolicy": "All",
        "schedulingPolicy": {"minAvailable": 4, "priorityClass": "high", "queue": "research"},
        "ttlSecondsAfterFinished": 60}
    assert pod(job)["spec"]["priorityClassName"] == "high"
    assert build(nodes=3)["spec"]["runPolicy"]["backoffLimit"] == 9  # 3 x nodes
    elastic = build(nodes=2, elastic_min_nodes=1, elastic_max_nodes=4)
    assert list(elastic["spec"]["pytorchReplicaSpecs"]) == ["Worker"]
    assert elastic["spec"]["elasticPolicy"]["minReplicas"] == 1
    assert elastic["spec"]["elasticPolicy"]["maxReplicas"] == 4
    assert pytorchjob_errors(elastic) == []


def test_labels_carry_run_id_and_stage_on_job_and_pods():
    long_id = "run-" + "x" * 80
    job = build(run_id=long_id, labels={"team": "video"})
    for labels in (job["metadata"]["labels"], pod(job)["metadata"]["labels"]):
        assert labels["umt/stage"] == "stage1" and labels["team"] == "video"
        assert len(labels["umt/run-id"]) <= 63  # long ids shortened, still unique (hash)
    assert pod(job)["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert pytorchjob_errors(job) == []


def test_names_come_from_the_stage_and_its_output_folder():
    """Issue 16: one name per (stage, output folder) -- a retry and a rerun (another run id)
    find the job and adopt it; one component run twice in a run (other folders) gets two."""
    def name(**kw):
        kw.setdefault("validate_config", False)
        kw.setdefault("config", "b16")
        return job_name(TrainingJob(stage="stage1", **kw))

    a = name(nodes=4, run_id="r1", output_uri="s3://b/runs/stage1-aaa")
    assert name(nodes=8, run_id="r2", output_uri="s3://b/runs/stage1-aaa") == a
    assert name(run_id="r1", output_uri="s3://b/runs/stage1-bbb") != a
    assert name(run_id="r1", overrides=["train.output_dir=s3://b/runs/stage1-aaa"]) == a
    assert job_name(TrainingJob(stage="stage2", config="b16", validate_config=False,
                                output_uri="s3://b/runs/stage1-aaa")) != a
    # The loaded config's own folder counts when none is given.
    cfg = SimpleNamespace(train=SimpleNamespace(output_dir="s3://b/runs/stage1-aaa"))
    assert job_name(TrainingJob(stage="stage1", validate_config=False), cfg) == a
    # No folder known: the whole request names it (run id included).
    no_out = name()
    assert no_out == name() and no_out != name(config="l16") and no_out != name(run_id="r1")
    assert a.startswith("umt-stage1-") and len(a) <= 48
    with pytest.raises(ValueError, match="DNS-1035"):
        job_name(TrainingJob(stage="stage1", name="Bad_Name", validate_config=False))
    with pytest.raises(ValueError, match="at most 48"):
        job_name(TrainingJob(stage="stage1", name="a" * 49, validate_config=False))


@pytest.mark.parametrize("kw,match", [
    ({"nodes": 0}, "nodes"), ({"gpus_per_node": 9, "node_pool": "eks-p4d"}, "at most 8"),
    ({"node_pool": "moon"}, "unknown node pool"), ({"restart_policy": "Sometimes"}, "restart"),
    ({"elastic_min_nodes": 1}, "both"), ({"stage": "stage9"}, "unknown stage"),
])
def test_bad_requests_fail_early(kw, match):
    with pytest.raises(ValueError, match=match):
        build(**kw)


def test_every_registered_stage_renders_with_its_config_checked():
    from umt.launch.manifests import stage_job

    for stage in catalogue.STAGES:  # with the data / checkpoint its shipped manifest names
        job = to_dict(build_pytorchjob(stage_job(stage)))
        assert pytorchjob_errors(job) == []
    with pytest.raises(ValueError, match="stepz"):
        build_pytorchjob(TrainingJob(stage="stage1", config="tiny", overrides=["train.stepz=1"]))


def test_typed_model_round_trips_through_dict_and_yaml():
    job = build_pytorchjob(TrainingJob(stage="stage1", nodes=2, validate_config=False))
    typed = "KubeflowOrgV1PyTorchJob"
    assert to_dict(from_dict(to_dict(job), typed)) == to_dict(job)
    assert to_dict(from_yaml(to_yaml(job), typed)) == to_dict(job)
    assert from_yaml(to_yaml(job), typed).spec.pytorch_replica_specs["Worker"].replicas == 1


def test_config_files_flatten_to_overrides_that_load_back():
    data = {"train": {"steps": 5, "output_dir": "s3://b/x", "precision": "null",
                      "tag": "1e-4", "empty": ""},
            "optim": {"betas": [0.9, 0.95], "clip_grad": None, "fused": False},
            "teacher": {"vision_cfg": {}}}
    assert OmegaConf.to_container(OmegaConf.from_dotlist(flatten_config(data))) == data


def test_run_training_job_writes_the_yaml_it_submits(tmp_path):
    backend, lines = Recorder(SUMMARY), []
    out = tmp_path / "artifacts" / "job.yaml"
    result = run_training_job("stage1", "tiny", nodes=2, backend=backend,
                              rendered_yaml_path=str(out), log_sink=lines.append,
                              validate_config=False, output_uri=str(tmp_path / "run"),
                              allow_local_output=True)
    assert yaml.safe_load(out.read_text()) == backend.job
    assert result.status.succeeded and lines == ["hello"]
    with pytest.raises(TypeError, match="unknown job options"):
        run_training_job("stage1", backend=backend, nodez=3)
