"""One local replica: run its command like a container runs it, and never outlive the executor.

    python umt/launch/replica.py --parent <executor pid> [--grace 5] -- torchrun -m ...

The local PyTorchJob executor (``umt.launch.backends.local``) starts every replica through this
wrapper, in a process session of its own (so the executor can signal one replica's whole tree).
A session of its own also means nothing ties the replica to the executor: a ``kill -9`` of ``umt
job run`` used to leave the replicas training, and a relaunch then had two writers on one output
folder.
The wrapper closes that gap twice:

* on Linux it asks the kernel for a parent-death signal (``PR_SET_PDEATHSIG``: SIGTERM the
  moment the thread that started it dies), and
* everywhere it polls its parent pid (a watchdog): when it changes, the executor is gone.

Either way it stops the command as a pod is stopped: SIGTERM to the command (torchrun forwards
it to its workers), then after ``--grace`` seconds SIGKILL to every process still below it.
torchrun starts each worker in a session of its own, so a torchrun that dies first orphans its
workers; on Linux the wrapper is a child subreaper, so those orphans become *its* children and
are found and killed too. When the command exits on its own, whatever it left running is killed
(a container's processes end with its main process) and the wrapper exits with the command's
code (128 + N for a signal N, as a container reports it).

SIGTERM/SIGINT sent to the wrapper (the executor stopping the replica) are forwarded to the
command once, with the same escalation. Only the standard library is imported: this starts
with every replica and must not pull in the Kubernetes client.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36
POLL_S = 0.1


def _prctl(option: int, value: int) -> bool:
    """``prctl(option, value)`` on Linux; False where there is no prctl (macOS) or it fails."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, children first (``ps`` works on Linux and macOS alike)."""
    ps = subprocess.Popen(["ps", "-A", "-o", "pid=", "-o", "ppid="], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
    out, _ = ps.communicate()
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            children.setdefault(int(parts[1]), []).append(int(parts[0]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child != ps.pid and child not in found:  # ps itself may be below pid
                found.append(child)
                todo.append(child)
    return found


def kill_all(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class Replica:
    def __init__(self, parent: int, grace: float, command: list[str]):
        self.parent, self.grace, self.command = parent, grace, command
        self.stop_requested: float | None = None  # monotonic time of the first stop
        self.child: subprocess.Popen | None = None

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.stop_requested is None:
            self.stop_requested = time.monotonic()

    def _orphaned(self) -> bool:
        return os.getppid() != self.parent

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        if self._orphaned():  # the executor died before the death signal was armed
            return 128 + signal.SIGTERM
        # Same process group: the executor's killpg(SIGKILL) of this replica reaches it too.
        self.child = subprocess.Popen(self.command)
        forwarded = False
        while True:
            code = self.child.poll()
            if code is not None:
                break
            if self.stop_requested is None and self._orphaned():
                self.stop_requested = time.monotonic()  # the watchdog: no death signal came
            if self.stop_requested is not None:
                if not forwarded:
                    forwarded = True
                    try:
                        self.child.send_signal(signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                elif time.monotonic() - self.stop_requested >= self.grace:
                    kill_all([self.child.pid] + descendants(os.getpid()))
            time.sleep(POLL_S)
        # The command is done: nothing it started may keep running (or keep writing).
        kill_all(descendants(os.getpid()))
        self._reap()
        return 128 - code if code < 0 else code

    def _reap(self) -> None:
        """As a subreaper, orphans we killed are our children: collect them (no zombies)."""
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parent", type=int, required=True, help="The executor's pid.")
    parser.add_argument("--grace", type=float, default=5.0,
                        help="Seconds between SIGTERM and SIGKILL when stopping.")
    parser.add_argument("--no-pdeathsig", action="store_true",
                        help="Rely on the parent-pid watchdog alone (what macOS gets).")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    if not args.no_pdeathsig:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    return Replica(args.parent, args.grace, command).run()


if __name__ == "__main__":
    sys.exit(main())
