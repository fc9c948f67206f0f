"""Training length in epochs (umt.configs.schedule): converted to steps from the data set size
and the actual global batch, explicit steps win, a config without a length is refused at load,
and the shared loop logs the conversion and records it in summary.json."""

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch.nn as nn
from typer.testing import CliRunner

from umt.cli import app
from umt.configs import OptimConfig, Stage1Config, TrainConfig, load_config, schedule
from umt.configs.finetune_action import FinetuneActionConfig
from umt.configs.stage2 import Stage2Config
from umt.train.loop import Models, Stage, train

ACTION = ["data.source=s3://b/k710/dataset.json"]
VL = ["data.sources=[s3://b/webvid/dataset.json]"]


def _steps(cfg, num_samples, gpus):
    return schedule.preview(cfg, num_samples, gpus)


@pytest.mark.parametrize("schema,stage,overrides,epochs,warmup", [
    (FinetuneActionConfig, "finetune-action", ACTION, 35, 2),   # K710 B/16
    (Stage2Config, "stage2", VL, 10, 1),                        # Stage 2 B/16
    (Stage1Config, "stage1", ["data.source=s3://b/k710/dataset.json"], 201, 40),
])
def test_16_and_32_gpus_train_the_same_epochs(schema, stage, overrides, epochs, warmup):
    cfg = load_config(schema, stage, "b16", overrides)
    n = 650_000
    s16, s32 = _steps(cfg, n, 16), _steps(cfg, n, 32)
    assert s16.epochs == s32.epochs == epochs and s16.warmup_epochs == s32.warmup_epochs == warmup
    assert s16.steps != s32.steps and s16.global_batch * 2 == s32.global_batch
    views = getattr(getattr(cfg, "augment", None), "num_sample", 1)  # an action batch counts views
    for s in (s16, s32):
        assert s.steps_per_epoch == n // (s.global_batch // views)
        assert s.steps == epochs * s.steps_per_epoch and s.warmup_steps == warmup * s.steps_per_epoch
        assert abs(s.trained_epochs - epochs) < 1e-9


def test_action_epochs_count_videos_not_views():
    """The fine-tune's batch counts num_sample views of each video; an epoch is one pass over the
    videos (official: videos // (batch x GPUs))."""
    cfg = load_config(FinetuneActionConfig, "finetune-action", "b16", ACTION)
    s = _steps(cfg, 650_000, 16)
    assert s.global_batch == 32 * 16  # views, as the loop counts them: 16 videos x 2 per GPU
    assert s.steps_per_epoch == 650_000 // (16 * 16) and s.steps == 35 * (650_000 // 256)


def test_accumulation_is_part_of_the_global_batch():
    cfg = load_config(Stage2Config, "stage2", "b16", VL + ["train.accum_steps=2"])
    assert _steps(cfg, 1_000_000, 8).global_batch == 128 * 8 * 2


def test_explicit_steps_and_warmup_steps_win():
    cfg = load_config(Stage2Config, "stage2", "b16", VL + ["train.steps=100"])
    s = _steps(cfg, 5_000_000, 16)
    assert (s.steps, s.steps_from, s.warmup_from) == (100, "train.steps", "epochs")
    assert s.warmup_steps == 5_000_000 // 2048
    cfg = load_config(Stage2Config, "stage2", "b16", VL + ["train.steps=100", "optim.warmup_steps=7"])
    s = _steps(cfg, 5_000_000, 16)
    assert (s.steps, s.warmup_steps, s.warmup_from) == (100, 7, "optim.warmup_steps")
    assert "100 steps (train.steps)" in s.describe() and "warmup 7 steps" in s.describe()


def test_neither_steps_nor_epochs_fails_at_load_naming_the_keys():
    with pytest.raises(ValueError, match="train.epochs and train.steps are both unset"):
        load_config(Stage1Config, "stage1", "tiny", ["train.steps=null"])
    r = CliRunner().invoke(app, ["config", "show", "stage1", "--config", "tiny", "train.steps=null"])
    assert r.exit_code == 2 and "train.epochs and train.steps are both unset" in r.output


@pytest.mark.parametrize("override,msg", [
    ("train.epochs=0", r"train.epochs=0.0 is out of range; it must be in \(0.0, 10000.0\]"),
    ("train.warmup_epochs=-1", r"train.warmup_epochs=-1.0 is out of range; it must be a number >= 0"),
    ("train.warmup_epochs=300", r"train.warmup_epochs=300.0 is out of range; it must be < "
                                r"train.epochs=201.0"),
])
def test_bad_epochs_name_key_value_and_range(override, msg):
    with pytest.raises(ValueError, match=msg):
        load_config(Stage1Config, "stage1", "b16", ["data.source=s3://b/d.json", override])


