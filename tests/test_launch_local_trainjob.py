"""The local TrainJob executor: the TrainJob ``--backend trainjob`` renders, run as processes here
the way Kubeflow Trainer v2 (torch plugin, JobSet) runs it on the project runtime. A fake node
command pins down the semantics (environment, JobSet restarts, maxRestarts, deadline, grace,
deletion); the real Stage-1 job runs in tests/test_pipeline_local_trainjob.py."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from umt.launch import JobFailedError, TrainingJob, to_dict
from umt.launch import trainer_runtime as tr
from umt.launch.backends.local_trainjob import LocalTrainJobBackend, LocalTrainJobExecutor
from umt.launch.backends.trainjob import build_trainjob
from umt.launch.status import FAILED, RESTARTING, SUCCEEDED

FAKE_NODE = '''
import json, os, pathlib, signal, sys, time
print(json.dumps({k: v for k, v in os.environ.items() if k.startswith(
    ("PET_", "MASTER_", "WORLD_SIZE", "RANK", "UMT_", "FROM_"))}), flush=True)
mode, arg = sys.argv[1], int(sys.argv[2])
if mode == "exit":
    sys.exit(arg)
if mode == "flaky":  # node 1 fails on the first run of the JobSet only
    flag = pathlib.Path(sys.argv[3])
    if os.environ["PET_NODE_RANK"] == "1" and not flag.exists():
        flag.touch()
        time.sleep(0.5)
        sys.exit(arg)
    print("ok", flush=True)
    sys.exit(0)
if mode == "term":  # checkpoints on SIGTERM, taking `arg` tenths of a second
    def on_term(*_):
        time.sleep(arg / 10)
        print("checkpoint written", flush=True)
        sys.exit(143)
    signal.signal(signal.SIGTERM, on_term)
for i in range(10_000):
    print(f"line {i}", flush=True)
    time.sleep(0.05)
'''


def fake_trainjob(tmp_path: Path, *args: str, **kw) -> dict:
    """A real rendered TrainJob whose node command is the fake node instead."""
    script = tmp_path / "fake_node.py"
    script.write_text(FAKE_NODE)
    kw.setdefault("nodes", 2)
    job = to_dict(build_trainjob(TrainingJob(
        stage="stage1", config="tiny", gpus_per_node=0, node_pool="cpu", s3=None,
        env={"FROM_SPEC": "yes"}, validate_config=False, **kw)))
    job["spec"]["trainer"]["command"] = [sys.executable, str(script), *args]
    return job


def first_json(path: Path) -> dict:
    return json.loads(path.read_text().splitlines()[0])


def test_nodes_get_the_torch_plugins_environment(tmp_path):
    job = fake_trainjob(tmp_path, "exit", "0", nodes=3, procs_per_node=2,
                        termination_grace_seconds=7)
    ex = LocalTrainJobExecutor(job, tmp_path / "jobs")
    status = ex.start().wait(timeout=60)
    assert status.phase == SUCCEEDED and status.message == "jobset completed successfully"
    assert [(c.type, c.status) for c in status.conditions] == [("Complete", "True")]
    envs = [first_json(ex.log_path(index=i)) for i in range(3)]
    assert [e["PET_NODE_RANK"] for e in envs] == ["0", "1", "2"]
    for e in envs:
        assert e["PET_NNODES"] == "3" and e["PET_NPROC_PER_NODE"] == "2"
        assert e["PET_MASTER_ADDR"] == "127.0.0.1"
        assert e["PET_MASTER_PORT"] == envs[0]["PET_MASTER_PORT"]
        assert e["FROM_SPEC"] == "yes" and e["UMT_SIGTERM_GRACE_S"] == "7"
        # The Trainer sets no MASTER_ADDR / WORLD_SIZE / RANK (torchrun does, for workers).
        assert not {"MASTER_ADDR", "WORLD_SIZE", "RANK"} & set(e)
    assert ex.stop_grace == 7  # the pods' terminationGracePeriodSeconds
    saved = yaml.safe_load((tmp_path / "jobs" / job["metadata"]["name"] / "job.yaml").read_text())
    assert saved == job


def test_a_failed_node_restarts_every_node_and_the_job_goes_on(tmp_path):
    job = fake_trainjob(tmp_path, "flaky", "1", str(tmp_path / "failed-once"))
    ex = LocalTrainJobExecutor(job, tmp_path / "jobs", restart_delay=0.05)
    seen: set[str] = set()
    ex.start()
    while not ex.status().finished:
        seen.add(ex.status().phase)
        time.sleep(0.01)
    status = ex.wait()
    assert status.phase == SUCCEEDED and RESTARTING in seen
    assert ex.restarts == 1 and [r.restarts for r in ex.replicas] == [1, 1]  # both restarted
    assert ex.log_path(index=1).read_text().count("PET_NODE_RANK") == 2


def test_crashes_past_the_runtimes_max_restarts_fail_the_job(tmp_path):
    job = fake_trainjob(tmp_path, "exit", "3")
    ex = LocalTrainJobExecutor(job, tmp_path / "jobs", restart_delay=0.05)
    status = ex.start().wait(timeout=60)
    assert status.phase == FAILED
    assert "reaching max number of restarts" in status.message and "code 3" in status.message
    assert ex.restarts == tr.MAX_RESTARTS


def test_active_deadline_fails_the_job(tmp_path):
    job = fake_trainjob(tmp_path, "loop", "0", active_deadline_seconds=1)
    ex = LocalTrainJobExecutor(job, tmp_path / "jobs")
    status = ex.start().wait(timeout=60)
    assert status.phase == FAILED and status.message == "TrainJob exceeded its active deadline"
    assert status.conditions[-1].reason == "DeadlineExceeded"
    assert all(r.proc.poll() is not None for r in ex.replicas)


@pytest.mark.parametrize("grace,written", [(3, True), (1, False)])
def test_a_stopped_node_gets_the_grace_period_to_checkpoint(tmp_path, grace, written):
    """SIGTERM, then the pods' terminationGracePeriodSeconds before SIGKILL: a node that
    needs 1.5 s to checkpoint makes it with a 3 s grace, not with 1 s."""
    job = fake_trainjob(tmp_path, "term", "15", nodes=1, termination_grace_seconds=grace)
    backend = LocalTrainJobBackend(tmp_path / "jobs", poll_interval=0.05)
    sub = backend.submit(job)
    ex = backend.executors[sub.name]
    deadline = time.monotonic() + 20
    while "line 2" not in ex.log_path().read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    backend.delete(sub.name)
    assert ("checkpoint written" in ex.log_path().read_text()) is written


def test_the_local_backend_adopts_streams_logs_deletes_and_replaces(tmp_path):
    backend = LocalTrainJobBackend(tmp_path / "jobs", poll_interval=0.05)
    job = fake_trainjob(tmp_path, "loop", "0")
    sub = backend.submit(job)
    assert sub.created and not backend.submit(job).created  # same name: adopted
    assert any(line == "line 3" for line in backend.logs(sub.name, follow=True))
    threading.Timer(0.3, backend.delete, args=(sub.name,)).start()
    with pytest.raises(JobFailedError, match="deleted"):
        backend.wait(sub.name, timeout=30)
    failing = fake_trainjob(tmp_path, "exit", "1")
    first = backend.submit(failing)
    assert backend.wait(first.name, timeout=60).failed
    with pytest.raises(JobFailedError, match="earlier attempt"):
        backend.submit(failing, replace_failed=False)
    assert backend.submit(failing).replaced


def test_a_kueue_label_changes_nothing_locally(tmp_path):
    job = fake_trainjob(tmp_path, "exit", "0", kueue_queue="team-a")
    status = LocalTrainJobExecutor(job, tmp_path / "jobs").start().wait(timeout=60)
    assert status.succeeded and status.queue is None


def test_only_the_project_runtime_runs_here(tmp_path):
    job = fake_trainjob(tmp_path, "exit", "0")
    job["spec"]["runtimeRef"] = {"name": "torch-distributed", "kind": "ClusterTrainingRuntime"}
    with pytest.raises(ValueError, match="project runtime TrainingRuntime/umt-torch only"):
        LocalTrainJobExecutor(job, tmp_path / "jobs")


def test_signal_exit_codes_count_as_failures(tmp_path):
    """A node killed by a signal (a lost node, here) restarts the JobSet like any failure."""
    job = fake_trainjob(tmp_path, "loop", "0", nodes=2)
    ex = LocalTrainJobExecutor(job, tmp_path / "jobs", restart_delay=0.05)
    ex.start()
    deadline = time.monotonic() + 20
    while not ex.log_path(index=1).exists() or "line 1" not in ex.log_path(index=1).read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ex.kill_replica("Node", 1, signal.SIGKILL)
    while ex.restarts == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ex.cancel()
    assert ex.replicas[1].exit_codes[0] == 137
