"""Where training pods land: A100 node pools per cloud (node selectors, tolerations, affinity).

A GPU type is not a Kubernetes resource (``nvidia.com/gpu`` counts any NVIDIA GPU), so pinning
A100s needs a node label. Each cloud labels its GPU nodes differently; the same labels are used by
the kustomize overlays in ``manifests/overlays/`` (a test checks both agree).

Every GPU pool tolerates ``nvidia.com/gpu:NoSchedule``: GKE taints GPU nodes with it automatically
and it is the usual taint elsewhere, so that CPU pods stay off expensive nodes.

Spot (preemptible) nodes: each cloud labels them, and GKE/AKS taint them, in its own way, so a job
asking for spot capacity (``--spot``) adds the pool's spot selector and toleration:

* GKE: label ``cloud.google.com/gke-spot=true``; the taint of the same key is GKE's documented
  way to keep other pods off spot pools, so it is tolerated;
* EKS managed node groups: label ``eks.amazonaws.com/capacityType=SPOT`` (no taint);
* AKS: spot pools are labelled and tainted ``kubernetes.azure.com/scalesetpriority=spot``.

A spot node may go with 30 s (GKE, AKS) to 2 min (EKS) notice: the pod gets SIGTERM, and the
training process checkpoints within ``terminationGracePeriodSeconds`` (``--termination-grace``).

Each pool also lists the machine types it may hand out (GPUs, vCPUs, memory), so that default
CPU/memory requests are capped to what the smallest machine that can take the pod holds, less
headroom for the kubelet's reservations and the daemonsets (a pod that asks for more than a node
has stays Pending forever, e.g. 8 CPUs x 16 GPUs = 128 on a 96-vCPU a2-megagpu-16g).
"""

from __future__ import annotations

import math
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
# Share of a machine's vCPUs and memory a pod may ask for: the kubelet's system/kube reservations
# and eviction threshold plus the daemonsets (device plugin, DCGM exporter, CNI, logging, CSI)
# take the rest. GKE/EKS/AKS reserve ~0.3 CPU and 2-6 % of memory on these machines; 90 % leaves
# room for daemonsets on top.
USABLE_FRACTION = 0.9


@dataclass(frozen=True)
class Machine:
    """One machine type of a pool: its GPUs, vCPUs and memory (GiB) per node."""

    name: str
    gpus: int
    vcpus: int
    memory_gib: int

    @property
    def usable_cpu(self) -> int:
        return math.floor(self.vcpus * USABLE_FRACTION)

    @property
    def usable_memory_gib(self) -> int:
        return math.floor(self.memory_gib * USABLE_FRACTION)


@dataclass(frozen=True)
class Fabric:
    """A pool's multi-node GPU network (RDMA): what a training pod requests to use it, and the
    environment NCCL (through the image's libfabric / IB verbs plugin) needs. Without it NCCL
    falls back to TCP sockets: correct, several times slower across nodes."""

    name: str
    resources: dict[str, str]  # extended resources, as limits (requests follow)
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""


# AWS EFA on p4d/p4de: 4 EFA interfaces per node (the EFA device plugin's resource) and the
# huge pages libfabric uses; the image must carry the aws-ofi-nccl plugin and libfabric
# (AWS's "Get started with EFA and NCCL"; FI_EFA_USE_DEVICE_RDMA: p4d supports GPUDirect RDMA).
EFA_P4D = Fabric(
    "EFA", {"vpc.amazonaws.com/efa": "4", "hugepages-2Mi": "5120Mi"},
    {"FI_PROVIDER": "efa", "FI_EFA_USE_DEVICE_RDMA": "1"},
    "needs the EFA device plugin on the nodes and aws-ofi-nccl + libfabric in the image")
