"""The local PyTorchJob executor: the cluster's job object, run as processes here (CPU, gloo).

Fast tests swap the container command for a tiny fake replica to pin down the operator
semantics (environment, restart policies, backoff limit, deadline, conditions); the slow test
kills ``umt job run`` of the real Stage-1 job. A real 2-replica Stage-1 job run through
``run_training_job`` that loses replicas and resumes: tests/faults/test_worker_loss.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from umt.launch import (
    InvalidJobError,
    JobFailedError,
    TrainingJob,
    to_dict,
)
from umt.launch import replica as replica_wrapper
from umt.launch.backends.local import WRAPPER, LocalBackend, LocalExecutor
from umt.launch.backends.pytorchjob import build_pytorchjob
from umt.launch.status import CREATED, FAILED, RESTARTING, RUNNING, SUCCEEDED

FAKE_REPLICA = '''
import json, os, sys, time
print(json.dumps({k: v for k, v in os.environ.items() if k.startswith(
    ("PET_", "MASTER_", "WORLD_SIZE", "RANK", "PYTHONUNBUFFERED", "FROM_"))}), flush=True)
mode, arg = sys.argv[1], int(sys.argv[2])
if mode == "exit":
    sys.exit(arg)
for i in range(arg):
    print(f"line {i}", flush=True)
    time.sleep(0.05)
'''


def fake_job(tmp_path: Path, mode: str, arg: int, **kw) -> dict:
    """A real rendered job whose ``pytorch`` container runs the fake replica instead."""
    script = tmp_path / "fake_replica.py"
    script.write_text(FAKE_REPLICA)
    kw.setdefault("nodes", 1)
    job = to_dict(build_pytorchjob(TrainingJob(
        stage="stage1", config="tiny", gpus_per_node=0, node_pool="cpu",
        env={"FROM_SPEC": "yes"}, validate_config=False, **kw)))
    for rspec in job["spec"]["pytorchReplicaSpecs"].values():
        rspec["template"]["spec"]["containers"][0]["command"] = [
            sys.executable, str(script), mode, str(arg)]
    return job


def first_json(path: Path) -> dict:
    return json.loads(path.read_text().splitlines()[0])


def test_replicas_get_the_operators_environment(tmp_path):
    job = fake_job(tmp_path, "exit", 0, nodes=3, procs_per_node=2)
    ex = LocalExecutor(job, tmp_path / "jobs", secrets={"umt-s3": {"AWS_ACCESS_KEY_ID": "k"}})
    status = ex.start().wait(timeout=60)
    assert status.phase == SUCCEEDED
    assert [(c.type, c.status) for c in status.conditions] == [
        (CREATED, "True"), (RUNNING, "False"), (SUCCEEDED, "True")]
    envs = [first_json(ex.log_path(r, i)) for r, i in (("master", 0), ("worker", 0),
                                                       ("worker", 1))]
    assert [e["PET_NODE_RANK"] for e in envs] == ["0", "1", "2"]
    assert [e["RANK"] for e in envs] == ["0", "1", "2"]  # node rank, as the operator sets it
    for e in envs:
        assert e["PET_NNODES"] == "3" and e["PET_NPROC_PER_NODE"] == "2"
        assert e["WORLD_SIZE"] == "6" and e["PYTHONUNBUFFERED"] == "1"
        assert e["MASTER_ADDR"] == e["PET_MASTER_ADDR"] == "127.0.0.1"
        assert e["MASTER_PORT"] == e["PET_MASTER_PORT"] == envs[0]["MASTER_PORT"]
        assert e["FROM_SPEC"] == "yes"
    assert (tmp_path / "jobs" / job["metadata"]["name"] / "job.yaml").exists()


def test_secret_refs_come_from_secrets_or_our_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env")
    script = tmp_path / "show.py"
    script.write_text("import os; print(os.environ.get('AWS_ACCESS_KEY_ID'), "
                      "os.environ.get('AWS_SECRET_ACCESS_KEY'))")
    job = fake_job(tmp_path, "exit", 0)
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "command"] = [sys.executable, str(script)]
    ex = LocalExecutor(job, tmp_path / "jobs", secrets={"umt-s3": {"AWS_ACCESS_KEY_ID": "k"}})
    assert ex.start().wait(timeout=60).succeeded
    assert ex.log_path().read_text().split() == ["k", "from-env"]


def test_elastic_jobs_get_the_rendezvous_environment(tmp_path):
    job = fake_job(tmp_path, "exit", 0, nodes=2, elastic_min_nodes=1, elastic_max_nodes=3)
    ex = LocalExecutor(job, tmp_path / "jobs")
    assert ex.start().wait(timeout=60).succeeded
    env = first_json(ex.log_path())  # worker-0: elastic jobs have no Master
    assert env["PET_NNODES"] == "1:3" and env["PET_RDZV_BACKEND"] == "c10d"
    assert env["PET_RDZV_ENDPOINT"].startswith("127.0.0.1:") and "MASTER_ADDR" not in env


def test_never_restart_policy_fails_the_job(tmp_path):
    job = fake_job(tmp_path, "exit", 3, restart_policy="Never")
    status = LocalExecutor(job, tmp_path / "jobs").start().wait(timeout=60)
    assert status.phase == FAILED
    assert "1 Master replica(s) failed (exit code 3)" in status.message


def test_on_failure_restarts_until_the_backoff_limit(tmp_path):
    job = fake_job(tmp_path, "exit", 1, backoff_limit=3)
    ex = LocalExecutor(job, tmp_path / "jobs", restart_delay=0.05)
    seen: set[str] = set()
    ex.start()
    while not ex.status().finished:
        seen.add(ex.status().phase)
        time.sleep(0.01)
    status = ex.wait()
    assert status.phase == FAILED and "backoff limit" in status.message
    assert ex.replicas[0].exit_codes == [1, 1, 1]  # 2 restarts; the 3rd reaches the limit
    assert RESTARTING in seen


def test_exit_code_policy_restarts_signals_but_fails_on_errors(tmp_path):
    job = fake_job(tmp_path, "exit", 137, restart_policy="ExitCode", backoff_limit=2)
    ex = LocalExecutor(job, tmp_path / "jobs", restart_delay=0.05)
    assert ex.start().wait(timeout=60).phase == FAILED
    assert ex.replicas[0].exit_codes == [137, 137]  # retryable: restarted once
    job = fake_job(tmp_path, "exit", 2, restart_policy="ExitCode", backoff_limit=2)
    ex = LocalExecutor(job, tmp_path / "jobs2", restart_delay=0.05)
    assert ex.start().wait(timeout=60).phase == FAILED
    assert ex.replicas[0].exit_codes == [2]  # a bug, not a lost node: no restart


def test_active_deadline_fails_the_job(tmp_path):
    job = fake_job(tmp_path, "loop", 10_000, active_deadline_seconds=1)
    ex = LocalExecutor(job, tmp_path / "jobs")
    status = ex.start().wait(timeout=60)
    assert status.phase == FAILED and "deadline" in status.message
    assert ex.replicas[0].proc.poll() is not None


def test_the_executor_refuses_what_the_cluster_would_refuse(tmp_path):
    job = fake_job(tmp_path, "exit", 0)
    job["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2
    with pytest.raises(InvalidJobError, match="must be 1"):
        LocalExecutor(job, tmp_path / "jobs")


def test_local_backend_adopts_streams_logs_and_deletes(tmp_path):
    backend = LocalBackend(tmp_path / "jobs", poll_interval=0.05)
    job = fake_job(tmp_path, "loop", 10_000)
    sub = backend.submit(job)
    assert sub.created and not backend.submit(job).created  # same name: adopted
    ex = backend.executors[sub.name]
    assert any(line == "line 3" for line in backend.logs(sub.name, follow=True))
    backend.delete(sub.name)
    assert sub.name not in backend.executors
    assert all(r.proc.poll() is not None for r in ex.replicas)  # processes stopped


def test_local_backend_replaces_a_failed_job_and_adopts_a_succeeded_one(tmp_path):
    """As on a cluster: resubmitting a failed job runs it again; a succeeded one is kept."""
    script = tmp_path / "flaky.py"
    script.write_text("import pathlib, sys\n"
                      "flag = pathlib.Path(sys.argv[1])\n"
                      "if not flag.exists():\n"
                      "    flag.touch(); print('first run fails', flush=True); sys.exit(1)\n"
                      "print('second run works', flush=True)\n")
    job = fake_job(tmp_path, "exit", 0, restart_policy="Never")
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "command"] = [sys.executable, str(script), str(tmp_path / "ran-once")]
    backend = LocalBackend(tmp_path / "jobs", poll_interval=0.05)
    first = backend.submit(job)
    assert backend.wait(first.name, timeout=30).failed
    failed_executor = backend.executors[first.name]
    again = backend.submit(job)  # same name: a KFP retry
    assert again.created and again.replaced
    assert backend.executors[again.name] is not failed_executor
    assert backend.wait(again.name, timeout=30).succeeded
    assert list(backend.logs(again.name)) == ["second run works"]
    third = backend.submit(job)
    assert not third.created and not third.replaced  # succeeded: adopted, not run again


def test_local_logs_end_when_the_job_ends(tmp_path):
    backend = LocalBackend(tmp_path / "jobs", poll_interval=0.05)
    sub = backend.submit(fake_job(tmp_path, "loop", 5))
    lines = list(backend.logs(sub.name, follow=True))
    assert lines[1:] == [f"line {i}" for i in range(5)]
    assert backend.wait(sub.name, timeout=30).succeeded


# -- replicas never outlive the executor (issue 7 §3, issue 12 §6) ---------------------------

TREE_REPLICA = '''
import os, subprocess, sys, time
# Like torchrun: a worker in a session of its own, which killing our group does not reach.
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                          start_new_session=True)
with open(os.path.join(sys.argv[1], f"{os.getpid()}.pids"), "w") as f:
    f.write(f"{os.getpid()} {worker.pid}")
time.sleep(600)
'''

EXECUTOR = '''
import json, sys
from umt.launch.backends.local import LocalExecutor
executor = LocalExecutor(json.load(open(sys.argv[1])), sys.argv[2]).start()
print("started", flush=True)
executor.wait()
'''


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone: it runs nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return sys.platform.startswith("linux") is False


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def tree_job(tmp_path: Path, nodes: int = 2) -> dict:
    script = tmp_path / "tree_replica.py"
    script.write_text(TREE_REPLICA)
    (tmp_path / "pids").mkdir()
    job = fake_job(tmp_path, "exit", 0, nodes=nodes)
    for rspec in job["spec"]["pytorchReplicaSpecs"].values():
        rspec["template"]["spec"]["containers"][0]["command"] = [
            sys.executable, str(script), str(tmp_path / "pids")]
    return job


def test_kill_9_of_the_executor_takes_every_replica_process_with_it(tmp_path):
    """The replicas run in sessions of their own; a SIGKILLed executor must not leave them
    (or the workers they started in sessions of *their* own) training."""
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(tree_job(tmp_path)))
    executor = subprocess.Popen([sys.executable, "-c", EXECUTOR, str(job_file),
                                 str(tmp_path / "jobs")], stdout=subprocess.PIPE, text=True)
    tree: list[int] = []
    try:
        assert executor.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 30
        while len(list((tmp_path / "pids").glob("*.pids"))) < 2:
            assert time.monotonic() < deadline, "replicas did not start"
            time.sleep(0.05)
        tree = replica_wrapper.descendants(executor.pid)
        started = [int(p) for f in (tmp_path / "pids").glob("*.pids")
                   for p in f.read_text().split()]
        assert set(started) <= set(tree)  # 2 wrappers, 2 replicas, 2 session-leader workers
        assert len(tree) == 6, tree
        t0 = time.monotonic()
        executor.kill()  # kill -9
        executor.wait()
        assert wait_gone(tree, timeout=10) == [], "replica processes outlived the executor"
        assert time.monotonic() - t0 < 10
    finally:
        executor.kill()
        replica_wrapper.kill_all(tree)  # only if the test failed: nothing is left otherwise


def test_the_parent_pid_watchdog_alone_stops_an_orphaned_replica(tmp_path):
    """Without PR_SET_PDEATHSIG (macOS; or its thread rules missed), the wrapper still notices
    that its parent changed and stops the replica's whole tree."""
    script = tmp_path / "tree_replica.py"
    script.write_text(TREE_REPLICA)
    (tmp_path / "pids").mkdir()
    parent = subprocess.Popen([sys.executable, "-c", (
        "import os, subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, {str(WRAPPER)!r}, '--parent', str(os.getpid()), "
        f"'--no-pdeathsig', '--grace', '1', '--', sys.executable, {str(script)!r}, "
        f"{str(tmp_path / 'pids')!r}], start_new_session=True)\n"
        "time.sleep(600)\n")])
    tree: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while not list((tmp_path / "pids").glob("*.pids")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        tree = replica_wrapper.descendants(parent.pid)
        assert len(tree) == 3, tree  # wrapper, replica, worker
        parent.kill()
        parent.wait()
        assert wait_gone(tree, timeout=10) == []
    finally:
        parent.kill()
        replica_wrapper.kill_all(tree)


def test_a_replica_that_exits_leaves_nothing_running(tmp_path):
    """A container's processes end with its main process: workers it left behind go too."""
    script = tmp_path / "leaves_a_worker.py"
    pidfile = tmp_path / "worker.pid"
    script.write_text("import subprocess, sys\n"
                      "w = subprocess.Popen([sys.executable, '-c', 'import time; "
                      "time.sleep(600)'], start_new_session=True)\n"
                      f"open({str(pidfile)!r}, 'w').write(str(w.pid))\n"
                      "sys.exit(3)\n")
    job = fake_job(tmp_path, "exit", 0, restart_policy="Never")
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "command"] = [sys.executable, str(script)]
    status = LocalExecutor(job, tmp_path / "jobs").start().wait(timeout=60)
    worker = int(pidfile.read_text())
    try:
        assert status.failed and "exit code 3" in status.message  # the replica's own code
        assert wait_gone([worker], timeout=5) == []
    finally:
        replica_wrapper.kill_all([worker])


