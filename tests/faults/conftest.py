"""Fixtures of the fault-injection tests (issue 12): a fault-injecting proxy in front of the
session's moto S3 server, with rules that fail the first N matching requests."""

from __future__ import annotations

import os
import threading

import pytest
from s3_fault_proxy import FaultProxy


class Faults:
    """A ``FaultProxy.rule``: ``add(method, needle, action, times)`` answers the first ``times``
    requests whose method is ``method`` and whose path contains ``needle`` with ``action``
    (``times=-1``: every one). ``hits`` counts the faults injected per rule."""

    def __init__(self):
        self.rules: list[list] = []
        self.hits: list[int] = []
        self._lock = threading.Lock()  # the proxy answers from one thread per connection

    def add(self, method: str, needle: str, action, times: int = 1) -> int:
        with self._lock:
            self.rules.append([method, needle, action, times])
            self.hits.append(0)
            return len(self.rules) - 1

    def clear(self) -> None:
        with self._lock:
            self.rules, self.hits = [], []

    def __call__(self, method: str, path: str):
        with self._lock:
            for i, (m, needle, action, times) in enumerate(self.rules):
                if m == method and needle in path and times != 0:
                    self.rules[i][3] = times - 1 if times > 0 else times
                    self.hits[i] += 1
                    return action
        return None

    @property
    def injected(self) -> int:
        return sum(self.hits)


@pytest.fixture
def proxy(s3_bucket, monkeypatch):
    """A FaultProxy in front of moto, with ``proxy.faults`` as its rule; boto3 (here and in any
    child process) talks to the proxy. The bucket ``proxy.bucket`` exists."""
    with FaultProxy(os.environ["AWS_ENDPOINT_URL"]) as p:
        p.faults = Faults()
        p.rule = p.faults
        p.bucket = s3_bucket
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
        yield p


@pytest.fixture
def direct(s3_server):
    """A plain boto3 client on moto itself (behind the proxy): what is really stored."""
    import boto3

    return boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="testing",
                        aws_secret_access_key="testing", region_name="us-east-1")
