"""Typed job objects <-> plain dicts and YAML, the way the API clients do it.

``to_dict`` uses the client's own serializer (camelCase keys, no ``None`` fields, datetimes as
RFC 3339), so what we print is what the launcher sends to the API server. Decoding uses the
kubeflow-training client, whose model namespace has both the ``KubeflowOrgV1*`` types and the
Kubernetes ``V1*`` types they contain. The Trainer v2 models (``kubeflow_trainer_api``, pydantic)
serialise themselves (``to_dict``: API field names, no ``None`` fields).
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from kubeflow.training.api_client import ApiClient

_API = ApiClient()


def to_dict(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):  # a kubeflow_trainer_api (pydantic) model
        return _API.sanitize_for_serialization(obj.to_dict())
    return _API.sanitize_for_serialization(obj)


def to_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=False)


class _Response:
    """What ``ApiClient.deserialize`` reads: an object whose ``.data`` is the JSON text."""

    def __init__(self, data: Any):
        self.data = json.dumps(data)


def from_dict(data: dict[str, Any], type_name: str) -> Any:
    """The typed model ``type_name`` (``KubeflowOrgV1PyTorchJob``, ``V1Pod``, ...) of a dict."""
    return _API.deserialize(_Response(data), type_name)


def from_yaml(text: str, type_name: str) -> Any:
    return from_dict(yaml.safe_load(text), type_name)
