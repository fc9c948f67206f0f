"""Which job backend ``cluster`` (the default ``--backend``) means on the cluster at hand.

    umt doctor                      # says which kinds the cluster serves and which one is used

The answer comes from API discovery (every user may read it, also where CRDs are not readable,
as in Kubeflow profile namespaces): the first backend of
:data:`umt.launch.backend.CLUSTER_PREFERENCE` whose kind the cluster serves, i.e. ``trainjob``
when Kubeflow Trainer v2 is installed, else ``pytorchjob`` (Training Operator v1). TrainJob comes
first because the Training Operator is in maintenance only and no longer part of the Kubeflow
platform: a cluster serving both is one moving to Trainer v2, and new jobs should land there.

With no cluster to ask (no kubeconfig, not in a pod: ``umt job render`` on a laptop) or one
that does not answer, ``cluster`` is :data:`umt.launch.backend.CLUSTER_DEFAULT`, so rendering
never needs a cluster; pass ``--backend trainjob|pytorchjob`` to choose yourself.
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from umt.launch.backend import CLUSTER, CLUSTER_DEFAULT, CLUSTER_PREFERENCE, backend_class

__all__ = ["CLUSTER_PREFERENCE", "cluster_backend", "resolve", "served", "served_backends"]
from umt.launch.kube import Cluster, connect

log = logging.getLogger(__name__)
DISCOVERY_TIMEOUT = 10.0


def served(cluster: Cluster, api_version: str, plural: str) -> bool:
    """Whether the cluster serves ``plural`` in ``api_version`` (API discovery)."""
    group, version = api_version.split("/")
    try:
        resources = client.CustomObjectsApi(cluster.api_client).get_api_resources(
            group, version, _request_timeout=DISCOVERY_TIMEOUT)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return any(r.name == plural for r in resources.resources)


def served_backends(cluster: Cluster) -> dict[str, bool]:
    """backend name -> whether the cluster serves its kind, for the cluster backends."""
    out = {}
    for name in CLUSTER_PREFERENCE:
        cls = backend_class(name)
        out[name] = served(cluster, cls.api_version, cls.plural)
    return out


def cluster_backend(cluster: Cluster) -> str:
    """The backend ``cluster`` means on ``cluster``; RuntimeError when it serves none."""
    kinds = served_backends(cluster)
    for name in CLUSTER_PREFERENCE:
        if kinds[name]:
            return name
    hints = "; ".join(f"{backend_class(n).kind}: {backend_class(n).install_hint}"
                      for n in CLUSTER_PREFERENCE)
    raise RuntimeError(f"the cluster serves no training job kind umt runs ({hints})")


def resolve(backend: Any, *, kubeconfig: str | None = None, context: str | None = None,
            namespace: str | None = None, cluster: Cluster | None = None) -> Any:
    """``backend`` itself, unless it is ``cluster``: then the name of the backend that
    cluster runs (see the module docstring)."""
    if backend != CLUSTER:
        return backend
    try:
        cluster = cluster or connect(kubeconfig, context, namespace)
        name = cluster_backend(cluster)
    except RuntimeError as e:
        if "serves no training job kind" in str(e):
            raise
        log.info("no cluster to ask which job kind it runs (%s): using %s", e, CLUSTER_DEFAULT)
        return CLUSTER_DEFAULT
    except Exception as e:  # the API server is unreachable or refuses: rendering goes on
        log.warning("could not ask the cluster which job kind it runs (%s): using %s (pass "
                    "--backend to choose)", e, CLUSTER_DEFAULT)
        return CLUSTER_DEFAULT
    log.info("the cluster runs %s jobs: backend %s", backend_class(name).kind, name)
    return name
