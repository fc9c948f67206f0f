"""A decoder that kills its DataLoader worker costs one sample, not the run.

decord aborts or segfaults on some damaged files (a corrupt sample table, a chunk offset past
the end: see tests/faults/test_bad_data_fuzz.py). Such a crash is no Python exception: it
kills the DataLoader worker process, and DataLoader then fails the whole iterator
(``RuntimeError: DataLoader worker (pid(s) N) exited unexpectedly``, or an ``EOFError`` when
the worker died handing over a batch) -- or, worse, its SIGCHLD handler raises "DataLoader
worker (pid N) is killed by signal" in the middle of the training step, wherever the main
thread is. Sharding isolates these inputs in a process of their own (``umt.data.shard``), but a
shard written by another tool, or damaged later, reaches the training loader as it is.

So each DataLoader worker notes which sample it is decoding (:class:`DecodeWatch`, one small
file per worker process, rewritten per sample: three system calls next to a decode of
milliseconds). When a worker dies, the training process reads the dead worker's note, counts
the sample as skipped (reason ``decoder crashed the worker process``), adds it to the
*poisoned* samples that new workers skip on sight, and restarts its workers at the step they were
making (``umt.data.loader_kit.ClipLoader``); a death announced while the training
step runs is kept for the loader's next call (:func:`guard_sigchld`). A restarted stream draws its shards as a
run resumed at that step does. Evaluation loaders (one pass, no step to restart at) stop with
an error naming the sample instead. With ``data.num_workers=0`` decoding runs in the training
process itself, and a crash ends it (the job's restart policy and the checkpoints take over).

A decoder that *hangs* is stopped the same way: a watchdog thread in the training process
(:meth:`DecodeWatch.start_watchdog`) sees a note older than :data:`DECODE_TIMEOUT_S`, kills
that worker (SIGKILL: a decoder stuck in native code ignores anything milder), and the loader
handles the death as a crash, the sample counted under ``decode timed out``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Optional

log = logging.getLogger(__name__)

# A loader whose workers keep dying (a decoder broken as a whole, not one bad file) stops.
MAX_WORKER_CRASHES = 20

# One sample's decode taking longer than this is a hang: its worker is stopped and the sample
# skipped. Generous on purpose (a healthy clip decodes in well under a second; the pixel limit
# bounds the work); ``umt shard``'s per-input limit is 600 s. ``UMT_DECODE_TIMEOUT_S``
# overrides it (seconds; 0 turns the watchdog off).
DECODE_TIMEOUT_S = 300.0
CRASHED = "decoder crashed the worker process"  # skip reasons (as in umt shard's failures)
HUNG = "decode timed out (worker stopped)"


def decode_timeout() -> float:
    """:data:`DECODE_TIMEOUT_S`, or ``UMT_DECODE_TIMEOUT_S`` when set (checked)."""
    raw = os.environ.get("UMT_DECODE_TIMEOUT_S")
    if raw is None:
        return DECODE_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"UMT_DECODE_TIMEOUT_S={raw!r}: expected seconds >= 0 (0: no limit)")
    return value

_current: Optional["DecodeWatch"] = None  # the watch of this DataLoader worker process


def _remove(folder: str, owner: int) -> None:
    if os.getpid() == owner:  # forked workers inherit the finaliser; only the owner cleans up
        shutil.rmtree(folder, ignore_errors=True)


class DecodeWatch:
    """Which sample each DataLoader worker of one loader is decoding, and the samples that
    crashed (or hung) one before (``poisoned``: sample -> reason, skipped by every worker
    started afterwards)."""

    def __init__(self, timeout_s: Optional[float] = None):
        self.folder = tempfile.mkdtemp(prefix="umt-decoding-")
        self.poisoned: dict[str, str] = {}
        self.timeout_s = decode_timeout() if timeout_s is None else timeout_s
        self.hung: dict[int, str] = {}  # worker pid -> the sample it was stopped on
        self._fd: Optional[int] = None
        self._fd_pid = 0
        self._watchdog: Optional[threading.Thread] = None
        weakref.finalize(self, _remove, self.folder, os.getpid())

    def install(self, worker_id: int) -> None:
        """``worker_init_fn`` of the loader's DataLoader: this worker notes into this watch."""
        global _current
        _current = self
        self._open()  # an empty note now: a stale one of a reused pid is never taken for ours

    def _open(self) -> None:
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd = os.open(os.path.join(self.folder, str(os.getpid())),
                               os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self._fd_pid = os.getpid()

    def note(self, name: str) -> None:
        """This worker starts decoding sample ``name`` (``<shard>:<key>``); the note's
        modification time is when it started (what the watchdog reads)."""
        self._open()
        data = name.encode("utf-8", "replace")
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))

    def done(self) -> None:
        """The decode returned (with a sample or an exception): nothing is in flight."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)

    def culprits(self, pids: list[int]) -> list[tuple[str, str]]:
        """``(sample, reason)`` for each of the dead workers ``pids`` that was decoding one
        when it died: :data:`HUNG` for those the watchdog stopped, :data:`CRASHED` otherwise."""
        out = []
        for pid in pids:
            path = os.path.join(self.folder, str(pid))
            try:
                with open(path, encoding="utf-8") as f:
                    name = f.read()
                os.remove(path)
            except FileNotFoundError:
                name = ""
            if pid in self.hung:  # its decode may have ended just before the kill: still slow
                out.append((self.hung.pop(pid), HUNG))
            elif name:
                out.append((name, CRASHED))
        return out

    # -- the watchdog (training process) ------------------------------------------------------
    def start_watchdog(self) -> None:
        """Start (once) the thread that stops workers whose decode runs past ``timeout_s``.
        Linux only (it checks through /proc that a pid is still one of our workers)."""
        if self._watchdog is not None or not self.timeout_s or not sys.platform.startswith("linux"):
            return
        interval = min(1.0, max(0.05, self.timeout_s / 4))
        self._watchdog = threading.Thread(target=_watch, args=(weakref.ref(self), interval),
                                          name="umt-decode-watchdog", daemon=True)
        self._watchdog.start()

    def stop_hung_workers(self) -> list[int]:
        """Kill every worker of ours whose note is older than ``timeout_s``; their pids."""
        now, stopped = time.time(), []
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return stopped
        for entry in entries:
            try:
                st = entry.stat()
                pid = int(entry.name)
            except (FileNotFoundError, ValueError):
                continue
            if st.st_size == 0 or now - st.st_mtime < self.timeout_s or pid in self.hung \
                    or not _is_our_child(pid):
                continue
            try:
                with open(entry.path, encoding="utf-8") as f:
                    name = f.read()
            except FileNotFoundError:
                continue
            if not name:
                continue
            self.hung[pid] = name
            log.warning("decoding %s has taken more than %.0f s: stopping its DataLoader worker "
                        "(pid %d)", name, self.timeout_s, pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            stopped.append(pid)
        return stopped


def _watch(ref, interval: float) -> None:
    """The watchdog's loop; ends with its watch (collected, or its folder removed)."""
    while True:
        watch = ref()
        if watch is None or not os.path.isdir(watch.folder):
            return
        try:
            watch.stop_hung_workers()
        except Exception:  # never let the watchdog take the training process down
            log.exception("decode watchdog")
        del watch
        time.sleep(interval)