# Azure ND A100 v4: 8 HDR InfiniBand NICs, exposed by the NVIDIA Network Operator's RDMA shared
# device plugin (its default resource name below; match your plugin's configuration).
INFINIBAND_NDV4 = Fabric(
    "InfiniBand", {"rdma/rdma_shared_device_a": "1"},
    {"NCCL_IB_PCI_RELAXED_ORDERING": "1", "UCX_IB_PCI_RELAXED_ORDERING": "on",
     "NCCL_SOCKET_IFNAME": "eth0"},
    "needs the NVIDIA Network Operator (RDMA shared device plugin) and a memlock limit that "
    "allows RDMA registration; the pods' hardening drops all capabilities, so IPC_LOCK is not "
    "granted: raise the container runtime's memlock default on those nodes instead")


@dataclass(frozen=True)
class NodePool:
    """How to reach one kind of node. ``gpus_per_node`` is the largest a node offers;
    ``machines`` the machine types the pool may use (empty: unknown, requests not capped)."""

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
    machines: tuple[Machine, ...] = ()
    # Spot capacity of the pool (empty: the cloud has none we know how to select).
    spot_node_selector: dict[str, str] = field(default_factory=dict)
    spot_tolerations: tuple[V1Toleration, ...] = ()
    fabric: Fabric | None = None  # requested by GPU jobs on this pool (unless told not to)

    @property
    def has_spot(self) -> bool:
        return bool(self.spot_node_selector)

    def smallest_fit(self, gpus: int) -> Machine | None:
        """The smallest machine of the pool a pod with ``gpus`` GPUs may land on: default
        requests must fit it (None: the pool's machines are not known)."""
        fits = [m for m in self.machines if m.gpus >= gpus]
        return min(fits, key=lambda m: (m.vcpus, m.memory_gib)) if fits else None


def _node_label_in(key: str, *values: str) -> V1Affinity:
    return V1Affinity(node_affinity=V1NodeAffinity(
        required_during_scheduling_ignored_during_execution=V1NodeSelector(node_selector_terms=[
            V1NodeSelectorTerm(match_expressions=[V1NodeSelectorRequirement(
                key=key, operator="In", values=list(values))])
        ])))


def _instance_types(*types: str) -> V1Affinity:
    return _node_label_in("node.kubernetes.io/instance-type", *types)


# GPU Feature Discovery's product label of A100 SXM4 boards (PCIe cards: NVIDIA-A100-PCIE-40GB).
GFD_A100_PRODUCTS = ("NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-SXM4-80GB")

# EKS's A100 machines: 8 GPUs of 40 GB (p4d) or 80 GB (p4de), 96 vCPUs, 1152 GiB.
P4D = Machine("p4d.24xlarge", 8, 96, 1152)
P4DE = Machine("p4de.24xlarge", 8, 96, 1152)


# Spot capacity, per cloud (see the module docstring).
GKE_SPOT = {"cloud.google.com/gke-spot": "true"}
GKE_SPOT_TOLERATIONS = (V1Toleration(key="cloud.google.com/gke-spot", operator="Equal",
                                     value="true", effect="NoSchedule"),)
EKS_SPOT = {"eks.amazonaws.com/capacityType": "SPOT"}
AKS_SPOT = {"kubernetes.azure.com/scalesetpriority": "spot"}
AKS_SPOT_TOLERATIONS = (V1Toleration(key="kubernetes.azure.com/scalesetpriority",
                                     operator="Equal", value="spot", effect="NoSchedule"),)


def _eks_pool(name: str, machine: Machine, gpus: str) -> NodePool:
    """An EKS pool of one instance type (EKS labels every node with its instance type)."""
    return NodePool(name=name, description=f"EKS {machine.name} ({gpus})",
                    node_selector={"node.kubernetes.io/instance-type": machine.name},
                    tolerations=(GPU_TOLERATION,), machines=(machine,),
                    spot_node_selector=EKS_SPOT, fabric=EFA_P4D)


