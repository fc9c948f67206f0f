"""`umt train finetune-action` on CPU: the stage on the shared loop (evaluation + best
checkpoint, resume), initialisation from Stage-1 / fine-tuned checkpoints with a head map,
the official layer decay, and bad input that fails before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from umt.configs.finetune_action import FinetuneActionConfig
from umt.configs.loader import load_config
from umt.models import build_from_config, create_model
from umt.runtime import checkpoint
from umt.runtime.weights import load_classifier_init, read_head_map
from umt.train import finetune_action

TINY = dict(num_frames=4, img_size=64, embed_dim=96, depth=4, num_heads=3)
SYNTHETIC_CLASSES = ["left to right", "right to left", "left to right in jumps", "right to left in jumps"]


def run(out, *overrides, config="tiny"):
    return finetune_action.main(config, [f"train.output_dir={out}", "train.log_every=1",
                                         "train.batch_size=4", "model.num_frames=4", *overrides])


def records(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def cfg_of(*overrides) -> FinetuneActionConfig:
    return load_config(FinetuneActionConfig, "finetune-action", "tiny", list(overrides))


def test_tiny_finetune_evaluates_on_a_named_split_and_keeps_the_best(tmp_path, synthetic_shards):
    s = run(tmp_path, f"data.source={synthetic_shards}", f"eval.source={synthetic_shards}",
            "train.steps=2", "train.eval_every=1", "eval.split=heldout")
    evals = [r for r in records(tmp_path) if "eval/top1" in r]
    assert [e["step"] for e in evals] == [1, 2]
    assert {"eval/top5", "eval/mean_class_accuracy", "eval/loss"} <= set(evals[0])
    assert evals[0]["eval/num_videos"] == 24 and evals[0]["eval/num_views"] == 24  # one view each
    assert evals[0]["eval/split"] == "heldout" and s["eval_split"] == "heldout"
    assert s["best"]["metric"] == "top1" and (tmp_path / "checkpoints" / "best.pt").exists()
    assert s["best"]["value"] == max(e["eval/top1"] for e in evals)
    # the global batch counts views: 2 videos x num_sample 2 (the official LR formula)
    assert s["global_batch"] == 4 and s["num_classes"] == 4 and s["classes"] == SYNTHETIC_CLASSES
    cfg = (tmp_path / "config.yaml").read_text()
    assert "num_clips: 1" in cfg and "sampler: segment" in cfg and "split: heldout" in cfg
    assert {"loss", "train_top1", "lr"} <= set(records(tmp_path)[0])


def test_resume_equals_uninterrupted(tmp_path):
    common = ["train.steps=4", "train.ckpt_every=2", "data.synthetic_size=16"]
    run(tmp_path / "a", *common)
    run(tmp_path / "b", *common, "train.stop_at=2")
    run(tmp_path / "b", *common)
    a = checkpoint.load_latest(str(tmp_path / "a"))["model"]
    b = checkpoint.load_latest(str(tmp_path / "b"))["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _stage1_checkpoint(path) -> dict:
    """Our Stage-1 layout ({'model': encoder.* + clip_decoder.*}) of the tiny student."""
    student = create_model("umt_pretrain_vit_tiny_patch16_224", align_layers=2, teacher_dim=32, **TINY)
    torch.save({"model": student.state_dict()}, path)
    return student.state_dict()


def _finetuned_checkpoint(path, num_classes, **kw) -> dict:
    model = create_model("umt_vit_tiny_patch16_224", num_classes=num_classes, **{**TINY, **kw})
    with torch.no_grad():
        model.head.weight.normal_()
        model.head.bias.normal_()
    torch.save({"model": model.state_dict()}, path)
    return model.state_dict()


def test_starts_from_stage1_at_other_frames_with_a_fresh_head(tmp_path):
    sd = _stage1_checkpoint(tmp_path / "s1.pt")
    cfg = cfg_of(f"model.pretrained={tmp_path / 's1.pt'}", "model.num_frames=8")
    model = finetune_action.build_models(cfg, torch.device("cpu")).model
    assert model.patch_embed.grid == (8, 4, 4)  # the position table is the 8-frame one
    for k, v in model.state_dict().items():
        if k.startswith("blocks.") or k.startswith("patch_embed."):
            assert torch.equal(v, sd[f"encoder.{k}"]), k
    assert torch.equal(model.fc_norm.weight, torch.ones(96)) and torch.equal(model.fc_norm.bias, torch.zeros(96))
    assert model.head.weight.shape == (4, 96) and model.head.weight.abs().max() < 1e-3  # init x 0.001
    # a head map needs a checkpoint with a head
    (tmp_path / "map.json").write_text("[0, 1, 2, 3]")
    with pytest.raises(ValueError, match="has no classifier head"):
        finetune_action.build_models(cfg_of(f"model.pretrained={tmp_path / 's1.pt'}",
                                            f"model.head_map={tmp_path / 'map.json'}"), torch.device("cpu"))


def test_head_map_starts_the_head_from_another_label_set(tmp_path):
    src = _finetuned_checkpoint(tmp_path / "ft6.pt", 6)
    # JSON: per target class a source row, or null for a fresh one
    (tmp_path / "map.json").write_text("[5, 2, null, 0]")
    cfg = cfg_of(f"model.pretrained={tmp_path / 'ft6.pt'}", f"model.head_map={tmp_path / 'map.json'}")
    torch.manual_seed(0)
    model = finetune_action.build_models(cfg, torch.device("cpu")).model
    w, b = model.head.weight, model.head.bias
    for target, source in ((0, 5), (1, 2), (3, 0)):
        assert torch.equal(w[target], src["head.weight"][source]) and b[target] == src["head.bias"][source]
    assert w[2].abs().max() < 1e-3  # fresh row (init scale 0.001)
    assert torch.equal(model.blocks[0].attn.qkv.weight, src["blocks.0.attn.qkv.weight"])
    # classes.txt of the source label set: matched by name against the target classes
    source_names = ["x", "right to left in jumps", "left to right", "y", "right to left", "z"]
    (tmp_path / "source_classes.txt").write_text("\n".join(source_names) + "\n")
    assert read_head_map(str(tmp_path / "source_classes.txt"), SYNTHETIC_CLASSES, 6) == [2, 4, None, 1]
    model = create_model("umt_vit_tiny_patch16_224", num_classes=4, **TINY)
    load_classifier_init(model, str(tmp_path / "ft6.pt"), head_map=str(tmp_path / "source_classes.txt"),
                         target_classes=SYNTHETIC_CLASSES)
    assert torch.equal(model.head.weight[0], src["head.weight"][2])
    assert torch.equal(model.head.weight[3], src["head.weight"][1])
    # without a map, a head of another size starts fresh (the loader's allow-list) ...
    model = create_model("umt_vit_tiny_patch16_224", num_classes=4, **TINY)
    report = load_classifier_init(model, str(tmp_path / "ft6.pt"))
    assert "head.weight" in report.fresh
    # ... and an evaluation refuses it instead of scoring a random head
    with pytest.raises(ValueError, match="no classifier head for 4 classes"):
        load_classifier_init(model, str(tmp_path / "ft6.pt"), require_head=True)


@pytest.mark.parametrize("content, message", [
    ("[0, 1, 2]", "has 3 entries but the head has 4 classes"),
    ("[0, 1, 2, 6]", "entry 3 is 6, not a source class index in \\[0, 6\\)"),
    ("[0, 1, 2, true]", "entry 3 is True"),
    ('{"x": 1}', "must hold a JSON list"),
    ("[0, 1", "is not valid JSON"),
])
def test_bad_head_maps_name_the_problem(tmp_path, content, message):
    _finetuned_checkpoint(tmp_path / "ft6.pt", 6)
    (tmp_path / "map.json").write_text(content)
    model = create_model("umt_vit_tiny_patch16_224", num_classes=4, **TINY)
    with pytest.raises(ValueError, match=message):
        load_classifier_init(model, str(tmp_path / "ft6.pt"), head_map=str(tmp_path / "map.json"),
                             target_classes=SYNTHETIC_CLASSES)


def test_head_map_by_names_needs_a_match(tmp_path):
    (tmp_path / "c.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="none of the 4 classes is among the source classes"):
        read_head_map(str(tmp_path / "c.txt"), SYNTHETIC_CLASSES, 2)
    with pytest.raises(ValueError, match="lists 2 source classes but the checkpoint's head has 3 rows"):
        read_head_map(str(tmp_path / "c.txt"), SYNTHETIC_CLASSES, 3)
    with pytest.raises(ValueError, match="file not found"):
        read_head_map(str(tmp_path / "missing.json"), SYNTHETIC_CLASSES, 3)


def test_layer_decay_is_wired_into_the_optimizer_groups():
    cfg = cfg_of()
    assert cfg.optim.layer_decay == 0.75 and finetune_action._stage(cfg).param_groups is finetune_action.param_groups
    model = build_from_config(cfg.model, num_classes=4)
    groups = finetune_action.param_groups(cfg, model)
    scale = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    depth = 4
    assert scale[id(named["patch_embed.proj.weight"])] == (pytest.approx(0.75 ** (depth + 1)), 0.05)
    assert scale[id(named["patch_embed.proj.bias"])][1] == 0.0
    for i in range(depth):
        assert scale[id(named[f"blocks.{i}.attn.qkv.weight"])][0] == pytest.approx(0.75 ** (depth - i))
        assert scale[id(named[f"blocks.{i}.attn.q_bias"])] == (pytest.approx(0.75 ** (depth - i)), 0.0)
    assert scale[id(named["head.weight"])] == (1.0, 0.05) and scale[id(named["fc_norm.weight"])] == (1.0, 0.0)
    assert len(scale) == len(named)
    # off: plain weight decay groups
    groups = finetune_action.param_groups(cfg_of("optim.layer_decay=null"), model)
    assert {g["lr_scale"] for g in groups} == {1.0}


def _dataset_copy(tmp_path, source, **changes) -> str:
    d = json.loads(Path(source).read_text())
    folder = Path(source).parent
    for s in d["shards"]:
        s["uri"] = str(folder / s["uri"])
    d.update(changes)
    path = tmp_path / f"dataset-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(d))
    return str(path)


def test_bad_input_fails_before_training_with_the_problem_named(tmp_path, synthetic_shards):
    unlabelled = _dataset_copy(tmp_path, synthetic_shards, classes=[])
    other = _dataset_copy(tmp_path, synthetic_shards, classes=["a", "b", "c", "d"])
    cases = [
        ([f"data.source={unlabelled}"], "lists no classes"),
        ([f"data.source={synthetic_shards}", "model.num_classes=3"],
         "model.num_classes=3 but .* has 4 classes: labels 3..3 would be outside the head"),
        ([f"data.source={synthetic_shards}", f"eval.source={other}"], "has other classes than the training set"),
        ([f"data.source={synthetic_shards}", f"eval.source={unlabelled}"], "eval.source=.* lists no classes"),
        (["train.batch_size=5"], "must be a multiple of augment.num_sample=2"),
        (["train.batch_size=3", "augment.num_sample=1"], "must be even with Mixup/CutMix on"),
        (["data.sampler=tsm"], "data.sampler='tsm' is not allowed"),
        (["model.name=umt_vl_tiny_patch16_224"], "must be a classifier model"),
        (["train.best_metric=top3"], "train.best_metric='top3' is not allowed"),
        (["model.head_map=x.json"], "head map needs the checkpoint"),
    ]
    for overrides, message in cases:
        out = tmp_path / "run"
        with pytest.raises(ValueError, match=message):
            finetune_action.main("tiny", [f"train.output_dir={out}", *overrides])
        assert not (out / "checkpoints").exists(), overrides  # nothing trained
    # on the command line: one line naming the problem, exit code 2
    from umt.cli import app

    r = CliRunner().invoke(app, ["train", "finetune-action", "--config", "tiny",
                                 f"data.source={synthetic_shards}", "model.num_classes=2",
                                 f"train.output_dir={tmp_path / 'cli'}"])
    assert r.exit_code == 2 and "outside the head" in r.output
    # evaluation-only settings are fine without an evaluation set (nothing to select on)
    assert cfg_of().train.best_metric is None
    assert cfg_of("eval.source=x.json", "train.best_metric=loss").train.best_mode == "min"
