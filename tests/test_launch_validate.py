"""The PyTorchJob checks: the v1.9 CRD schema as a structural schema (unknown fields rejected),
API-server metadata rules, the Training Operator webhook's rules, torchrun's nprocPerNode forms.
Each known-bad job must be caught, with the layer that would reject it named."""

from __future__ import annotations

import copy

import pytest

from umt.launch import InvalidJobError, TrainingJob, to_dict
from umt.launch.backends.pytorchjob import (
    build_pytorchjob,
    pytorchjob_errors,
    validate_pytorchjob,
)


@pytest.fixture(scope="module")
def good() -> dict:
    return to_dict(build_pytorchjob(TrainingJob(
        stage="stage1", config="tiny", nodes=3, gpus_per_node=8, validate_config=False)))


def master(job: dict) -> dict:
    return job["spec"]["pytorchReplicaSpecs"]["Master"]


def container(job: dict, rtype: str = "Master") -> dict:
    return job["spec"]["pytorchReplicaSpecs"][rtype]["template"]["spec"]["containers"][0]


def test_a_rendered_job_passes_every_layer(good):
    assert pytorchjob_errors(good) == []
    validate_pytorchjob(good)


def _set(path: str, value):
    def edit(job):
        *parents, last = path.split(".")
        node = job
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[int(last) if last.isdigit() else last] = value
    return edit


MASTER_C = "spec.pytorchReplicaSpecs.Master.template.spec.containers.0"
BAD = {
    # schema: types, required fields, unknown fields, list-map keys, formats
    "nproc as int": (_set("spec.nprocPerNode", 8), "schema: spec.nprocPerNode"),
    "replicas as text": (_set("spec.pytorchReplicaSpecs.Worker.replicas", "three"),
                         "schema: spec.pytorchReplicaSpecs.Worker.replicas"),
    "typo in runPolicy": (_set("spec.runPolicy.backoffLimt", 3), "'backoffLimt' was unexpected"),
    "typo in pod spec": (_set("spec.pytorchReplicaSpecs.Master.template.spec.nodeSelectr", {}),
                         "'nodeSelectr' was unexpected"),
    "typo in metadata": (_set("metadata.lables", {}), "'lables' was unexpected"),
    "int32 overflow": (_set("spec.runPolicy.backoffLimit", 2**40), "is not a 'int32'"),
    "bad quantity": (_set(MASTER_C + ".resources.requests.cpu", "lots"), "requests.cpu"),
    "duplicate env": (lambda j: container(j)["env"].append(dict(container(j)["env"][0])),
                      "duplicate entry with {'name': '"),
    "duplicate port": (lambda j: container(j)["ports"].append(
        {"containerPort": 23456, "name": "again"}), "duplicate entry with {'containerPort'"),
    "nameless container": (lambda j: container(j).pop("name"), "'name' is a required property"),
    # apiserver
    "label value too long": (_set("metadata.labels.umt/run-id", "x" * 64), "apiserver:"),
    "label value bad chars": (_set("metadata.labels.umt/run-id", "a b"), "apiserver:"),
    "gpu request != limit": (lambda j: container(j)["resources"]["requests"].__setitem__(
        "nvidia.com/gpu", "4"), "requests == limits"),
    # webhook
    "container not named pytorch": (_set(MASTER_C + ".name", "trainer"),
                                    "container named 'pytorch'"),
    "no image": (lambda j: container(j).pop("image"), "image is required"),
    "two masters": (_set("spec.pytorchReplicaSpecs.Master.replicas", 2), "must be 1"),
    "master replicas unset": (lambda j: master(j).pop("replicas"), "must be 1"),
    "zero workers": (_set("spec.pytorchReplicaSpecs.Worker.replicas", 0), "at least 1"),
    "unknown replica type": (lambda j: j["spec"]["pytorchReplicaSpecs"].__setitem__(
        "Chief", copy.deepcopy(master(j))), "replica type must be one of"),
    "elastic without workers": (lambda j: (j["spec"]["pytorchReplicaSpecs"].pop("Worker"),
                                           j["spec"].__setitem__("elasticPolicy", {})),
                                "must be configured if elastic policy is used"),
    "both nproc fields": (_set("spec.elasticPolicy", {"nProcPerNode": 8}),
                          "must not be used with spec.nprocPerNode"),
    "uppercase name": (_set("metadata.name", "UMT-job"), "DNS-1035"),
    "name too long": (_set("metadata.name", "u" * 64), "DNS-1035"),
    "bad managedBy": (_set("spec.runPolicy.managedBy", "me"), "managedBy"),
    # operator / torchrun: strings the schema lets through
    "nproc word": (_set("spec.nprocPerNode", "eight"), "torchrun: spec.nprocPerNode"),
    "bad restart policy": (_set("spec.pytorchReplicaSpecs.Master.restartPolicy", "Sometimes"),
                           "operator: spec.pytorchReplicaSpecs[Master].restartPolicy"),
    "bad clean pod policy": (_set("spec.runPolicy.cleanPodPolicy", "Some"),
                             "operator: spec.runPolicy.cleanPodPolicy"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_known_bad_jobs_are_rejected(good, case):
    edit, expected = BAD[case]
    job = copy.deepcopy(good)
    edit(job)
    errors = pytorchjob_errors(job)
    assert any(expected in e for e in errors), errors
    with pytest.raises(InvalidJobError):
        validate_pytorchjob(job)


@pytest.mark.parametrize("nproc", ["auto", "cpu", "gpu", "1", "16"])
def test_every_torchrun_nproc_form_is_accepted(good, nproc):
    job = copy.deepcopy(good)
    job["spec"]["nprocPerNode"] = nproc
    assert pytorchjob_errors(job) == []


def test_int_or_string_quantities_and_status_fields_are_accepted(good):
    job = copy.deepcopy(good)
    container(job)["resources"]["requests"]["cpu"] = 8  # int-or-string
    job["metadata"].update(uid="u", resourceVersion="7", creationTimestamp="2024-01-01T00:00:00Z")
    job["status"] = {"conditions": [{"type": "Created", "status": "True"}],
                     "replicaStatuses": {"Master": {"active": 1}}}
    assert pytorchjob_errors(job) == []


def test_errors_list_every_problem_at_once(good):
    job = copy.deepcopy(good)
    job["spec"]["nprocPerNode"] = 8
    container(job)["name"] = "trainer"
    message = str(InvalidJobError("x", pytorchjob_errors(job)))
    assert "schema: spec.nprocPerNode" in message and "webhook:" in message
