"""Connecting to the cluster: which API server, which credentials, which namespace.

Order, as kubectl users expect: an explicit kubeconfig/context, then ``$KUBECONFIG`` /
``~/.kube/config``, then the pod's service account (a KFP launcher step runs in-cluster).
The namespace follows the same order: explicit, the kubeconfig context's namespace, the
service account's namespace, ``default``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass
class Cluster:
    api_client: client.ApiClient
    namespace: str

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api_client)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)


def connect(kubeconfig: str | None = None, context: str | None = None,
            namespace: str | None = None) -> Cluster:
    """An API client and the namespace to use; raises ``RuntimeError`` with a hint if none."""
    configuration = client.Configuration()
    context_namespace = None
    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG")
    default_kubeconfig = Path(os.path.expanduser(config.KUBE_CONFIG_DEFAULT_LOCATION))
    try:
        if kubeconfig or default_kubeconfig.exists():
            # KUBECONFIG may list several files separated by ':'; the client merges them.
            config.load_kube_config(config_file=kubeconfig, context=context,
                                    client_configuration=configuration)
            _, active = config.list_kube_config_contexts(config_file=kubeconfig)
            if context:
                contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)
                active = next((c for c in contexts if c["name"] == context), active)
            context_namespace = (active or {}).get("context", {}).get("namespace")
        else:
            config.load_incluster_config(client_configuration=configuration)
    except ConfigException as e:
        raise RuntimeError(
            "no Kubernetes cluster configured: set KUBECONFIG (or ~/.kube/config) or run "
            f"inside a pod with a service account ({e})") from None
    if namespace is None:
        namespace = context_namespace or (
            SA_NAMESPACE_FILE.read_text().strip() if SA_NAMESPACE_FILE.exists() else "default")
    return Cluster(client.ApiClient(configuration), namespace)
