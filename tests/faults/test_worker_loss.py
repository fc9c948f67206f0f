"""Worker loss (issue 12 §1): a 2-replica Stage-1 PyTorchJob on the local executor (CPU, gloo,
torchrun, the operator's restart policy) loses a replica to SIGKILL mid-run, then its master
to SIGKILL in the middle of writing a checkpoint; the job restarts them, resumes from the last
good checkpoint and ends with weights bitwise equal to those of a run without faults.

The kills are deterministic: the replicas run Stage 1 through a small entry script that stops
at two points and waits there to be killed (the worker after its step-3 gradients are reduced,
the master half way through writing step 4's checkpoint file); the test waits for each point,
then kills the replica's whole process tree as a lost node would (``kill_replica``). The
faulted job is run as users run one, through ``run_training_job`` on the local backend, so the
same processes also check what that call hands back (status, streamed logs, summary).

Preemption (issue 17): the same job is sent SIGTERM, as a kubelet stops a pod on a reclaimed
spot node, twice -- first the worker's pod alone, then both -- and each time every rank writes
the checkpoint of the step in progress and exits; the restarted job resumes from that step and
ends with the same weights (``umt.runtime.preemption``). Both fault tests compare with one
unfaulted job (the ``reference`` fixture), started once beside the first of them.

Elsewhere: the local executor's restart semantics with fake replicas in
tests/test_launch_local.py; unreadable checkpoints in tests/test_train_safety.py and below.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from umt.launch import TrainingJob, run_training_job, to_dict
from umt.launch import replica as replica_wrapper
from umt.launch.backends.local import LocalBackend, LocalExecutor
from umt.launch.backends.pytorchjob import build_pytorchjob
from umt.runtime import checkpoint

# Stage 1's entry point with fault points: the replicas run PRELUDE + the points + RUN_STAGE1.
PRELUDE = r'''
import os, runpy, sys, time

FAULTS = os.environ["UMT_FAULT_DIR"]
RANK = int(os.environ["RANK"])  # torchrun's global rank


def armed(name):
    return not os.path.exists(os.path.join(FAULTS, name))


def reached(name):  # what the test waits for
    open(os.path.join(FAULTS, name), "w").close()


from umt import storage
from umt.train import loop
'''
RUN_STAGE1 = r'''
sys.argv = ["umt.train.stage1"] + sys.argv[1:]
runpy.run_module("umt.train.stage1", run_name="__main__", alter_sys=True)
'''

# Two places where a replica stops and waits to be SIGKILLed.
FAULTY_STAGE1 = PRELUDE + r'''
def wait_to_be_killed(name):
    reached(name)
    while True:
        time.sleep(1)


if RANK == 1:  # the worker: dies at step 3, after both ranks' gradients were reduced
    real_apply, calls = loop.apply_gradients, [0]

    def apply_gradients(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3 and armed("worker-at-step-3"):
            wait_to_be_killed("worker-at-step-3")
        return real_apply(*args, **kwargs)

    loop.apply_gradients = apply_gradients

if RANK == 0:  # the master: dies half way through writing the step-4 checkpoint
    real_write, real_fdopen = storage.write_bytes, os.fdopen

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            os.fsync(self.f.fileno())
            wait_to_be_killed("master-writing-step-4")

    def write_bytes(uri, data):
        if str(uri).endswith("step_00000004.pt") and armed("master-writing-step-4"):
            os.fdopen = lambda fd, *a, **k: HalfWriter(real_fdopen(fd, *a, **k))
        return real_write(uri, data)

    storage.write_bytes = write_bytes
''' + RUN_STAGE1

# Two places where a replica, having finished a step, waits until SIGTERM has reached it: the
# worker after step 3 (only its pod is stopped), both replicas after step 5 (both pods).
SIGTERMED_STAGE1 = PRELUDE + r'''
from umt.runtime import preemption

HOLDS = {0: [5], 1: [3, 5]}[RANK]
real_train_step = loop._Run.train_step


def train_step(self, step):
    grad_norm = real_train_step(self, step)
    name = f"rank{RANK}-after-step-{step + 1}"
    if step + 1 in HOLDS and armed(name):
        reached(name)
        deadline = time.monotonic() + 300
        while preemption.received_at() is None:  # the handler runs during the sleeps
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: no SIGTERM came")
            time.sleep(0.02)
    return grad_norm


loop._Run.train_step = train_step
''' + RUN_STAGE1

# Stochastic depth on: every rank's RNG state must be saved and restored for a resumed run to
# replay the dropped paths exactly (bitwise equal weights below).
OVERRIDES = ["train.steps=6", "train.ckpt_every=2", "train.keep_last=2", "train.log_every=1",
             "train.batch_size=2", "model.drop_path_rate=0.3"]
ENV = {"OMP_NUM_THREADS": "1"}
# 6 steps, not 4: while the master waits to be killed in step 4's save, the worker must still
# have a step to wait in (a worker that finished would not be restarted to meet the master).


def stage1_job(out: Path, env: dict | None = None) -> dict:
    return to_dict(build_pytorchjob(TrainingJob(
        stage="stage1", config="tiny", nodes=2, gpus_per_node=0, node_pool="cpu",
        overrides=OVERRIDES + [f"train.output_dir={out}"], allow_local_output=True,
        backoff_limit=8, env=env or ENV)))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The job without faults, started once for the module (beside the first faulted job: less
    wall time); calling the fixture's value waits for it and returns its output folder."""
    root = tmp_path_factory.mktemp("reference")
    executor = LocalExecutor(stage1_job(root / "out"), root / "jobs", restart_delay=1.0).start()

    def finished() -> Path:
        status = executor.wait(timeout=400)
        assert status.succeeded, status.message + executor.log_path("master").read_text()[-3000:]
        return root / "out"

    yield finished
    executor.cancel()  # only if a test failed before waiting for it


