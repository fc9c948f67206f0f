"""User values that end up in a Kubernetes object, checked before anything is rendered.

``umt job render --namespace 'Bad NS'`` or ``--memory -5Gi`` used to render happily; the API
server (or worse, the kubelet on a GPU node after the image pull) then refused it. Every value a
user gives a :class:`umt.launch.request.TrainingJob` is checked here, all at once, and each
problem names the option (as ``umt job`` spells it), the value and what is allowed.

Values we *derive* from user strings are sanitised instead: :func:`label_value` turns any run id
or stage name into a valid label value that still tells distinct ids apart.
"""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

# How `umt job` spells each TrainingJob field (fields without a flag: the Python name).
FLAGS = {
    "stage": "STAGE", "config": "--config", "overrides": "OVERRIDES", "nodes": "--nodes",
    "gpus_per_node": "--gpus-per-node", "procs_per_node": "--procs-per-node",
    "node_pool": "--node-pool", "image": "--image", "name": "--name",
    "namespace": "--namespace", "run_id": "--run-id", "output_uri": "--output",
    "service_account": "--service-account", "s3": "--s3-secret", "cpu": "--cpu",
    "memory": "--memory", "shm_size": "--shm-size", "restart_policy": "--restart-policy",
    "backoff_limit": "--backoff-limit", "active_deadline_seconds": "--active-deadline",
    "queue": "--queue", "priority_class": "--priority-class", "elastic": "--elastic",
    "kueue_queue": "--kueue-queue", "termination_grace_seconds": "--termination-grace",
    "spot": "--spot", "image_pull_policy": "--image-pull-policy",
    "gang_scheduling": "--gang", "clean_pod_policy": "clean_pod_policy",
    "image_pull_secrets": "--image-pull-secret", "fabric": "--fabric",
}

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# An OmegaConf dot-list key: it must not start with '-', or the stage's command line would
# read the item as one of its own options (argument injection).
OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*=", re.S)
PRESET = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# The Docker reference grammar (distribution/reference), tag or digest required.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE = re.compile(
    # A first component is a registry only with a '.' or a port, or as localhost (docker's rule).
    r"^(?:(?P<registry>localhost(?::[0-9]+)?|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?::[0-9]+)?"
    r"|[A-Za-z0-9-]+:[0-9]+)/)?"
    rf"(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$")
# Names of variables that hold credentials: those come from a Secret (secretKeyRef), never as
# plain values in the job (where they would sit in the YAML, the KFP artifact, `kubectl get`).
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|"
                         r"API_KEY", re.I)
INT32_MAX = 2**31 - 1
MIN_MEMORY = 6 * 2**20  # below this, container runtimes refuse to start the container