def test_describe_reads_as_the_log_line():
    s = schedule.resolve(SimpleNamespace(steps=None, epochs=10, warmup_epochs=1),
                         SimpleNamespace(warmup_steps=None), global_batch=512,
                         samples_per_epoch=1234 * 512 + 100)
    assert s.describe() == ("10 epochs x 1234 steps/epoch = 12340 steps, warmup 1 epoch = 1234 "
                            "steps, global batch 512")


def test_tiny_presets_keep_their_steps():
    cfg = load_config(Stage1Config, "stage1", "tiny")
    s = _steps(cfg, 64, 1)
    assert (s.steps, s.warmup_steps, s.steps_from) == (40, 5, "train.steps")


def test_config_show_prints_the_steps():
    args = ["config", "show", "finetune-action", "--preset", "b16", *ACTION, "--num-samples",
            "650000"]
    out = {g: CliRunner().invoke(app, args + ["--gpus", str(g)]) for g in (16, 32)}
    assert out[16].exit_code == 0, out[16].output
    assert ("# schedule at 650000 samples on 16 GPU(s): 35 epochs x 2539 steps/epoch = 88865 "
            "steps, warmup 2 epochs = 5078 steps, global batch 512") in out[16].output
    assert "35 epochs x 1269 steps/epoch = 44415 steps" in out[32].output


# -- the shared loop ------------------------------------------------------------------------

@dataclasses.dataclass
class _Loader:
    """Batches of a toy data set whose epoch is ``epoch_steps`` batches per rank."""

    epoch_steps: int
    b: int

    def __iter__(self):
        return self

    def __next__(self):
        import torch

        x = torch.ones(self.b, 3)
        return {"x": x, "y": x.sum(1)}


def _forward(ctx, batch, step):
    loss = ((ctx.model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean()
    return loss, {}


def _toy(loader):
    return Stage("toy", build_models=lambda cfg, device: Models(nn.Linear(3, 1)),
                 build_loader=loader, forward_loss=_forward)


@dataclasses.dataclass
class _Data:
    source: str = "toy"


@dataclasses.dataclass
class _Cfg:
    train: TrainConfig
    optim: OptimConfig
    data: _Data


def _cfg(out, **train):
    return _Cfg(TrainConfig(**{"output_dir": str(out), "batch_size": 2, "log_every": 1,
                               "ckpt_every": 100, "precision": "fp32", "device": "cpu", **train}),
                OptimConfig(base_lr=0.1, lr_scaling="none"), _Data())


def test_the_loop_converts_logs_and_records_the_schedule(tmp_path, capsys):
    stage = _toy(lambda cfg, ctx, start: _Loader(epoch_steps=3, b=cfg.train.batch_size))
    summary = train(stage, _cfg(tmp_path, epochs=2, warmup_epochs=1))
    line = "2 epochs x 3 steps/epoch = 6 steps, warmup 1 epoch = 3 steps, global batch 2"
    assert f"toy schedule: {line}" in capsys.readouterr().err  # the run's log
    assert summary["steps"] == summary["total_steps"] == 6
    written = json.loads((tmp_path / "summary.json").read_text())["schedule"]
    assert (written["steps"], written["warmup_steps"], written["steps_per_epoch"]) == (6, 3, 3)
    assert written["epochs"] == 2 and written["text"] == line


def test_the_loop_refuses_epochs_when_the_loader_has_no_epoch(tmp_path):
    def endless(cfg, ctx, start):
        while True:
            yield next(_Loader(1, cfg.train.batch_size))

    with pytest.raises(ValueError, match="does not report its epoch length: set train.steps"):
        train(_toy(endless), _cfg(tmp_path, epochs=2))
    assert train(_toy(endless), _cfg(tmp_path / "steps", steps=2))["total_steps"] == 2


def test_a_finished_runs_summary_names_its_final_checkpoint(tmp_path):
    from umt.models.checkpoint import CheckpointError
    from umt.runtime.weights import final_checkpoint

    done = tmp_path / "done" / "summary.json"
    done.parent.mkdir()
    done.write_text(json.dumps({"steps": 6, "total_steps": 6, "checkpoint": "/r/step_00000006.pt"}))
    assert final_checkpoint(str(done)) == "/r/step_00000006.pt"
    assert final_checkpoint("/r/step_00000006.pt") == "/r/step_00000006.pt"
    early = tmp_path / "early" / "summary.json"
    early.parent.mkdir()
    early.write_text(json.dumps({"steps": 4, "total_steps": 6, "checkpoint": "/r/step_00000004.pt"}))
    with pytest.raises(CheckpointError, match="stopped at step 4 of 6"):
        final_checkpoint(str(early))
    with pytest.raises(CheckpointError, match="has not finished"):
        final_checkpoint(str(tmp_path / "missing" / "summary.json"))
