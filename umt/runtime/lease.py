"""One writer per output folder: a lease object with owner, host and heartbeat.

Two runs writing one ``train.output_dir`` corrupt each other (interleaved ``metrics.jsonl``,
one run's temp-file sweep deleting the other's in-flight checkpoint, the second run's
``config.yaml``). A relaunch after ``kill -9`` of a launcher, or a KFP retry, creates exactly
that. So the process that writes (rank 0) holds ``<output_dir>/lease.json``:

    {"owner": <uuid>, "host", "pid", "pid_start", "started", "heartbeat", "seq", "ttl_s"}

and renews it from a background thread every ``ttl/3`` seconds. Another run that finds it:

* same host, and the pid is gone or is another process (its start time differs, e.g. a
  restarted container): the old run is dead -- take the lease over at once, with a warning;
* same host, and that very process is alive: refuse at once (``RunLockedError``);
* another host: watch it for up to ``ttl`` seconds; if its ``seq`` advances the owner is alive
  (refuse), otherwise take it over with a warning. Watching a counter instead of comparing
  timestamps means clocks of different machines never have to agree.

Taking over and renewing are compare-and-swap operations on S3 (``If-None-Match: *`` to
create, ``If-Match: <etag>`` to replace), so of two runs racing for a stale lease exactly one
wins. On a local or shared filesystem creation is ``O_EXCL`` and a renewal re-reads the owner
first; a run that finds its lease taken by someone else stops at its next step (``check``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable, Optional

from umt import storage
from umt.errors import UserError

log = logging.getLogger(__name__)
LEASE_NAME = "lease.json"


class RunLockedError(UserError):
    """Another live run writes this output folder."""


class LeaseLostError(UserError):
    """This run's lease was taken over (we were presumed dead): stop writing."""