NODE_POOLS: dict[str, NodePool] = {pool.name: pool for pool in [
    NodePool(
        name="gke-a100",
        description="GKE a2-highgpu/megagpu (A100 40GB)",
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"},
        tolerations=(GPU_TOLERATION,),
        gpus_per_node=16,
        machines=(Machine("a2-highgpu-1g", 1, 12, 85), Machine("a2-highgpu-2g", 2, 24, 170),
                  Machine("a2-highgpu-4g", 4, 48, 340), Machine("a2-highgpu-8g", 8, 96, 680),
                  Machine("a2-megagpu-16g", 16, 96, 1360)),
        spot_node_selector=GKE_SPOT, spot_tolerations=GKE_SPOT_TOLERATIONS,
    ),
    NodePool(
        name="gke-a100-80gb",
        description="GKE a2-ultragpu (A100 80GB)",
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-a100-80gb"},
        tolerations=(GPU_TOLERATION,),
        machines=(Machine("a2-ultragpu-1g", 1, 12, 170), Machine("a2-ultragpu-2g", 2, 24, 340),
                  Machine("a2-ultragpu-4g", 4, 48, 680), Machine("a2-ultragpu-8g", 8, 96, 1360)),
        spot_node_selector=GKE_SPOT, spot_tolerations=GKE_SPOT_TOLERATIONS,
    ),
    _eks_pool("eks-p4d", P4D, "8x A100 40GB"),
    _eks_pool("eks-p4de", P4DE, "8x A100 80GB"),
    NodePool(
        name="eks-a100",
        description="EKS p4d or p4de, whichever has capacity (node affinity)",
        tolerations=(GPU_TOLERATION,),
        affinity=_instance_types(P4D.name, P4DE.name),
        machines=(P4D, P4DE),
        spot_node_selector=EKS_SPOT,
        fabric=EFA_P4D,
    ),
    NodePool(
        name="aks-a100",
        description="AKS Standard_ND96asr_v4 / ND96amsr_A100_v4 in a node pool named 'a100'",
        # agentpool is the AKS node-pool name (ours: 'a100'); the accelerator label is set by
        # AKS on GPU nodes. AKS docs taint GPU pools with sku=gpu:NoSchedule, so tolerate it too.
        node_selector={"agentpool": "a100", "kubernetes.azure.com/accelerator": "nvidia"},
        tolerations=(GPU_TOLERATION,
                     V1Toleration(key="sku", operator="Equal", value="gpu", effect="NoSchedule")),
        machines=(Machine("Standard_ND96asr_v4", 8, 96, 900),
                  Machine("Standard_ND96amsr_A100_v4", 8, 96, 1900)),
        spot_node_selector=AKS_SPOT, spot_tolerations=AKS_SPOT_TOLERATIONS,
        fabric=INFINIBAND_NDV4,
    ),
    NodePool(
        name="gfd-a100",
        description="Any cluster running NVIDIA GPU Feature Discovery (A100 SXM4 40GB or 80GB)",
        tolerations=(GPU_TOLERATION,),
        affinity=_node_label_in("nvidia.com/gpu.product", *GFD_A100_PRODUCTS),
        # Not known exactly: sized for the smallest 8x A100 SXM4 cloud machine (a2-highgpu-8g).
        machines=(Machine("8x A100 SXM4 (assumed)", 8, 96, 680),),
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


def placement(pool: NodePool, spot: bool = False) -> tuple[dict[str, str], list[V1Toleration]]:
    """(node selector, tolerations) of a pod on ``pool``, on its spot nodes with ``spot``."""
    selector, tolerations = dict(pool.node_selector), list(pool.tolerations)
    if spot:
        if not pool.has_spot:
            raise ValueError(f"--spot: node pool {pool.name} ({pool.description}) has no spot "
                             "capacity we know how to select; spot pools: "
                             + ", ".join(p.name for p in NODE_POOLS.values() if p.has_spot))
        selector.update(pool.spot_node_selector)
        tolerations += list(pool.spot_tolerations)
    return selector, tolerations


def get_node_pool(name: str) -> NodePool:
    try:
        return NODE_POOLS[name]
    except KeyError:
        raise ValueError(
            f"--node-pool: unknown node pool {name!r}; choose one of: {', '.join(NODE_POOLS)}"
        ) from None