def _is_our_child(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) child of this process: never kill a stranger."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return len(fields) > 1 and fields[0] != "Z" and fields[1] == str(os.getpid())


# -- when the training process hears of the death -------------------------------------------
# DataLoader's SIGCHLD handler raises "DataLoader worker (pid N) is killed by signal" in the
# training process's main thread at whatever it is doing -- usually the model's forward pass,
# since workers decode ahead. ``guard_sigchld`` wraps that handler: while a loader waits for a
# batch (``waiting``) the error is raised there, where the loader handles it; at any other
# moment it is kept (``take_pending``) for the loader's next call instead of ending the run.
_waiting = 0
_pending: Optional[BaseException] = None


def _wrap(previous):
    def handler(signum, frame):
        global _pending
        try:
            if callable(previous):
                previous(signum, frame)
        except RuntimeError as e:
            if _waiting:
                raise
            _pending = e

    handler.umt_guard = True  # type: ignore[attr-defined]
    return handler


def guard_sigchld() -> None:
    """Wrap the SIGCHLD handler DataLoader installed (once; main thread only: Python sets
    signal handlers there). Call after creating a DataLoader iterator."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGCHLD"):
        return
    current = signal.getsignal(signal.SIGCHLD)
    if not getattr(current, "umt_guard", False):
        signal.signal(signal.SIGCHLD, _wrap(current))


@contextmanager
def waiting():
    """A loader waits for a batch: a worker death is raised right here."""
    global _waiting
    _waiting += 1
    try:
        yield
    finally:
        _waiting -= 1


def is_death_notice(error: BaseException) -> bool:
    """DataLoader's "DataLoader worker (pid N) is killed by signal / exited unexpectedly"."""
    return isinstance(error, RuntimeError) and "DataLoader worker (pid" in str(error)


def take_pending() -> Optional[BaseException]:
    """A worker death announced while no loader was waiting (then forgotten)."""
    global _pending
    error, _pending = _pending, None
    return error


def current() -> Optional[DecodeWatch]:
    """The watch of this DataLoader worker (None in the training process itself)."""
    return _current


def dead_workers(iterator, wait_s: float = 2.0) -> list[int]:
    """Pids of the DataLoader ``iterator``'s workers that died (exit code != 0).

    A worker that dies while handing over a batch makes the training process fail with
    whatever the broken pipe raised (EOFError, ConnectionResetError), sometimes before the
    worker is gone: give it ``wait_s`` seconds to be reaped.
    """
    workers = list(getattr(iterator, "_workers", None) or [])
    deadline = time.monotonic() + wait_s
    while True:
        dead = [w.pid for w in workers if not w.is_alive() and w.exitcode not in (0, None)]
        if dead or not workers or time.monotonic() > deadline:
            return dead
        time.sleep(0.05)