def _pid_start(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may contain spaces; fields after its ')' are fixed.
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive_here(record: dict[str, Any]) -> Optional[bool]:
    """On the lease's own host: whether its process still runs (None: cannot tell)."""
    pid, start = record.get("pid"), record.get("pid_start")
    if not isinstance(pid, int) or start is None:
        return None
    now = _pid_start(pid)
    return now is not None and now == start


class _Store:
    """Read / create-exclusive / compare-and-swap of one small JSON object."""

    def __init__(self, uri: str):
        self.uri = uri

    def read(self) -> tuple[Optional[dict], Optional[str]]:
        """``(record, version)``; ``(None, None)`` when absent. A torn or foreign file reads as
        an empty record (it is then treated as stale)."""
        try:
            if storage.is_s3(self.uri):
                bucket, key = storage.split_s3(self.uri)
                try:
                    obj = storage.s3_client().get_object(Bucket=bucket, Key=key)
                except Exception as e:
                    if getattr(e, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                        return None, None
                    raise
                data, version = obj["Body"].read(), obj["ETag"]
            else:
                data = storage.read_bytes(self.uri)
                version = str(os.stat(self.uri).st_mtime_ns)
        except FileNotFoundError:
            return None, None
        try:
            record = json.loads(data)
        except ValueError:
            record = {}
        return (record if isinstance(record, dict) else {}), version

    def create(self, record: dict) -> bool:
        """Write ``record`` only if no lease exists; False if another run was first."""
        data = json.dumps(record).encode()
        if storage.is_s3(self.uri):
            bucket, key = storage.split_s3(self.uri)
            try:
                storage.s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
                return True
            except Exception as e:
                if _precondition_failed(e):
                    return False
                raise
        os.makedirs(os.path.dirname(os.path.abspath(self.uri)), exist_ok=True)
        try:
            fd = os.open(self.uri, os.O_CREAT | os.O_EXCL | os.O_WRONLY, storage.FILE_MODE)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def replace(self, record: dict, version: Optional[str]) -> bool:
        """Overwrite the lease read at ``version``; False if it changed since."""
        data = json.dumps(record).encode()
        if storage.is_s3(self.uri):
            bucket, key = storage.split_s3(self.uri)
            try:
                storage.s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfMatch=version)
                return True
            except Exception as e:
                if _precondition_failed(e):
                    return False
                raise
        _, now = self.read()
        if now != version:
            return False
        storage.write_bytes(self.uri, data)  # atomic rename; see the module docstring
        return True

    def delete(self) -> None:
        storage.delete(self.uri)


def _precondition_failed(e: Exception) -> bool:
    code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
    return code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


class RunLease:
    """Hold ``<output_dir>/lease.json`` while writing it (see the module docstring).

        lease = RunLease(output_dir, ttl_s=90).acquire()
        ...  lease.check()  # every step: raises LeaseLostError if another run took over
        lease.release()
    """

    def __init__(self, output_dir: str, ttl_s: float = 90.0, *,
                 sleep: Callable[[float], None] = time.sleep):
        self.output_dir, self.ttl_s, self._sleep = output_dir, float(ttl_s), sleep
        self.store = _Store(storage.join(output_dir, LEASE_NAME))
        self.record = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                       "pid_start": _pid_start(os.getpid()), "started": time.time(),
                       "heartbeat": time.time(), "seq": 0, "ttl_s": self.ttl_s}
        self._version: Optional[str] = None
        self._lost: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ acquire / release
    def acquire(self) -> "RunLease":
        for _ in range(5):  # a few rounds: another run may be racing for a stale lease too
            if self.store.create(self.record):
                self._remember_version()
                break
            current, version = self.store.read()
            if current is None:
                continue  # released between our create and read: try again
            if not self._is_dead(current, version):
                continue
            desc = _describe(current)
            if self.store.replace(self.record, version):
                log.warning("took over the lease of %s: %s held it and is gone", self.output_dir, desc)
                self._remember_version()
                break
        else:
            raise RunLockedError(f"could not take the lease of {self.output_dir}: other runs keep "
                                 f"competing for it")
        self._thread = threading.Thread(target=self._renew_loop, name="umt-lease", daemon=True)
        self._thread.start()
        return self

    def _remember_version(self) -> None:
        record, version = self.store.read()
        if not record or record.get("owner") != self.record["owner"]:
            raise RunLockedError(f"another run took the lease of {self.output_dir} at the same "
                                 f"moment ({_describe(record or {})})")
        self._version = version

    def _is_dead(self, current: dict, version: Optional[str]) -> bool:
        """Decide whether the lease's holder is gone; raise RunLockedError if it is alive."""
        desc = _describe(current)
        if not current.get("owner"):
            return True  # unreadable / foreign content: nobody can renew it
        if current.get("host") == self.record["host"]:
            alive = _alive_here(current)
            if alive is False:
                return True
            if alive:
                raise RunLockedError(
                    f"{self.output_dir} is being written by another run ({desc}); stop it, or "
                    f"use another train.output_dir")
        # Another host (or liveness unknown): watch its counter for one TTL.
        ttl = float(current.get("ttl_s") or self.ttl_s)
        seq = current.get("seq")
        log.warning("%s holds a lease (%s); waiting up to %.0f s to see whether it is alive",
                    self.output_dir, desc, ttl)
        deadline = time.monotonic() + ttl
        while time.monotonic() < deadline:
            self._sleep(min(ttl / 6, max(deadline - time.monotonic(), 0.05)))
            now, now_version = self.store.read()
            if now is None:
                return False  # released: the caller retries creating it
            if now.get("owner") != current.get("owner") or now.get("seq") != seq:
                raise RunLockedError(
                    f"{self.output_dir} is being written by another live run ({_describe(now)}); "
                    f"stop it, or use another train.output_dir")
        return True

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            if self._lost is None:
                current, _ = self.store.read()
                if current and current.get("owner") == self.record["owner"]:
                    self.store.delete()

    # ------------------------------------------------------------------ heartbeat
    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except Exception as e:  # storage hiccup: try again next period
                log.warning("could not renew the lease of %s: %s", self.output_dir, e)

    def renew(self) -> None:
        with self._lock:
            if self._lost is not None:
                return
            current, version = self.store.read()
            if not current or current.get("owner") != self.record["owner"]:
                self._lost = _describe(current or {})
                log.error("the lease of %s was taken over by %s: this run stops writing",
                          self.output_dir, self._lost)
                return
            self.record = {**self.record, "heartbeat": time.time(), "seq": self.record["seq"] + 1}
            if self.store.replace(self.record, version):
                self._remember_version()

    def check(self) -> None:
        """Raise ``LeaseLostError`` if another run took the lease over."""
        if self._lost is not None:
            raise LeaseLostError(f"another run ({self._lost}) took over {self.output_dir} while this "
                                 f"one was running (it was presumed dead); stopping without writing")


def _describe(record: dict) -> str:
    age = time.time() - record["heartbeat"] if isinstance(record.get("heartbeat"), (int, float)) else None
    return (f"host {record.get('host', '?')}, pid {record.get('pid', '?')}"
            + (f", last heartbeat {age:.0f} s ago" if age is not None else ""))