class InvalidOptionError(ValueError):
    """One or more job options Kubernetes would refuse; ``problems`` lists them all."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid job options:\n  - " + "\n  - ".join(problems))


def flag(field: str) -> str:
    return FLAGS.get(field, field)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def label_value(text: str) -> str:
    """A valid label value for any id: itself when it already is one, else its sanitised form
    plus a hash of the original (``'a b'`` and ``'a-b'`` must not select each other's jobs)."""
    if len(text) <= 63 and LABEL_VALUE.match(text):
        return text
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-_.")[:52].rstrip("-_.")
    return f"{value}-{_short_hash(text)}" if value else f"h-{_short_hash(text)}"


def quantity(value: Any) -> Decimal:
    """A Kubernetes quantity (``64Gi``, ``500m``, ``8``) as a number; ValueError if it is not."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not a quantity: {value!r}")
    return parse_quantity(value)


class Problems:
    """Collects ``<option> <value>: <what is allowed>`` lines."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, field: str, value: Any, allowed: str) -> None:
        self.items.append(f"{flag(field)} {value!r}: {allowed}")

    def check(self, ok: bool, field: str, value: Any, allowed: str) -> None:
        if not ok:
            self.add(field, value, allowed)

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidOptionError(self.items)

    # -- kinds of values ---------------------------------------------------------------------
    def dns_label(self, field: str, value: str | None) -> None:
        self._dns_name(field, value, DNS1123_LABEL, 63,
                       "must be an RFC 1123 label: at most 63 lowercase letters, digits and "
                       "'-', starting and ending with a letter or digit")

    def dns_subdomain(self, field: str, value: str | None) -> None:
        self._dns_name(field, value, DNS1123_SUBDOMAIN, 253,
                       "must be an RFC 1123 subdomain: lowercase letters, digits, '-' and '.', "
                       "starting and ending with a letter or digit, at most 253 characters")

    def _dns_name(self, field: str, value: str | None, pattern: re.Pattern, max_length: int,
                  allowed: str) -> None:
        """A Kubernetes object name (None: not set, nothing to check)."""
        if value is not None:
            self.check(isinstance(value, str) and len(value) <= max_length
                       and bool(pattern.match(value)), field, value, allowed)

    def integer(self, field: str, value: Any, minimum: int, maximum: int = INT32_MAX) -> None:
        if value is None:
            return
        ok = isinstance(value, int) and not isinstance(value, bool)
        allowed = (f"must be an integer >= {minimum}" if maximum >= INT32_MAX
                   else f"must be an integer from {minimum} to {maximum}")
        self.check(ok and minimum <= value <= maximum, field, value, allowed)

    def quantity(self, field: str, value: Any, example: str) -> Decimal | None:
        """The value as a number, or None (and a problem) unless it is a positive quantity."""
        if value is None:
            return None
        try:
            number = quantity(value)
        except (ValueError, TypeError, ArithmeticError):
            self.add(field, value, f"must be a Kubernetes quantity such as {example}")
            return None
        if number <= 0:
            self.add(field, value, f"must be a positive Kubernetes quantity such as {example}")
            return None
        return number

    def memory(self, field: str, value: Any) -> None:
        number = self.quantity(field, value, "64Gi or 512Mi")
        if number is not None and number < MIN_MEMORY:
            hint = f" (a plain number counts bytes: did you mean {value}Gi?)" if str(
                value).isdigit() else ""
            self.add(field, value, f"must be at least 6Mi, the least a container runtime "
                                   f"starts a container with{hint}")

    def image(self, field: str, value: str | None) -> None:
        if value is None:
            return
        m = IMAGE.match(value) if isinstance(value, str) else None
        if m is None:
            self.add(field, value, "must be an image reference such as "
                                   "registry.example.com/umt-train:0.1.0")
        elif not m.group("digest") and m.group("tag") in (None, "latest"):
            self.add(field, value, "must be pinned: an exact tag (repo/image:1.2.3) or a digest "
                                   "(repo/image@sha256:...), never latest or no tag, so every "
                                   "node and every restart runs the same code")

    def labels(self, field: str, labels: dict[str, Any], reserved: tuple[str, ...] = (),
               check_values: bool = True) -> None:
        for key, value in (labels or {}).items():
            prefix, _, name = str(key).rpartition("/")
            if not isinstance(key, str) or (prefix and (len(prefix) > 253 or not
                                                        DNS1123_SUBDOMAIN.match(prefix))) \
                    or not name or len(name) > 63 or not LABEL_NAME.match(name):
                self.add(field, key, "keys are [prefix/]name: an optional DNS subdomain prefix "
                                     "and a name of at most 63 letters, digits, '-', '_', '.', "
                                     "starting and ending alphanumeric")
            elif any(key == r or key.startswith(r) for r in reserved):
                self.add(field, key, f"is set by umt itself (reserved: {', '.join(reserved)})")
            if not check_values:
                self.check(isinstance(value, str), field, {key: value}, "values are strings")
                continue
            self.check(isinstance(value, str) and len(value) <= 63
                       and bool(LABEL_VALUE.match(value)), field, {key: value},
                       "label values are at most 63 letters, digits, '-', '_', '.', starting "
                       "and ending alphanumeric")
