"""Stage-1 training end to end on CPU: loss falls, resume equality, DDP agreement, guards."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from umt.runtime import checkpoint
from umt.runtime.common import NonFiniteGuard
from umt.train.stage1 import main


def run(out, *overrides):
    return main("tiny", [f"train.output_dir={out}", "train.log_every=1", *overrides])


def weights(out):
    return checkpoint.load_latest(str(out))["model"]


def test_tiny_run_learns_and_writes_its_files(tmp_path):
    summary = run(tmp_path, "train.steps=14", "train.ckpt_every=7")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 14
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    rec = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"step", "loss", "lr", "clips_per_s", "step_time_s"} <= set(rec)
    assert "steps: 14" in (tmp_path / "config.yaml").read_text()
    assert checkpoint.list_steps(str(tmp_path)) == [7, 14]
    assert summary["checkpoint"].endswith("step_00000014.pt")
    state = checkpoint.load_latest(str(tmp_path))
    assert {"model", "optimizer", "scheduler", "rng", "step"} <= set(state)
    assert not any(k.startswith(("teacher", "clip_teacher", "visual")) for k in state["model"])


def test_resume_reaches_the_same_weights(tmp_path):
    run(tmp_path / "a", "train.steps=2", "train.ckpt_every=1")
    run(tmp_path / "b", "train.steps=2", "train.ckpt_every=1", "train.stop_at=1")
    assert checkpoint.list_steps(str(tmp_path / "b")) == [1]
    run(tmp_path / "b", "train.steps=2", "train.ckpt_every=1")
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_broken_latest_falls_back_to_previous_checkpoint(tmp_path):
    run(tmp_path, "train.steps=2", "train.ckpt_every=1", "train.keep_last=3")
    (tmp_path / "checkpoints" / "step_00000002.pt").write_bytes(b"truncated")
    assert checkpoint.load_latest(str(tmp_path))["step"] == 1


def test_checkpoints_to_s3(tmp_path, s3_bucket):
    summary = run(f"{s3_bucket}/runs/t", "train.steps=2", "train.ckpt_every=2")
    assert summary["checkpoint"] == f"{s3_bucket}/runs/t/checkpoints/step_00000002.pt"
    assert checkpoint.load_latest(f"{s3_bucket}/runs/t")["step"] == 2
    from umt import storage
    assert storage.exists(f"{s3_bucket}/runs/t/metrics.jsonl")
    assert storage.exists(f"{s3_bucket}/runs/t/config.yaml")


def test_non_finite_loss_stops_the_run(tmp_path):
    with pytest.raises(FloatingPointError, match="non-finite for 2 consecutive steps"):
        run(tmp_path, "train.steps=10", "optim.base_lr=1e30", "optim.warmup_steps=0",
            "train.max_nonfinite=2")


def test_a_poisoned_batch_is_skipped_and_counted(tmp_path, monkeypatch):
    """A batch with NaNs (a corrupt decode, say) makes the loss non-finite: that update is
    skipped (weights unchanged), counted, and training goes on."""
    import umt.train.stage1 as stage1

    real = stage1.build_pretrain_loader

    def poisoned(*args, **kwargs):
        for batch in real(*args, **kwargs):
            if batch["step"] == 1:
                batch["video"][0, 0, 0, 0, 0] = float("nan")
            yield batch

    monkeypatch.setattr(stage1, "build_pretrain_loader", poisoned)
    run(tmp_path, "train.steps=3", "train.ckpt_every=1", "train.keep_last=5")
    w1 = checkpoint.load(str(tmp_path / "checkpoints" / "step_00000001.pt"))["model"]
    w2 = checkpoint.load(str(tmp_path / "checkpoints" / "step_00000002.pt"))["model"]
    w3 = checkpoint.load(str(tmp_path / "checkpoints" / "step_00000003.pt"))["model"]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)          # step 2 was skipped
    assert not all(torch.equal(w2[k], w3[k]) for k in w2)      # step 3 trained again
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["nonfinite_skipped"] for r in recs] == [0, 1, 1]
    assert recs[1]["loss"] is None and recs[2]["loss"] is not None


def test_resume_continues_the_metrics_history(tmp_path):
    run(tmp_path, "train.steps=4", "train.ckpt_every=2", "train.stop_at=3")  # ckpts 2 and 3
    (tmp_path / "checkpoints" / "step_00000003.pt").unlink()   # as if killed after step 3's log
    (tmp_path / "checkpoints" / "latest").write_text("step_00000002.pt")
    run(tmp_path, "train.steps=4", "train.ckpt_every=2")
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_s3_resume_keeps_metrics_history(tmp_path, s3_bucket, monkeypatch):
    out = f"{s3_bucket}/runs/m"
    monkeypatch.setenv("UMT_CACHE", str(tmp_path / "cache1"))
    run(out, "train.steps=4", "train.ckpt_every=2", "train.stop_at=2")
    monkeypatch.setenv("UMT_CACHE", str(tmp_path / "cache2"))  # a fresh container
    run(out, "train.steps=4", "train.ckpt_every=2")
    from umt import storage
    steps = [json.loads(line)["step"] for line in storage.read_bytes(f"{out}/metrics.jsonl").decode().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_pruning_ignores_temp_files_of_killed_writers(tmp_path):
    folder = tmp_path / "checkpoints"
    run(tmp_path, "train.steps=2", "train.ckpt_every=1", "train.keep_last=2", "train.stop_at=1")
    (folder / ".tmp-abc123-step_00000002.pt").write_bytes(b"partial")
    (folder / ".tmp-def456-step_00000002.pt").write_bytes(b"partial")
    run(tmp_path, "train.steps=2", "train.ckpt_every=1", "train.keep_last=2")
    assert sorted(p.name for p in folder.iterdir()) == ["latest", "step_00000001.pt", "step_00000002.pt"]
    assert checkpoint.load_latest(str(tmp_path))["step"] == 2


def test_own_checkpoint_loads_through_create_model(tiny_stage1):
    from umt.models import create_model

    summary = tiny_stage1
    trained = checkpoint.load(summary["checkpoint"])["model"]
    student = create_model("umt_pretrain_vit_tiny_patch16_224", pretrained=summary["checkpoint"],
                           num_frames=4, img_size=64, embed_dim=96, depth=4, num_heads=3,
                           teacher_dim=32, align_layers=2)
    backbone = create_model("umt_vit_tiny_patch16_224", pretrained=summary["checkpoint"],
                            num_frames=4, img_size=64, embed_dim=96, depth=4, num_heads=3, num_classes=4)
    assert torch.equal(student.clip_decoder[1].head.weight, trained["clip_decoder.1.head.weight"])
    assert torch.equal(backbone.blocks[3].mlp.fc2.weight, trained["encoder.blocks.3.mlp.fc2.weight"])


def test_non_finite_guard_counts_and_resets():
    g = NonFiniteGuard(limit=2)
    g.update(False, 1)
    g.update(True, 2)
    g.update(False, 3)
    assert (g.total, g.consecutive) == (2, 1)
    with pytest.raises(FloatingPointError):
        g.update(False, 4)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc, *args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                    "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                    "-m", "umt.train.stage1", *args], check=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_ddp_two_processes_agree_with_one(tmp_path):
    common = ["train.steps=2", "train.ckpt_every=2"]
    _torchrun(2, "--config", "tiny", *common, "train.log_every=1", f"train.output_dir={tmp_path / 'ddp'}",
              "train.batch_size=4")
    run(tmp_path / "one", *common, "train.batch_size=8")  # the reference, in this process
    one, ddp = weights(tmp_path / "one"), weights(tmp_path / "ddp")
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
    m_one = [json.loads(line) for line in Path(tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    m_ddp = [json.loads(line) for line in Path(tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in m_one] == pytest.approx([r["lr"] for r in m_ddp])
    # the logged loss is the whole global batch's, however it is split
    assert [r["loss"] for r in m_one] == pytest.approx([r["loss"] for r in m_ddp], rel=1e-4)


def test_mismatched_teacher_and_student_layers_fail_early(tmp_path):
    with pytest.raises(ValueError, match="return_layers"):
        run(tmp_path, "model.align_layers=3")
    with pytest.raises(ValueError, match="token grid"):
        run(tmp_path, "teacher.input_resolution=32")


def test_activation_checkpointing_gives_the_same_weights(tmp_path):
    from umt.configs import Stage1Config, load_config
    from umt.train.stage1 import build_models

    cfg = load_config(Stage1Config, "stage1", "tiny", ["model.grad_checkpointing=true"])
    assert build_models(cfg, torch.device("cpu")).model.encoder.grad_checkpointing
    run(tmp_path / "plain", "train.steps=1")
    run(tmp_path / "ckpt", "train.steps=1", "model.grad_checkpointing=true")
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "ckpt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_gradient_clipping_bounds_the_update(tmp_path):
    run(tmp_path / "free", "train.steps=1")
    run(tmp_path / "clipped", "train.steps=1", "optim.clip_grad=1e-3")
    rec = json.loads((tmp_path / "clipped" / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["grad_norm"] > 1e-3  # the norm before clipping is logged
    free, clipped = weights(tmp_path / "free"), weights(tmp_path / "clipped")
    assert any(not torch.equal(free[k], clipped[k]) for k in free)