def test_deleting_a_local_job_fails_its_wait(tmp_path):
    """A deleted job never reads as a success (issue 12 §6)."""
    backend = LocalBackend(tmp_path / "jobs", poll_interval=0.05)
    sub = backend.submit(fake_job(tmp_path, "loop", 10_000))
    threading.Timer(0.5, backend.delete, args=(sub.name,)).start()
    with pytest.raises(JobFailedError, match="deleted") as err:
        backend.wait(sub.name, timeout=30)
    assert err.value.permanent


def test_a_local_retry_of_a_failed_job_raises_its_failure_again(tmp_path):
    backend = LocalBackend(tmp_path / "jobs", poll_interval=0.05)
    job = fake_job(tmp_path, "exit", 1, restart_policy="Never")
    first = backend.submit(job)
    assert backend.wait(first.name, timeout=30).failed
    with pytest.raises(JobFailedError, match="earlier attempt") as err:
        backend.submit(job, replace_failed=False)
    assert err.value.already_failed and err.value.permanent
    assert backend.submit(job).replaced  # the default (a user resubmitting) runs it again


@pytest.mark.slow
def test_kill_9_of_umt_job_run_stops_its_torchrun_replicas(tmp_path):
    """The real command: `umt job run` of Stage 1 (tiny, 2 replicas, torchrun + gloo)."""
    umt = Path(sys.executable).with_name("umt")
    run = subprocess.Popen([str(umt), "job", "run", "stage1", "--config", "tiny", "--nodes",
                            "2", "train.steps=100000", "train.log_every=1", "--output",
                            str(tmp_path / "out")], cwd=tmp_path, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    tree: list[int] = []
    try:
        deadline = time.monotonic() + 180
        logs = tmp_path / "runs" / "local-jobs"
        # Training has started on both replicas: metrics are being written.
        while not (tmp_path / "out" / "metrics.jsonl").exists():
            assert time.monotonic() < deadline and run.poll() is None, "no training started"
            time.sleep(0.2)
        tree = replica_wrapper.descendants(run.pid)
        # 2 wrappers, 2 torchruns, 2 trainers (and whatever torch starts below them).
        assert len(tree) >= 6, tree
        assert len(list(logs.glob("*/master-0.log"))) == 1
        run.kill()
        run.wait()
        assert wait_gone(tree, timeout=15) == [], "replicas kept training after kill -9"
    finally:
        run.kill()
        replica_wrapper.kill_all(tree)
