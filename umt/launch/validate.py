"""Check a PyTorchJob the way a cluster would, before it costs a GPU-hour.

Layers, each named in its error messages:

* ``schema``: the Training Operator v1.9 CRD's ``openAPIV3Schema`` (shipped in ``crds/``), as a
  *structural* schema: unknown fields are errors (what ``kubectl apply`` does with server-side
  ``fieldValidation=Strict``; without it the API server silently *drops* a misspelt
  ``backoffLimt``), int-or-string fields accept both, and ``x-kubernetes-list-type: map`` keys
  must be unique (two env vars with one name are rejected by the API server).
* ``apiserver``: object-metadata rules the API server applies to every object (label syntax,
  names) and pod rules the kubelet would otherwise only report as a stuck pod (extended
  resources such as ``nvidia.com/gpu`` need requests == limits).
* ``webhook``: the Training Operator's validating webhook (``pkg/webhooks/pytorch``, release-1.9):
  DNS-1035 name, only Master/Worker replicas, a container named ``pytorch`` with an image,
  exactly one Master (``replicas: 1`` spelt out), Workers >= 1, elastic policy needs Workers,
  ``elasticPolicy.nProcPerNode`` excludes ``nprocPerNode``, supported ``runPolicy.managedBy``.
* ``operator`` / ``torchrun``: plain strings the schema accepts but that fail at run time:
  ``restartPolicy`` and ``cleanPodPolicy`` values, ``nprocPerNode`` forms (auto, cpu, gpu, int).

The same checks run in ``umt job render``, in the launcher before submitting, and inside the
tests' fake API server, so a job that passes here is one the real server accepts.
"""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import yaml

CRD_PATH = Path(__file__).parent / "crds" / "kubeflow.org_pytorchjobs.v1.9.yaml"

# Metadata fields a client may send (or read back and send again); the CRD leaves
# ``metadata`` as a bare object because the API server validates ObjectMeta itself.
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
        "uid": {"type": "string"},
        "resourceVersion": {"type": "string"},
        "generation": {"type": "integer"},
        "creationTimestamp": {"type": ["string", "null"]},
        "deletionTimestamp": {"type": ["string", "null"]},
        "deletionGracePeriodSeconds": {"type": "integer"},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
        "managedFields": {"type": "array", "items": {"type": "object"}},
        "selfLink": {"type": "string"},
    },
}

PYTORCH_CONTAINER = "pytorch"
REPLICA_TYPES = ("Master", "Worker")
MANAGED_BY = ("kubeflow.org/training-operator", "kueue.x-k8s.io/multikueue")
RESTART_POLICIES = ("OnFailure", "Always", "ExitCode", "Never")
CLEAN_POD_POLICIES = ("None", "Running", "All")

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"^{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_NPROC_FORMS = re.compile(r"^(auto|cpu|gpu|[1-9][0-9]*)$")
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


class InvalidJobError(ValueError):
    """A PyTorchJob the cluster would reject; ``errors`` lists every problem found."""

    def __init__(self, name: str, errors: list[str]):
        self.errors = errors
        super().__init__(f"PyTorchJob {name!r} is invalid:\n  - " + "\n  - ".join(errors))


@lru_cache(maxsize=None)
def load_crd(path: str = str(CRD_PATH)) -> dict[str, Any]:
    # The C loader when present: the CRD is 8000 lines and the pure-Python parser takes ~2 s.
    return yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def crd_version_schema(crd: dict[str, Any], version: str = "v1") -> dict[str, Any]:
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise ValueError(f"CRD {crd['metadata']['name']} has no version {version}")


