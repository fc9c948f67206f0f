"""What the shared training loop never loses (issue: defects found by trying to break it).

Unreadable checkpoints stop a run instead of restarting it at step 0; a run prunes only its
own lineage; two writers on one output folder are refused; a resumed config that does not
fit its checkpoint fails before anything is written; torn metrics lines do not block resume.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from s3_fault_proxy import FaultProxy
from typer.testing import CliRunner

from umt import storage
from umt.cli import app
from umt.runtime import checkpoint
from umt.runtime.checkpoint import CheckpointsUnreadableError
from umt.runtime.lease import RunLease, RunLockedError
from umt.train.stage1 import main


def run(out, *overrides):
    return main("tiny", [f"train.output_dir={out}", "train.log_every=1", *overrides])


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted((folder / "checkpoints").iterdir())}


# ------------------------------------------------------------------------ unreadable checkpoints

def test_all_checkpoints_truncated_stops_the_run_and_keeps_them(tmp_path):
    run(tmp_path, "train.steps=6", "train.ckpt_every=2", "train.keep_last=3")
    for p in (tmp_path / "checkpoints").glob("step_*.pt"):
        p.write_bytes(p.read_bytes()[:1000])  # truncated, as by a full disk
    before = snapshot(tmp_path)
    metrics = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointsUnreadableError) as e:
        run(tmp_path, "train.steps=6", "train.ckpt_every=2", "train.keep_last=3")
    msg = str(e.value)
    assert "none can be read" in msg
    for name in ("step_00000002.pt", "step_00000004.pt", "step_00000006.pt"):
        assert name in msg
    assert snapshot(tmp_path) == before                      # nothing pruned or overwritten
    assert (tmp_path / "metrics.jsonl").read_text() == metrics
    # the command says so in one line and exits 1
    r = CliRunner().invoke(app, ["train", "stage1", "--config", "tiny", f"train.output_dir={tmp_path}",
                                 "train.steps=6"])
    assert r.exit_code == 1 and "none can be read" in r.output


def test_corrupt_newest_falls_back_and_is_kept_aside(tmp_path):
    run(tmp_path, "train.steps=4", "train.ckpt_every=2", "train.keep_last=3")
    newest = tmp_path / "checkpoints" / "step_00000004.pt"
    garbage = b"not a checkpoint" * 10
    newest.write_bytes(garbage)
    summary = run(tmp_path, "train.steps=4", "train.ckpt_every=2", "train.keep_last=3")
    assert summary["steps"] == 4 and checkpoint.load_latest(str(tmp_path))["step"] == 4
    aside = list((tmp_path / "checkpoints").glob("step_00000004.pt.unreadable-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == garbage


def test_pruning_never_touches_checkpoints_of_another_lineage(tmp_path):
    run(tmp_path, "train.steps=2", "train.ckpt_every=1", "train.keep_last=1")
    # A checkpoint this run did not write (say, copied in by hand) at a later step than
    # the run resumes from is left alone even though keep_last=1 would prune it.
    foreign = tmp_path / "checkpoints" / "step_00000009.pt"
    foreign.write_bytes(b"\x00" * 64)
    run(tmp_path, "train.steps=4", "train.ckpt_every=1", "train.keep_last=1")
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_00000004.pt", "step_00000009.pt"]
    assert foreign.read_bytes() == b"\x00" * 64


def test_resume_false_refuses_a_folder_with_checkpoints(tmp_path):
    run(tmp_path, "train.steps=1")
    with pytest.raises(ValueError, match="already holds checkpoints"):
        run(tmp_path, "train.steps=1", "train.resume=false")


def test_s3_access_denied_is_an_error_not_a_fresh_start(tmp_path, s3_bucket, monkeypatch):
    out = f"{s3_bucket}/runs/denied"
    monkeypatch.setenv("UMT_CACHE", str(tmp_path / "cache"))
    run(out, "train.steps=2", "train.ckpt_every=1")
    before = sorted(storage.list_uris(f"{out}/checkpoints"))
    upstream = os.environ["AWS_ENDPOINT_URL"]
    with FaultProxy(upstream) as proxy:
        proxy.rule = lambda method, path: 403 if method == "GET" and "step_" in path else None
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        with pytest.raises(Exception) as e:
            run(out, "train.steps=4", "train.ckpt_every=1")
        assert "AccessDenied" in str(e.value) or "403" in str(e.value)
        assert any(m == "GET" and "step_" in p for m, p, _ in proxy.log)
    monkeypatch.setenv("AWS_ENDPOINT_URL", upstream)
    assert sorted(storage.list_uris(f"{out}/checkpoints")) == before
    assert checkpoint.load_latest(out)["step"] == 2


# ------------------------------------------------------------------------ config vs checkpoint

def test_resume_with_another_model_shape_fails_before_writing(tmp_path):
    run(tmp_path, "train.steps=1")
    config = (tmp_path / "config.yaml").read_text()
    with pytest.raises(ValueError, match=r"shapes differ.*checkpoint \(96,\).*config \(192,\)|"
                                         r"does not fit the configured model"):
        run(tmp_path, "train.steps=2", "model.embed_dim=192")
    assert (tmp_path / "config.yaml").read_text() == config


def test_steps_below_the_checkpoint_say_so(tmp_path):
    run(tmp_path, "train.steps=3")
    with pytest.raises(ValueError, match="is at step 3 but train.steps=2"):
        run(tmp_path, "train.steps=2")
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 3


def test_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    run(tmp_path, "train.steps=2", "train.ckpt_every=1")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.5, "lr"')  # killed mid-write
    run(tmp_path, "train.steps=3", "train.ckpt_every=1")
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_distinct_s3_outputs_never_share_a_metrics_cache(tmp_path, monkeypatch):
    from umt.runtime.common import RunFiles

    monkeypatch.setenv("UMT_CACHE", str(tmp_path))
    a = RunFiles("s3://b/x_y/z", enabled=False).local
    b = RunFiles("s3://b/x/y_z", enabled=False).local
    assert a != b


# ------------------------------------------------------------------------ one writer per output

def _wait_for(path, timeout=60):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.1)


@pytest.mark.slow
def test_second_writer_is_refused_and_a_dead_ones_lease_is_taken_over(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "umt.train.stage1", "--config", "tiny",
                              f"train.output_dir={out}", "train.steps=100000", "train.ckpt_every=100000"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        _wait_for(out / "lease.json")
        config = (out / "config.yaml").read_text() if (out / "config.yaml").exists() else None
        with pytest.raises(RunLockedError, match="being written by another run"):
            run(out, "train.steps=1", "train.batch_size=4")
        if config is not None:
            assert (out / "config.yaml").read_text() == config  # the first run's stays
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    summary = run(out, "train.steps=2", "train.ckpt_every=2")  # the dead run's lease: taken over
    assert summary["steps"] == 2
    assert not (out / "lease.json").exists()  # released at the end


def test_lease_of_another_host_is_taken_only_when_its_heartbeat_stops(tmp_path, s3_bucket):
    """On S3: a lease from another machine whose counter does not move is stale after one TTL;
    one whose counter moves belongs to a live run."""
    out = f"{s3_bucket}/runs/lease"
    stale = {"owner": "x" * 32, "host": "other-host", "pid": 1, "pid_start": "1",
             "heartbeat": time.time(), "seq": 7, "ttl_s": 0.6}
    storage.write_bytes(f"{out}/lease.json", json.dumps(stale).encode())
    lease = RunLease(out, ttl_s=5).acquire()
    assert json.loads(storage.read_bytes(f"{out}/lease.json"))["owner"] == lease.record["owner"]
    lease.release()
    assert not storage.exists(f"{out}/lease.json")

    live = RunLease(out, ttl_s=0.6).acquire()   # renews every 0.2 s from its thread
    live.record["host"] = "other-host"          # as seen from here: another machine
    live.renew()
    try:
        with pytest.raises(RunLockedError, match="another live run"):
            RunLease(out, ttl_s=0.6).acquire()
    finally:
        live.release()


def test_lease_compare_and_swap_lets_one_of_two_takers_win(tmp_path, s3_bucket):
    out = f"{s3_bucket}/runs/race"
    a, b = RunLease(out, ttl_s=30), RunLease(out, ttl_s=30)
    assert a.store.create(a.record)
    assert not b.store.create(b.record)                 # If-None-Match: * refuses the second
    _, version = a.store.read()
    assert a.store.replace({**a.record, "seq": 1}, version)
    assert not b.store.replace(b.record, version)       # If-Match on the old ETag refuses b
    assert a.store.read()[0]["owner"] == a.record["owner"]


# ------------------------------------------------------------------------ configs fail early

@pytest.mark.parametrize("override,msg", [
    ("train.precision=fp16", "train.precision='fp16' is not allowed; choose one of: 'bf16', 'fp32'"),
    ("loss=foo", "loss='foo' is not allowed"),
    ("mask.type=semantci", "mask.type='semantci' is not allowed"),
    ("train.ckpt_every=0", "train.ckpt_every=0 is out of range"),
    ("train.log_every=0", "train.log_every=0"),
    ("train.batch_size=0", "train.batch_size=0"),
    ("train.steps=-5", "train.steps=-5"),
    ("optim.betas=[0.9]", r"optim.betas=\[0.9\] must have exactly 2 values"),
    ("optim.betas=[0.9,1.5]", r"optim.betas\[1\]=1.5 is out of range"),
    ("train.device=tpu", "train.device='tpu' is not allowed"),
    ("mask.ratio=1.0", "mask.ratio=1.0 is out of range"),
    ("train.output_dir=${oc.env:AWS_SECRET_ACCESS_KEY}", "resolvers such as oc.env are disabled"),
])
def test_bad_values_fail_when_the_config_loads(override, msg, tmp_path):
    with pytest.raises(ValueError, match=msg):
        run(tmp_path, override)
    assert not (tmp_path / "config.yaml").exists()
    # umt job render loads it the same way: the error appears before any pod exists
    r = CliRunner().invoke(app, ["job", "render", "stage1", "--config", "tiny", override])
    assert r.exit_code != 0 and ("not allowed" in r.output or "out of range" in r.output
                                 or "must have exactly" in r.output or "resolvers" in r.output), r.output


def test_semantic_is_the_papers_name_for_attention_masking(tmp_path):
    from umt.configs import Stage1Config, load_config

    assert load_config(Stage1Config, "stage1", "tiny", ["mask.type=semantic"]).mask.type == "attention"


def test_config_show_marks_missing_values_instead_of_failing():
    r = CliRunner().invoke(app, ["config", "show", "stage1", "--config", "l16", "optim.base_lr=1e-4"])
    assert r.exit_code == 0, r.output
    assert "source: ???" in r.output and "data.source is required" in r.output
    assert "base_lr: 0.0001" in r.output


def test_oc_env_in_a_config_file_is_refused(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  output_dir: ${oc.env:HOME}/x\n")
    with pytest.raises(ValueError, match="oc.env"):
        main(str(f), [])


def test_cuda_requested_without_a_gpu_is_an_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no usable CUDA device"):
        run(tmp_path, "train.device=cuda")
