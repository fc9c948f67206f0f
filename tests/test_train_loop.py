"""The shared training loop itself, on a toy stage: gradient accumulation, evaluation with a
best checkpoint, resume of both, a checkpoint on SIGTERM (the 2-replica job that is sent it:
tests/faults/test_worker_loss.py)."""

import dataclasses
import json
import os
import signal
from dataclasses import dataclass, field
from typing import Optional

import pytest
import torch
import torch.nn as nn

from umt.configs import OptimConfig, TrainConfig
from umt.runtime import checkpoint, preemption
from umt.train.loop import Models, Stage, train
from umt.train.optim import param_groups


@dataclass
class ToyTrain(TrainConfig):
    best_metric: Optional[str] = None
    best_mode: str = "max"


@dataclass
class ToyData:
    source: str = "toy"


@dataclass
class ToyConfig:
    train: ToyTrain = field(default_factory=ToyTrain)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: ToyData = field(default_factory=ToyData)


X = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
Y = X @ torch.arange(5.0) + 1.0


def _loader(cfg, ctx, start):
    """Micro-batch ``m`` of every step gets rows ``m*B:(m+1)*B`` of the same 8 samples."""
    b = cfg.train.batch_size
    micro = start
    while True:
        m = micro % cfg.train.accum_steps
        yield {"x": X[m * b:(m + 1) * b], "y": Y[m * b:(m + 1) * b]}
        micro += 1


def _forward(ctx, batch, step):
    pred = ctx.model(batch["x"]).squeeze(-1)
    loss = ((pred - batch["y"]) ** 2).mean()
    return loss, {"abs_err": (pred - batch["y"]).abs().mean()}


def _evaluate(ctx, step):
    with torch.no_grad():
        err = float(((ctx.raw(X).squeeze(-1) - Y) ** 2).mean())
    # a metric that peaks at step 3, so "best" is not simply "last"
    return {"neg_mse": -err, "peaked": -abs(step - 3)}


STAGE = Stage("toy", build_models=lambda cfg, device: Models(nn.Linear(5, 1)),
              build_loader=_loader, forward_loss=_forward, evaluate=_evaluate)


def cfg_for(out, **train):
    c = ToyConfig()
    c.train = ToyTrain(**{"output_dir": str(out), "steps": 6, "log_every": 1, "ckpt_every": 2,
                          "batch_size": 8, "precision": "fp32", "device": "cpu", **train})
    c.optim = OptimConfig(base_lr=0.5, min_lr=0.0, weight_decay=0.0, lr_scaling="none",
                          betas=[0.9, 0.99])
    return c


def test_accumulation_equals_the_full_batch(tmp_path):
    train(STAGE, cfg_for(tmp_path / "full"))
    train(STAGE, cfg_for(tmp_path / "accum", batch_size=4, accum_steps=2))
    a = checkpoint.load_latest(str(tmp_path / "full"))["model"]
    b = checkpoint.load_latest(str(tmp_path / "accum"))["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    rec = [json.loads(line) for line in (tmp_path / "accum" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "abs_err", "lr", "clips_per_s", "data_wait_frac"} <= set(rec[0])


def test_evaluation_keeps_the_best_checkpoint_across_resume(tmp_path):
    out = tmp_path / "run"
    train(STAGE, cfg_for(out, eval_every=1, best_metric="peaked", stop_at=4))
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert (best["step"], best["value"], best["metric"]) == (3, 0.0, "peaked")
    summary = train(STAGE, cfg_for(out, eval_every=1, best_metric="peaked"))
    assert summary["best"]["step"] == 3            # steps 5, 6 are worse: best.pt stays step 3
    assert checkpoint.load(str(out / "checkpoints" / "best.pt"))["step"] == 3
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if "eval/peaked" in line]
    assert [e["step"] for e in evals] == [1, 2, 3, 4, 5, 6]
    assert summary["eval"]["peaked"] == -3


def test_layer_decay_follows_the_official_assignment():
    """Official LayerDecayValueAssigner: patch_embed -> ld**(L+1), blocks.i -> ld**(L-i),
    fc_norm/head -> 1; no decay on 1-D params."""
    from umt.models import create_model

    model = create_model("umt_vit_tiny_patch16_224", num_frames=2, img_size=32, depth=3,
                         embed_dim=48, num_heads=3, num_classes=5)
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.75)
    scale = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    depth = 3
    for name, p in model.named_parameters():
        if name.startswith("patch_embed"):
            layer = 0
        elif name.startswith("blocks."):
            layer = int(name.split(".")[1]) + 1
        else:
            layer = depth + 1
        want_wd = 0.0 if p.ndim == 1 else 0.05
        assert scale[id(p)] == (0.75 ** (depth + 1 - layer), want_wd), name


