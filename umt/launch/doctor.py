"""Pre-flight checks, run before any GPU is spent: ``umt doctor [--backend NAME]``.

1. the cluster answers (kubeconfig or in-cluster service account); with ``--backend cluster``
   (the default) which job kinds it serves and so which backend ``cluster`` means there
   (:mod:`umt.launch.detect`: TrainJob when Kubeflow Trainer v2 is installed, else PyTorchJob);
2. the backend's own checks (:meth:`umt.launch.backend.Backend.doctor_checks`): for a cluster
   backend, its CRD is installed and serves its version (read from the CRD itself, or from API
   discovery when, as in Kubeflow profile namespaces, users may not read CRDs), and we may use
   every verb it needs in the namespace -- create, list and delete its jobs, read pods and logs
   (SelfSubjectAccessReview: asks the API server, so RBAC, webhooks and aggregation agree); for
   TrainJobs also that the project runtime ``TrainingRuntime/umt-torch`` exists there;
3. the S3 Secret the jobs' pods read their credentials from (default ``umt-s3``) exists in the
   namespace with non-empty required keys (a pod referencing a missing Secret or key never
   starts: CreateContainerConfigError). Reading Secrets is not in the launcher's Role, so when we
   may not, that is a warning, not a failure;
4. the S3 output prefix is writable *with the caller's credentials*: write, read back and delete
   a marker object.

:func:`needed_permissions` is every verb any backend uses: exactly what Role ``umt-launcher``
(``manifests/base/role.yaml``) grants (a test checks), so a backend's Role rule is all it adds.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from umt.launch.backend import CLUSTER, Permission, backend_class, discover
from umt.launch.kube import Cluster, connect
from umt.launch.request import S3Credentials


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # ok, but could not be verified (or is worth a look)


# Besides the jobs, a pipeline's launcher and exit task read the run's own Argo Workflow, to
# tell a terminated run from a drained launcher pod (umt.pipeline.run_state).
RUN_PERMISSIONS = [Permission("get", "workflows", "argoproj.io")]


def needed_permissions() -> list[Permission]:
    """Every RBAC verb of every registered backend, once each, and :data:`RUN_PERMISSIONS`."""
    out: list[Permission] = []
    for cls in discover().values():
        out += [p for p in cls.permissions() if p not in out]
    return out + [p for p in RUN_PERMISSIONS if p not in out]


def check_crd(cluster: Cluster, title: str, api_version: str, plural: str,
              install_command: str) -> Check:
    """The CRD of ``plural`` is installed and serves ``api_version``."""
    group, version = api_version.split("/")
    crd_name = f"{plural}.{group}"
    try:
        crd = client.ApiextensionsV1Api(cluster.api_client).read_custom_resource_definition(
            crd_name)
        served = [v.name for v in crd.spec.versions if v.served]
        if version not in served:
            return Check(title, False, f"{crd_name} serves {served}, not {version}")
        return Check(title, True, f"{crd_name} serves {version}")
    except ApiException as e:
        if e.status == 404:
            return Check(title, False, f"{crd_name} is not installed: {install_command}")
        if e.status != 403:
            return Check(title, False, f"cannot read {crd_name}: {e.status} {e.reason}")
    try:  # no permission to read CRDs: ask API discovery, which every user may read
        resources = client.CustomObjectsApi(cluster.api_client).get_api_resources(group, version)
        if any(r.name == plural for r in resources.resources):
            return Check(title, True, f"{api_version} {plural} (API discovery)")
    except ApiException:
        pass
    return Check(title, False, f"{api_version} {plural} not served: {install_command}")


def check_rbac(cluster: Cluster, namespace: str, needed: list[Permission],
               allowed_text: str) -> Check:
    """We may use every verb of ``needed`` in ``namespace`` (``allowed_text``: what it says
    when we may)."""
    auth = client.AuthorizationV1Api(cluster.api_client)
    missing = []
    for perm in needed:
        review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                namespace=namespace, verb=perm.verb, resource=perm.resource,
                subresource=perm.subresource or None, group=perm.group)))
        try:
            allowed = auth.create_self_subject_access_review(review).status.allowed
        except ApiException as e:
            return Check("RBAC", False, f"SelfSubjectAccessReview failed: {e.status} {e.reason}")
        if not allowed:
            missing.append(str(perm))
    if missing:
        return Check("RBAC", False, f"not allowed in namespace {namespace}: {', '.join(missing)} "
                                    "(apply manifests/base: Role umt-launcher)")
    return Check("RBAC", True, f"{allowed_text} in {namespace}")


def check_backend(cluster: Cluster) -> tuple[Check, str]:
    """Which job kinds the cluster serves, and the backend ``cluster`` means there."""
    from umt.launch.detect import CLUSTER_PREFERENCE, served_backends

    try:
        kinds = served_backends(cluster)
    except ApiException as e:
        return Check("backend", False, f"API discovery failed: {e.status} {e.reason}"), \
            CLUSTER_PREFERENCE[0]
    found = [name for name in CLUSTER_PREFERENCE if kinds[name]]
    listing = ", ".join(f"{backend_class(n).kind} {'served' if kinds[n] else 'not served'}"
                        for n in CLUSTER_PREFERENCE)
    if not found:
        return Check("backend", False, f"{listing}: install Kubeflow Trainer v2 (or the Training "
                                       "Operator v1), docs/cluster.md section 1"), \
            CLUSTER_PREFERENCE[0]
    return Check("backend", True, f"{listing}: --backend cluster means {found[0]}"), found[0]


def check_runtime(cluster: Cluster, namespace: str) -> Check:
    """The project's TrainingRuntime exists in ``namespace`` (TrainJobs name it)."""
    from umt.launch import trainer_runtime as tr

    title = "runtime"
    try:
        client.CustomObjectsApi(cluster.api_client).get_namespaced_custom_object(
            tr.GROUP, tr.API_VERSION.split("/")[1], namespace, tr.PLURAL, tr.NAME,
            _request_timeout=15)
    except ApiException as e:
        if e.status == 404:
            return Check(title, False, f"{tr.KIND} {tr.NAME} not found in {namespace}: "
                                       f"kubectl -n {namespace} apply -k manifests/runtime")
        if e.status == 403:
            return Check(title, True, f"may not read {tr.PLURAL} in {namespace}: make sure "
                                      f"{tr.KIND} {tr.NAME} exists (manifests/runtime)",
                         warning=True)
        return Check(title, False, f"cannot read {tr.KIND} {tr.NAME}: {e.status} {e.reason}")
    return Check(title, True, f"{tr.KIND} {tr.NAME} in {namespace}")


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
               cluster: Cluster | None = None, s3_secret: str | None = "umt-s3",
               backend: str | Any = CLUSTER) -> list[Check]:
    """``s3_secret=None``: the jobs get S3 access another way (IRSA, workload identity);
    ``backend``: whose checks run (a name, or a backend)."""
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
        if backend == CLUSTER:
            found, backend = check_backend(cluster)
            checks.append(found)
        checks += backend_class(backend).doctor_checks(cluster, namespace or cluster.namespace)
        if s3_secret:
            checks.append(check_s3_secret(cluster, namespace or cluster.namespace, s3_secret))
    if output_uri:
        checks.append(check_output(output_uri))
    return checks
