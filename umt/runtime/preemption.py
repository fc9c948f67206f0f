"""A checkpoint on SIGTERM: what a training process does when its pod is stopped (a spot node
reclaimed, a drained node, a deleted pod), so that the restarted job resumes from that step
instead of from the last periodic checkpoint.

Kubernetes stops a pod with SIGTERM to its container's main process -- torchrun, which forwards
it to its workers, the training processes -- and SIGKILLs whatever still runs
``terminationGracePeriodSeconds`` later. The training loop (``umt.train.loop``) turns that
SIGTERM into one more checkpoint:

1. :func:`on_sigterm` installs a handler that only records when the signal came (work inside a
   handler would run in the middle of whatever the main thread was doing: a checkpoint
   write, a collective).
2. After every step all ranks add up their flags (:func:`umt.runtime.distributed.sum_over_ranks`,
   one 8-byte all-reduce), so a SIGTERM that reached one node stops every rank at the *same*
   step: a rank that stopped alone would leave the others waiting in its next collective.
3. The checkpoint of that step is written as every checkpoint is (atomically, rank 0), then
   the process exits with :data:`EXIT_CODE` (:class:`Preempted`); the restart policy restarts
   the pod and the run resumes from exactly that step.

The grace. ``UMT_SIGTERM_GRACE_S`` (default :data:`DEFAULT_GRACE_S`) says how long the pod has
between SIGTERM and SIGKILL: whoever sets the pod's ``terminationGracePeriodSeconds`` (the
launcher) sets it to the same value. The process does not enforce it (the kubelet does); it
uses it to warn when a step plus a checkpoint would not fit in it. A checkpoint that does not finish in
time is cut off by the SIGKILL like any crash: its temporary file is ignored, ``latest`` still
names the previous complete checkpoint, and the restart resumes from there.
Under torchrun the budget is also torchrun's own: it SIGKILLs its workers
``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` (``--shutdown-timeout``, default 30 s) after forwarding the
signal, whatever the pod's grace (:func:`budget`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Iterator, Mapping, Optional

ENV = "UMT_SIGTERM_GRACE_S"
DEFAULT_GRACE_S = 120.0
MAX_GRACE_S = 86400.0
TORCHRUN_SHUTDOWN_S = 30.0  # torchrun's default --shutdown-timeout
# 128 + SIGTERM: what a process killed by SIGTERM reports, so restart rules written for
# terminated pods (exit codes >= 128 are retryable under PyTorchJob's ExitCode policy) apply.
# Under torchrun the container's code is torchrun's (1); restartPolicy OnFailure restarts it.
EXIT_CODE = 128 + signal.SIGTERM

_received_at: Optional[float] = None  # monotonic time of the first SIGTERM, set by the handler


class Preempted(SystemExit):
    """The run stopped on SIGTERM after checkpointing ``step``: exits with :data:`EXIT_CODE`."""

    def __init__(self, step: int, message: str):
        super().__init__(EXIT_CODE)
        self.step, self.message = step, message

    def __str__(self) -> str:
        return self.message


def _on_sigterm(signum: int, frame: object) -> None:
    global _received_at
    if _received_at is None:  # a second SIGTERM (torchrun forwarding one we got) changes nothing
        _received_at = time.monotonic()


def received_at() -> Optional[float]:
    """When this process got SIGTERM (``time.monotonic()``), or None."""
    return _received_at


@contextlib.contextmanager
def on_sigterm() -> Iterator[None]:
    """Record SIGTERM instead of dying from it, for the duration of the block (main thread
    only: Python runs signal handlers there; elsewhere, e.g. a test calling the loop in a
    thread, SIGTERM keeps its default action). The previous handler comes back afterwards."""
    global _received_at
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received_at = None
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def grace_s(environ: Mapping[str, str] = os.environ) -> float:
    """``UMT_SIGTERM_GRACE_S`` (seconds from SIGTERM to SIGKILL), checked; the default when
    unset."""
    raw = environ.get(ENV)
    if raw is None or raw == "":
        return DEFAULT_GRACE_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 1.0 <= value <= MAX_GRACE_S:  # NaN fails too
        raise ValueError(f"{ENV}={raw!r} is out of range; it must be seconds in [1, "
                         f"{MAX_GRACE_S:.0f}] (the pod's terminationGracePeriodSeconds)")
    return value


def torchrun_shutdown_s(environ: Mapping[str, str] = os.environ) -> Optional[float]:
    """How long torchrun waits for its workers after forwarding SIGTERM before it SIGKILLs
    them, when this process is a torchrun worker (None otherwise). Read from the environment
    torchrun itself reads (``PET_SHUTDOWN_TIMEOUT`` is ``--shutdown-timeout``); a value given
    on torchrun's command line is not visible here."""
    if "TORCHELASTIC_RUN_ID" not in environ:  # set by torchrun for its workers
        return None
    for name in ("PET_SHUTDOWN_TIMEOUT", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"):
        if environ.get(name):
            try:
                return float(environ[name])
            except ValueError:
                return None  # torchrun would have refused it: nothing to say
    return TORCHRUN_SHUTDOWN_S


def budget(environ: Mapping[str, str] = os.environ) -> tuple[float, str]:
    """Seconds a training process has from SIGTERM to SIGKILL, and where the number comes from
    (for the log line)."""
    grace = grace_s(environ)
    where = f"{ENV}={grace:g}" if environ.get(ENV) else f"{ENV} unset, default {grace:g}"
    shutdown = torchrun_shutdown_s(environ)
    if shutdown is not None and shutdown < grace:
        return shutdown, (f"torchrun's shutdown timeout {shutdown:g} s (TORCH_ELASTIC_SHUTDOWN_"
                          f"TIMEOUT) is shorter than the grace ({where}): set it to the grace")
    return grace, where
