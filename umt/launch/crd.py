"""Check a job object the way the API server would, before it costs a GPU-hour.

Every backend validates its objects with these layers (its own rules come on top, in its
module), each named in its error messages:

* ``schema``: the CRD's ``openAPIV3Schema`` (shipped in ``crds/``) as a *structural* schema:
  unknown fields are errors (what ``kubectl apply`` does with server-side
  ``fieldValidation=Strict``; without it the API server silently *drops* a misspelt
  ``backoffLimt``), int-or-string fields accept both, and ``x-kubernetes-list-type: map`` keys
  must be unique (two env vars with one name are rejected by the API server);
* ``apiserver``: object-metadata rules the API server applies to every object (label syntax)
  and pod rules the kubelet would otherwise only report as a stuck pod (extended resources
  such as ``nvidia.com/gpu`` need requests == limits).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import yaml

CRDS = Path(__file__).parent / "crds"

# Metadata fields a client may send (or read back and send again); a CRD leaves ``metadata``
# as a bare object because the API server validates ObjectMeta itself.
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

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"^{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


class InvalidJobError(ValueError):
    """A job the cluster would reject; ``errors`` lists every problem found."""

    def __init__(self, name: str, errors: list[str], kind: str = "job"):
        self.errors = errors
        super().__init__(f"{kind} {name!r} is invalid:\n  - " + "\n  - ".join(errors))


@lru_cache(maxsize=None)
def load_crd(path: str) -> dict[str, Any]:
    # The C loader when present: a CRD is thousands of lines and the pure-Python parser is slow.
    return yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def crd_version_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
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
def validator(path: str, version: str) -> jsonschema.protocols.Validator:
    """The strict validator of the CRD at ``path`` (version ``version``), built once."""
    schema = structural(crd_version_schema(load_crd(path), version))
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


def schema_errors(obj: dict[str, Any], path: str | Path, version: str) -> list[str]:
    """``schema: <path>: <problem>`` for every way ``obj`` breaks the CRD's schema."""
    errors = sorted(validator(str(path), version).iter_errors(obj),
                    key=lambda e: list(map(str, e.absolute_path)))
    return [f"schema: {_path(e.absolute_path)}: {e.message}" for e in errors]


def label_errors(where: str, labels: dict[str, Any] | None) -> list[str]:
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


def apiserver_errors(obj: dict[str, Any], templates: dict[str, Any]) -> list[str]:
    """The object's labels, and for each pod template (``templates``: where -> template) its
    labels and extended resources."""
    errs = label_errors("metadata", (obj.get("metadata") or {}).get("labels"))
    for where, template in templates.items():
        template = template or {}
        errs += label_errors(f"{where} pod", (template.get("metadata") or {}).get("labels"))
        for c in (template.get("spec") or {}).get("containers") or []:
            res = c.get("resources") or {}
            limits, requests = res.get("limits") or {}, res.get("requests") or {}
            for key in set(limits) | set(requests):
                if "/" in key and not key.startswith("kubernetes.io/") and key in requests \
                        and str(requests.get(key)) != str(limits.get(key)):
                    errs.append(f"apiserver: {where} container {c.get('name')}: extended "
                                f"resource {key} needs requests == limits")
    return errs
