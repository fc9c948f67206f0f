"""Pre-flight checks, run before any GPU is spent: ``umt doctor``.

1. the cluster answers (kubeconfig or in-cluster service account);
2. the PyTorchJob CRD is installed and serves ``kubeflow.org/v1`` (read from the CRD itself, or
   from API discovery when, as in Kubeflow profile namespaces, users may not read CRDs);
3. we may create, list and delete pytorchjobs and read pod logs in the namespace
   (SelfSubjectAccessReview: asks the API server, so RBAC, webhooks and aggregation agree);
4. the S3 Secret the jobs' pods read their credentials from (default ``umt-s3``) exists in the
   namespace with non-empty required keys (a pod referencing a missing Secret or key never
   starts: CreateContainerConfigError). Reading Secrets is not in the launcher's Role, so when we
   may not, that is a warning, not a failure;
5. the S3 output prefix is writable *with the caller's credentials*: write, read back and delete
   a marker object.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from umt.launch.kube import Cluster, connect
from umt.launch.pytorchjob import API_VERSION, PLURAL, S3Credentials

CRD_NAME = f"{PLURAL}.kubeflow.org"
INSTALL_HINT = ('kubectl apply --server-side -k "github.com/kubeflow/training-operator.git/'
                'manifests/overlays/standalone?ref=v1.9.1"')
# (verb, resource, subresource) the launcher uses -- all of them, and all that Role umt-launcher
# (manifests/base/role.yaml) grants: create/get/delete a job, list a run's jobs (gc), get/list
# its pods (why they cannot start), read the master's log. Waiting polls; nothing watches.
NEEDED = [("create", PLURAL, ""), ("get", PLURAL, ""), ("list", PLURAL, ""),
          ("delete", PLURAL, ""), ("get", "pods", ""), ("list", "pods", ""),
          ("get", "pods", "log")]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # ok, but could not be verified (or is worth a look)


def check_crd(cluster: Cluster) -> Check:
    group, version = API_VERSION.split("/")
    try:
        crd = client.ApiextensionsV1Api(cluster.api_client).read_custom_resource_definition(
            CRD_NAME)
        served = [v.name for v in crd.spec.versions if v.served]
        if version not in served:
            return Check("PyTorchJob CRD", False, f"{CRD_NAME} serves {served}, not {version}")
        return Check("PyTorchJob CRD", True, f"{CRD_NAME} serves {version}")
    except ApiException as e:
        if e.status == 404:
            return Check("PyTorchJob CRD", False, f"{CRD_NAME} is not installed: {INSTALL_HINT}")
        if e.status != 403:
            return Check("PyTorchJob CRD", False, f"cannot read {CRD_NAME}: {e.status} {e.reason}")
    try:  # no permission to read CRDs: ask API discovery, which every user may read
        resources = client.CustomObjectsApi(cluster.api_client).get_api_resources(group, version)
        if any(r.name == PLURAL for r in resources.resources):
            return Check("PyTorchJob CRD", True, f"{API_VERSION} {PLURAL} (API discovery)")
    except ApiException:
        pass
    return Check("PyTorchJob CRD", False, f"{API_VERSION} {PLURAL} not served: {INSTALL_HINT}")


def check_rbac(cluster: Cluster, namespace: str) -> Check:
    group = API_VERSION.split("/")[0]
    auth = client.AuthorizationV1Api(cluster.api_client)
    missing = []
    for verb, resource, sub in NEEDED:
        review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                namespace=namespace, verb=verb, resource=resource, subresource=sub or None,
                group=group if resource == PLURAL else "")))
        try:
            allowed = auth.create_self_subject_access_review(review).status.allowed
        except ApiException as e:
            return Check("RBAC", False, f"SelfSubjectAccessReview failed: {e.status} {e.reason}")
        if not allowed:
            missing.append(f"{verb} {resource}{'/' + sub if sub else ''}")
    if missing:
        return Check("RBAC", False, f"not allowed in namespace {namespace}: {', '.join(missing)} "
                                    "(apply manifests/base: Role umt-launcher)")
    return Check("RBAC", True, f"may create/list/delete pytorchjobs and read pod logs in "
                               f"{namespace}")


def check_s3_secret(cluster: Cluster, namespace: str, secret: str = "umt-s3") -> Check:
    name = "S3 secret"
    keys = S3Credentials(secret=secret).keys.values()
    required = [key for key, optional in keys if not optional]
    create = (f"kubectl -n {namespace} create secret generic {secret} "
              + " ".join(f"--from-literal={k}=..." for k in required))
    try:
        obj = client.CoreV1Api(cluster.api_client).read_namespaced_secret(
            secret, namespace, _request_timeout=15)
    except ApiException as e:
        if e.status == 404:
            return Check(name, False, f"Secret {secret} not found in namespace {namespace}; the "
                                      f"training pods would never start: {create} (or render "
                                      "jobs with --s3-secret '' for IRSA / workload identity)")
        if e.status == 403:
            return Check(name, True, f"may not read Secret {secret} in {namespace}, so it is "
                                     "unchecked: make sure it exists with keys "
                                     f"{', '.join(required)} (docs/cluster.md, section 2)",
                         warning=True)
        return Check(name, False, f"cannot read Secret {secret}: {e.status} {e.reason}")
    data = {k: base64.b64decode(v or "") for k, v in (obj.data or {}).items()}
    data.update({k: (v or "").encode() for k, v in (obj.string_data or {}).items()})
    missing = [k for k in required if k not in data]
    empty = [k for k in required if k in data and not data[k].strip()]
    if missing or empty:
        problems = ([f"lacks {', '.join(missing)}"] if missing else []) + (
            [f"has empty {', '.join(empty)}"] if empty else [])
        return Check(name, False, f"Secret {secret} in {namespace} {' and '.join(problems)}: "
                                  f"{create}")
    optional = [k for k, opt in keys if opt and k in data]
    return Check(name, True, f"Secret {secret} in {namespace} has {', '.join(required)}"
                             + (f" (and {', '.join(optional)})" if optional else ""))


def check_output(output_uri: str) -> Check:
    from umt import storage

    marker = storage.join(output_uri, f".umt-doctor-{uuid.uuid4().hex[:12]}")
    try:
        storage.write_bytes(marker, b"umt doctor\n")
        if storage.read_bytes(marker) != b"umt doctor\n":
            return Check("output", False, f"{marker} read back differently")
        storage.delete(marker)
        if storage.exists(marker):
            return Check("output", False, f"could write but not delete {marker}")
    except Exception as e:  # any storage error is the answer to "is it writable?"
        return Check("output", False, f"cannot write under {output_uri}: {e}")
    return Check("output", True, f"{output_uri} is writable")


def run_checks(*, namespace: str | None = None, kubeconfig: str | None = None,
               context: str | None = None, output_uri: str | None = None,
               cluster: Cluster | None = None, s3_secret: str | None = "umt-s3") -> list[Check]:
    """``s3_secret=None``: the jobs get S3 access another way (IRSA, workload identity)."""
    checks = []
    try:
        cluster = cluster or connect(kubeconfig, context, namespace)
        client.VersionApi(cluster.api_client).get_code(_request_timeout=15)
        checks.append(Check("cluster", True, f"{cluster.api_client.configuration.host}, "
                                             f"namespace {cluster.namespace}"))
    except ApiException as e:
        checks.append(Check("cluster", False, f"API server answered {e.status} {e.reason}"))
        cluster = None
    except Exception as e:  # no cluster: say so and skip what needs one
        checks.append(Check("cluster", False, str(e)))
        cluster = None
    if cluster is not None:
        checks.append(check_crd(cluster))
        checks.append(check_rbac(cluster, namespace or cluster.namespace))
        if s3_secret:
            checks.append(check_s3_secret(cluster, namespace or cluster.namespace, s3_secret))
    if output_uri:
        checks.append(check_output(output_uri))
    return checks
