"""The cluster backends as the launcher tests drive them: ``job_kind`` runs a test once per
backend (pytorchjob, trainjob) against the API test server (tests/kube_api_server.py), whose
store, pod names and failure messages differ per kind."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kube_api_server import FakeKubeAPI


@dataclass
class JobKind:
    """One cluster backend as the launcher tests drive it (``job_kind``: tests run once per
    backend): its name, the fake server's store of its jobs, and its pod naming."""

    backend: str  # pytorchjob | trainjob
    api: FakeKubeAPI

    @property
    def cls(self) -> Any:
        from umt.launch.backend import backend_class

        return backend_class(self.backend)

    @property
    def jobs(self) -> dict[tuple[str, str], dict[str, Any]]:
        return self.api.jobs if self.backend == "pytorchjob" else self.api.trainer.jobs

    def job(self, name: str, namespace: str = "umt") -> dict[str, Any] | None:
        with self.api.lock:
            return copy.deepcopy(self.jobs.get((namespace, name)))

    def build(self, req: Any) -> Any:
        return self.cls.render(req).job

    def make(self, kubeconfig: Path, **kw: Any) -> Any:
        return self.cls(kubeconfig=str(kubeconfig), **kw)

    @property
    def master(self) -> str:
        """The suffix of the master role's pod (the one whose log is the job's), as the
        fake's scripts see it."""
        return "master-0" if self.backend == "pytorchjob" else "node-0"

    @property
    def worker(self) -> str:
        return "worker-0" if self.backend == "pytorchjob" else "node-1"

    @property
    def crash_kw(self) -> dict[str, Any]:
        """run_training_job options that make a crashing job fail soon."""
        return {"backoff_limit": 2} if self.backend == "pytorchjob" else {}

    @property
    def crash_reason(self) -> str:
        """What the controller says when crashes exhaust the job's restarts."""
        return ("backoff limit" if self.backend == "pytorchjob"
                else "reaching max number of restarts")

    def installed(self, yes: bool) -> None:
        if self.backend == "pytorchjob":
            self.api.crd_installed = yes
        else:
            self.api.trainer.installed = yes


@pytest.fixture(params=["pytorchjob", "trainjob"])
def job_kind(request, kube_api) -> JobKind:
    """Each cluster backend in turn (the fake server serves its kind)."""
    kind = JobKind(request.param, kube_api)
    kind.installed(True)
    return kind
