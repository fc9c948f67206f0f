"""The shared training loop itself, on a toy stage: gradient accumulation, evaluation with a
best checkpoint, resume of both."""

import json
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn

from umt.configs import OptimConfig, TrainConfig
from umt.runtime import checkpoint
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
