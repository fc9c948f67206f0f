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

Elsewhere: the local executor's restart semantics with fake replicas in
tests/test_launch_local.py; unreadable checkpoints in tests/test_train_safety.py and below.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from umt.launch import TrainingJob, run_training_job, to_dict
from umt.launch.backends.local import LocalBackend, LocalExecutor
from umt.launch.backends.pytorchjob import build_pytorchjob
from umt.runtime import checkpoint

# Stage 1's entry point, with two places where a replica stops and waits to be SIGKILLed.
FAULTY_STAGE1 = r'''
import os, runpy, sys, time

FAULTS = os.environ["UMT_FAULT_DIR"]
RANK = int(os.environ["RANK"])  # torchrun's global rank


def armed(name):
    return not os.path.exists(os.path.join(FAULTS, name))


def wait_to_be_killed(name):
    open(os.path.join(FAULTS, name), "w").close()
    while True:
        time.sleep(1)


from umt import storage
from umt.train import loop

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

sys.argv = ["umt.train.stage1"] + sys.argv[1:]
runpy.run_module("umt.train.stage1", run_name="__main__", alter_sys=True)
'''

OVERRIDES = ["train.steps=6", "train.ckpt_every=2", "train.keep_last=2", "train.log_every=1",
             "train.batch_size=2"]
ENV = {"OMP_NUM_THREADS": "1"}
# 6 steps, not 4: while the master waits to be killed in step 4's save, the worker must still
# have a step to wait in (a worker that finished would not be restarted to meet the master).


def stage1_job(out: Path) -> dict:
    return to_dict(build_pytorchjob(TrainingJob(
        stage="stage1", config="tiny", nodes=2, gpus_per_node=0, node_pool="cpu",
        overrides=OVERRIDES + [f"train.output_dir={out}"], allow_local_output=True,
        backoff_limit=8, env=ENV)))


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


def final_state(out: Path) -> dict:
    return checkpoint.load_latest(str(out))


def losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in
            map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def wait_for(path: Path, executor: LocalExecutor, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if executor.status().finished or time.monotonic() > deadline:
            raise AssertionError(f"{path.name} never reached ({executor.status().message})")
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkilled_replicas_resume_from_the_last_good_checkpoint_to_identical_weights(tmp_path):
    """The faulted job goes through ``run_training_job`` (render, submit, stream, wait, read
    the summary) on the local backend; the reference runs beside it on a plain executor."""
    faults = tmp_path / "faults"
    faults.mkdir()
    script = tmp_path / "faulty_stage1.py"
    script.write_text(FAULTY_STAGE1)
    ref_out, out = tmp_path / "reference", tmp_path / "faulted"
    # The reference (no faults) and the faulted job run side by side: less wall time.
    reference = LocalExecutor(stage1_job(ref_out), tmp_path / "jobs", restart_delay=1.0).start()
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
        assert reference.wait(timeout=400).succeeded
    finally:
        for executor in [reference, *backend.executors.values()]:
            executor.cancel()  # only if the test failed: both have ended otherwise
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

    want, got = final_state(ref_out), final_state(out)
    assert got["step"] == want["step"] == 6
    assert want["model"].keys() == got["model"].keys()
    for k in want["model"]:
        assert torch.equal(want["model"][k], got["model"][k]), k  # bitwise
    assert losses(out) == losses(ref_out)  # every step once, each with the same loss
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["latest", "step_00000004.pt", "step_00000006.pt"]  # torn file swept
    for name in names[1:]:
        checkpoint.load(str(out / "checkpoints" / name))

    # What run_training_job hands back: the job's own summary, read from its output folder.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total_steps"] == 6 and summary["checkpoint"].endswith("step_00000006.pt")
    assert result.summary == summary and result.output_dir == str(out)  # no folder parsing
    assert (tmp_path / "job.yaml").read_text().startswith("apiVersion: kubeflow.org/v1")


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