def structural(node: Any) -> Any:
    """Translate Kubernetes' OpenAPI dialect into plain JSON Schema with K8s semantics."""
    if isinstance(node, list):
        return [structural(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: structural(v) for k, v in node.items() if k != "description"}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    # Structural schemas prune (or, strictly, reject) fields they do not declare.
    if out.get("type") == "object" and "properties" in out and not preserve:
        out.setdefault("additionalProperties", False)
    # CEL rules here are only transition rules (self == oldSelf), which a create cannot break.
    out.pop("x-kubernetes-validations", None)
    return out


@lru_cache(maxsize=None)
def _validator(path: str = str(CRD_PATH)) -> jsonschema.protocols.Validator:
    schema = structural(crd_version_schema(load_crd(path)))
    schema["properties"]["metadata"] = OBJECT_META_SCHEMA
    checker = jsonschema.FormatChecker()

    @checker.checks("int32")
    def _int32(value: Any) -> bool:
        return not isinstance(value, int) or _INT32[0] <= value <= _INT32[1]

    @checker.checks("int64")
    def _int64(value: Any) -> bool:
        return not isinstance(value, int) or _INT64[0] <= value <= _INT64[1]

    validator_cls = jsonschema.validators.extend(
        jsonschema.Draft7Validator, {"x-kubernetes-list-type": _list_type})
    return validator_cls(schema, format_checker=checker)


def _list_type(validator: Any, list_type: str, instance: Any, schema: dict) -> Iterator:
    """``x-kubernetes-list-type``: map items are unique by their keys, set items unique."""
    if not isinstance(instance, list):
        return
    if list_type == "set":
        seen: list[Any] = []
        for item in instance:
            if item in seen:
                yield jsonschema.ValidationError(f"duplicate entry {item!r} in a set")
            seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        props = schema.get("items", {}).get("properties", {})
        seen_keys: set[tuple] = set()
        for item in instance:
            if not isinstance(item, dict):
                continue
            # Keys with a default (ports' protocol: TCP) count as that default when absent.
            key = tuple(item.get(k, props.get(k, {}).get("default")) for k in keys)
            if key in seen_keys:
                yield jsonschema.ValidationError(
                    f"duplicate entry with {dict(zip(keys, key))} (keys must be unique)")
            seen_keys.add(key)


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


def schema_errors(job: dict[str, Any]) -> list[str]:
    errors = sorted(_validator().iter_errors(job), key=lambda e: list(map(str, e.absolute_path)))
    return [f"schema: {_path(e.absolute_path)}: {e.message}" for e in errors]


def _label_errors(where: str, labels: dict[str, Any] | None) -> list[str]:
    errs = []
    for key, value in (labels or {}).items():
        prefix, _, name = key.rpartition("/")
        if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
            errs.append(f"apiserver: {where} label key {key!r}: bad prefix")
        if not name or len(name) > 63 or not _LABEL_NAME.match(name):
            errs.append(f"apiserver: {where} label key {key!r}: bad name")
        if not isinstance(value, str) or len(value) > 63 or (
                value and not _LABEL_NAME.match(value)):
            errs.append(f"apiserver: {where} label {key}={value!r}: values are <= 63 chars of "
                        "[A-Za-z0-9-_.] starting and ending alphanumeric")
    return errs


def _replica_specs(job: dict[str, Any]) -> dict[str, Any]:
    specs = (job.get("spec") or {}).get("pytorchReplicaSpecs")
    return specs if isinstance(specs, dict) else {}


def apiserver_errors(job: dict[str, Any]) -> list[str]:
    errs = _label_errors("metadata", (job.get("metadata") or {}).get("labels"))
    for rtype, rspec in _replica_specs(job).items():
        template = (rspec or {}).get("template") or {}
        errs += _label_errors(f"{rtype} pod", (template.get("metadata") or {}).get("labels"))
        for c in (template.get("spec") or {}).get("containers") or []:
            res = c.get("resources") or {}
            limits, requests = res.get("limits") or {}, res.get("requests") or {}
            for key in set(limits) | set(requests):
                if "/" in key and not key.startswith("kubernetes.io/") and key in requests \
                        and str(requests.get(key)) != str(limits.get(key)):
                    errs.append(f"apiserver: {rtype} container {c.get('name')}: extended "
                                f"resource {key} needs requests == limits")
    return errs


def webhook_errors(job: dict[str, Any]) -> list[str]:
    """The Training Operator v1.9 validating webhook's rules, in its order."""
    errs = []
    name = (job.get("metadata") or {}).get("name") or ""
    if len(name) > 63 or not _DNS1035.match(name):
        errs.append(f"webhook: metadata.name {name!r} must be a DNS-1035 label (lowercase "
                    "letters, digits, '-', starting with a letter, <= 63 chars)")
    spec = job.get("spec") or {}
    managed_by = (spec.get("runPolicy") or {}).get("managedBy")
    if managed_by is not None and managed_by not in MANAGED_BY:
        errs.append(f"webhook: spec.runPolicy.managedBy {managed_by!r} not in {MANAGED_BY}")
    specs = spec.get("pytorchReplicaSpecs")
    elastic = spec.get("elasticPolicy")
    if elastic is not None:
        if "Worker" not in (specs or {}):
            errs.append("webhook: spec.pytorchReplicaSpecs[Worker] must be configured if "
                        "elastic policy is used")
        if elastic.get("nProcPerNode") is not None and spec.get("nprocPerNode") is not None:
            errs.append("webhook: spec.elasticPolicy.nProcPerNode must not be used with "
                        "spec.nprocPerNode")
    if not specs:
        errs.append("webhook: spec.pytorchReplicaSpecs is required")
        return errs
    for rtype, rspec in specs.items():
        where = f"spec.pytorchReplicaSpecs[{rtype}]"
        if rtype not in REPLICA_TYPES:
            errs.append(f"webhook: {where}: replica type must be one of {REPLICA_TYPES}")
        containers = ((((rspec or {}).get("template") or {}).get("spec") or {})
                      .get("containers") or [])
        if not containers:
            errs.append(f"webhook: {where}.template.spec.containers must be specified")
        for i, c in enumerate(containers):
            if not c.get("image"):
                errs.append(f"webhook: {where}.template.spec.containers[{i}].image is required")
        if not any(c.get("name") == PYTORCH_CONTAINER for c in containers):
            errs.append(f"webhook: {where}.template.spec.containers must have a container "
                        f"named {PYTORCH_CONTAINER!r}")
        replicas = (rspec or {}).get("replicas")
        if rtype == "Master" and replicas != 1:
            errs.append(f"webhook: {where}.replicas must be 1 (and spelt out)")
        elif rtype != "Master" and isinstance(replicas, int) and replicas < 1:
            errs.append(f"webhook: {where}.replicas must be at least 1")
    return errs


def runtime_errors(job: dict[str, Any]) -> list[str]:
    """Values the schema lets through (plain strings) but that break once the job runs."""
    errs = []
    spec = job.get("spec") or {}
    nproc = spec.get("nprocPerNode")
    if isinstance(nproc, str) and not _NPROC_FORMS.match(nproc):
        errs.append(f"torchrun: spec.nprocPerNode {nproc!r} must be auto, cpu, gpu or a "
                    "positive integer (as a string)")
    for rtype, rspec in _replica_specs(job).items():
        policy = (rspec or {}).get("restartPolicy")
        if policy is not None and policy not in RESTART_POLICIES:
            # The operator copies it into the pods, which the API server then refuses.
            errs.append(f"operator: spec.pytorchReplicaSpecs[{rtype}].restartPolicy {policy!r} "
                        f"not in {RESTART_POLICIES}")
    clean = (spec.get("runPolicy") or {}).get("cleanPodPolicy")
    if clean is not None and clean not in CLEAN_POD_POLICIES:
        errs.append(f"operator: spec.runPolicy.cleanPodPolicy {clean!r} not in "
                    f"{CLEAN_POD_POLICIES}")
    return errs


def pytorchjob_errors(job: dict[str, Any]) -> list[str]:
    """Every problem a cluster would find, schema first (the API server checks it first)."""
    job = copy.deepcopy(job)
    return schema_errors(job) + apiserver_errors(job) + webhook_errors(job) + runtime_errors(job)


def validate_pytorchjob(job: dict[str, Any]) -> None:
    """Raise :class:`InvalidJobError` listing every problem, or return quietly."""
    errors = pytorchjob_errors(job)
    if errors:
        raise InvalidJobError((job.get("metadata") or {}).get("name", "?"), errors)