class FaultyStage1Backend(LocalBackend):
    """The local backend, whose replicas' torchrun runs the faulty entry script instead of
    the ``umt.train.stage1`` module (everything else is the job as rendered)."""

    def __init__(self, script: Path, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.script = script

    def submit(self, job, **kwargs):
        job = to_dict(job)
        for rspec in job["spec"]["pytorchReplicaSpecs"].values():
            command = rspec["template"]["spec"]["containers"][0]["command"]
            assert command[:3] == ["torchrun", "-m", "umt.train.stage1"], command
            command[1:3] = [str(self.script)]
        return super().submit(job, **kwargs)


def fault_script(tmp_path: Path, text: str) -> tuple[Path, Path]:
    """The entry script and the folder of its markers."""
    faults = tmp_path / "faults"
    faults.mkdir()
    script = tmp_path / "faulty_stage1.py"
    script.write_text(text)
    return script, faults


def same_as_reference(out: Path, ref_out: Path) -> None:
    """Bitwise the reference's final weights, and every step's loss logged once, the same."""
    want, got = final_state(ref_out), final_state(out)
    assert got["step"] == want["step"] == 6
    assert want["model"].keys() == got["model"].keys()
    for k in want["model"]:
        assert torch.equal(want["model"][k], got["model"][k]), k  # bitwise
    assert losses(out) == losses(ref_out)  # every step once, each with the same loss


def final_state(out: Path) -> dict:
    return checkpoint.load_latest(str(out))


def losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in
            map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def wait_for(path: Path, executor: LocalExecutor, timeout: float = 480) -> None:
    # Generous: under -n 2 beside another multi-process test, a restart took over 240 s once.
    deadline = time.monotonic() + timeout
    while not path.exists():
        if executor.status().finished or time.monotonic() > deadline:
            raise AssertionError(f"{path.name} never reached ({executor.status().message})")
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkilled_replicas_resume_from_the_last_good_checkpoint_to_identical_weights(
        tmp_path, reference):
    """The faulted job goes through ``run_training_job`` (render, submit, stream, wait, read
    the summary) on the local backend; the reference runs beside it on a plain executor."""
    script, faults = fault_script(tmp_path, FAULTY_STAGE1)
    out = tmp_path / "faulted"
    backend = FaultyStage1Backend(script, tmp_path / "faulted-jobs", cwd=str(tmp_path),
                                  restart_delay=1.0, poll_interval=0.2)
    lines: list[str] = []
    outcome: dict = {}

    def run_job() -> None:
        try:
            outcome["result"] = run_training_job(
                "stage1", "tiny", OVERRIDES, nodes=2, gpus_per_node=0, node_pool="cpu",
                s3=None, output_uri=str(out), backoff_limit=8,
                env={**ENV, "UMT_FAULT_DIR": str(faults)}, backend=backend,
                rendered_yaml_path=str(tmp_path / "job.yaml"), log_sink=lines.append)
        except BaseException as e:  # re-raised below, in the test's thread
            outcome["error"] = e

    runner = threading.Thread(target=run_job, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while not backend.executors:
            assert time.monotonic() < deadline and runner.is_alive(), outcome
            time.sleep(0.05)
        faulted = next(iter(backend.executors.values()))
        seen: list[str] = []

        # Fault 1: the worker dies mid-run (step 3; the last checkpoint is step 2).
        wait_for(faults / "worker-at-step-3", faulted)
        assert (out / "checkpoints" / "latest").read_text() == "step_00000002.pt"
        faulted.kill_replica("Worker", 0)
        seen.append("worker killed")

        # Fault 2: the restarted master dies while step 4's file is half written.
        wait_for(faults / "master-writing-step-4", faulted)
        partial = list((out / "checkpoints").glob(".tmp-*step_00000004.pt"))
        assert len(partial) == 1 and partial[0].stat().st_size > 0
        faulted.kill_replica("Master", 0)
        seen.append("master killed")
        # What a restart finds: "latest" names a checkpoint that loads, the torn file is ignored.
        assert (out / "checkpoints" / "latest").read_text() == "step_00000002.pt"
        assert checkpoint.load_latest(str(out))["step"] == 2

        runner.join(timeout=400)
        ref_out = reference()
    finally:
        for executor in backend.executors.values():
            executor.cancel()  # only if the test failed: it has ended otherwise
    text = "\n".join(lines)
    if "error" in outcome:
        raise AssertionError(text[-3000:]) from outcome["error"]
    result = outcome["result"]
    log = faulted.log_path("master").read_text()
    assert result.status.succeeded, result.status.message + log[-3000:]
    assert seen == ["worker killed", "master killed"]
    assert sum(r.restarts for r in faulted.replicas) >= 2  # both faults were restarts
    assert log.count("resumed from step 2 ") == 2, log[-3000:]  # step 4 never completed before
    assert "resumed from step 2 " in text  # the replicas' logs reach the caller's sink

    same_as_reference(out, ref_out)
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["latest", "step_00000004.pt", "step_00000006.pt"]  # torn file swept
    for name in names[1:]:
        checkpoint.load(str(out / "checkpoints" / name))

    # What run_training_job hands back: the job's own summary, read from its output folder.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total_steps"] == 6 and summary["checkpoint"].endswith("step_00000006.pt")
    assert result.summary == summary and result.output_dir == str(out)  # no folder parsing
    assert (tmp_path / "job.yaml").read_text().startswith("apiVersion: kubeflow.org/v1")


GRACE_S = 60  # the pods' terminationGracePeriodSeconds, and what the trainers are told


def sigterm_every_process(executor: LocalExecutor, rtype: str) -> None:
    """SIGTERM to every process of a replica's pod (torchrun and the trainer), not only to its
    main process as the kubelet does: the trainer then gets it twice (torchrun forwards its
    own), which must change nothing."""
    replica = next(r for r in executor.replicas if r.rtype == rtype)
    replica_wrapper.kill_all(replica_wrapper.descendants(replica.proc.pid), signal.SIGTERM)


@pytest.mark.slow
def test_sigtermed_replicas_checkpoint_the_step_in_progress_and_resume_to_identical_weights(
        tmp_path, reference):
    """Preemption 1: SIGTERM to the worker's pod alone (one spot node reclaimed) after step 3;
    the master, never signalled, learns of it through the per-step flag all-reduce and both
    checkpoint step 3. Preemption 2: SIGTERM to both pods after step 5, the kubelet's way (to
    the container's main process, torchrun, which forwards it). Both times the pods exit
    non-zero, the restart policy restarts them and they resume from that exact step."""
    script, faults = fault_script(tmp_path, SIGTERMED_STAGE1)
    out = tmp_path / "sigtermed"
    # What the launcher gives a pod: the grace, the same value for the trainer, and torchrun's
    # shutdown timeout raised to it (its default 30 s would cut the grace short).
    env = {**ENV, "UMT_FAULT_DIR": str(faults), "UMT_SIGTERM_GRACE_S": str(GRACE_S),
           "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(GRACE_S)}
    job = stage1_job(out, env)
    for rspec in job["spec"]["pytorchReplicaSpecs"].values():
        rspec["template"]["spec"]["terminationGracePeriodSeconds"] = GRACE_S
    backend = FaultyStage1Backend(script, tmp_path / "jobs", cwd=str(tmp_path), restart_delay=1.0)
    backend.submit(job)
    job_run = next(iter(backend.executors.values()))
    try:
        wait_for(faults / "rank1-after-step-3", job_run)
        assert (out / "checkpoints" / "latest").read_text() == "step_00000002.pt"
        sigterm_every_process(job_run, "Worker")

        wait_for(faults / "rank0-after-step-5", job_run)
        wait_for(faults / "rank1-after-step-5", job_run)
        # Preemption 1 ended in step 3's checkpoint; step 4's periodic one followed.
        assert checkpoint.load_latest(str(out))["step"] == 4
        job_run.kill_replica("Master", 0, signal.SIGTERM)
        job_run.kill_replica("Worker", 0, signal.SIGTERM)

        status = job_run.wait(timeout=400)
        ref_out = reference()
    finally:
        job_run.cancel()  # only if the test failed: it has ended otherwise
    master, worker = (job_run.log_path(r).read_text() for r in ("master", "worker"))
    assert status.succeeded, status.message + master[-3000:]
    # Each replica was restarted after each preemption: it exited non-zero (the trainer with
    # 143, torchrun -- the container's process -- with 1), which OnFailure restarts.
    for r in job_run.replicas:
        assert r.restarts >= 2 and r.exit_codes[-1] == 0 and 0 not in r.exit_codes[:-1], r
    assert "exitcode  : 143" in master  # torchrun's report of its trainer, after preemption 1

    budget = f"of a {GRACE_S} s budget (UMT_SIGTERM_GRACE_S={GRACE_S})"
    assert "SIGTERM reached 1 of 2 rank(s) (not this one): checkpointed step 3 in" in master
    assert "SIGTERM reached 1 of 2 rank(s) (this one " in worker
    assert master.count("SIGTERM reached 2 of 2 rank(s) (this one ") == 1
    assert master.count(budget) == 2 and "checkpointed step 5 in" in master
    assert master.count("resumed from step 3 ") == 1 and master.count("resumed from step 5 ") == 1

    same_as_reference(out, ref_out)
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["latest", "step_00000005.pt", "step_00000006.pt"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["checkpoint"].endswith("step_00000006.pt")


# ------------------------------------------------------- a truncated or garbage newest checkpoint

@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning_naming_it(tmp_path, caplog, damage):
    """What a node lost mid-write on a filesystem without atomic rename leaves behind."""
    for step in (2, 4):
        checkpoint.save(str(tmp_path), step, {"model": {"w": torch.full((64,), float(step))}},
                        keep_last=3)
    newest = tmp_path / "checkpoints" / "step_00000004.pt"
    data = newest.read_bytes()
    newest.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(len(data)),
                        "empty": b""}[damage])
    with caplog.at_level(logging.WARNING, logger="umt.runtime.checkpoint"):
        state = checkpoint.load_latest(str(tmp_path))
    assert state["step"] == 2 and torch.equal(state["model"]["w"], torch.full((64,), 2.0))
    assert state["unreadable"] == [str(newest)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"skipping unreadable checkpoint {newest}" in w for w in warnings), warnings
    assert any("resuming from" in w and "step_00000002.pt" in w for w in warnings), warnings
