"""The project's Kubeflow Trainer v2 runtime: the ``TrainingRuntime`` every umt TrainJob runs on.

    python -m umt.launch.manifests        # writes it to manifests/runtime/trainingruntime.yaml
    kubectl -n umt apply -k manifests/runtime

A TrainJob names a runtime (``runtimeRef``) and brings only what varies per job: image, command,
env, node count, processes and resources per node (``trainer``), the deadline, and a
``runtimePatches`` entry (the per-job overrides field of Trainer v2.3.0, called
``podTemplateOverrides`` and ``podSpecOverrides`` in earlier releases) for what a TrainJob may
patch into its pods: node selector, tolerations, affinity, volumes, service account, the
termination grace period, pod labels. What no TrainJob can carry is here, once:

* the torch ML policy: the Trainer's torch plugin sets ``PET_NNODES``, ``PET_NPROC_PER_NODE``,
  ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` / ``PET_MASTER_PORT`` on the ``node`` container, which
  ``torchrun`` reads, so our ``torchrun -m umt.train.<stage>`` runs unchanged (as under the
  Training Operator's PyTorchJob);
* restarts (JobSet's failure policy): pods never restart in place (``restartPolicy: Never``,
  the node Job's ``backoffLimit: 0``), so one failed node fails the node Job and JobSet
  recreates *every* pod, which a torchrun static rendezvous needs anyway; the stage then
  resumes from its last checkpoint. ``maxRestarts: 3`` crashes fail the TrainJob; a pod taken
  away by a disruption (spot preemption, node drain: the ``DisruptionTarget`` condition) fails
  the Job by its pod failure policy and restarts the JobSet *without* spending a restart;
* the pod hardening of every umt pod (:mod:`umt.launch.request`): UID 1000, no privilege
  escalation, no capabilities, seccomp ``RuntimeDefault``, a read-only root with ``emptyDir``
  volumes for ``/tmp`` and ``$HOME``, ``/dev/shm`` in memory; the ``umt-training`` service
  account (no API token); no Istio sidecar; ``imagePullPolicy: IfNotPresent``.

It is a namespaced ``TrainingRuntime``, not a ``ClusterTrainingRuntime``: it ships with the rest
of the namespace's objects (nothing cluster-scoped, like the rest of ``manifests/``), a profile
owner may apply it without cluster-admin, and its service account is one of that namespace.
"""

from __future__ import annotations

from typing import Any

from umt.launch import crd, request
from umt.launch.images import TRAIN_IMAGE, default_image, release_image
from umt.launch.serialize import to_dict

API_VERSION = "trainer.kubeflow.org/v1alpha1"
GROUP = "trainer.kubeflow.org"
KIND = "TrainingRuntime"
PLURAL = "trainingruntimes"
NAME = "umt-torch"
CRD_PATH = crd.CRDS / "trainer.kubeflow.org_trainingruntimes.v2.3.0.yaml"
# The Trainer's names: the trainer's replicated job and container are both "node", and the
# ancestor label tells the Trainer which replicated job the TrainJob's ``trainer`` fills in.
NODE = "node"
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
MAX_RESTARTS = 3
# /dev/shm when a job does not say (the GPU pools' default): the TrainJob patches its own.
DEFAULT_SHM = "64Gi"


def pod_template() -> dict[str, Any]:
    """The node pod as every umt job runs it, without what a job sets itself (placement,
    resources, command)."""
    # The release tag: a shipped manifest cannot name the commit it is part of, and every
    # TrainJob names its own image (the trainer's), which replaces this one.
    req = request.TrainingJob(stage="stage1", validate_config=False, gpus_per_node=0,
                              node_pool="cpu", shm_size=DEFAULT_SHM, s3=None,
                              image=release_image(TRAIN_IMAGE), image_pull_secrets=[])
    main = request.container(req, NODE)
    main.command = main.resources = main.env = None  # the TrainJob's trainer brings them
    template = to_dict(request.pod_template(req, {request.LABEL_PART_OF: "umt"}, main))
    template["spec"]["restartPolicy"] = "Never"  # see the module docstring: JobSet restarts
    return template


def runtime() -> dict[str, Any]:
    """The ``TrainingRuntime`` object (validated against the Trainer v2.3.0 CRD)."""
    obj = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": NAME, "labels": {"trainer.kubeflow.org/framework": "torch",
                                              request.LABEL_PART_OF: "umt"}},
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {"spec": {
                "failurePolicy": {
                    "maxRestarts": MAX_RESTARTS,
                    "rules": [{
                        # A Job failed by its pod failure policy lost a pod to a disruption.
                        "name": "disrupted-nodes-restart-for-free",
                        "action": "RestartJobSetAndIgnoreMaxRestarts",
                        "onJobFailureReasons": ["PodFailurePolicy"],
                    }],
                },
                "replicatedJobs": [{
                    "name": NODE,
                    "template": {
                        "metadata": {"labels": {ANCESTOR_LABEL: "trainer"}},
                        "spec": {
                            "backoffLimit": 0,
                            "podFailurePolicy": {"rules": [{
                                "action": "FailJob",
                                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                            }]},
                            "template": pod_template(),
                        },
                    },
                }],
            }},
        },
    }
    validate_runtime(obj)
    return obj


def runtime_errors(obj: dict[str, Any]) -> list[str]:
    """The CRD's schema (unknown fields rejected) and the rules the Trainer checks of a runtime
    our TrainJobs use: one ``node`` replicated job with the trainer ancestor label and a
    ``node`` container."""
    errs = crd.schema_errors(obj, CRD_PATH, "v1alpha1")
    jobs = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
        "replicatedJobs") or []
    node = next((j for j in jobs if j.get("name") == NODE), None)
    if node is None:
        return errs + [f"trainer: spec.template.spec.replicatedJobs has no {NODE!r} job"]
    if ((node.get("template") or {}).get("metadata") or {}).get("labels", {}).get(
            ANCESTOR_LABEL) != "trainer":
        errs.append(f"trainer: replicated job {NODE!r} needs the label {ANCESTOR_LABEL}=trainer")
    containers = ((((node.get("template") or {}).get("spec") or {}).get("template") or {})
                  .get("spec") or {}).get("containers") or []
    if not any(c.get("name") == NODE for c in containers):
        errs.append(f"trainer: replicated job {NODE!r} needs a container named {NODE!r}")
    return errs


def validate_runtime(obj: dict[str, Any]) -> None:
    errors = runtime_errors(obj)
    if errors:
        raise crd.InvalidJobError((obj.get("metadata") or {}).get("name", "?"), errors, KIND)


def node_pod(runtime_obj: dict[str, Any]) -> dict[str, Any]:
    """The ``node`` pod template of a runtime."""
    jobs = runtime_obj["spec"]["template"]["spec"]["replicatedJobs"]
    return next(j for j in jobs if j["name"] == NODE)["template"]["spec"]["template"]


def image_of(runtime_obj: dict[str, Any]) -> str:
    node = next(c for c in node_pod(runtime_obj)["spec"]["containers"] if c["name"] == NODE)
    return node.get("image") or default_image()
