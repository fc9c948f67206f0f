"""Where training pods land: A100 node pools per cloud (node selectors, tolerations, affinity).

A GPU type is not a Kubernetes resource (``nvidia.com/gpu`` counts any NVIDIA GPU), so pinning
A100s needs a node label. Each cloud labels its GPU nodes differently; the same labels are used by
the kustomize overlays in ``manifests/overlays/`` (a test checks both agree).

Every GPU pool tolerates ``nvidia.com/gpu:NoSchedule``: GKE taints GPU nodes with it automatically
and it is the usual taint elsewhere, so that CPU pods stay off expensive nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubernetes.client import (
    V1Affinity,
    V1NodeAffinity,
    V1NodeSelector,
    V1NodeSelectorRequirement,
    V1NodeSelectorTerm,
    V1Toleration,
)

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = V1Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")


@dataclass(frozen=True)
class NodePool:
    """How to reach one kind of node. ``gpus_per_node`` is the largest a node offers."""

    name: str
    description: str
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[V1Toleration, ...] = ()
    # Required node affinity, for choices a selector cannot express ("p4d OR p4de").
    affinity: V1Affinity | None = None
    gpus_per_node: int = 8
    # GiB for /dev/shm: NCCL and DataLoader workers use shared memory; the container default
    # (64 MiB) makes multi-GPU runs crash with "Bus error".
    shm_gib: int = 64


def _instance_types(*types: str) -> V1Affinity:
    return V1Affinity(node_affinity=V1NodeAffinity(
        required_during_scheduling_ignored_during_execution=V1NodeSelector(node_selector_terms=[
            V1NodeSelectorTerm(match_expressions=[V1NodeSelectorRequirement(
                key="node.kubernetes.io/instance-type", operator="In", values=list(types))])
        ])))


NODE_POOLS: dict[str, NodePool] = {pool.name: pool for pool in [
    NodePool(
        name="gke-a100",
        description="GKE a2-highgpu/megagpu (A100 40GB)",
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"},
        tolerations=(GPU_TOLERATION,),
        gpus_per_node=16,
    ),
    NodePool(
        name="gke-a100-80gb",
        description="GKE a2-ultragpu (A100 80GB)",
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-a100-80gb"},
        tolerations=(GPU_TOLERATION,),
    ),
    NodePool(
        name="eks-p4d",
        description="EKS p4d.24xlarge (8x A100 40GB)",
        node_selector={"node.kubernetes.io/instance-type": "p4d.24xlarge"},
        tolerations=(GPU_TOLERATION,),
    ),
    NodePool(
        name="eks-p4de",
        description="EKS p4de.24xlarge (8x A100 80GB)",
        node_selector={"node.kubernetes.io/instance-type": "p4de.24xlarge"},
        tolerations=(GPU_TOLERATION,),
    ),
    NodePool(
        name="eks-a100",
        description="EKS p4d or p4de, whichever has capacity (node affinity)",
        tolerations=(GPU_TOLERATION,),
        affinity=_instance_types("p4d.24xlarge", "p4de.24xlarge"),
    ),
    NodePool(
        name="aks-a100",
        description="AKS Standard_ND96asr_v4 / ND96amsr_A100_v4 in a node pool named 'a100'",
        # agentpool is the AKS node-pool name (ours: 'a100'); the accelerator label is set by
        # AKS on GPU nodes. AKS docs taint GPU pools with sku=gpu:NoSchedule, so tolerate it too.
        node_selector={"agentpool": "a100", "kubernetes.azure.com/accelerator": "nvidia"},
        tolerations=(GPU_TOLERATION,
                     V1Toleration(key="sku", operator="Equal", value="gpu", effect="NoSchedule")),
    ),
    NodePool(
        name="gfd-a100",
        description="Any cluster running NVIDIA GPU Feature Discovery (A100 SXM4 80GB)",
        node_selector={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
        tolerations=(GPU_TOLERATION,),
    ),
    NodePool(
        name="nvidia",
        description="Any node with NVIDIA GPUs (toleration only; kustomize overlays add a pool)",
        tolerations=(GPU_TOLERATION,),
        gpus_per_node=16,
    ),
    NodePool(
        name="cpu",
        description="Any schedulable node, no GPU (kind/minikube, smoke tests, local executor)",
        gpus_per_node=0,
        shm_gib=1,
    ),
]}


def get_node_pool(name: str) -> NodePool:
    try:
        return NODE_POOLS[name]
    except KeyError:
        raise ValueError(
            f"unknown node pool {name!r}; choose one of: {', '.join(NODE_POOLS)}") from None