# ------------------------------------------------------------------------ SIGTERM (preemption)

def _sigterm_at(done: int) -> Stage:
    """The toy stage, whose process sends itself SIGTERM in the middle of step ``done``'s
    forward pass (as a kubelet's signal arrives: whenever)."""
    def forward(ctx, batch, step):
        if step + 1 == done:
            os.kill(os.getpid(), signal.SIGTERM)
        return _forward(ctx, batch, step)

    return dataclasses.replace(STAGE, forward_loss=forward, evaluate=None)


def _saved_steps(monkeypatch) -> list[int]:
    saved: list[int] = []
    real = checkpoint.CheckpointWriter.save
    monkeypatch.setattr(checkpoint.CheckpointWriter, "save",
                        lambda self, step, payload: saved.append(step) or real(self, step, payload))
    return saved


def test_sigterm_checkpoints_the_step_in_progress_and_the_resumed_run_equals_an_uninterrupted_one(
        tmp_path, monkeypatch):
    noeval = dataclasses.replace(STAGE, evaluate=None)
    train(noeval, cfg_for(tmp_path / "ref"))
    saved = _saved_steps(monkeypatch)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(preemption.Preempted) as stop:
        train(_sigterm_at(3), cfg_for(tmp_path / "run"))
    assert stop.value.code == preemption.EXIT_CODE == 143 and stop.value.step == 3
    assert "SIGTERM reached 1 of 1 rank(s) (this one " in str(stop.value)
    assert signal.getsignal(signal.SIGTERM) is before  # the loop's handler is gone again
    assert saved == [2, 3]  # the periodic checkpoint, then the step SIGTERM came in
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step_00000003.pt"
    assert not (tmp_path / "run" / "summary.json").exists()  # the run is not finished

    summary = train(noeval, cfg_for(tmp_path / "run"))
    assert summary["steps"] == 6 and saved == [2, 3, 4, 6]
    want = checkpoint.load_latest(str(tmp_path / "ref"))
    got = checkpoint.load_latest(str(tmp_path / "run"))
    for k in want["model"]:
        assert torch.equal(want["model"][k], got["model"][k]), k
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    # A restart prunes the older checkpoint of its first attempt too (lineage), not only its own.
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "latest", "step_00000004.pt", "step_00000006.pt"]


def test_sigterm_in_a_checkpoint_step_saves_it_once_and_in_the_last_step_just_finishes(
        tmp_path, monkeypatch):
    saved = _saved_steps(monkeypatch)
    with pytest.raises(preemption.Preempted) as stop:
        train(_sigterm_at(4), cfg_for(tmp_path / "at-4"))
    assert stop.value.step == 4 and saved == [2, 4]
    saved.clear()
    summary = train(_sigterm_at(6), cfg_for(tmp_path / "at-6"))  # done: nothing to resume
    assert summary["steps"] == 6 and saved == [2, 4, 6]


@pytest.mark.parametrize("value", ["0", "-5", "abc", "nan", "1e9"])
def test_a_bad_sigterm_grace_fails_before_the_run_starts(tmp_path, monkeypatch, value):
    monkeypatch.setenv(preemption.ENV, value)
    with pytest.raises(ValueError, match=rf"UMT_SIGTERM_GRACE_S='{value}' is out of range; it must "
                                         r"be seconds in \[1, 86400\]"):
        train(STAGE, cfg_for(tmp_path))
    assert not any(tmp_path.iterdir())


def test_the_sigterm_budget_is_the_grace_or_torchruns_shorter_shutdown_timeout():
    assert preemption.budget({}) == (120.0, "UMT_SIGTERM_GRACE_S unset, default 120")
    assert preemption.budget({"UMT_SIGTERM_GRACE_S": "45"}) == (45.0, "UMT_SIGTERM_GRACE_S=45")
    worker = {"TORCHELASTIC_RUN_ID": "none", "UMT_SIGTERM_GRACE_S": "120"}
    seconds, why = preemption.budget(worker)  # torchrun's default shutdown timeout: 30 s
    assert seconds == 30.0 and "TORCH_ELASTIC_SHUTDOWN_TIMEOUT" in why and "set it to the grace" in why
    assert preemption.budget({**worker, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "120"})[0] == 120.0
    assert preemption.budget({**worker, "PET_SHUTDOWN_TIMEOUT": "60"})[0] == 60.0  # --shutdown-timeout
